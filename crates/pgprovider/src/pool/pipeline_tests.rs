//! Tests of adaptive pipelining's bookkeeping ([`Pipes`](super::Pipes)).
use super::*;

/// `pool_pipeline=N` bounds the reads in flight per connection; only open connections
/// of the pool's generation take any, and an abandoned one is reported to the next
/// holder once.
#[test]
fn picks_respect_the_depth_the_generation_and_the_open_flag() {
    let pipes = Pipes::new(2, 1);
    assert!(pipes.pick(0).is_none(), "no connection yet");
    let r = pipes.register(Box::new(()), 0);
    assert!(pipes.pick(0).is_none(), "a closed connection takes nothing");
    r.0.progress.store(pipes.now(), Relaxed);
    r.0.open.store(true, Relaxed);
    assert!(pipes.pick(1).is_none(), "another generation takes nothing");
    let mut a = pipes.pick(0).expect("room");
    let mut b = pipes.pick(0).expect("room");
    assert!(pipes.pick(0).is_none(), "deeper than pool_pipeline=2");
    a.replied();
    drop(a);
    assert!(!r.0.abandoned.load(Relaxed));
    assert_eq!(r.0.depth.load(Relaxed), 1, "one still in flight");
    b.replied = false;
    drop(b);
    assert!(r.checked_out(), "an abandoned read is reported");
    assert!(!r.0.open.load(Relaxed), "checked out: closed to reads");
    assert!(!r.checked_out(), "and only once");
    drop(r);
    assert!(pipes.pick(0).is_none(), "a connection gone takes nothing");
}
