//! `walhook demo`: the whole product in one command, with nothing to install
//! but PostgreSQL's server programs. It starts a throwaway cluster, creates
//! four demo objects, runs `setup` and `run` in-process against an
//! in-process receiver, makes scripted changes (row changes and a custom
//! event emitted from SQL), backfills the leads that were there before
//! walhook started, and prints every request the receiver gets as it
//! arrives, then a summary.
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

mod receiver;
mod script;
mod summary;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::receiver::{Received, Receiver};
use self::script::{
    ANALYTICS_FAILURES, BACKFILL_SLUG, BACKFILLED, EXCLUDED_COLUMN, STEADY_ENDPOINT, STEPS,
    TABLES_SQL, config_text, random_secret, random_whsec,
};
pub use self::summary::{EndpointSummary, Summary};
use self::summary::{any_rejected, check, expected_deliveries, missing, render_summary, summarize};
use crate::config::{Config, ConfigError, Secret};
use crate::devtools::embedded::{EmbeddedError, TempCluster};
use crate::devtools::listen::Printer;
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
        let mut changed = receiver.subscribe();
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
    let (db, url) = create_database(cluster, printer).await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(DemoError::Receiver)?;
    let port = listener.local_addr().map_err(DemoError::Receiver)?.port();
    let cfg = Config::from_toml_str(
        &config_text(&url, port, &random_secret(), &random_whsec()),
        "walhook demo (built-in config)",
    )?;
    let receiver = Arc::new(Receiver::new(&cfg, printer.clone(), t0)?);
    parts.receiver = Some(receiver::serve(
        listener,
        receiver.clone(),
        parts.receiver_stop.clone(),
    ));
    let cfg = Arc::new(cfg);
    start_walhook(&db, &cfg, port, printer, parts).await?;

    let deadline = Instant::now() + DELIVERY_DEADLINE;
    let mut script: Vec<&str> = STEPS.iter().filter_map(|s| s.event).collect();
    script.extend_from_slice(BACKFILLED);
    let expected = expected_deliveries(&cfg, &script);
    if play_script(&db, &cfg, &receiver, parts, printer, deadline).await? {
        play_backfill(&db, &cfg, &receiver, parts, printer, deadline, &script).await?;
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

    let events = events_by_name(&db, &cfg.ledger.schema, script.len()).await?;
    let summary = receiver.with_log(|log| summarize(&cfg, &expected, events, log));
    printer.print(&render_summary(&summary));
    check(&summary, &script, &receiver)?;
    Ok(summary)
}

/// Creates the demo database and its tables; a client of it and its URL.
async fn create_database(
    cluster: &TempCluster,
    printer: &Printer,
) -> Result<(tokio_postgres::Client, String), DemoError> {
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
        "created database walhook_demo with public.leads (holding 2 leads already), public.users, public.opportunities and the custom object crm.students",
    );
    Ok((db, url))
}

/// Runs `setup`, then walhook (capture and dispatch) as a task in `parts`.
async fn start_walhook(
    db: &tokio_postgres::Client,
    cfg: &Arc<Config>,
    port: u16,
    printer: &Printer,
    parts: &mut Running,
) -> Result<(), DemoError> {
    let steps = setup::run(db, db, cfg).await?;
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
    Ok(())
}

/// Makes the scripted changes one by one; stops early at the deadline or at
/// a rejected signature (then returns false).
async fn play_script(
    db: &tokio_postgres::Client,
    cfg: &Config,
    receiver: &Receiver,
    parts: &mut Running,
    printer: &Printer,
    deadline: Instant,
) -> Result<bool, DemoError> {
    let mut so_far: Vec<&str> = Vec::new();
    for step in STEPS {
        printer.print(&format!("\n▶ {}", step.sql));
        db.batch_execute(step.sql).await?;
        if step.sql.contains("pg_logical_emit_message") {
            printer.print(
                "  a custom event from SQL: written to the WAL in the transaction, delivered only if it commits",
            );
        }
        let Some(name) = step.event else {
            printer.print(&format!(
                "  only {EXCLUDED_COLUMN} changed: it is excluded, so this update emits no event"
            ));
            continue;
        };
        // Pace the script on the always-healthy endpoint so the stream reads
        // change by change.
        so_far.push(name);
        if !settle(cfg, receiver, parts, deadline, &so_far).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Waits until the always-healthy endpoint has every event of `so_far`;
/// false at the deadline or at a rejected signature.
async fn settle(
    cfg: &Config,
    receiver: &Receiver,
    parts: &mut Running,
    deadline: Instant,
    so_far: &[&str],
) -> Result<bool, DemoError> {
    let step_expected: BTreeMap<(String, String), usize> = expected_deliveries(cfg, so_far)
        .into_iter()
        .filter(|((ep, _), _)| ep == STEADY_ENDPOINT)
        .collect();
    // A rejected signature ends the waiting at once: that delivery can
    // never succeed, and the summary says why.
    let settled = parts
        .wait_until(receiver, deadline, |log| {
            any_rejected(log) || missing(&step_expected, log).is_empty()
        })
        .await?;
    Ok(settled && !receiver.with_log(any_rejected))
}

/// `walhook backfill lead`: the leads that existed before walhook started
/// arrive as `lead.backfill`, in the stream with everything else.
async fn play_backfill(
    db: &tokio_postgres::Client,
    cfg: &Config,
    receiver: &Receiver,
    parts: &mut Running,
    printer: &Printer,
    deadline: Instant,
    script: &[&str],
) -> Result<(), DemoError> {
    printer.print(&format!(
        "\n▶ walhook backfill {BACKFILL_SLUG}   (the {} leads that were there before walhook started)",
        BACKFILLED.len()
    ));
    let req = crate::ledger::backfills::BackfillRequest {
        slug: BACKFILL_SLUG.into(),
        endpoint: None,
        where_sql: None,
        as_create: false,
        rate: None,
    };
    let queued = crate::admin::backfill::queue(cfg, db, db, &req)
        .await
        .map_err(|e| DemoError::Unexpected(format!("the backfill was refused: {e}")))?;
    printer.print(&format!(
        "  backfill {} queued; the running walhook reads the table in key order between two WAL watermarks and sends each row as {}",
        queued.backfill.id, queued.event
    ));
    settle(cfg, receiver, parts, deadline, script).await?;
    Ok(())
}

async fn events_by_name(
    db: &tokio_postgres::Client,
    schema: &str,
    expected: usize,
) -> Result<BTreeMap<String, i64>, DemoError> {
    // The stream counts events as it records its deliveries, a moment
    // after the receiver has them.
    let ledger = crate::ledger::Ledger::new(schema);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts = ledger.event_counts(db).await?;
        if counts.total as usize >= expected || Instant::now() >= deadline {
            return Ok(counts.by_name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
