//! Failover slots (PostgreSQL 17+): `[source] failover = true` makes setup
//! create the slot with `failover`, check verifies what the primary shows,
//! and an older server is refused clearly. Then a primary and a streaming
//! standby started by the test (pg_basebackup), the standby promoted while
//! walhook streams: walhook, given both hosts, goes on from the new primary
//! and no committed change is lost.
//!
//! These tests need a PostgreSQL 17 or later build: `WALHOOK_PG_BIN` when
//! it is one, else `target/pg/18` or `target/pg/17` (scripts/install-pg.sh).
//! Without one they say so and pass.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::common::app::{self, LEADS, LEADS_OBJECTS};
use crate::common::daemon::Daemon;
use crate::common::{Behaviour, Receiver, TestDb, fresh_db, fresh_db_on, wait_until};
use walhook::devtools::embedded::{ClusterOptions, TempCluster};

/// The server programs of PostgreSQL 17 or later, if installed.
fn pg17_bin() -> Option<PathBuf> {
    let major = |bin: &PathBuf| -> Option<u32> {
        let out = std::process::Command::new(bin.join("postgres"))
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(2)?
            .split('.')
            .next()?
            .parse()
            .ok()
    };
    let from_env = std::env::var_os("WALHOOK_PG_BIN").map(PathBuf::from);
    let installed = ["18", "17"].iter().map(|v| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/pg"))
            .join(v)
            .join("bin")
    });
    from_env
        .into_iter()
        .chain(installed)
        .find(|bin| major(bin).is_some_and(|m| m >= 17))
}

async fn start_on(bin: PathBuf, opts: ClusterOptions) -> Arc<TempCluster> {
    tokio::task::spawn_blocking(move || TempCluster::start_on(bin, opts))
        .await
        .expect("start cluster task")
        .map(Arc::new)
        .unwrap_or_else(|e| panic!("cluster: {e}"))
}

fn cli(path: &std::path::Path, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = app::run_cli(path, args);
    (ok, format!("{out}{err}"))
}

