//! Start-up and shutdown with a sick database (issue 8): a server that
//! accepts TCP and never answers, a frozen or stopped server, a wrong
//! password, a revoked ledger privilege, and a standby next to an active
//! process. Every test runs the real binary and judges how fast it gives up
//! or stops, and what it says.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use walhook::devtools::embedded::{ClusterOptions, TempCluster};

use crate::common::app::{self, LEADS, LEADS_OBJECTS};
use crate::common::daemon::Daemon;
use crate::common::{self, TestDb, fresh_db, send_signal, wait_until};

/// SIGTERM and SIGINT must stop walhook within this, at any moment.
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// A server on a loopback port that accepts connections and never answers
/// (nor reads); it counts the connections it holds open.
struct Silent {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        Silent {
            port,
            accepted,
            task,
        }
    }

    /// A config whose database is this server.
    fn config(&self, connect_timeout: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let db = TestDb::elsewhere(
            "silent",
            format!("postgres://postgres@127.0.0.1:{}/app", self.port),
        );
        let text = app::config_text(&db, LEADS_OBJECTS, "[admin]\nlisten = \"\"\n").replace(
            "connect_timeout = \"5s\"",
            &format!("connect_timeout = \"{connect_timeout}\""),
        );
        app::write_config(&text)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_fails_every_command_within_the_connect_timeout() {
    let silent = Silent::start().await;
    let (_dir, path) = silent.config("2s");
    let mut run = Daemon::spawn(&path, &[], None);
    let (status, took) = run
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("run gives up; it still runs:\n{}", run.lines.output()));
    assert!(!status.success());
    assert!(took < Duration::from_secs(8), "{took:?}");
    run.lines.drain(Duration::from_millis(500));
    let log = run.lines.output();
    assert!(log.contains("did not answer the login within"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{}", silent.port)), "{log}");
    for cmd in [
        &["check"][..],
        &["status"],
        &["setup"],
        &["deliveries", "list"],
    ] {
        let started = Instant::now();
        let (ok, out, err) = tokio::task::block_in_place(|| app::run_cli(&path, cmd));
        let took = started.elapsed();
        assert!(!ok, "`walhook {}` fails:\n{out}\n{err}", cmd.join(" "));
        assert!(
            took < Duration::from_secs(8),
            "`walhook {}` took {took:?}",
            cmd.join(" ")
        );
        let said = format!("{out}{err}");
        assert!(
            said.contains("did not answer the login within"),
            "`walhook {}` says why:\n{said}",
            cmd.join(" ")
        );
    }
    assert!(silent.accepted.load(Ordering::SeqCst) >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_during_start_up_stops_run_at_once() {
    let silent = Silent::start().await;
    let (_dir, path) = silent.config("60s");
    for signal in ["TERM", "INT"] {
        let before = silent.accepted.load(Ordering::SeqCst);
        let mut run = Daemon::spawn(&path, &[], None);
        let accepted = silent.accepted.clone();
        wait_until(
            Duration::from_secs(10),
            "run to connect to the silent server",
            || {
                let accepted = accepted.clone();
                async move { (accepted.load(Ordering::SeqCst) > before).then_some(()) }
            },
        )
        .await;
        let (status, took) = run.signal_and_wait(signal, STOP_WITHIN);
        assert!(took < STOP_WITHIN, "SIG{signal}: {took:?}");
        assert!(
            status.success(),
            "SIG{signal}: a stop asked for: {status:?}"
        );
    }
}

/// Processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The parent id is the second field after the parenthesised name.
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Processes stopped with SIGSTOP, continued (SIGCONT) when dropped, also
/// when the test fails, so the cluster can be stopped and removed.
struct Frozen(Vec<u32>);

impl Frozen {
    fn stop(pids: Vec<u32>) -> Frozen {
        for pid in &pids {
            send_signal(*pid, "STOP");
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

/// `walhook run` (capture only), once it has captured the `n`th row.
async fn streaming(path: &std::path::Path, client: &tokio_postgres::Client, n: usize) -> Daemon {
    let mut run = Daemon::spawn(path, &["--no-dispatch", "--no-admin"], None);
    run.wait_log(Duration::from_secs(30), "saying capture streams", |l| {
        l.contains("capture streaming")
    });
    client
        .execute("INSERT INTO leads (id) VALUES ($1)", &[&format!("l{n}")])
        .await
        .unwrap();
    app::wait_events(client, n).await;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_run_within_five_seconds_with_the_database_frozen_or_gone() {
    let cluster: Arc<TempCluster> = common::private_cluster(ClusterOptions::new()).await;
    let db = common::fresh_db_on(&cluster, "frozen").await;
    db.psql(LEADS).await;
    let text = app::config_text(&db, LEADS_OBJECTS, "[admin]\nlisten = \"\"\n");
    app::setup(&app::parse(&text)).await;
    let (_dir, path) = app::write_config(&text);
    let client = db.connect().await;
    let postmaster = cluster.postmaster_pid().expect("postmaster runs");

    // The postmaster alone stopped: no new connection gets an answer.
    let mut run = streaming(&path, &client, 1).await;
    let frozen = Frozen::stop(vec![postmaster]);
    let (_, took) = run.signal_and_wait("TERM", STOP_WITHIN);
    assert!(took < STOP_WITHIN, "postmaster stopped: {took:?}");
    drop(frozen);

    // Every server process stopped: not even open connections answer.
    let mut run = streaming(&path, &client, 2).await;
    let mut all = children(postmaster);
    all.push(postmaster);
    let frozen = Frozen::stop(all);
    let (_, took) = run.signal_and_wait("TERM", STOP_WITHIN);
    assert!(took < STOP_WITHIN, "server frozen: {took:?}");
    drop(frozen);

    // The server gone: run waits to reconnect, and stops at once.
    let mut run = streaming(&path, &client, 3).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_immediate().unwrap())
        .await
        .unwrap();
    run.wait_log(Duration::from_secs(30), "saying capture reconnects", |l| {
        l.contains("reconnecting") || l.contains("retrying")
    });
    let (status, took) = run.signal_and_wait("TERM", STOP_WITHIN);
    assert!(took < STOP_WITHIN, "server gone: {took:?}");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_explained_by_the_server_not_db_error() {
    // A cluster of its own: this test changes pg_hba.conf.
    let cluster = common::private_cluster(ClusterOptions::new()).await;
    let db = common::fresh_db_on(&cluster, "password").await;
    db.psql(&format!(
        "{LEADS}; CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'right'"
    ))
    .await;
    let hba = cluster.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all pwuser 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    db.psql("SELECT pg_reload_conf()").await;
    let wrong = db.url.replace("postgres@", "pwuser:Zq9-guess@");
    let text =
        app::config_text(&db, LEADS_OBJECTS, "[admin]\nlisten = \"\"\n").replace(&db.url, &wrong);
    let (_dir, path) = app::write_config(&text);
    for cmd in [&["check"][..], &["status"], &["setup"], &["run"]] {
        let (ok, out, err) = tokio::task::block_in_place(|| app::run_cli(&path, cmd));
        let said = format!("{out}{err}");
        assert!(!ok, "`walhook {}` fails:\n{said}", cmd.join(" "));
        assert!(
            said.contains("password authentication failed for user \"pwuser\"")
                && said.contains("28P01"),
            "`walhook {}` gives the server's message and SQLSTATE:\n{said}",
            cmd.join(" ")
        );
        assert!(!said.contains("db error"), "{said}");
        assert!(
            !said.contains("Zq9-guess"),
            "the password is not shown:\n{said}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_ledger_privilege_is_explained_in_the_log() {
    let db = fresh_db("revoked").await;
    db.psql(LEADS).await;
    // The ledger is written by a role of its own, so a privilege can be
    // taken from it (a superuser has them all).
    let role = format!("ledger_{}", db.name);
    let ledger_url = db.url.replace("postgres@", &format!("{role}@"));
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!("[ledger]\nurl = \"{ledger_url}\"\n\n[admin]\nlisten = \"\"\n"),
    );
    // Setup as the superuser (the same database), then the role.
    app::setup(&app::parse(&app::config_text(&db, LEADS_OBJECTS, ""))).await;
    db.psql(&format!(
        "CREATE ROLE {role} LOGIN;
         GRANT USAGE ON SCHEMA walhook TO {role};
         GRANT ALL ON ALL TABLES IN SCHEMA walhook TO {role};
         GRANT ALL ON ALL SEQUENCES IN SCHEMA walhook TO {role};"
    ))
    .await;
    let (_dir, path) = app::write_config(&text);
    let client = db.connect().await;
    let mut run = Daemon::spawn(&path, &["--no-dispatch"], None);
    client
        .execute("INSERT INTO leads (id) VALUES ('before')", &[])
        .await
        .unwrap();
    app::wait_events(&client, 1).await;
    db.psql(&format!("REVOKE INSERT ON walhook.events FROM {role}"))
        .await;
    client
        .execute("INSERT INTO leads (id) VALUES ('after')", &[])
        .await
        .unwrap();
    let line = run.wait_log(
        Duration::from_secs(30),
        "an error about the privilege",
        |l| l.contains("ERROR") && l.contains("permission denied"),
    );
    assert!(
        line.contains("permission denied for table events") && line.contains("42501"),
        "{line}"
    );
    assert!(
        !run.lines.output().contains("db error"),
        "{}",
        run.lines.output()
    );
    // Nothing is lost: once the privilege is back, the row is captured.
    db.psql(&format!("GRANT INSERT ON walhook.events TO {role}"))
        .await;
    app::wait_events(&client, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_says_standing_by_once_not_an_error_a_second() {
    let db = fresh_db("standby_log").await;
    db.psql(LEADS).await;
    let text = app::config_text(&db, LEADS_OBJECTS, "[admin]\nlisten = \"\"\n");
    app::setup(&app::parse(&text)).await;
    let (_dir, path) = app::write_config(&text);
    let mut active = Daemon::spawn(&path, &["--no-dispatch"], None);
    active.wait_log(Duration::from_secs(30), "saying capture streams", |l| {
        l.contains("capture streaming")
    });
    let mut standby = Daemon::spawn(&path, &["--no-dispatch"], None);
    let line = standby.wait_log(Duration::from_secs(30), "saying it stands by", |l| {
        l.contains("standing by")
    });
    assert!(line.contains("INFO"), "{line}");
    // The standby tries to take over every second: five tries.
    let log = standby.log_for(Duration::from_secs(5));
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(count("standing by"), 1, "{log}");
    assert_eq!(count("ERROR"), 0, "{log}");
    assert_eq!(count("WARN"), 0, "{log}");
    assert_eq!(count("is active for PID"), 0, "{log}");
    // And it is a standby: it takes over when the active one goes.
    active.signal_and_wait("TERM", STOP_WITHIN);
    standby.wait_log(Duration::from_secs(30), "saying it took over", |l| {
        l.contains("capture streaming")
    });
}
