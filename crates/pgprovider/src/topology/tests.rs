//! Which primary the monitor trusts, and LSN parsing.

use super::{NodeStatus, Role, decide, parse_lsn};
use crate::Host;
use crate::config::Node;

fn status(name: &str, role: Role, timeline: Option<u32>) -> NodeStatus {
    let mut s = NodeStatus::unknown(&Node::new(Host::Tcp(name.into()), 5432));
    s.reachable = role != Role::Unknown;
    s.role = role;
    s.timeline = timeline;
    s
}

#[test]
fn the_newest_timeline_wins_a_split_brain() {
    let mut one = [
        status("a", Role::Primary, Some(1)),
        status("b", Role::Standby, Some(1)),
    ];
    assert_eq!(decide(&mut one), (Some(0), None));
    let mut none = [
        status("a", Role::Unknown, None),
        status("b", Role::Standby, Some(1)),
    ];
    assert_eq!(decide(&mut none), (None, None));

    let mut two = [
        status("a", Role::Primary, Some(1)),
        status("b", Role::Primary, Some(2)),
        status("c", Role::Standby, Some(2)),
    ];
    let (chosen, split) = decide(&mut two);
    assert_eq!(chosen, Some(1));
    let split = split.unwrap();
    assert_eq!(split.chosen.as_deref(), Some("b:5432"));
    assert_eq!(
        split.primaries,
        vec![
            ("a:5432".to_string(), Some(1)),
            ("b:5432".to_string(), Some(2))
        ]
    );
    assert!(two[0].fenced && !two[1].fenced && !two[2].fenced);

    // Same timeline, or unknown: nothing tells them apart, neither is trusted.
    for (t1, t2) in [(Some(2), Some(2)), (None, None)] {
        let mut tie = [
            status("a", Role::Primary, t1),
            status("b", Role::Primary, t2),
        ];
        let (chosen, split) = decide(&mut tie);
        assert_eq!(chosen, None);
        assert_eq!(split.unwrap().chosen, None);
        assert!(tie[0].fenced && tie[1].fenced);
    }
    // Fencing is recomputed: once the old primary is gone, nothing stays fenced.
    two[0] = status("a", Role::Unknown, None);
    assert_eq!(decide(&mut two), (Some(1), None));
    assert!(!two[0].fenced);
}

#[test]
fn lsns_parse() {
    assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
    assert_eq!(parse_lsn("1/0"), Some(1 << 32));
    assert_eq!(parse_lsn("nope"), None);
    assert_eq!(parse_lsn("G/0"), None);
}
