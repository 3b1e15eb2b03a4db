//! `pgprovider inspect`: the safety probe of every node, as tables or JSON.

use crate::say;
use pgprovider::config::Node;
use pgprovider::safety::{Findings, SafetyOptions, Session, probe};
use pgprovider::{Config, Connection, Driver};
use pgprovider_tokio_postgres::TokioPostgres;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

pub(crate) async fn run(args: crate::opt::InspectArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.url {
        Some(url) => Config::from_url(url)?,
        None => Config::from_env()?,
    };
    let app = args
        .application
        .clone()
        .or_else(|| config.application_name().map(str::to_owned));
    let options = SafetyOptions::new()
        .with_long_transaction(args.long_transaction)
        .with_long_statement(args.long_statement)
        .with_idle_in_transaction(args.idle_in_transaction)
        .with_blocked(args.blocked)
        .with_connections_ratio(args.connections_ratio)
        .with_prepared_transaction(args.prepared_transaction)
        .with_slot_retained_bytes(args.slot_retained_bytes)
        .with_wraparound_age(args.wraparound_age);
    let mut conns: HashMap<Node, <TokioPostgres as Driver>::Connection> = HashMap::new();
    let mut deadlocks: HashMap<Node, u64> = HashMap::new();
    let mut refreshes = 0u64;
    loop {
        let mut clear = true;
        let mut screen = Vec::new();
        for node in config.nodes() {
            match inspect(&config, node, &options, app.as_deref(), &mut conns).await {
                Ok(mut f) => {
                    let prev = deadlocks.insert(node.clone(), f.deadlocks.server_total);
                    f.deadlocks.server_new =
                        prev.map_or(0, |p| f.deadlocks.server_total.saturating_sub(p));
                    clear &= f.is_clear();
                    screen.push(if args.json { f.to_json() } else { table(&f) });
                }
                Err(e) => {
                    conns.remove(node);
                    clear = false;
                    screen.push(if args.json {
                        let msg = serde_json::Value::from(e.to_string());
                        format!(r#"{{"node":"{node}","clear":false,"error":{msg}}}"#)
                    } else {
                        format!("{node}: cannot inspect: {e}\n")
                    });
                }
            }
        }
        if args.watch && !args.json {
            // Like top: the screen redrawn from its top-left corner.
            say!("\x1b[2J\x1b[H{}", chrono_line());
        }
        for s in &screen {
            say!("{}", s.trim_end());
        }
        refreshes += 1;
        if !args.watch || args.count.is_some_and(|c| refreshes >= c) {
            for (_, c) in conns.drain() {
                c.close().await;
            }
            return Ok(if clear {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        tokio::select! {
            () = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => {
                return Ok(if clear { ExitCode::SUCCESS } else { ExitCode::from(1) });
            }
        }
    }
}

fn chrono_line() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "pgprovider inspect, {:02}:{:02}:{:02} UTC (Ctrl-C to stop)",
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

async fn inspect(
    config: &Config,
    node: &Node,
    options: &SafetyOptions,
    app: Option<&str>,
    conns: &mut HashMap<Node, <TokioPostgres as Driver>::Connection>,
) -> pgprovider::Result<Findings> {
    if !conns.contains_key(node) {
        let params = config.connect_params(node).await?;
        let conn = TokioPostgres::new().connect(&params).await?;
        conns.insert(node.clone(), conn);
    }
    let conn = conns.get_mut(node).expect("inserted above");
    probe(conn, &node.to_string(), options, app).await
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| d.as_millis().to_string())
}

fn who(s: &Session) -> String {
    format!(
        "{}{} {}@{}",
        s.application,
        if s.ours { " (ours)" } else { "" },
        s.user,
        s.database
    )
}

fn stmt(s: &Session) -> &str {
    s.statement.as_deref().unwrap_or("")
}

/// The findings of one node as text tables.
fn table(f: &Findings) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let c = &f.connections;
    let w = &f.wraparound;
    let _ = writeln!(
        o,
        "{}: {} of {} connections ({} reserved, {} ours); deadlocks {} ({} new); oldest xid age {} in {}; probe {} statements in {:.1} ms",
        f.node,
        c.used,
        c.max,
        c.reserved,
        c.ours,
        f.deadlocks.server_total,
        f.deadlocks.server_new,
        w.xid_age,
        w.database,
        f.probe_queries,
        f.probe_time.as_secs_f64() * 1e3
    );
    if !f.blocking.is_empty() {
        let _ = writeln!(
            o,
            "\nBLOCKED     BLOCKING    WAIT_MS  LOCK           MODE                 RELATION         BLOCKED STATEMENT"
        );
        for b in &f.blocking {
            let _ = writeln!(
                o,
                "{:<11} {:<11} {:<8} {:<14} {:<20} {:<16} {}",
                b.blocked_pid,
                b.blocking_pid,
                b.wait.as_millis(),
                b.lock_type,
                b.mode,
                b.relation.as_deref().unwrap_or("-"),
                stmt(&b.blocked)
            );
        }
    }
    type Age = fn(&Session) -> Option<Duration>;
    let sections: [(&str, &[Session], Age); 3] = [
        ("IDLE IN TRANSACTION", &f.idle_in_transaction, |s| {
            s.state_age
        }),
        ("LONG TRANSACTIONS", &f.long_transactions, |s| {
            s.transaction_age
        }),
        ("LONG STATEMENTS", &f.long_statements, |s| s.statement_age),
    ];
    for (title, list, age) in sections {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(
            o,
            "\n{title}\nPID      FOR_MS   SESSION                          STATEMENT"
        );
        for s in list {
            let _ = writeln!(
                o,
                "{:<8} {:<8} {:<32} {}",
                s.pid,
                ms(age(s)),
                who(s),
                stmt(s)
            );
        }
    }
    if !f.prepared_transactions.is_empty() {
        let _ = writeln!(
            o,
            "\nPREPARED TRANSACTION  OWNER        DATABASE     AGE_MS"
        );
        for p in &f.prepared_transactions {
            let _ = writeln!(
                o,
                "{:<21} {:<12} {:<12} {}",
                p.gid,
                p.owner,
                p.database,
                p.age.as_millis()
            );
        }
    }
    if !f.replication_slots.is_empty() {
        let _ = writeln!(
            o,
            "\nSLOT                  TYPE      ACTIVE  RETAINED_BYTES  WAL_STATUS"
        );
        for s in &f.replication_slots {
            let _ = writeln!(
                o,
                "{:<21} {:<9} {:<7} {:<15} {}",
                s.name, s.kind, s.active, s.retained_bytes, s.wal_status
            );
        }
    }
    let problems = f.problems();
    if problems.is_empty() {
        let _ = writeln!(o, "nothing over a threshold");
    } else {
        let _ = writeln!(o);
        for p in problems {
            let _ = writeln!(o, "! {p}");
        }
    }
    o
}
