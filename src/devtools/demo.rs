//! `walhook demo`: the whole product in one command, with nothing to install
//! but PostgreSQL's server programs. It starts a throwaway cluster, creates
//! four demo objects, runs `setup` and `run` in-process against an
//! in-process receiver, makes scripted changes and prints every request the
//! receiver gets as it arrives, then a summary.
//!
//! The receiver has two endpoints: `crm` (superleap signature, every event)
//! and `analytics` (Standard Webhooks, `lead.*` and `student.*`), which
//! answers 500 to its first two requests so a retry shows. Every request's
//! signatures are verified with [`crate::devtools::listen::Verifier`].
//!
//! Promise: [`run`] returns only after walhook has stopped and the cluster is
//! stopped and its directory removed, whether it succeeded, failed or was
//! interrupted (`shutdown`). It fails when a delivery does not arrive before
//! the deadline, a signature does not verify, or the events are not the
//! expected ones.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use rand::Rng;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Secret};
use crate::devtools::embedded::{EmbeddedError, TempCluster};
use crate::devtools::listen::{self, Printer, Verifier};
use crate::event::filter;
use crate::ledger::LedgerError;
use crate::pg::{self, quote_ident};
use crate::source::setup::{self, SetupError};
use crate::{Roles, RunError};

/// The database the demo creates in its cluster.
const DATABASE: &str = "walhook_demo";

/// How long, from the first change, every expected delivery may take.
pub const DELIVERY_DEADLINE: Duration = Duration::from_secs(40);

/// How long walhook gets to stop gracefully before its task is aborted.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// The endpoint that gets every event and never fails; the script waits for
/// it after each change.
const STEADY_ENDPOINT: &str = "crm";

/// The endpoint that answers 500 to its first `ANALYTICS_FAILURES` requests.
const FLAKY_ENDPOINT: &str = "analytics";

/// How many requests the flaky endpoint answers with 500 first.
const ANALYTICS_FAILURES: u32 = 2;

