//! What operators see, shared by the CLI (`walhook status|deliveries|
//! endpoints`) and the admin HTTP API: the result types and thin functions
//! over the ledger's history and queue.
//!
//! The functions take the ledger database's client; the slot's state comes
//! from the source database (`slot` and `status` take both, the same client
//! when the ledger lives in the source database).
//!
//! Every result type is `Serialize` and holds no secret: endpoints are shown by
//! their URL's origin, the database by `user@host:port/db`. Timestamps are
//! RFC 3339 strings in UTC with milliseconds. The delivery rows are the
//! ledger's own ([`crate::ledger::history`]), re-exported here: they already
//! are what is shown, so a copy would only add a mapping to keep in step.

pub use super::human::url_origin;
use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{Config, EndpointConfig, SigningScheme};
use crate::dispatch::http;
use crate::ledger::backfills::Backfill;
use crate::ledger::history::{EndpointRow, UnknownState};
use crate::ledger::notices::NoticeView;
use crate::ledger::prune::LedgerSize;
use crate::ledger::queue::Requeue;
use crate::ledger::{Ledger, LedgerError};
use crate::source::setup::{self, SetupError};

pub use crate::ledger::history::{
    AttemptView, DeliveryDetail, DeliveryFilter, DeliveryState, DeliverySummary, EventCounts,
    StateCounts,
};

/// Deliveries listed when no limit is given, and the most one call returns.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 1000;
/// Backfills `status` shows (the most recent).
const STATUS_BACKFILLS: i64 = 5;

/// Errors of admin queries and actions. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Source(#[from] SetupError),
    #[error(
        "no delivery with id {0} in the ledger. `walhook deliveries list` shows the recent ones; `deliveries show` also takes an event id."
    )]
    DeliveryNotFound(i64),
    #[error(
        "no event with id `{0}` in the ledger (or it has no deliveries). `walhook deliveries list --event NAME` shows recent events' deliveries."
    )]
    EventNotFound(String),
    #[error(
        "delivery {0} already succeeded; walhook does not send a delivered event again (receivers dedupe on the event id). `walhook deliveries show {0}` shows its attempts."
    )]
    AlreadySucceeded(i64),
    #[error(
        "an attempt of delivery {0} is under way right now; wait for its result (`walhook deliveries show {0}`), then retry if it failed"
    )]
    InFlight(i64),
    #[error(
        "event `{0}` cannot be resent: its body is not in the ledger. It was delivered at once from the stream, and `[ledger] keep_bodies = \"failed\"` (the default) keeps only the bodies of deliveries that had to wait (or retention pruned it). Set `keep_bodies = \"all\"` to be able to resend any delivered event."
    )]
    BodyNotKept(String),
    #[error(
        "the event already has delivery {delivery} to endpoint `{endpoint}`, {state}: `walhook deliveries retry {delivery}` sends it again now"
    )]
    ResendOpen {
        delivery: i64,
        state: &'static str,
        endpoint: String,
    },
    #[error(
        "unknown endpoint `{id}`: the configured endpoints are {known}. Check the id, or add it to [[endpoints]] in the config."
    )]
    UnknownEndpoint { id: String, known: String },
    #[error(transparent)]
    UnknownState(#[from] UnknownState),
    #[error("invalid {what}: {message}")]
    BadRequest { what: &'static str, message: String },
    #[error(transparent)]
    Http(#[from] http::HttpError),
}

/// The replication slot as Postgres and the ledger see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub exists: bool,
    /// The output plugin (`pgoutput` when set up by walhook).
    pub plugin: Option<String>,
    /// A process is reading the slot now.
    pub active: bool,
    /// `wal_status` (PostgreSQL 13+): `reserved`, `extended`, `unreserved`, `lost`.
    pub wal_status: Option<String>,
    /// The position the server has been told is processed.
    pub confirmed_flush_lsn: Option<String>,
    /// The position whose events the ledger holds.
    pub ledger_lsn: Option<String>,
    pub ledger_updated_at: Option<String>,
    /// WAL the server retains for this slot beyond what walhook acknowledged.
    pub lag_bytes: Option<i64>,
    /// How far behind in time: 0 when caught up, the walsender's `flush_lag`
    /// while streaming (NULL there means caught up), else the time since the
    /// ledger last recorded progress.
    pub lag_seconds: Option<f64>,
}

/// An endpoint: its configuration (no secret, URL origin only) and state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointState {
    pub id: String,
    /// Present in the config or made through the API (an endpoint removed
    /// from the config keeps its ledger row and deliveries).
    pub configured: bool,
    /// `config` (the config file), `api` (made at runtime), or none (known
    /// only from the ledger).
    pub source: Option<&'static str>,
    /// `scheme://host:port` of the URL; path and query may hold credentials.
    pub target: Option<String>,
    pub events: Vec<String>,
    pub signing: Vec<String>,
    pub timeout_ms: Option<u64>,
    pub enabled: bool,
    pub disabled_at: Option<String>,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<String>,
    pub deliveries: StateCounts,
}

