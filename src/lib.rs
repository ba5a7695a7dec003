//! walhook: PostgreSQL row changes (logical replication, pgoutput) turned into
//! signed webhooks, with a durable ledger in Postgres for what must wait.
//!
//! The rooms follow the data, and each imports only those below it:
//! `source` (the slot, the relation cache, mapped tables by identity) ->
//! `event` (pure: change -> `slug.verb` event, values, ids) -> `dispatch`
//! (signing, HTTP, retry timing, the delivery loop) and `ledger` (what must
//! wait, history, progress) -> `admin` (check, reports, API, metrics).
//! `config` and the leaves `pg`, `pgoutput` and `secret` serve them all;
//! `devtools` holds the demo, `walhook listen` and the throwaway cluster.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod devtools;
pub mod dispatch;
pub mod event;
pub mod ledger;
pub mod metrics;
pub mod pg;
pub mod pgoutput;
pub mod sealed;
pub mod secret;
pub mod source;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::leases::Leases;
use crate::dispatch::stream::StreamDeps;
use crate::ledger::{Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::pg::ConnectError;
use crate::source::objects::{self, ResolveError};
use crate::source::setup::{self, SetupError};

/// Which parts a `walhook run` process runs. All three by default; several
/// processes can share one database with any mix.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub capture: bool,
    pub dispatch: bool,
    pub admin: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Roles {
            capture: true,
            dispatch: true,
            admin: true,
        }
    }
}

/// Why `run` could not start. Once started it never fails: it reconnects.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "cannot reach the database within source.connect_timeout ({timeout:?}): {source}. Check that PostgreSQL is running and the URL (source.url / source.url_env) is right."
    )]
    Unreachable {
        timeout: std::time::Duration,
        #[source]
        source: ConnectError,
    },
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(
        "the replication slot {0} does not exist: run `walhook setup` (or the SQL of `walhook setup --print-sql`)"
    )]
    NoSlot(String),
    #[error("admin HTTP: {0}")]
    Admin(String),
    #[error(transparent)]
    Objects(#[from] ResolveError),
    #[error("{0}. `walhook check` shows every problem.")]
    Publication(String),
}

/// Pre-flight checks of `run` (fail fast with a clear message): the source
/// and the ledger are reachable within `source.connect_timeout`, the ledger
/// is set up, the slot exists, the mapped tables resolve and the publication
/// covers them as walhook needs.
pub async fn preflight(cfg: &Config) -> Result<(), RunError> {
    let timeout = cfg.source.connect_timeout;
    let unreachable = |source| RunError::Unreachable { timeout, source };
    let source = pg::connect_within(&cfg.source.url, "walhook", timeout)
        .await
        .map_err(unreachable)?;
    let ledger_db = match &cfg.ledger.url {
        Some(url) => Some(
            pg::connect_within(url, "walhook", timeout)
                .await
                .map_err(unreachable)?,
        ),
        None => None,
    };
    let ledger_db = ledger_db.as_ref().unwrap_or(&source);
    setup::check_wal_level(&source).await?;
    setup::grants::require_for_run(&source, ledger_db, cfg).await?;
    let ledger = Ledger::new(&cfg.ledger.schema);
    ledger.ensure_exists(ledger_db).await?;
    if setup::slot_plugin(&source, &cfg.source.slot)
        .await?
        .is_none()
    {
        return Err(RunError::NoSlot(cfg.source.slot.clone()));
    }
    let mapping = objects::resolve_all(&source, ledger_db, &ledger, cfg).await?;
    let problems =
        setup::publication_problems(&source, &cfg.source.publication, &mapping.relids()).await?;
    if !problems.is_empty() {
        return Err(RunError::Publication(problems.join("; ")));
    }
    Ok(())
}

/// Run capture, dispatch and admin (as `roles` says) until `shutdown` is
/// cancelled, then stop gracefully. A stop asked for during the pre-flight
/// checks ends `run` at once.
pub async fn run(
    cfg: Arc<Config>,
    roles: Roles,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    for warning in cfg.warnings() {
        tracing::warn!("{warning}");
    }
    tokio::select! {
        r = preflight(&cfg) => r?,
        _ = shutdown.cancelled() => return Ok(()),
    }
    let metrics = Arc::new(Metrics::new());
    // Bind before starting anything, so a taken port fails `run` at once.
    let admin_server = if roles.admin {
        admin::api::AdminServer::bind(cfg.clone(), metrics.clone(), roles.capture)
            .await
            .map_err(|e| RunError::Admin(e.to_string()))?
    } else {
        None
    };
    let http = dispatch::http::build_client().map_err(|e| RunError::Admin(e.to_string()))?;
    let (runtime, keep_runtime) = dispatch::runtime::start(cfg.clone(), shutdown.clone()).await?;
    let deps = StreamDeps {
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        http,
        owner: dispatch::deliver::owner_id(),
        leases: Leases::default(),
        fast: roles.dispatch,
        runtime,
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(keep_runtime);
    tasks.spawn(dispatch::leases::keep(
        deps.leases.clone(),
        Ledger::new(&cfg.ledger.schema),
        cfg.ledger_url().clone(),
        deps.owner.clone(),
        cfg.delivery.lease,
        shutdown.clone(),
    ));
    if roles.capture || roles.dispatch {
        // Retention: one process at a time (an advisory lock picks it).
        tasks.spawn(dispatch::prune::keep(cfg.clone(), shutdown.clone()));
    }
    if roles.capture {
        tasks.spawn(source::capture::run(deps.clone(), shutdown.clone()));
    }
    if roles.dispatch {
        tasks.spawn(dispatch::deliver::run(deps.clone(), shutdown.clone()));
    }
    if let Some(server) = admin_server {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            // Capture and dispatch go on without the admin API.
            if let Err(e) = server.serve(shutdown).await {
                tracing::error!(error = %e, "the admin HTTP server stopped");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            tracing::error!(error = %e, "a walhook task panicked");
            shutdown.cancel();
        }
    }
    Ok(())
}