const TABLES_SQL: &str = "
CREATE TABLE public.leads (
  id text PRIMARY KEY, name text NOT NULL, email text, score int,
  created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE public.users (
  id bigint PRIMARY KEY, email text NOT NULL, password_hash text, active boolean NOT NULL DEFAULT true);
CREATE TABLE public.opportunities (
  id int PRIMARY KEY, lead_id text, stage text NOT NULL, value numeric(12,2), meta jsonb);
CREATE SCHEMA crm;
CREATE TABLE crm.students (
  school text, student_no int, name text NOT NULL, enrolled_on date,
  PRIMARY KEY (school, student_no));
";

/// One scripted change and the event it must produce (none for an update of
/// an excluded column only).
struct Step {
    sql: &'static str,
    event: Option<&'static str>,
}

const STEPS: &[Step] = &[
    Step {
        sql: "INSERT INTO public.leads (id, name, email, score) VALUES ('L-1001', 'Ada Lovelace', 'ada@example.com', 40)",
        event: Some("lead.create"),
    },
    Step {
        sql: "INSERT INTO public.users (id, email, password_hash) VALUES (1, 'grace@example.com', '$argon2id$v=19$m=65536$c2FsdA$aGFzaA')",
        event: Some("user.create"),
    },
    Step {
        sql: "INSERT INTO public.opportunities (id, lead_id, stage, value, meta) VALUES (7, 'L-1001', 'qualification', 12500.00, '{\"source\": \"webinar\"}')",
        event: Some("opportunity.create"),
    },
    Step {
        sql: "INSERT INTO crm.students (school, student_no, name, enrolled_on) VALUES ('north', 42, 'Alan Turing', '2025-09-01')",
        event: Some("student.create"),
    },
    Step {
        sql: "UPDATE public.leads SET score = 85 WHERE id = 'L-1001'",
        event: Some("lead.update"),
    },
    Step {
        sql: "UPDATE public.users SET password_hash = '$argon2id$v=19$m=65536$bmV3$cm90YXRlZA' WHERE id = 1",
        event: None,
    },
    Step {
        sql: "UPDATE public.users SET email = 'grace.hopper@example.com' WHERE id = 1",
        event: Some("user.update"),
    },
    Step {
        sql: "UPDATE public.opportunities SET stage = 'won', value = 14000.00 WHERE id = 7",
        event: Some("opportunity.update"),
    },
    Step {
        sql: "UPDATE crm.students SET name = 'Alan M. Turing' WHERE school = 'north' AND student_no = 42",
        event: Some("student.update"),
    },
    Step {
        sql: "DELETE FROM public.opportunities WHERE id = 7",
        event: Some("opportunity.delete"),
    },
    Step {
        sql: "DELETE FROM crm.students WHERE school = 'north' AND student_no = 42",
        event: Some("student.delete"),
    },
    Step {
        sql: "DELETE FROM public.leads WHERE id = 'L-1001'",
        event: Some("lead.delete"),
    },
    Step {
        sql: "DELETE FROM public.users WHERE id = 1",
        event: Some("user.delete"),
    },
];

/// The excluded column; it must never appear in a body.
const EXCLUDED_COLUMN: &str = "password_hash";

/// Why the demo failed. Each message says what went wrong in a way that
/// points at the fix (missing PostgreSQL, a delivery that never came...).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the throwaway PostgreSQL cluster: {0}")]
    Cluster(#[from] EmbeddedError),
    #[error("demo database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("the demo's built-in configuration was rejected (a bug in walhook): {0}")]
    Config(#[from] ConfigError),
    #[error("walhook setup failed: {0}")]
    Setup(#[from] SetupError),
    #[error("walhook run failed: {0}")]
    Run(#[from] RunError),
    #[error("the demo receiver cannot listen on 127.0.0.1: {0}")]
    Receiver(#[source] std::io::Error),
    #[error(
        "not every delivery arrived within {}s; still missing: {missing}. Run with RUST_LOG=walhook=debug to see why.",
        DELIVERY_DEADLINE.as_secs()
    )]
    Deadline { missing: String },
    #[error("{failed} of {total} requests did not pass signature verification")]
    Signatures { failed: usize, total: usize },
    #[error("unexpected result: {0}")]
    Unexpected(String),
    #[error("a demo task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// `shutdown` was cancelled (Ctrl-C); [`run`] turns this into
    /// [`Outcome::Interrupted`].
    #[error("interrupted")]
    Interrupted,
}

/// How the demo ended when it did not fail.
#[derive(Debug)]
pub enum Outcome {
    /// Every expected delivery arrived, verified.
    Completed(Summary),
    /// `shutdown` was cancelled; everything was cleaned up.
    Interrupted,
}

/// What the demo saw, for the closing summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Events in the ledger by name.
    pub events: BTreeMap<String, i64>,
    pub endpoints: Vec<EndpointSummary>,
    /// Requests whose signatures verified, of all requests.
    pub signatures_verified: usize,
    pub requests: usize,
}

/// One endpoint's share of the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSummary {
    pub id: String,
    /// Distinct events answered 2xx.
    pub delivered: usize,
    pub expected: usize,
    /// Every request it received.
    pub attempts: usize,
    /// Requests it answered with a failure status.
    pub failed: usize,
}

/// Run the demo, printing to `printer`, until done or `shutdown`.
pub async fn run(printer: Printer, shutdown: CancellationToken) -> Result<Outcome, DemoError> {
    let t0 = Instant::now();
    printer.print("walhook demo: starting a throwaway PostgreSQL cluster…");
    let Some(cluster) = start_cluster(&shutdown).await? else {
        printer.print("interrupted: the cluster was stopped and removed");
        return Ok(Outcome::Interrupted);
    };
    let dir = cluster
        .data_dir()
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| cluster.data_dir().to_path_buf());
    printer.print(&format!(
        "PostgreSQL running in {} on 127.0.0.1:{} (pid {})",
        dir.display(),
        cluster.port(),
        cluster
            .postmaster_pid()
            .map_or_else(|| "?".to_string(), |p| p.to_string())
    ));

    let mut parts = Running::new(&shutdown);
    let result = tokio::select! {
        biased;
        _ = shutdown.cancelled() => Err(DemoError::Interrupted),
        r = scenario(&cluster, &printer, &mut parts, t0) => r,
    };
    if matches!(result, Err(DemoError::Interrupted)) {
        printer.print("\ninterrupted: cleaning up");
    }
    parts.stop(&printer).await;
    let cleaned = tokio::task::spawn_blocking(move || cluster.shutdown()).await;
    match &cleaned {
        Ok(Ok(())) => printer.print(&format!(
            "stopped PostgreSQL and removed {} ({:.1}s in all)",
            dir.display(),
            t0.elapsed().as_secs_f64()
        )),
        Ok(Err(e)) => printer.print(&format!("could not clean up the cluster: {e}")),
        Err(e) => printer.print(&format!("could not clean up the cluster: {e}")),
    }
    let summary = match result {
        Ok(s) => s,
        Err(DemoError::Interrupted) => return Ok(Outcome::Interrupted),
        Err(e) => return Err(e),
    };
    cleaned??;
    Ok(Outcome::Completed(summary))
}