async fn slot_failover(db: &TestDb, slot: &str) -> Option<bool> {
    db.connect()
        .await
        .query_opt(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_makes_a_failover_slot_and_check_looks_at_it() {
    let Some(bin) = pg17_bin() else {
        eprintln!("no PostgreSQL 17+ build: skipped (scripts/install-pg.sh installs one)");
        return;
    };
    let cluster = start_on(bin, ClusterOptions::new()).await;
    let db = fresh_db_on(&cluster, "failover_setup").await;
    db.psql(LEADS).await;
    let text = app::config_text(&db, LEADS_OBJECTS, "")
        .replace("[source]\n", "[source]\nfailover = true\n");
    let (_dir, path) = app::write_config(&text);
    let (ok, sql) = cli(&path, &["setup", "--print-sql"]);
    assert!(ok, "{sql}");
    assert!(
        sql.contains("'pgoutput', false, false, true) WHERE NOT EXISTS"),
        "{sql}"
    );
    let (ok, out) = cli(&path, &["setup"]);
    assert!(ok, "{out}");
    assert!(out.contains("(pgoutput, failover)"), "{out}");
    assert_eq!(slot_failover(&db, &db.name).await, Some(true));
    // No standby slot named: a warning, not a failure.
    let (ok, out) = cli(&path, &["check"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("! failover: slot") && out.contains("synchronized_standby_slots is empty"),
        "{out}"
    );

    // Turned off in the config: setup clears the flag (walhook is stopped).
    let plain = text.replace("failover = true\n", "");
    let (_d2, plain_path) = app::write_config(&plain);
    let (ok, out) = cli(&plain_path, &["setup"]);
    assert!(ok, "{out}");
    assert!(out.contains("set to failover = false"), "{out}");
    assert_eq!(slot_failover(&db, &db.name).await, Some(false));
    // On again, and check with the flag off says so first.
    let (ok, out) = cli(&path, &["check"]);
    assert!(!ok, "{out}");
    assert!(out.contains("is not a failover slot"), "{out}");
    let (ok, out) = cli(&path, &["setup"]);
    assert!(ok, "{out}");
    assert_eq!(slot_failover(&db, &db.name).await, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_an_older_server_is_refused_clearly() {
    // The shared cluster is the distribution's PostgreSQL (15) unless
    // WALHOOK_PG_BIN names another.
    let db = fresh_db("failover_old").await;
    db.psql(LEADS).await;
    let version: i32 = db
        .connect()
        .await
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    if version >= 170_000 {
        eprintln!("the shared cluster has failover slots: skipped");
        return;
    }
    let text = app::config_text(&db, LEADS_OBJECTS, "")
        .replace("[source]\n", "[source]\nfailover = true\n");
    let (_dir, path) = app::write_config(&text);
    let (ok, out) = cli(&path, &["setup"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("source.failover = true needs PostgreSQL 17 or later"),
        "{out}"
    );
    let (ok, out) = cli(&path, &["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("✗ failover: source.failover = true, but PostgreSQL"),
        "{out}"
    );
}

/// Keys of the rows delivered so far (`after.id` of each webhook).
fn delivered_ids(receiver: &Receiver) -> Vec<String> {
    let mut ids: Vec<String> = receiver
        .requests()
        .iter()
        .filter_map(|r| r.json()["after"]["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_takes_over_without_losing_a_change() {
    let Some(bin) = pg17_bin() else {
        eprintln!("no PostgreSQL 17+ build: skipped (scripts/install-pg.sh installs one)");
        return;
    };
    let primary = start_on(
        bin,
        ClusterOptions::new().conf("synchronized_standby_slots = 'sb1'"),
    )
    .await;
    let db = fresh_db_on(&primary, "failover_promote").await;
    db.psql(LEADS).await;
    let on = primary.clone();
    let standby = tokio::task::spawn_blocking(move || {
        let opts = ClusterOptions::new()
            .conf("sync_replication_slots = on")
            .conf("hot_standby_feedback = on");
        on.start_standby("sb1", opts)
    })
    .await
    .unwrap()
    .map(Arc::new)
    .unwrap_or_else(|e| panic!("standby: {e}"));

    let receiver = Receiver::start(Behaviour::AlwaysOk).await;
    let rest = format!(
        "[[endpoints]]\nid = \"hooks\"\nurl = \"{}hooks\"\nsecret = \"s3cret\"\n",
        receiver.url()
    );
    let both = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname={} target_session_attrs=read-write",
        primary.port(),
        standby.port(),
        db.name
    );
    let text = app::config_text(&db, LEADS_OBJECTS, &rest)
        .replace(&db.url, &both)
        .replace("[source]\n", "[source]\nfailover = true\n");
    let (_dir, path) = app::write_config(&text);
    let (ok, out) = cli(&path, &["setup"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&path, &["check"]);
    assert!(ok, "{out}");
    assert!(out.contains("✓ failover: slot"), "{out}");

    let mut run = Daemon::spawn(&path, &[], None);
    let client = db.connect().await;
    for i in 1..=3 {
        let id = format!("before{i}");
        client
            .execute("INSERT INTO leads (id, name) VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
    }
    wait_until(
        Duration::from_secs(30),
        "the first rows delivered",
        || async { (delivered_ids(&receiver).len() >= 3).then_some(()) },
    )
    .await;
    // The standby's copy of the slot: synced, and no longer temporary (it
    // is kept once the slot has moved past what the standby has).
    let copy = TestDb::elsewhere(&db.name, standby.url(&db.name));
    let slot = db.name.clone();
    let copy_ready = || async {
        let row = copy
            .connect()
            .await
            .query_opt(
                "SELECT synced AND NOT temporary FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .ok()??;
        row.get::<_, bool>(0).then_some(())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while copy_ready().await.is_none() {
        // A running-transactions record lets the slot's catalog xmin move
        // on, which the copy waits for before it is kept.
        client
            .execute("SELECT pg_log_standby_snapshot()", &[])
            .await
            .unwrap();
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(standby.log_path()).unwrap_or_default();
            panic!("the standby's copy of the slot never came; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Mid-stream: more rows, then the primary goes away and the standby
    // takes over (a clean stop sends the standby every WAL record first).
    for i in 1..=3 {
        let id = format!("during{i}");
        client
            .execute("INSERT INTO leads (id, name) VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
    }
    let (p, s) = (primary.clone(), standby.clone());
    tokio::task::spawn_blocking(move || {
        p.stop().expect("stop the primary");
        s.promote().expect("promote the standby");
    })
    .await
    .unwrap();
    let promoted = copy.connect().await;
    for i in 1..=3 {
        let id = format!("after{i}");
        promoted
            .execute("INSERT INTO leads (id, name) VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
    }
    let want: Vec<String> = ["after", "before", "during"]
        .iter()
        .flat_map(|p| (1..=3).map(move |i| format!("{p}{i}")))
        .collect();
    let got = wait_until(Duration::from_secs(90), "every row delivered", || async {
        let ids = delivered_ids(&receiver);
        (ids == want).then_some(ids)
    })
    .await;
    assert_eq!(got, want, "{}", run.lines.output());
    run.signal_and_wait("TERM", Duration::from_secs(10));
}