/// What `walhook status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// `user@host:port/db` of the source database (never the password).
    pub database: String,
    pub ledger_schema: String,
    /// `user@host:port/db` of the ledger's database when it is not the
    /// source database (`[ledger] url`).
    pub ledger_database: Option<String>,
    /// The ledger's tables on disk (what `[ledger] retention` keeps in check).
    pub ledger_size: LedgerSize,
    pub slot: SlotStatus,
    pub events: EventCounts,
    pub deliveries: StateCounts,
    pub endpoints: Vec<EndpointState>,
    /// TRUNCATEs of mapped tables seen (they emit no row events).
    pub truncates: i64,
    /// What capture reported: a blocked capture (error), schema drift it
    /// follows (warnings).
    pub notices: Vec<NoticeView>,
    /// The most recent backfills (newest first), with their progress.
    pub backfills: Vec<Backfill>,
}

/// `deliveries show`: a delivery id gives one delivery; an event id gives
/// every delivery of that event (a JSON array).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Shown {
    One(Box<DeliveryDetail>),
    Event(Vec<DeliveryDetail>),
}

/// Result of retrying one delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryOutcome {
    pub delivery_id: i64,
    pub previous_status: DeliveryState,
    pub queued: bool,
}

/// Result of `retry --all-failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryAllOutcome {
    pub requeued: u64,
    pub endpoint: Option<String>,
}

/// Result of enabling or disabling an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointToggle {
    pub endpoint: String,
    pub enabled: bool,
    /// False when it already was in that state.
    pub changed: bool,
}

/// What a ping did. Secrets and the URL's path never appear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PingOutcome {
    pub endpoint: String,
    pub target: String,
    pub event_id: String,
    pub ok: bool,
    pub status_code: Option<u16>,
    /// `HTTP 404 Not Found`, `timed out`, or the transport error.
    pub outcome: String,
    pub duration_ms: u64,
    pub response_excerpt: Option<String>,
}

/// `--since`: a duration back from `now` (`90m`, `2d`), an RFC 3339 time, or
/// a date (`2025-02-21`, midnight UTC).
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, AdminError> {
    parse_time("since", s, now)
}

/// A time as `--since` takes it; errors name the option `what`.
pub fn parse_time(what: &'static str, s: &str, now: SystemTime) -> Result<SystemTime, AdminError> {
    let s = s.trim();
    if let Ok(d) = crate::config::duration_from_str(s) {
        return Ok(now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH));
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t.into());
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(s, &date_format) {
        return Ok(d.midnight().assume_utc().into());
    }
    Err(AdminError::BadRequest {
        what,
        message: format!(
            "`{s}` is neither a duration (`90m`, `2d`), an RFC 3339 time (`2025-02-21T08:00:00Z`) nor a date (`2025-02-21`)"
        ),
    })
}

fn scheme_name(s: SigningScheme) -> &'static str {
    match s {
        SigningScheme::Superleap => "superleap",
        SigningScheme::StandardWebhooks => "standard-webhooks",
    }
}

/// The time lag of the slot (see [`SlotStatus::lag_seconds`]). While a
/// walsender streams the slot, Postgres reports `flush_lag`, and NULL once
/// the reader has caught up; an idle slot is behind by the time since the
/// ledger last recorded progress.
pub fn lag_seconds(
    lag_bytes: Option<i64>,
    active: bool,
    flush_lag: Option<f64>,
    since_progress: Option<f64>,
) -> Option<f64> {
    match lag_bytes {
        None => None,
        Some(b) if b <= 0 => Some(0.0),
        Some(_) if active => Some(flush_lag.unwrap_or(0.0).max(0.0)),
        Some(_) => since_progress.map(|s| s.max(0.0)),
    }
}