/// Start the cluster off the runtime. `None` when interrupted meanwhile (the
/// start itself cannot be cut short; the cluster is removed once it is up).
async fn start_cluster(shutdown: &CancellationToken) -> Result<Option<TempCluster>, DemoError> {
    let mut task = tokio::task::spawn_blocking(TempCluster::start);
    tokio::select! {
        r = &mut task => Ok(Some(r??)),
        _ = shutdown.cancelled() => {
            if let Ok(Ok(cluster)) = task.await {
                let _ = tokio::task::spawn_blocking(move || cluster.shutdown()).await;
            }
            Ok(None)
        }
    }
}

/// The tasks the demo starts, so they can be stopped whatever happened.
struct Running {
    walhook_stop: CancellationToken,
    walhook: Option<JoinHandle<Result<(), RunError>>>,
    receiver_stop: CancellationToken,
    receiver: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    fn new(shutdown: &CancellationToken) -> Running {
        Running {
            walhook_stop: shutdown.child_token(),
            walhook: None,
            receiver_stop: CancellationToken::new(),
            receiver: None,
        }
    }

    /// Graceful stop of walhook (bounded), then the receiver.
    async fn stop(&mut self, printer: &Printer) {
        self.walhook_stop.cancel();
        if let Some(mut task) = self.walhook.take() {
            match tokio::time::timeout(STOP_TIMEOUT, &mut task).await {
                Ok(Ok(Ok(()))) => printer.print("stopped walhook"),
                Ok(Ok(Err(e))) => printer.print(&format!("walhook stopped with an error: {e}")),
                Ok(Err(e)) => printer.print(&format!("walhook task failed: {e}")),
                Err(_) => {
                    task.abort();
                    printer.print("walhook did not stop in time; aborted it");
                }
            }
        }
        self.receiver_stop.cancel();
        if let Some(task) = self.receiver.take()
            && tokio::time::timeout(STOP_TIMEOUT, task).await.is_err()
        {
            printer.print("the receiver did not stop in time");
        }
    }

    /// Wait until `cond` holds on the receiver's log, or `deadline`. Fails
    /// when walhook stops by itself meanwhile.
    async fn wait_until(
        &mut self,
        receiver: &Receiver,
        deadline: Instant,
        cond: impl Fn(&[Received]) -> bool,
    ) -> Result<bool, DemoError> {
        let mut changed = receiver.changed.subscribe();
        loop {
            if receiver.with_log(&cond) {
                return Ok(true);
            }
            let Some(walhook) = self.walhook.as_mut() else {
                return Err(DemoError::Unexpected("walhook is not running".into()));
            };
            let ended = tokio::select! {
                _ = changed.changed() => None,
                r = walhook => Some(r),
                _ = tokio::time::sleep_until(deadline) => return Ok(receiver.with_log(&cond)),
            };
            if let Some(r) = ended {
                self.walhook = None;
                r??;
                return Err(DemoError::Unexpected("walhook stopped by itself".into()));
            }
        }
    }
}

