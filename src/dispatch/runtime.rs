//! The endpoints made at runtime, as this process serves them: loaded from
//! the ledger at start, then again whenever the set changes (a NOTIFY on
//! the endpoints channel, a poll every [`POLL`] comparing the set's
//! version, or an old secret's keep-old period running out). Capture's
//! stream and the ledger dispatcher watch the published set; neither is
//! restarted.
//!
//! A runtime endpoint whose id a config endpoint has is not served (the
//! config wins; the API refuses such ids, so only a config change made
//! later can cause it). Without the key (`admin.secrets_key_env`) none is.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EndpointConfig};
use crate::ledger::endpoints::{RuntimeRow, SetVersion};
use crate::ledger::{Ledger, LedgerError};
use crate::pg;

/// How often the set's version is compared when no NOTIFY came.
pub const POLL: Duration = Duration::from_secs(5);

/// The runtime endpoints this process serves, secrets opened.
#[derive(Debug, Default)]
pub struct RuntimeSet {
    pub endpoints: Vec<EndpointConfig>,
    /// When an old secret stops signing (the set is built again then).
    pub next_expiry: Option<SystemTime>,
    version: SetVersion,
}

impl RuntimeSet {
    /// The runtime endpoint `id`.
    pub fn get(&self, id: &str) -> Option<&EndpointConfig> {
        self.endpoints.iter().find(|e| e.id == id)
    }
}

/// The receiving end: the latest set.
pub type RuntimeWatch = watch::Receiver<Arc<RuntimeSet>>;

/// Loads the set once (so the first events after a start already go to
/// runtime endpoints), then returns the watch and the task that keeps it
/// up to date until `shutdown`.
pub async fn start(
    cfg: Arc<Config>,
    shutdown: CancellationToken,
) -> Result<(RuntimeWatch, impl Future<Output = ()>), LedgerError> {
    let ledger = Ledger::new(&cfg.ledger.schema);
    let db = pg::connect(
        cfg.ledger_url(),
        "walhook endpoints",
        pg::DEFAULT_LOGIN_TIMEOUT,
    )
    .await
    .map_err(LedgerError::from)?;
    let first = load(&cfg, &ledger, &db, &mut Warned::default()).await?;
    let (tx, rx) = watch::channel(Arc::new(first));
    Ok((rx, keep(cfg, ledger, tx, shutdown)))
}

/// What was already logged, so a poll does not repeat it every 5 s.
#[derive(Default)]
struct Warned {
    no_key: bool,
    unopened: Vec<(String, i64)>,
    shadowed: Vec<String>,
}

async fn keep(
    cfg: Arc<Config>,
    ledger: Ledger,
    tx: watch::Sender<Arc<RuntimeSet>>,
    shutdown: CancellationToken,
) {
    let mut warned = Warned::default();
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        match watch_changes(&cfg, &ledger, &tx, &mut warned, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "runtime endpoints: lost the ledger; reconnecting");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(15));
            }
        }
    }
}

async fn watch_changes(
    cfg: &Config,
    ledger: &Ledger,
    tx: &watch::Sender<Arc<RuntimeSet>>,
    warned: &mut Warned,
    shutdown: &CancellationToken,
) -> Result<(), LedgerError> {
    let login = pg::DEFAULT_LOGIN_TIMEOUT;
    let db = pg::connect(cfg.ledger_url(), "walhook endpoints", login)
        .await
        .map_err(LedgerError::from)?;
    let wake = Arc::new(Notify::new());
    let listener = ledger
        .listen_endpoints(cfg.ledger_url(), login, wake.clone())
        .await?;
    // Changes made while this session was not listening.
    let mut force = true;
    loop {
        let current = tx.borrow().clone();
        let expired = current
            .next_expiry
            .is_some_and(|at| at <= SystemTime::now());
        if force || expired || ledger.runtime_version(&db).await? != current.version {
            let set = load(cfg, ledger, &db, warned).await?;
            tx.send_replace(Arc::new(set));
        }
        if listener.is_closed() {
            // Fails with the reason the session ended: reconnect.
            listener.batch_execute("SELECT 1").await?;
        }
        let mut sleep = POLL;
        if let Some(at) = tx.borrow().next_expiry {
            let until = at.duration_since(SystemTime::now()).unwrap_or_default();
            sleep = sleep.min(until + Duration::from_millis(10));
        }
        force = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = wake.notified() => true,
            _ = tokio::time::sleep(sleep) => false,
        };
    }
}

/// The set as the ledger holds it now, secrets opened.
async fn load(
    cfg: &Config,
    ledger: &Ledger,
    db: &Client,
    warned: &mut Warned,
) -> Result<RuntimeSet, LedgerError> {
    let version = ledger.runtime_version(db).await?;
    let rows = ledger.runtime_endpoints(db).await?;
    let endpoints = build(cfg, &rows, SystemTime::now(), warned);
    let now = SystemTime::now();
    let next_expiry = rows
        .iter()
        .filter(|r| r.old_secret.is_some())
        .filter_map(|r| r.old_until)
        .filter(|at| *at > now)
        .min();
    Ok(RuntimeSet {
        endpoints,
        next_expiry,
        version,
    })
}

/// The rows this process can serve, as endpoints; what it cannot is logged
/// once (no key, a secret that does not open, an id a config endpoint has).
fn build(
    cfg: &Config,
    rows: &[RuntimeRow],
    now: SystemTime,
    warned: &mut Warned,
) -> Vec<EndpointConfig> {
    let Some(key) = &cfg.admin.secrets_key else {
        if !rows.is_empty() && !warned.no_key {
            tracing::warn!(
                endpoints = rows.len(),
                "the ledger holds endpoints made through the API, but {} is not set, so their secrets cannot be opened and this process does not serve them; set it to the key they were made with",
                cfg.admin.secrets_key_env
            );
            warned.no_key = true;
        }
        return Vec::new();
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if cfg.endpoint(&row.id).is_some() {
            if !warned.shadowed.contains(&row.id) {
                tracing::warn!(endpoint = %row.id, "an endpoint made through the API has the id of a config endpoint; the config one is served (remove one of them)");
                warned.shadowed.push(row.id.clone());
            }
            continue;
        }
        match row.endpoint(key, &cfg.delivery.retry, now) {
            Ok(ep) => out.push(ep),
            Err(e) => {
                let seen = (row.id.clone(), row.version);
                if !warned.unopened.contains(&seen) {
                    tracing::error!(endpoint = %row.id, error = %e, "a runtime endpoint's secret does not open with the key in {}; it is not served", cfg.admin.secrets_key_env);
                    warned.unopened.push(seen);
                }
            }
        }
    }
    out
}