/// The configured endpoint `id`, or `UnknownEndpoint`.
pub fn configured_endpoint<'a>(
    cfg: &'a Config,
    id: &str,
) -> Result<&'a EndpointConfig, AdminError> {
    cfg.endpoint(id).ok_or_else(|| AdminError::UnknownEndpoint {
        id: id.to_string(),
        known: if cfg.endpoints.is_empty() {
            "(none)".into()
        } else {
            let ids: Vec<String> = cfg
                .endpoints
                .iter()
                .map(|e| format!("`{}`", e.id))
                .collect();
            ids.join(", ")
        },
    })
}

impl EndpointState {
    /// An endpoint known by id only (no longer configured), with no state yet.
    fn unconfigured(id: &str) -> EndpointState {
        EndpointState {
            id: id.to_string(),
            configured: false,
            source: None,
            target: None,
            events: Vec::new(),
            signing: Vec::new(),
            timeout_ms: None,
            enabled: true,
            disabled_at: None,
            disabled_reason: None,
            failing_since: None,
            deliveries: StateCounts::default(),
        }
    }

    fn configured(ep: &EndpointConfig) -> EndpointState {
        EndpointState {
            configured: true,
            source: Some("config"),
            target: Some(url_origin(&ep.url)),
            events: ep.events.clone(),
            signing: ep.signing.iter().map(|s| scheme_name(*s).into()).collect(),
            timeout_ms: Some(ep.timeout.as_millis() as u64),
            ..EndpointState::unconfigured(&ep.id)
        }
    }

    fn runtime(ep: &crate::admin::subscriptions::RuntimeView) -> EndpointState {
        EndpointState {
            configured: true,
            source: Some("api"),
            target: Some(ep.target.clone()),
            events: ep.events.clone(),
            signing: ep.signing.clone(),
            timeout_ms: Some(ep.timeout_ms.max(0) as u64),
            ..EndpointState::unconfigured(&ep.id)
        }
    }

    /// With the ledger's state and delivery counts, where it has them.
    fn with_ledger(mut self, row: Option<EndpointRow>, counts: Option<StateCounts>) -> Self {
        if let Some(r) = row {
            self.enabled = r.enabled;
            self.disabled_at = r.disabled_at;
            self.disabled_reason = r.disabled_reason;
            self.failing_since = r.failing_since;
        }
        self.deliveries = counts.unwrap_or_default();
        self
    }
}

/// Queries and actions bound to one configuration and ledger schema.
#[derive(Debug, Clone)]
pub struct Reports<'a> {
    pub cfg: &'a Config,
    ledger: Ledger,
}