async fn scenario(
    cluster: &TempCluster,
    printer: &Printer,
    parts: &mut Running,
    t0: Instant,
) -> Result<Summary, DemoError> {
    let postgres = pg::connect(
        &Secret::new(cluster.url("postgres")),
        "walhook demo",
        pg::DEFAULT_LOGIN_TIMEOUT,
    )
    .await
    .map_err(LedgerError::from)?;
    postgres
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(DATABASE)))
        .await?;
    drop(postgres);
    let url = cluster.url(DATABASE);
    let db = pg::connect(
        &Secret::new(url.clone()),
        "walhook demo",
        pg::DEFAULT_LOGIN_TIMEOUT,
    )
    .await
    .map_err(LedgerError::from)?;
    db.batch_execute(TABLES_SQL).await?;
    printer.print(
        "created database walhook_demo with public.leads, public.users, public.opportunities and the custom object crm.students",
    );

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(DemoError::Receiver)?;
    let port = listener.local_addr().map_err(DemoError::Receiver)?.port();
    let cfg = Config::from_toml_str(
        &config_text(&url, port, &random_secret(), &random_whsec()),
        "walhook demo (built-in config)",
    )?;
    let receiver = Arc::new(Receiver::new(&cfg, printer.clone(), t0)?);
    let app = axum::Router::new()
        .route("/hooks/{endpoint}", axum::routing::post(receive))
        .with_state(receiver.clone());
    let stop = parts.receiver_stop.clone();
    parts.receiver = Some(tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    }));

    let steps = setup::run(&db, &cfg).await?;
    let changed = steps.iter().filter(|s| s.changed).count();
    printer.print(&format!(
        "walhook setup: {changed} change(s): ledger schema `{}`, publication and slot `{}` (pgoutput), REPLICA IDENTITY FULL on the 4 tables",
        cfg.ledger.schema, cfg.source.slot
    ));
    printer.print(&format!(
        "receiver on http://127.0.0.1:{port}/hooks/…: `crm` gets every event (superleap signature); \
         `analytics` gets lead.* and student.* (Standard Webhooks) and answers 500 to its first {ANALYTICS_FAILURES} requests\n\
         users.password_hash is excluded from events; retries here back off from 1s instead of 30s"
    ));
    let cfg = Arc::new(cfg);
    parts.walhook = Some(tokio::spawn(crate::run(
        cfg.clone(),
        Roles {
            capture: true,
            dispatch: true,
            admin: false,
        },
        parts.walhook_stop.clone(),
    )));
    printer.print(&format!(
        "walhook running (capture + dispatch, in this process)\n\n{:>7}  {:<9}  {:<18}  {}",
        "time", "endpoint", "event", "attempt, signature, answer, event id / diff"
    ));

    let deadline = Instant::now() + DELIVERY_DEADLINE;
    let script: Vec<&str> = STEPS.iter().filter_map(|s| s.event).collect();
    let expected = expected_deliveries(&cfg, &script);
    let mut so_far: Vec<&str> = Vec::new();
    for step in STEPS {
        printer.print(&format!("\n▶ {}", step.sql));
        db.batch_execute(step.sql).await?;
        let Some(name) = step.event else {
            printer.print(&format!(
                "  only {EXCLUDED_COLUMN} changed: it is excluded, so this update emits no event"
            ));
            continue;
        };
        // Pace the script on the always-healthy endpoint so the stream reads
        // change by change.
        so_far.push(name);
        let step_expected: BTreeMap<(String, String), usize> = expected_deliveries(&cfg, &so_far)
            .into_iter()
            .filter(|((ep, _), _)| ep == STEADY_ENDPOINT)
            .collect();
        // A rejected signature ends the waiting at once: that delivery can
        // never succeed, and the summary says why.
        let settled = parts
            .wait_until(&receiver, deadline, |log| {
                any_rejected(log) || missing(&step_expected, log).is_empty()
            })
            .await?;
        if !settled || receiver.with_log(any_rejected) {
            break;
        }
    }
    parts
        .wait_until(&receiver, deadline, |log| {
            any_rejected(log) || missing(&expected, log).is_empty()
        })
        .await?;
    let (rejected, still_missing) =
        receiver.with_log(|log| (any_rejected(log), missing(&expected, log)));
    if !rejected && !still_missing.is_empty() {
        return Err(DemoError::Deadline {
            missing: still_missing.join(", "),
        });
    }

    let events = events_by_name(&db, &cfg.ledger.schema).await?;
    let summary = receiver.with_log(|log| summarize(&cfg, &expected, events, log));
    printer.print(&render_summary(&summary));
    check(&summary, &script, &receiver)?;
    Ok(summary)
}

/// The final checks: signatures, events (the excluded-column update made
/// none), no body with the excluded column.
fn check(summary: &Summary, script: &[&str], receiver: &Receiver) -> Result<(), DemoError> {
    if summary.signatures_verified != summary.requests {
        return Err(DemoError::Signatures {
            failed: summary.requests - summary.signatures_verified,
            total: summary.requests,
        });
    }
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for name in script {
        *want.entry(name.to_string()).or_default() += 1;
    }
    if summary.events != want {
        return Err(DemoError::Unexpected(format!(
            "the ledger holds events {:?}, the script makes {:?}",
            summary.events, want
        )));
    }
    if receiver.with_log(|log| log.iter().any(|r| r.leaks_excluded)) {
        return Err(DemoError::Unexpected(format!(
            "a request body contains the excluded column {EXCLUDED_COLUMN}"
        )));
    }
    Ok(())
}

