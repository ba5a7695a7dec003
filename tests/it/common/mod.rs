//! Shared helpers for the integration tests: one throwaway PostgreSQL cluster
//! shared by every test of the binary, a fresh database per test, clusters of
//! their own for tests that restart, stop or crash the server, and
//! deadline-bound waits. The submodules hold a scriptable HTTP receiver
//! (`receiver`), walhook run in-process or as a child (`app`), a walhook with
//! real deliveries for the admin tests (`admin`), a child's output line by
//! line (`lines`), `walhook run` as a child whose log is read (`daemon`)
//! and certificates for the TLS tests (`pki`).
//!
//! The shared cluster lives in a `static` and is never dropped. That is safe:
//! every [`TempCluster`] has a watchdog process that stops the server and
//! deletes its directory as soon as the test binary exits, however it exits
//! (normal end, panic, abort, `kill -9`, Ctrl-C). See
//! `walhook::devtools::embedded`.

pub mod admin;
pub mod app;
pub mod daemon;
pub mod drift;
pub mod lines;
pub mod pki;
pub mod receiver;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use receiver::{Behaviour, Receiver, RecordedRequest, Reply};
use walhook::devtools::embedded::{ClusterOptions, TempCluster};

/// `max_replication_slots` of the shared cluster. Every test that runs
/// `setup` leaves its slot behind, and the whole suite shares the cluster.
pub const SHARED_MAX_SLOTS: u32 = 100;

/// The cluster shared by all tests of this binary, started on first use.
/// Never restart, stop or kill it: tests on it run in parallel. Blocking: from
/// async tests prefer [`fresh_db`], which starts it off the runtime.
pub fn cluster() -> &'static Arc<TempCluster> {
    static CLUSTER: OnceLock<Arc<TempCluster>> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let opts =
            ClusterOptions::new().conf(format!("max_replication_slots = {SHARED_MAX_SLOTS}"));
        let cluster = TempCluster::start_with(opts).unwrap_or_else(|e| panic!("test cluster: {e}"));
        Arc::new(cluster)
    })
}

/// A cluster of one test's own, for a test that restarts, stops or crashes
/// the server or needs other server settings. It is stopped and removed when
/// the last clone is dropped.
pub async fn private_cluster(opts: ClusterOptions) -> Arc<TempCluster> {
    tokio::task::spawn_blocking(move || TempCluster::start_with(opts))
        .await
        .expect("start cluster task")
        .map(Arc::new)
        .unwrap_or_else(|e| panic!("private test cluster: {e}"))
}

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// The database name (unique within its cluster).
    pub name: String,
    /// `postgres://postgres@127.0.0.1:PORT/name`.
    pub url: String,
    /// The cluster serving it; `None` for an address no cluster of ours serves.
    cluster: Option<Arc<TempCluster>>,
}

impl TestDb {
    /// A database at `url` that no cluster of ours serves (e.g. a closed
    /// port): only its name and URL can be used.
    pub fn elsewhere(name: &str, url: String) -> TestDb {
        TestDb {
            name: name.into(),
            url,
            cluster: None,
        }
    }

    /// The cluster this database lives on.
    pub fn cluster(&self) -> &Arc<TempCluster> {
        self.cluster
            .as_ref()
            .unwrap_or_else(|| panic!("{} is on no cluster of ours", self.url))
    }

    /// Runs an SQL script with `psql` (see `TempCluster::psql`), panicking on
    /// error; runs off the async runtime.
    pub async fn psql(&self, sql: &str) -> String {
        let (cluster, name, sql) = (self.cluster().clone(), self.name.clone(), sql.to_owned());
        tokio::task::spawn_blocking(move || cluster.psql(&name, &sql))
            .await
            .expect("psql task")
            .unwrap_or_else(|e| panic!("psql failed: {e}"))
    }

    /// A tokio-postgres client; its connection runs on a spawned task.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.url));
        tokio::spawn(async move {
            // Ends with an error when the server stops, which some tests do.
            let _ = connection.await;
        });
        client
    }
}

/// Creates a new, empty database on the shared cluster, named after
/// `name_hint` plus a counter, so tests running in parallel never share
/// tables, slots or publications.
pub async fn fresh_db(name_hint: &str) -> TestDb {
    let shared = tokio::task::spawn_blocking(|| cluster().clone())
        .await
        .expect("start the shared cluster task");
    fresh_db_on(&shared, name_hint).await
}

/// Like [`fresh_db`], on `cluster` (e.g. a [`private_cluster`]).
pub async fn fresh_db_on(cluster: &Arc<TempCluster>, name_hint: &str) -> TestDb {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = db_name(name_hint, n);
    let (created, on) = (name.clone(), cluster.clone());
    tokio::task::spawn_blocking(move || {
        on.create_database(&created)
            .unwrap_or_else(|e| panic!("creating database {created}: {e}"))
    })
    .await
    .expect("create database task");
    TestDb {
        url: cluster.url(&name),
        name,
        cluster: Some(cluster.clone()),
    }
}

/// A lower-case identifier from the hint, short enough for Postgres' 63-byte
/// limit with the counter appended.
fn db_name(hint: &str, n: usize) -> String {
    let cleaned: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("t_{cleaned}_{n}")
}

/// Polls `f` until it returns `Some`, every 20 ms, and returns the value.
/// Panics naming `what` when `timeout` passes first (also when a single call
/// of `f` is still running at the deadline).
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Some(value)) => return value,
            Ok(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => panic!("timed out after {timeout:?} waiting until {what}"),
        }
    }
}

/// A loopback port that was free a moment ago: for a server the test starts
/// next, or as a port nothing listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// True while the process runs. A zombie counts as gone: in a container
/// whose init does not reap, a stopped postmaster stays one.
pub fn process_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends `signal` (`TERM`, `INT`...) to process `pid` with kill(1); panics
/// when it cannot be sent.
pub fn send_signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{signal} {pid} failed");
}