impl<'a> Reports<'a> {
    pub fn new(cfg: &'a Config) -> Reports<'a> {
        Reports {
            cfg,
            ledger: Ledger::new(&cfg.ledger.schema),
        }
    }

    /// The ledger these reports read.
    pub(super) fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The slot's lag and state: the server's view from `source`, the
    /// recorded progress from `ledger_db` (the same client when the ledger
    /// is in the source database).
    pub async fn slot(
        &self,
        source: &Client,
        ledger_db: &Client,
    ) -> Result<SlotStatus, AdminError> {
        let name = &self.cfg.source.slot;
        let state = setup::slot_state(source, name).await?;
        let progress = self.ledger.progress_row(ledger_db, name).await?;
        let exists = state.is_some();
        let state = state.unwrap_or_default();
        let lag_seconds = lag_seconds(
            state.lag_bytes,
            state.active,
            state.flush_lag,
            progress.as_ref().and_then(|p| p.age_seconds),
        );
        Ok(SlotStatus {
            name: name.clone(),
            exists,
            plugin: state.plugin,
            active: state.active,
            wal_status: state.wal_status,
            confirmed_flush_lsn: state.confirmed_flush_lsn,
            ledger_lsn: progress.as_ref().map(|p| p.lsn.to_string()),
            ledger_updated_at: progress.map(|p| p.updated_at),
            lag_bytes: state.lag_bytes,
            lag_seconds,
        })
    }

    /// Configured endpoints and any others the ledger knows, with their state.
    pub async fn endpoints(&self, client: &Client) -> Result<Vec<EndpointState>, AdminError> {
        self.ledger.ensure_exists(client).await?;
        let counts = self.ledger.delivery_counts(client).await?;
        self.endpoints_with(client, counts.per_endpoint).await
    }

    async fn endpoints_with(
        &self,
        client: &Client,
        mut counts: BTreeMap<String, StateCounts>,
    ) -> Result<Vec<EndpointState>, AdminError> {
        let mut rows: BTreeMap<String, EndpointRow> = (self.ledger.endpoint_rows(client).await?)
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let mut out = Vec::new();
        for ep in &self.cfg.endpoints {
            let st = EndpointState::configured(ep);
            out.push(st.with_ledger(rows.remove(&ep.id), counts.remove(&ep.id)));
        }
        for row in self.ledger.runtime_endpoints(client).await? {
            if self.cfg.endpoint(&row.id).is_none() {
                let st =
                    EndpointState::runtime(&crate::admin::subscriptions::RuntimeView::of(&row));
                out.push(st.with_ledger(rows.remove(&row.id), counts.remove(&row.id)));
            }
        }
        // Endpoints no longer configured but still holding deliveries or state.
        let mut others: Vec<String> = rows.keys().chain(counts.keys()).cloned().collect();
        others.sort();
        others.dedup();
        for id in others {
            let st = EndpointState::unconfigured(&id);
            out.push(st.with_ledger(rows.remove(&id), counts.remove(&id)));
        }
        Ok(out)
    }

    /// Everything `walhook status` shows: the slot from `source`, the rest
    /// from `client`, the ledger's database.
    pub async fn status(&self, source: &Client, client: &Client) -> Result<Status, AdminError> {
        self.ledger.ensure_exists(client).await?;
        let slot = self.slot(source, client).await?;
        let events = self.ledger.event_counts(client).await?;
        let counts = self.ledger.delivery_counts(client).await?;
        let endpoints = self.endpoints_with(client, counts.per_endpoint).await?;
        Ok(Status {
            database: crate::pg::describe_target(&self.cfg.source.url),
            ledger_schema: self.ledger.schema().to_string(),
            ledger_database: setup::separate_ledger(self.cfg)
                .then(|| crate::pg::describe_target(self.cfg.ledger_url())),
            ledger_size: self.ledger.size(client).await?,
            slot,
            events,
            deliveries: counts.all,
            endpoints,
            truncates: self.ledger.truncates(client).await?,
            notices: self.ledger.notices(client).await?,
            backfills: self.ledger.backfills(client, STATUS_BACKFILLS).await?,
        })
    }

    /// Open deliveries (pending, retrying) and disabled ones per endpoint, for
    /// `/metrics`: (endpoint, state) -> count, 0 for configured endpoints with none.
    pub async fn open_counts(
        &self,
        client: &Client,
    ) -> Result<BTreeMap<(String, DeliveryState), i64>, AdminError> {
        let mut out = BTreeMap::new();
        for ep in &self.cfg.endpoints {
            for st in [
                DeliveryState::Pending,
                DeliveryState::Retrying,
                DeliveryState::Disabled,
            ] {
                out.insert((ep.id.clone(), st), 0);
            }
        }
        out.extend(self.ledger.open_counts(client).await?);
        Ok(out)
    }

    /// Deliveries matching `f`, newest first.
    pub async fn list_deliveries(
        &self,
        client: &Client,
        f: &DeliveryFilter,
    ) -> Result<Vec<DeliverySummary>, AdminError> {
        self.ledger.ensure_exists(client).await?;
        let limit = f.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(AdminError::BadRequest {
                what: "limit",
                message: format!("{limit} is out of range; use 1 to {MAX_LIMIT}"),
            });
        }
        Ok(self.ledger.deliveries(client, f, limit).await?)
    }

    /// One delivery (numeric id) or every delivery of an event (event id),
    /// with the event body and every attempt.
    pub async fn show(&self, client: &Client, id: &str) -> Result<Shown, AdminError> {
        self.ledger.ensure_exists(client).await?;
        let id = id.trim();
        if let Ok(n) = id.parse::<i64>() {
            return match self.ledger.delivery(client, n).await? {
                Some(d) => Ok(Shown::One(Box::new(d))),
                None => Err(AdminError::DeliveryNotFound(n)),
            };
        }
        let list = self.ledger.event_deliveries(client, id).await?;
        if list.is_empty() {
            return Err(AdminError::EventNotFound(id.to_string()));
        }
        Ok(Shown::Event(list))
    }

