//! The test infrastructure itself: `walhook::devtools::embedded::TempCluster` and the
//! shared helpers in `tests/it/common` (fresh databases, the receiver, waits).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, Behaviour, Receiver, Reply, fresh_db, process_exists, wait_until};
use walhook::devtools::embedded::{ClusterOptions, TempCluster};

const LONG: Duration = Duration::from_secs(30);

fn port_is_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// The postmaster removes its pid file (which `pg_ctl stop -w` waits for)
/// a moment before its process ends.
async fn wait_until_gone(pid: u32) {
    wait_until(LONG, &format!("process {pid} has exited"), || async move {
        (!process_exists(pid)).then_some(())
    })
    .await;
}

/// The effective uid of a process, from `/proc/<pid>/status`.
fn process_euid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    line.split_whitespace()
        .nth(1)
        .expect("euid")
        .parse()
        .expect("number")
}

#[test]
fn shared_cluster_is_configured_for_logical_replication() {
    let cluster = common::cluster();
    assert_eq!(
        cluster.psql("postgres", "SHOW wal_level").unwrap(),
        "logical"
    );
    assert_eq!(
        cluster
            .psql("postgres", "SHOW max_replication_slots")
            .unwrap(),
        common::SHARED_MAX_SLOTS.to_string()
    );
    assert_eq!(
        cluster.psql("postgres", "SHOW listen_addresses").unwrap(),
        "127.0.0.1"
    );
    assert_eq!(
        cluster.psql("postgres", "SHOW port").unwrap(),
        cluster.port().to_string()
    );
    assert_eq!(
        cluster.psql("postgres", "SELECT 1; SELECT 'two'").unwrap(),
        "1\ntwo"
    );
    assert!(
        cluster
            .socket_dir()
            .join(format!(".s.PGSQL.{}", cluster.port()))
            .exists()
    );
    assert!(cluster.bin_dir().join("pg_recvlogical").exists());
    // Replication connections are trusted on loopback too.
    let slot = Command::new(cluster.bin_dir().join("pg_recvlogical"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .args(["--slot", "infra_probe", "--create-slot", "-P", "pgoutput"])
        .output()
        .expect("run pg_recvlogical");
    assert!(
        slot.status.success(),
        "{}",
        String::from_utf8_lossy(&slot.stderr)
    );
    assert_eq!(
        cluster
            .psql("postgres", "SELECT pg_drop_replication_slot('infra_probe')")
            .unwrap(),
        ""
    );
    // PostgreSQL refuses root, so a root test run must have switched users.
    let server_uid = process_euid(cluster.postmaster_pid().expect("running"));
    let our_uid = process_euid(std::process::id());
    if our_uid == 0 {
        assert_ne!(server_uid, 0);
    } else {
        assert_eq!(server_uid, our_uid);
    }
}

#[test]
fn psql_reports_sql_errors() {
    let err = common::cluster()
        .psql("postgres", "SELECT * FROM no_such_table")
        .unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
}

#[tokio::test]
async fn restart_and_crash_keep_committed_data_and_port() {
    let cluster = TempCluster::start().unwrap();
    let port = cluster.port();
    cluster.create_database("app").unwrap();
    cluster
        .psql("app", "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .unwrap();

    cluster.restart().unwrap();
    assert_eq!(cluster.port(), port);
    cluster.psql("app", "INSERT INTO t VALUES (2)").unwrap();
    assert_eq!(cluster.psql("app", "SELECT sum(x) FROM t").unwrap(), "3");

    let pid = cluster.postmaster_pid().expect("running");
    cluster.stop_immediate().unwrap();
    assert!(!port_is_open(port));
    assert_eq!(cluster.postmaster_pid(), None);
    wait_until_gone(pid).await;
    cluster.start_again().unwrap();
    assert_eq!(cluster.psql("app", "SELECT sum(x) FROM t").unwrap(), "3");
    assert!(
        cluster
            .url("app")
            .ends_with(&format!("@127.0.0.1:{port}/app"))
    );
}

#[test]
fn extra_conf_lines_override_the_defaults() {
    let cluster = TempCluster::start_with(ClusterOptions::new().conf("wal_level=replica")).unwrap();
    assert_eq!(
        cluster.psql("postgres", "SHOW wal_level").unwrap(),
        "replica"
    );
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_the_directory() {
    let cluster = TempCluster::start().unwrap();
    let (port, pid) = (cluster.port(), cluster.postmaster_pid().expect("running"));
    let data_dir = cluster.data_dir().to_path_buf();
    let base = data_dir.parent().unwrap().to_path_buf();
    assert!(data_dir.join("postmaster.pid").exists());
    assert!(cluster.log_path().starts_with(&base));
    assert!(port_is_open(port));

    drop(cluster);
    assert!(!base.exists(), "{} still exists", base.display());
    assert!(!port_is_open(port));
    wait_until_gone(pid).await;
}

#[test]
fn shutdown_reports_success_and_cleans_up() {
    let cluster = TempCluster::start().unwrap();
    let base = cluster.data_dir().parent().unwrap().to_path_buf();
    cluster.shutdown().unwrap();
    assert!(!base.exists());
}

const CHILD_ENV: &str = "WALHOOK_TEST_CLUSTER_OWNER";

/// Runs this same test binary as a child that starts a cluster and is then
/// killed with SIGKILL: no destructor runs, so only the watchdog can clean up.
#[tokio::test]
async fn hard_kill_of_the_owner_cleans_up() {
    if std::env::var_os(CHILD_ENV).is_some() {
        let cluster = TempCluster::start().unwrap();
        let pid = cluster.postmaster_pid().unwrap();
        println!(
            "READY {} {} {pid}",
            cluster.port(),
            cluster.data_dir().display()
        );
        loop {
            std::thread::park();
        }
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "embedded::hard_kill_of_the_owner_cleans_up",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let ready = tokio::task::spawn_blocking(move || {
        stdout
            .lines()
            .map(|l| l.unwrap())
            // libtest's "test <name> ... " may precede it on the same line.
            .find_map(|l| l.split_once("READY ").map(|(_, rest)| rest.to_owned()))
            .expect("child printed READY")
    })
    .await
    .unwrap();
    let fields: Vec<&str> = ready.split(' ').collect();
    let port: u16 = fields[0].parse().unwrap();
    let data_dir = PathBuf::from(fields[1]);
    let pid: u32 = fields[2].parse().unwrap();
    assert!(port_is_open(port));

    child.kill().unwrap();
    child.wait().unwrap();

    wait_until(
        LONG,
        "the watchdog stopped the server and removed its directory",
        || {
            let done =
                !process_exists(pid) && !port_is_open(port) && !data_dir.parent().unwrap().exists();
            async move { done.then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn fresh_databases_are_separate() {
    let a = fresh_db("separate/A").await;
    let b = fresh_db("separate/A").await;
    assert_ne!(a.name, b.name);
    assert!(a.name.starts_with("t_separate_a_"), "{}", a.name);
    a.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await;
    b.psql("CREATE TABLE t (x int)").await;
    let client = b.connect().await;
    let row = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    assert_eq!(a.psql("SELECT count(*) FROM t").await, "1");
}

#[tokio::test]
#[should_panic(expected = "waiting until the impossible happens")]
async fn wait_until_panics_at_the_deadline() {
    wait_until(
        Duration::from_millis(100),
        "the impossible happens",
        || async { None::<()> },
    )
    .await;
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn receiver_fails_then_recovers_and_records_everything() {
    let receiver = Receiver::start(Behaviour::FailThenOk {
        failures: 2,
        status: 503,
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let response = client()
            .post(format!("{}hooks?try={i}", receiver.url()))
            .header("webhook-id", "evt_1")
            .body(format!("{{\"try\":{i}}}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [503, 503, 200]);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[2].index, 2);
    assert_eq!(requests[2].method, "POST");
    assert_eq!(requests[2].path, "/hooks?try=2");
    assert_eq!(requests[2].header("webhook-id"), Some("evt_1"));
    assert_eq!(requests[2].json(), serde_json::json!({"try": 2}));
    assert!(requests[0].received_at <= requests[2].received_at);
}

#[tokio::test]
async fn receiver_script_can_close_the_connection_hang_and_set_headers() {
    let receiver = Receiver::start(Behaviour::script(|request, n| {
        match (request.path.as_str(), n) {
            ("/close", _) => Reply::CloseConnection,
            ("/hang", _) => Reply::Hang(Duration::from_secs(30)),
            _ => Reply::Status(
                429,
                vec![("retry-after".into(), "7".into())],
                "slow down".into(),
            ),
        }
    }))
    .await;

    let err = client()
        .post(format!("{}close", receiver.url()))
        .body("x")
        .send()
        .await
        .unwrap_err();
    assert!(err.status().is_none() && !err.is_timeout(), "{err:?}");

    let err = client()
        .post(format!("{}hang", receiver.url()))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");

    let response = client()
        .get(format!("{}other", receiver.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.text().await.unwrap(), "slow down");

    receiver.set_behaviour(Behaviour::AlwaysOk);
    let response = client()
        .post(format!("{}close", receiver.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let paths: Vec<String> = receiver.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/close", "/hang", "/other", "/close"]);
}

#[tokio::test]
async fn wait_for_requests_wakes_on_arrival() {
    let receiver = Receiver::start(Behaviour::AlwaysOk).await;
    let url = receiver.url().to_owned();
    let senders = tokio::spawn(async move {
        for _ in 0..3 {
            client().post(&url).send().await.unwrap();
        }
    });
    let requests = receiver.wait_for_requests(3, LONG).await;
    assert_eq!(requests.len(), 3);
    senders.await.unwrap();
}

#[tokio::test]
#[should_panic(expected = "receiver got 0 of 1 requests")]
async fn wait_for_requests_panics_at_the_deadline() {
    let receiver = Receiver::start(Behaviour::AlwaysOk).await;
    receiver
        .wait_for_requests(1, Duration::from_millis(100))
        .await;
}
