//! walhook-specific test helpers: a config for a test database, walhook run
//! in-process or as a real child process, and ledger queries.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use walhook::config::Config;

use super::TestDb;

/// An endpoint nothing listens at: with `--no-dispatch` (capture only)
/// every delivery to it waits in the ledger, so its events can be read there.
pub const SINK_ENDPOINT: &str =
    "[[endpoints]]\nid = \"sink\"\nurl = \"http://127.0.0.1:9/never\"\nsecret = \"sink-secret\"\n";

/// A config for `db`: the slot is named after the database (slots are
/// cluster-wide), admin HTTP off unless `extra` says otherwise, and
/// [`SINK_ENDPOINT`] when `rest` names no endpoint.
pub fn config_text(db: &TestDb, objects: &str, rest: &str) -> String {
    let sink = if rest.contains("[[endpoints]]") {
        ""
    } else {
        SINK_ENDPOINT
    };
    format!(
        r#"[source]
url = "{url}"
name = "app"
slot = "{slot}"
publication = "walhook"
status_interval = "100ms"
connect_timeout = "5s"

{objects}

{rest}

{sink}
"#,
        url = db.url,
        slot = db.name,
    )
}

/// One table for tests that need a single mapped one; see [`LEADS_OBJECTS`].
pub const LEADS: &str = "CREATE TABLE leads (id text PRIMARY KEY, name text, score int)";

/// [`LEADS`] mapped as object `lead`.
pub const LEADS_OBJECTS: &str = "[[objects]]\ntable = \"leads\"\nslug = \"lead\"\n";

/// The four CRM objects of the SPEC, with `users.password_hash` excluded.
pub const CRM_OBJECTS: &str = r#"
[[objects]]
table = "public.leads"
slug = "lead"

[[objects]]
table = "public.users"
slug = "user"
exclude_columns = ["password_hash"]

[[objects]]
table = "public.opportunities"
slug = "opportunity"

[[objects]]
table = "crm.students"
slug = "student"
"#;

pub const CRM_TABLES: &str = r#"
CREATE TABLE leads (id text PRIMARY KEY, name text, email text, score int, amount numeric(12,2), tags text[], created_at timestamptz DEFAULT '2025-02-21 08:33:28.148+00');
CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, password_hash text, active boolean DEFAULT true);
CREATE TABLE opportunities (id int PRIMARY KEY, lead_id text, stage text, value numeric, meta jsonb);
CREATE SCHEMA crm;
CREATE TABLE crm.students (school text, student_no int, name text, PRIMARY KEY (school, student_no));
"#;

pub fn parse(text: &str) -> Config {
    Config::from_toml_str(text, "test.toml").unwrap_or_else(|e| panic!("test config: {e}"))
}

pub async fn setup(cfg: &Config) {
    let dbs = walhook::admin::dbs::Dbs::connect(cfg, "test setup")
        .await
        .expect("connect for setup");
    walhook::source::setup::run(dbs.source(), dbs.ledger(), cfg)
        .await
        .unwrap_or_else(|e| panic!("setup: {e}"));
}

/// walhook running inside the test process.
pub struct InProcess {
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<(), walhook::RunError>>,
}

impl InProcess {
    pub fn start(cfg: Config, roles: walhook::Roles) -> InProcess {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(walhook::run(Arc::new(cfg), roles, shutdown.clone()));
        InProcess { shutdown, handle }
    }

    /// Capture and dispatch, no admin HTTP: what most tests run.
    pub fn run(cfg: Config) -> InProcess {
        Self::start(
            cfg,
            walhook::Roles {
                capture: true,
                dispatch: true,
                admin: false,
            },
        )
    }

    pub fn capture_only(cfg: Config) -> InProcess {
        Self::start(
            cfg,
            walhook::Roles {
                capture: true,
                dispatch: false,
                admin: false,
            },
        )
    }

    /// Graceful stop; panics if `run` failed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("walhook stops within 30s")
            .expect("walhook task")
            .expect("walhook run");
    }
}

/// The walhook binary built by cargo for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_walhook"))
}

/// Write `text` to a config file in a fresh temp dir (kept alive by the result).
pub fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

/// `walhook <args> --config <path>` to completion: (exit ok, stdout, stderr).
pub fn run_cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run walhook");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `walhook run` as a child process (for crash and takeover tests).
pub fn spawn_run(config: &std::path::Path, args: &[&str]) -> Child {
    Command::new(bin())
        .arg("run")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "walhook=debug,info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn walhook run")
}

/// Kills `child` with SIGKILL (a crash: no cleanup runs) and reaps it.
pub fn kill9(child: &mut Child) {
    child.kill().expect("SIGKILL"); // std's kill() is SIGKILL on Unix
    child.wait().expect("reap");
}

/// Every delivery, whether it waited in the ledger (`deliveries`) or its
/// first attempt succeeded from the stream (`delivered`), as a subquery with
/// columns `id`, `endpoint_id`, `status`.
pub const ALL_DELIVERIES: &str = "(SELECT id, endpoint_id, status FROM walhook.deliveries
      UNION ALL SELECT delivery_id, endpoint_id, 'succeeded' FROM walhook.delivered) all_deliveries";

/// Events in the ledger, in capture order: (name, record_key, body).
pub async fn events(client: &tokio_postgres::Client) -> Vec<(String, String, serde_json::Value)> {
    client
        .query(
            "SELECT name, record_key, body FROM walhook.events ORDER BY seq",
            &[],
        )
        .await
        .expect("read events")
        .iter()
        .map(|r| {
            let body: String = r.get(2);
            (
                r.get(0),
                r.get(1),
                serde_json::from_str(&body).expect("body is JSON"),
            )
        })
        .collect()
}

pub async fn event_count(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM walhook.events", &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

/// Wait until the ledger holds at least `n` events; returns them all.
pub async fn wait_events(
    client: &tokio_postgres::Client,
    n: usize,
) -> Vec<(String, String, serde_json::Value)> {
    super::wait_until(
        Duration::from_secs(30),
        &format!("{n} events in the ledger"),
        || async { (event_count(client).await as usize >= n).then_some(()) },
    )
    .await;
    events(client).await
}

/// Wait until the slot has confirmed everything up to `lsn` (text form), i.e.
/// the ledger holds every event committed before it.
pub async fn wait_slot_confirmed(
    client: &tokio_postgres::Client,
    slot: &str,
    lsn: &str,
    timeout: Duration,
) {
    super::wait_until(timeout, "the walhook slot to confirm the workload", || async {
        let r = client
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
                &[&lsn, &slot],
            )
            .await
            .ok()?;
        r.get::<_, bool>(0).then_some(())
    })
    .await;
}