async fn events_by_name(
    db: &tokio_postgres::Client,
    schema: &str,
) -> Result<BTreeMap<String, i64>, DemoError> {
    let rows = db
        .query(
            &format!(
                "SELECT name, count(*) FROM {}.events GROUP BY name",
                quote_ident(schema)
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The demo's configuration: the cluster, the four objects, the two
/// endpoints, and the three-day retry rule scaled down to seconds.
fn config_text(db_url: &str, port: u16, crm_secret: &str, analytics_secret: &str) -> String {
    format!(
        r#"[source]
url = "{db_url}"
name = "demo"
slot = "walhook"
publication = "walhook"
status_interval = "200ms"
connect_timeout = "10s"

[admin]
enabled = false

[[objects]]
table = "public.leads"
slug = "lead"

[[objects]]
table = "public.users"
slug = "user"
exclude_columns = ["{EXCLUDED_COLUMN}"]

[[objects]]
table = "public.opportunities"
slug = "opportunity"

[[objects]]
table = "crm.students"
slug = "student"

[[endpoints]]
id = "{STEADY_ENDPOINT}"
url = "http://127.0.0.1:{port}/hooks/{STEADY_ENDPOINT}"
secret = "{crm_secret}"
events = ["*"]
signing = ["superleap"]
timeout = "5s"

[[endpoints]]
id = "{FLAKY_ENDPOINT}"
url = "http://127.0.0.1:{port}/hooks/{FLAKY_ENDPOINT}"
secret = "{analytics_secret}"
events = ["lead.*", "student.*"]
signing = ["standard-webhooks"]
timeout = "5s"

[delivery.retry]
initial = "1s"
max_interval = "5s"
backoff_window = "20s"
then_every = "5s"
disable_after = "40s"
"#
    )
}

/// A fresh superleap secret: 32 random `[0-9A-Za-z]`.
fn random_secret() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// A fresh Standard Webhooks secret: `whsec_` + base64 of 24 random bytes.
fn random_whsec() -> String {
    use base64::Engine as _;
    let key: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// How many deliveries of each event name each endpoint must get for
/// `events`: keyed by (endpoint, event name).
fn expected_deliveries(cfg: &Config, events: &[&str]) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for ep in &cfg.endpoints {
        for name in events {
            if filter::subscribed(&ep.events, name) {
                *out.entry((ep.id.clone(), name.to_string())).or_default() += 1;
            }
        }
    }
    out
}

/// Distinct event ids answered 2xx with verified signatures, by (endpoint, name).
fn delivered(log: &[Received]) -> BTreeMap<(String, String), Vec<&str>> {
    let mut out: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for r in log.iter().filter(|r| r.succeeded() && r.verified) {
        let ids = out
            .entry((r.endpoint.clone(), r.event.clone()))
            .or_default();
        if !ids.contains(&r.event_id.as_str()) {
            ids.push(&r.event_id);
        }
    }
    out
}

/// Whether any request failed signature verification.
fn any_rejected(log: &[Received]) -> bool {
    log.iter().any(|r| !r.verified)
}

/// What has not arrived yet, as `endpoint event (got/want)`.
fn missing(expected: &BTreeMap<(String, String), usize>, log: &[Received]) -> Vec<String> {
    let got = delivered(log);
    expected
        .iter()
        .filter_map(|((ep, name), &want)| {
            let n = got.get(&(ep.clone(), name.clone())).map_or(0, Vec::len);
            (n < want).then(|| format!("{ep} {name} ({n}/{want})"))
        })
        .collect()
}

fn summarize(
    cfg: &Config,
    expected: &BTreeMap<(String, String), usize>,
    events: BTreeMap<String, i64>,
    log: &[Received],
) -> Summary {
    let got = delivered(log);
    let endpoints = cfg
        .endpoints
        .iter()
        .map(|ep| {
            let reqs: Vec<&Received> = log.iter().filter(|r| r.endpoint == ep.id).collect();
            EndpointSummary {
                id: ep.id.clone(),
                delivered: got
                    .iter()
                    .filter(|((id, _), _)| *id == ep.id)
                    .map(|(_, ids)| ids.len())
                    .sum(),
                expected: expected
                    .iter()
                    .filter(|((id, _), _)| *id == ep.id)
                    .map(|(_, n)| *n)
                    .sum(),
                attempts: reqs.len(),
                failed: reqs.iter().filter(|r| !r.succeeded()).count(),
            }
        })
        .collect();
    Summary {
        events,
        endpoints,
        signatures_verified: log.iter().filter(|r| r.verified).count(),
        requests: log.len(),
    }
}

fn render_summary(s: &Summary) -> String {
    let total: i64 = s.events.values().sum();
    let mut by_slug: Vec<(String, i64)> = Vec::new();
    for (name, n) in &s.events {
        let slug = name.split('.').next().unwrap_or(name).to_string();
        match by_slug.iter_mut().find(|(s, _)| *s == slug) {
            Some((_, c)) => *c += n,
            None => by_slug.push((slug, *n)),
        }
    }
    let slugs: Vec<String> = by_slug.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let mut out = format!(
        "\nsummary\n  events captured      {total} ({}); the {EXCLUDED_COLUMN}-only update emitted none",
        slugs.join(", ")
    );
    for ep in &s.endpoints {
        let retries = if ep.failed == 0 {
            "no retries needed".to_string()
        } else {
            let recovered = if ep.delivered == ep.expected {
                ", all recovered by retry"
            } else {
                ""
            };
            format!("{} failed attempt(s){recovered}", ep.failed)
        };
        out.push_str(&format!(
            "\n  {:<20} {}/{} delivered in {} attempt(s): {retries}",
            ep.id, ep.delivered, ep.expected, ep.attempts
        ));
    }
    let mark = if s.signatures_verified == s.requests {
        "✓"
    } else {
        "✗"
    };
    out.push_str(&format!(
        "\n  signatures verified  {}/{} {mark}",
        s.signatures_verified, s.requests
    ));
    out
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    endpoint: String,
    event: String,
    event_id: String,
    /// 1 for the first request of this event at this endpoint.
    attempt: usize,
    verified: bool,
    status: u16,
    leaks_excluded: bool,
}

impl Received {
    fn succeeded(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One receiving endpoint: its verifier and how many requests it still fails.
struct ReceiverEndpoint {
    id: String,
    verifier: Verifier,
    fail_next: AtomicU32,
}

/// The in-process receiver: verifies, answers, logs and prints each request.
struct Receiver {
    t0: Instant,
    printer: Printer,
    header_prefix: String,
    endpoints: Vec<ReceiverEndpoint>,
    log: Mutex<Vec<Received>>,
    /// Bumped after every request, to wake waiters.
    changed: tokio::sync::watch::Sender<usize>,
}

impl Receiver {
    fn new(cfg: &Config, printer: Printer, t0: Instant) -> Result<Receiver, DemoError> {
        let prefix = &cfg.delivery.header_prefix;
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|ep| {
                let mut v = Verifier::with_keys(ep.secrets.clone(), prefix.as_str())
                    .map_err(|e| DemoError::Unexpected(e.to_string()))?;
                for scheme in &ep.signing {
                    v = v
                        .require(*scheme)
                        .map_err(|e| DemoError::Unexpected(e.to_string()))?;
                }
                let fail_next = if ep.id == FLAKY_ENDPOINT {
                    ANALYTICS_FAILURES
                } else {
                    0
                };
                Ok(ReceiverEndpoint {
                    id: ep.id.clone(),
                    verifier: v,
                    fail_next: AtomicU32::new(fail_next),
                })
            })
            .collect::<Result<Vec<_>, DemoError>>()?;
        Ok(Receiver {
            t0,
            printer,
            header_prefix: prefix.as_str().to_owned(),
            endpoints,
            log: Mutex::new(Vec::new()),
            changed: tokio::sync::watch::Sender::new(0),
        })
    }

    fn with_log<T>(&self, f: impl FnOnce(&[Received]) -> T) -> T {
        f(&self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn receive(
    State(rx): State<Arc<Receiver>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(ep) = rx.endpoints.iter().find(|e| e.id == endpoint) else {
        return StatusCode::NOT_FOUND;
    };
    let checks = ep.verifier.check(&headers, &body, listen::now_unix_secs());
    let verified = listen::all_verified(&checks);
    let header = |suffix: &str| {
        headers
            .get(format!("{}-{suffix}", rx.header_prefix))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string()
    };
    let status = if !verified {
        StatusCode::UNAUTHORIZED
    } else if ep
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let mut r = Received {
        endpoint: ep.id.clone(),
        event: header("event"),
        event_id: header("event-id"),
        attempt: 1,
        verified,
        status: status.as_u16(),
        leaks_excluded: String::from_utf8_lossy(&body).contains(EXCLUDED_COLUMN),
    };
    {
        let mut log = rx.log.lock().unwrap_or_else(|e| e.into_inner());
        r.attempt = 1 + log
            .iter()
            .filter(|p| p.endpoint == r.endpoint && p.event_id == r.event_id)
            .count();
        log.push(r.clone());
    }
    let diff = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("diff").map(|d| d.to_string()))
        .unwrap_or_else(|| "(body is not an event)".into());
    let mut text = stream_line(rx.t0.elapsed(), &r, &diff);
    if !verified {
        for line in listen::describe_checks(&checks, ep.verifier.signature_header()) {
            text.push_str(&format!("\n{:>9}{line}", ""));
        }
    }
    rx.printer.print(&text);
    rx.changed.send_modify(|n| *n += 1);
    status
}

/// The live stream's lines for one request: time since the demo started,
/// endpoint, event, attempt, signature verdict, answer and event id, then the
/// diff of a successful delivery.
fn stream_line(elapsed: Duration, r: &Received, diff: &str) -> String {
    let sig = if r.verified { "sig ✓" } else { "sig ✗" };
    let answer = if r.succeeded() {
        format!("{} ok", r.status)
    } else if r.verified {
        format!("{} failed, walhook will retry", r.status)
    } else {
        format!("{} rejected", r.status)
    };
    let mut line = format!(
        "{:>6.2}s  {:<9}  {:<18}  #{} {sig}  → {answer}   {}",
        elapsed.as_secs_f64(),
        r.endpoint,
        r.event,
        r.attempt,
        r.event_id
    );
    if r.succeeded() {
        line.push_str(&format!("\n{:>9}diff {diff}", ""));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SigningScheme;

    fn demo_config() -> Config {
        Config::from_toml_str(
            &config_text(
                "postgres://postgres@127.0.0.1:5/walhook_demo",
                9,
                &random_secret(),
                &random_whsec(),
            ),
            "test",
        )
        .unwrap()
    }

    fn rec(endpoint: &str, event: &str, id: &str, status: u16, verified: bool) -> Received {
        Received {
            endpoint: endpoint.into(),
            event: event.into(),
            event_id: id.into(),
            attempt: 1,
            verified,
            status,
            leaks_excluded: false,
        }
    }

    #[test]
    fn config_is_valid_and_endpoints_use_both_schemes() {
        let cfg = demo_config();
        assert_eq!(cfg.objects.len(), 4);
        assert_eq!(cfg.objects[1].exclude_columns, vec![EXCLUDED_COLUMN]);
        assert_eq!(cfg.admin.listen, None);
        assert_eq!(cfg.endpoints[0].signing, vec![SigningScheme::Superleap]);
        assert_eq!(
            cfg.endpoints[1].signing,
            vec![SigningScheme::StandardWebhooks]
        );
        assert_eq!(cfg.delivery.retry.initial, Duration::from_secs(1));
        assert_eq!(cfg.delivery.retry.disable_after, Duration::from_secs(40));
    }

    #[test]
    fn script_touches_every_object_with_every_verb() {
        let script: Vec<&str> = STEPS.iter().filter_map(|s| s.event).collect();
        for slug in ["lead", "user", "opportunity", "student"] {
            for verb in ["create", "update", "delete"] {
                let name = format!("{slug}.{verb}");
                assert_eq!(script.iter().filter(|n| **n == name).count(), 1, "{name}");
            }
        }
        // The excluded-column update is there, and emits nothing.
        assert!(
            STEPS
                .iter()
                .any(|s| s.event.is_none() && s.sql.contains(EXCLUDED_COLUMN))
        );
    }

    #[test]
    fn expected_deliveries_follow_the_filters() {
        let cfg = demo_config();
        let script: Vec<&str> = STEPS.iter().filter_map(|s| s.event).collect();
        let e = expected_deliveries(&cfg, &script);
        let per = |ep: &str| -> usize {
            e.iter()
                .filter(|((id, _), _)| id == ep)
                .map(|(_, n)| n)
                .sum()
        };
        assert_eq!(per("crm"), 12);
        assert_eq!(per("analytics"), 6);
        assert!(!e.contains_key(&("analytics".into(), "user.create".into())));
    }

    #[test]
    fn missing_counts_distinct_successful_verified_events() {
        let mut expected = BTreeMap::new();
        expected.insert(("a".to_string(), "lead.create".to_string()), 2);
        let mut log = vec![
            rec("a", "lead.create", "id1", 500, true),
            rec("a", "lead.create", "id1", 200, true),
            rec("a", "lead.create", "id1", 200, true), // a duplicate delivery
            rec("a", "lead.create", "id2", 200, false), // unverified
        ];
        assert_eq!(missing(&expected, &log), vec!["a lead.create (1/2)"]);
        log.push(rec("a", "lead.create", "id2", 200, true));
        assert!(missing(&expected, &log).is_empty());
    }

    #[test]
    fn summary_counts_retries_and_signatures() {
        let cfg = demo_config();
        let expected = expected_deliveries(&cfg, &["lead.create"]);
        let log = vec![
            rec("crm", "lead.create", "id1", 200, true),
            rec("analytics", "lead.create", "id1", 500, true),
            rec("analytics", "lead.create", "id1", 200, true),
        ];
        let events = BTreeMap::from([("lead.create".to_string(), 1)]);
        let s = summarize(&cfg, &expected, events, &log);
        assert_eq!(s.signatures_verified, 3);
        assert_eq!(s.requests, 3);
        let analytics = &s.endpoints[1];
        assert_eq!(
            (
                analytics.delivered,
                analytics.expected,
                analytics.attempts,
                analytics.failed
            ),
            (1, 1, 2, 1)
        );
        let text = render_summary(&s);
        assert!(
            text.contains("1 failed attempt(s), all recovered by retry"),
            "{text}"
        );
        assert!(text.contains("signatures verified  3/3 ✓"), "{text}");
        assert!(text.contains("events captured      1 (lead 1)"), "{text}");
    }

    #[test]
    fn stream_line_shows_the_diff_only_for_deliveries() {
        let ok = stream_line(
            Duration::from_millis(1234),
            &rec(
                "crm",
                "lead.update",
                "demo:lead:1:L-1:lead.update:abcdefgh",
                200,
                true,
            ),
            r#"{"score":85}"#,
        );
        assert!(ok.starts_with("  1.23s  crm        lead.update"), "{ok}");
        assert!(
            ok.contains("#1 sig ✓  → 200 ok   demo:lead:1:L-1:lead.update:abcdefgh"),
            "{ok}"
        );
        assert!(ok.ends_with(r#"diff {"score":85}"#), "{ok}");
        let failed = stream_line(
            Duration::from_secs(2),
            &rec("analytics", "lead.create", "x", 500, true),
            "{}",
        );
        assert!(
            failed.contains("→ 500 failed, walhook will retry"),
            "{failed}"
        );
        assert!(!failed.contains("diff"), "{failed}");
    }

    fn signed_request(cfg: &Config, endpoint: &str, event_id: &str, body: &[u8]) -> HeaderMap {
        let ep = cfg.endpoint(endpoint).unwrap();
        crate::dispatch::sign::signed_headers(
            ep,
            &cfg.delivery.header_prefix,
            event_id,
            "lead.create",
            body,
            listen::now_unix_secs(),
        )
    }

    #[tokio::test]
    async fn receiver_verifies_fails_analytics_twice_then_recovers() {
        let cfg = demo_config();
        let rx = Arc::new(
            Receiver::new(
                &cfg,
                Printer::new(Box::new(std::io::sink())),
                Instant::now(),
            )
            .unwrap(),
        );
        let body = Bytes::from_static(br#"{"before":{},"after":{"id":"L-1"},"diff":{"id":"L-1"}}"#);
        let call = |ep: &'static str, headers: HeaderMap, body: Bytes| {
            receive(State(rx.clone()), Path(ep.to_string()), headers, body)
        };
        let crm = signed_request(&cfg, "crm", "e1", &body);
        assert_eq!(call("crm", crm.clone(), body.clone()).await, StatusCode::OK);
        // The body was changed after signing: rejected, and logged as such.
        assert_eq!(
            call("crm", crm, Bytes::from_static(b"{}")).await,
            StatusCode::UNAUTHORIZED
        );
        let analytics = signed_request(&cfg, "analytics", "e1", &body);
        // crm's headers carry no Standard Webhooks signature, which analytics requires.
        let wrong = signed_request(&cfg, "crm", "e1", &body);
        assert_eq!(
            call("analytics", wrong, body.clone()).await,
            StatusCode::UNAUTHORIZED
        );
        for want in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::OK,
        ] {
            assert_eq!(
                call("analytics", analytics.clone(), body.clone()).await,
                want
            );
        }
        let log = rx.with_log(|l| l.to_vec());
        let summary: Vec<(&str, usize, bool, u16)> = log
            .iter()
            .map(|r| (r.endpoint.as_str(), r.attempt, r.verified, r.status))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("crm", 1, true, 200),
                ("crm", 2, false, 401),
                ("analytics", 1, false, 401),
                ("analytics", 2, true, 500),
                ("analytics", 3, true, 500),
                ("analytics", 4, true, 200),
            ]
        );
        assert!(any_rejected(&log));
        assert_eq!(log[0].event, "lead.create");
        assert_eq!(log[0].event_id, "e1");
    }

    #[test]
    fn secrets_are_fresh_and_well_formed() {
        let a = random_secret();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_secret());
        assert!(crate::config::decode_whsec(&random_whsec()).is_ok());
    }
}