    /// Put one delivery back in the queue with a fresh retry cycle. A
    /// succeeded delivery, or one being attempted right now, is refused.
    pub async fn retry(&self, client: &Client, id: i64) -> Result<RetryOutcome, AdminError> {
        self.ledger.ensure_exists(client).await?;
        match self.ledger.retry_delivery(client, id).await? {
            Requeue::Queued(previous) => Ok(RetryOutcome {
                delivery_id: id,
                previous_status: previous,
                queued: true,
            }),
            Requeue::NotFound => Err(AdminError::DeliveryNotFound(id)),
            Requeue::Succeeded => Err(AdminError::AlreadySucceeded(id)),
            Requeue::InFlight => Err(AdminError::InFlight(id)),
        }
    }

    /// Re-queue every retrying and disabled delivery (of one endpoint) that
    /// is not being attempted right now.
    pub async fn retry_all_failed(
        &self,
        client: &Client,
        endpoint: Option<&str>,
    ) -> Result<RetryAllOutcome, AdminError> {
        self.ledger.ensure_exists(client).await?;
        if let Some(ep) = endpoint {
            configured_endpoint(self.cfg, ep)?;
        }
        let n = self.ledger.retry_all_failed(client, endpoint).await?;
        Ok(RetryAllOutcome {
            requeued: n,
            endpoint: endpoint.map(str::to_string),
        })
    }

    /// `id` is a configured endpoint or a runtime one (made through the
    /// API), or `UnknownEndpoint`.
    pub async fn known_endpoint(&self, client: &Client, id: &str) -> Result<(), AdminError> {
        if let Err(e) = configured_endpoint(self.cfg, id)
            && self.ledger.runtime_endpoint(client, id).await?.is_none()
        {
            return Err(e);
        }
        Ok(())
    }

    /// Enable or disable a configured or runtime endpoint as a whole.
    pub async fn set_endpoint_enabled(
        &self,
        client: &Client,
        id: &str,
        enabled: bool,
        reason: &str,
    ) -> Result<EndpointToggle, AdminError> {
        self.ledger.ensure_exists(client).await?;
        self.known_endpoint(client, id).await?;
        // The row exists once a dispatcher has run; make sure it does now.
        self.ledger
            .register_endpoints(client, &[id.to_string()])
            .await?;
        let reason = (!enabled).then_some(reason);
        let changed = self
            .ledger
            .switch_endpoint(client, id, enabled, reason)
            .await?;
        Ok(EndpointToggle {
            endpoint: id.to_string(),
            enabled,
            changed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn since_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_since("90m", now).unwrap(),
            now - Duration::from_secs(5400)
        );
        assert_eq!(
            parse_since("1970-01-02T00:00:00Z", now).unwrap(),
            UNIX_EPOCH + Duration::from_secs(86_400)
        );
        assert_eq!(
            parse_since("1970-01-03", now).unwrap(),
            UNIX_EPOCH + Duration::from_secs(2 * 86_400)
        );
        let err = parse_since("yesterday", now).unwrap_err().to_string();
        assert!(err.contains("since") && err.contains("yesterday"), "{err}");
    }

    #[test]
    fn origin_hides_credentials() {
        let u: url::Url = "https://user:pw@hooks.example.com:8443/t/SECRETPATH?key=abc"
            .parse()
            .unwrap();
        assert_eq!(url_origin(&u), "https://hooks.example.com:8443");
        let u: url::Url = "http://127.0.0.1:9000/x".parse().unwrap();
        assert_eq!(url_origin(&u), "http://127.0.0.1:9000");
    }

    #[test]
    fn lag_seconds_rules() {
        assert_eq!(lag_seconds(None, true, Some(3.0), Some(4.0)), None);
        assert_eq!(lag_seconds(Some(0), false, Some(3.0), Some(4.0)), Some(0.0));
        assert_eq!(lag_seconds(Some(10), true, Some(3.0), Some(4.0)), Some(3.0));
        assert_eq!(lag_seconds(Some(10), true, None, Some(4.0)), Some(0.0));
        assert_eq!(lag_seconds(Some(10), false, None, Some(4.0)), Some(4.0));
        assert_eq!(lag_seconds(Some(10), false, None, None), None);
    }
}
