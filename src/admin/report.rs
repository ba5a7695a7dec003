//! Typed queries and actions over the ledger for operators, shared by the CLI
//! (`walhook status|deliveries|endpoints`) and the admin HTTP API.
//!
//! Every result type is `Serialize` and holds no secret: endpoints are shown by
//! their URL's origin, the database by `user@host:port/db`. Timestamps are
//! RFC 3339 strings in UTC with milliseconds.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::types::{PgLsn, ToSql};

use crate::config::{Config, EndpointConfig, SigningScheme};
use crate::dispatch::{http, sign};
use crate::event::system;
use crate::ledger::{Ledger, LedgerError};
use crate::pg::unix_ms;

/// Deliveries listed when no limit is given, and the most one call returns.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 1000;

/// Errors of admin queries and actions. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
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
        "unknown endpoint `{id}`: the configured endpoints are {known}. Check the id, or add it to [[endpoints]] in the config."
    )]
    UnknownEndpoint { id: String, known: String },
    #[error("invalid {what}: {message}")]
    BadRequest { what: &'static str, message: String },
    #[error(
        "cannot sign the ping for endpoint `{endpoint}`: {source}. Fix the endpoint's secret in the config."
    )]
    Sign {
        endpoint: String,
        #[source]
        source: sign::SignError,
    },
    #[error(transparent)]
    Http(#[from] http::HttpError),
}

/// A delivery's state in the queue (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Retrying,
    Succeeded,
    Disabled,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Pending,
        DeliveryState::Retrying,
        DeliveryState::Succeeded,
        DeliveryState::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Disabled => "disabled",
        }
    }
}

impl FromStr for DeliveryState {
    type Err = AdminError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `failed` is what operators tend to type for "not delivered yet, failing".
        match s.trim().to_ascii_lowercase().as_str() {
            "pending" => Ok(DeliveryState::Pending),
            "retrying" | "failed" | "failing" => Ok(DeliveryState::Retrying),
            "succeeded" | "success" | "delivered" => Ok(DeliveryState::Succeeded),
            "disabled" => Ok(DeliveryState::Disabled),
            other => Err(AdminError::BadRequest {
                what: "status",
                message: format!(
                    "`{other}` is not a delivery state; use pending, retrying, succeeded or disabled"
                ),
            }),
        }
    }
}

/// Deliveries counted by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    pub pending: i64,
    pub retrying: i64,
    pub succeeded: i64,
    pub disabled: i64,
    pub total: i64,
}

impl StateCounts {
    fn add(&mut self, state: &str, n: i64) {
        match state {
            "pending" => self.pending += n,
            "retrying" => self.retrying += n,
            "succeeded" => self.succeeded += n,
            "disabled" => self.disabled += n,
            _ => {}
        }
        self.total += n;
    }

    pub fn get(&self, state: DeliveryState) -> i64 {
        match state {
            DeliveryState::Pending => self.pending,
            DeliveryState::Retrying => self.retrying,
            DeliveryState::Succeeded => self.succeeded,
            DeliveryState::Disabled => self.disabled,
        }
    }
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

/// Events in the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    pub total: i64,
    pub by_name: BTreeMap<String, i64>,
}

/// An endpoint: its configuration (no secret, URL origin only) and state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointState {
    pub id: String,
    /// Present in the config (an endpoint removed from the config keeps its
    /// ledger row and deliveries).
    pub configured: bool,
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
    pub slot: SlotStatus,
    pub events: EventCounts,
    pub deliveries: StateCounts,
    pub endpoints: Vec<EndpointState>,
    /// TRUNCATEs of mapped tables seen (they emit no row events).
    pub truncates: i64,
}

/// One delivery, as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliverySummary {
    pub id: i64,
    pub event_id: String,
    pub event: String,
    pub endpoint: String,
    /// `slug:record_key`
    pub record: String,
    pub status: DeliveryState,
    pub attempts: i32,
    /// An attempt is under way (a dispatcher holds the lease).
    pub in_flight: bool,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    /// When the next attempt is due (pending and retrying only).
    pub next_attempt_at: Option<String>,
    pub commit_time: String,
    pub created_at: String,
    pub updated_at: String,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptView {
    pub id: i64,
    pub started_at: String,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    /// `status`, `timeout`, `connect` or `other`; absent on success.
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// The headers sent (signatures are HMAC outputs, not secrets).
    pub request_headers: serde_json::Value,
}

/// One delivery with the event body and every attempt, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliverySummary,
    pub body: serde_json::Value,
    pub attempts: Vec<AttemptView>,
}

/// `deliveries show`: a delivery id gives one delivery; an event id gives
/// every delivery of that event (a JSON array).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Shown {
    One(Box<DeliveryDetail>),
    Event(Vec<DeliveryDetail>),
}

/// What to list; every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryState>,
    /// An event id (has `:`), an exact name, or a filter (`lead.*`, `*.delete`).
    pub event: Option<String>,
    pub endpoint: Option<String>,
    /// Only deliveries created at or after this time.
    pub since: Option<SystemTime>,
    /// Only deliveries with a smaller id (paging, newest first).
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

/// How an `event` filter is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventMatch {
    Id(String),
    /// A SQL `LIKE` pattern for the name.
    NameLike(String),
}

/// Event ids contain `:`, names never do; `*` in a name is a wildcard.
pub fn event_match(s: &str) -> EventMatch {
    if s.contains(':') {
        return EventMatch::Id(s.to_string());
    }
    let mut like = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' | '_' | '\\' => {
                like.push('\\');
                like.push(c);
            }
            '*' => like.push('%'),
            c => like.push(c),
        }
    }
    EventMatch::NameLike(like)
}

/// `--since`: a duration back from `now` (`90m`, `2d`), an RFC 3339 time, or
/// a date (`2025-02-21`, midnight UTC).
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, AdminError> {
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
        what: "since",
        message: format!(
            "`{s}` is neither a duration (`90m`, `2d`), an RFC 3339 time (`2025-02-21T08:00:00Z`) nor a date (`2025-02-21`)"
        ),
    })
}

/// RFC 3339 in UTC with milliseconds (`2025-02-21T08:33:28.148Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let ms = unix_ms(t);
    let dt = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    dt.format(&format).unwrap_or_default()
}

fn opt_time(t: Option<SystemTime>) -> Option<String> {
    t.map(rfc3339)
}

/// The URL's `scheme://host[:port]`, which never holds a credential.
pub fn url_origin(url: &url::Url) -> String {
    url.origin().ascii_serialization()
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

fn not_configured_known(cfg: &Config) -> String {
    if cfg.endpoints.is_empty() {
        "(none)".into()
    } else {
        cfg.endpoints
            .iter()
            .map(|e| format!("`{}`", e.id))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The configured endpoint `id`, or `UnknownEndpoint`.
pub fn configured_endpoint<'a>(
    cfg: &'a Config,
    id: &str,
) -> Result<&'a EndpointConfig, AdminError> {
    cfg.endpoint(id).ok_or_else(|| AdminError::UnknownEndpoint {
        id: id.to_string(),
        known: not_configured_known(cfg),
    })
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

    fn q(&self) -> String {
        self.ledger.q()
    }

    /// The slot's lag and state.
    pub async fn slot(&self, client: &Client) -> Result<SlotStatus, AdminError> {
        let s = self.q();
        let name = self.cfg.source.slot.clone();
        let mut out = SlotStatus {
            name: name.clone(),
            ..SlotStatus::default()
        };
        // to_jsonb(s) reads wal_status where it exists (13+) without failing on older servers.
        let row = client
            .query_opt(
                "SELECT s.plugin::text, s.active, s.confirmed_flush_lsn::text,
                        to_jsonb(s) ->> 'wal_status',
                        CASE WHEN pg_is_in_recovery() OR s.confirmed_flush_lsn IS NULL THEN NULL
                             ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::int8 END,
                        extract(epoch FROM r.flush_lag)::float8
                 FROM pg_replication_slots s
                 LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
                 WHERE s.slot_name = $1",
                &[&name],
            )
            .await
            .map_err(LedgerError::from)?;
        let mut flush_lag = None;
        if let Some(r) = row {
            out.exists = true;
            out.plugin = r.get(0);
            out.active = r.get(1);
            out.confirmed_flush_lsn = r.get(2);
            out.wal_status = r.get(3);
            out.lag_bytes = r.get(4);
            flush_lag = r.get(5);
        }
        let mut since_progress = None;
        let exists: bool = client
            .query_one(
                "SELECT to_regclass(format('%I.progress', $1::text)) IS NOT NULL",
                &[&self.ledger.schema()],
            )
            .await
            .map_err(LedgerError::from)?
            .get(0);
        if exists {
            let row = client
                .query_opt(
                    &format!(
                        "SELECT lsn, updated_at, extract(epoch FROM now() - updated_at)::float8
                         FROM {s}.progress WHERE slot = $1"
                    ),
                    &[&name],
                )
                .await
                .map_err(LedgerError::from)?;
            if let Some(r) = row {
                out.ledger_lsn = Some(r.get::<_, PgLsn>(0).to_string());
                out.ledger_updated_at = Some(rfc3339(r.get(1)));
                since_progress = r.get(2);
            }
        }
        out.lag_seconds = lag_seconds(out.lag_bytes, out.active, flush_lag, since_progress);
        Ok(out)
    }

    /// Deliveries by state, overall and per endpoint.
    async fn state_counts(
        &self,
        client: &Client,
    ) -> Result<(StateCounts, BTreeMap<String, StateCounts>), AdminError> {
        let s = self.q();
        let rows = client
            .query(
                &format!("SELECT endpoint_id, status, count(*) FROM {s}.deliveries GROUP BY 1, 2"),
                &[],
            )
            .await
            .map_err(LedgerError::from)?;
        let mut all = StateCounts::default();
        let mut per: BTreeMap<String, StateCounts> = BTreeMap::new();
        for r in rows {
            let ep: String = r.get(0);
            let st: String = r.get(1);
            let n: i64 = r.get(2);
            all.add(&st, n);
            per.entry(ep).or_default().add(&st, n);
        }
        Ok((all, per))
    }

    /// Configured endpoints and any others the ledger knows, with their state.
    pub async fn endpoints(&self, client: &Client) -> Result<Vec<EndpointState>, AdminError> {
        self.ledger.ensure_exists(client).await?;
        let (_, mut per) = self.state_counts(client).await?;
        self.endpoints_with(client, &mut per).await
    }

    async fn endpoints_with(
        &self,
        client: &Client,
        per: &mut BTreeMap<String, StateCounts>,
    ) -> Result<Vec<EndpointState>, AdminError> {
        let s = self.q();
        let rows = client
            .query(
                &format!(
                    "SELECT id, enabled, disabled_at, disabled_reason, failing_since
                     FROM {s}.endpoints ORDER BY id"
                ),
                &[],
            )
            .await
            .map_err(LedgerError::from)?;
        let mut ledger_rows: BTreeMap<String, tokio_postgres::Row> = rows
            .into_iter()
            .map(|r| (r.get::<_, String>(0), r))
            .collect();
        let mut out = Vec::new();
        let fill = |st: &mut EndpointState, r: Option<&tokio_postgres::Row>| {
            if let Some(r) = r {
                st.enabled = r.get(1);
                st.disabled_at = opt_time(r.get(2));
                st.disabled_reason = r.get(3);
                st.failing_since = opt_time(r.get(4));
            }
        };
        for ep in &self.cfg.endpoints {
            let mut st = EndpointState {
                id: ep.id.clone(),
                configured: true,
                target: Some(url_origin(&ep.url)),
                events: ep.events.clone(),
                signing: ep
                    .signing
                    .iter()
                    .map(|s| scheme_name(*s).to_string())
                    .collect(),
                timeout_ms: Some(ep.timeout.as_millis() as u64),
                enabled: true,
                disabled_at: None,
                disabled_reason: None,
                failing_since: None,
                deliveries: per.remove(&ep.id).unwrap_or_default(),
            };
            fill(&mut st, ledger_rows.remove(&ep.id).as_ref());
            out.push(st);
        }
        // Endpoints no longer configured but still holding deliveries or state.
        let mut others: Vec<String> = ledger_rows.keys().cloned().collect();
        others.extend(
            per.keys()
                .filter(|k| !ledger_rows.contains_key(*k))
                .cloned(),
        );
        others.sort();
        others.dedup();
        for id in others {
            let mut st = EndpointState {
                id: id.clone(),
                configured: false,
                target: None,
                events: Vec::new(),
                signing: Vec::new(),
                timeout_ms: None,
                enabled: true,
                disabled_at: None,
                disabled_reason: None,
                failing_since: None,
                deliveries: per.remove(&id).unwrap_or_default(),
            };
            fill(&mut st, ledger_rows.get(&id));
            out.push(st);
        }
        Ok(out)
    }

    /// Everything `walhook status` shows.
    pub async fn status(&self, client: &Client) -> Result<Status, AdminError> {
        self.ledger.ensure_exists(client).await?;
        let s = self.q();
        let slot = self.slot(client).await?;
        let mut events = EventCounts::default();
        for r in client
            .query(
                &format!("SELECT name, count(*) FROM {s}.events GROUP BY name ORDER BY name"),
                &[],
            )
            .await
            .map_err(LedgerError::from)?
        {
            let n: i64 = r.get(1);
            events.total += n;
            events.by_name.insert(r.get(0), n);
        }
        let (deliveries, mut per) = self.state_counts(client).await?;
        let endpoints = self.endpoints_with(client, &mut per).await?;
        let truncates = client
            .query_opt(
                &format!("SELECT value FROM {s}.counters WHERE name = 'truncates'"),
                &[],
            )
            .await
            .map_err(LedgerError::from)?
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        Ok(Status {
            database: crate::pg::describe_target(&self.cfg.source.url),
            ledger_schema: self.ledger.schema().to_string(),
            slot,
            events,
            deliveries,
            endpoints,
            truncates,
        })
    }

    /// Open deliveries (pending, retrying) and disabled ones per endpoint, for
    /// `/metrics`: (endpoint, state) -> count.
    pub async fn open_counts(
        &self,
        client: &Client,
    ) -> Result<BTreeMap<(String, DeliveryState), i64>, AdminError> {
        let s = self.q();
        let rows = client
            .query(
                &format!(
                    "SELECT endpoint_id, status, count(*) FROM {s}.deliveries
                     WHERE status <> 'succeeded' GROUP BY 1, 2"
                ),
                &[],
            )
            .await
            .map_err(LedgerError::from)?;
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
        for r in rows {
            let st: String = r.get(1);
            if let Ok(state) = st.parse::<DeliveryState>() {
                out.insert((r.get(0), state), r.get(2));
            }
        }
        Ok(out)
    }

    const SUMMARY_COLUMNS: &'static str =
        "d.id, e.event_id, e.name, d.endpoint_id, d.record, d.status, d.attempts,
        coalesce(d.lease_until > now(), false), d.last_status_code, d.last_error,
        CASE WHEN d.status IN ('pending', 'retrying') THEN d.next_attempt_at END,
        e.commit_time, d.created_at, d.updated_at";

    fn summary(r: &tokio_postgres::Row) -> DeliverySummary {
        let status: String = r.get(5);
        DeliverySummary {
            id: r.get(0),
            event_id: r.get(1),
            event: r.get(2),
            endpoint: r.get(3),
            record: r.get(4),
            status: status.parse().unwrap_or(DeliveryState::Pending),
            attempts: r.get(6),
            in_flight: r.get(7),
            last_status_code: r.get(8),
            last_error: r.get(9),
            next_attempt_at: opt_time(r.get(10)),
            commit_time: rfc3339(r.get(11)),
            created_at: rfc3339(r.get(12)),
            updated_at: rfc3339(r.get(13)),
        }
    }

    /// Deliveries matching `f`, newest first.
    pub async fn list_deliveries(
        &self,
        client: &Client,
        f: &DeliveryFilter,
    ) -> Result<Vec<DeliverySummary>, AdminError> {
        self.ledger.ensure_exists(client).await?;
        let s = self.q();
        let limit = f.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(AdminError::BadRequest {
                what: "limit",
                message: format!("{limit} is out of range; use 1 to {MAX_LIMIT}"),
            });
        }
        let (event_id, name_like) = match f.event.as_deref().map(event_match) {
            None => (None, None),
            Some(EventMatch::Id(id)) => (Some(id), None),
            Some(EventMatch::NameLike(p)) => (None, Some(p)),
        };
        let status = f.status.map(|s| s.as_str());
        let params: [&(dyn ToSql + Sync); 7] = [
            &status,
            &event_id,
            &name_like,
            &f.endpoint,
            &f.since,
            &f.before,
            &limit,
        ];
        let rows = client
            .query(
                &format!(
                    "SELECT {cols}
                     FROM {s}.deliveries d JOIN {s}.events e ON e.seq = d.event_seq
                     WHERE ($1::text IS NULL OR d.status = $1)
                       AND ($2::text IS NULL OR e.event_id = $2)
                       AND ($3::text IS NULL OR e.name LIKE $3)
                       AND ($4::text IS NULL OR d.endpoint_id = $4)
                       AND ($5::timestamptz IS NULL OR d.created_at >= $5)
                       AND ($6::int8 IS NULL OR d.id < $6)
                     ORDER BY d.id DESC
                     LIMIT $7",
                    cols = Self::SUMMARY_COLUMNS
                ),
                &params,
            )
            .await
            .map_err(LedgerError::from)?;
        Ok(rows.iter().map(Self::summary).collect())
    }

    async fn details(
        &self,
        client: &Client,
        rows: Vec<tokio_postgres::Row>,
    ) -> Result<Vec<DeliveryDetail>, AdminError> {
        let s = self.q();
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let mut attempts: BTreeMap<i64, Vec<AttemptView>> = BTreeMap::new();
        for r in client
            .query(
                &format!(
                    "SELECT delivery_id, id, started_at, duration_ms, status_code, error_kind, error,
                            response_excerpt, request_headers
                     FROM {s}.attempts WHERE delivery_id = ANY($1) ORDER BY id"
                ),
                &[&ids],
            )
            .await
            .map_err(LedgerError::from)?
        {
            attempts.entry(r.get(0)).or_default().push(AttemptView {
                id: r.get(1),
                started_at: rfc3339(r.get(2)),
                duration_ms: r.get(3),
                status_code: r.get(4),
                error_kind: r
                    .get::<_, Option<String>>(5)
                    .filter(|k| k != "none"),
                error: r.get(6),
                response_excerpt: r.get(7),
                request_headers: r.get(8),
            });
        }
        Ok(rows
            .iter()
            .map(|r| {
                let body: String = r.get(14);
                let delivery = Self::summary(r);
                DeliveryDetail {
                    attempts: attempts.remove(&delivery.id).unwrap_or_default(),
                    body: serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
                    delivery,
                }
            })
            .collect())
    }

    /// One delivery (numeric id) or every delivery of an event (event id),
    /// with the event body and every attempt.
    pub async fn show(&self, client: &Client, id: &str) -> Result<Shown, AdminError> {
        self.ledger.ensure_exists(client).await?;
        let s = self.q();
        let cols = Self::SUMMARY_COLUMNS;
        let id = id.trim();
        if let Ok(n) = id.parse::<i64>() {
            let rows = client
                .query(
                    &format!(
                        "SELECT {cols}, e.body FROM {s}.deliveries d JOIN {s}.events e ON e.seq = d.event_seq
                         WHERE d.id = $1"
                    ),
                    &[&n],
                )
                .await
                .map_err(LedgerError::from)?;
            let mut v = self.details(client, rows).await?;
            return match v.pop() {
                Some(d) => Ok(Shown::One(Box::new(d))),
                None => Err(AdminError::DeliveryNotFound(n)),
            };
        }
        let rows = client
            .query(
                &format!(
                    "SELECT {cols}, e.body FROM {s}.deliveries d JOIN {s}.events e ON e.seq = d.event_seq
                     WHERE e.event_id = $1 ORDER BY d.id"
                ),
                &[&id],
            )
            .await
            .map_err(LedgerError::from)?;
        if rows.is_empty() {
            return Err(AdminError::EventNotFound(id.to_string()));
        }
        Ok(Shown::Event(self.details(client, rows).await?))
    }

    /// Put one delivery back in the queue with a fresh retry cycle. A
    /// succeeded delivery, or one being attempted right now, is refused.
    pub async fn retry(&self, client: &Client, id: i64) -> Result<RetryOutcome, AdminError> {
        self.ledger.ensure_exists(client).await?;
        let s = self.q();
        let row = client
            .query_opt(
                &format!(
                    "SELECT status, coalesce(lease_until > now(), false) FROM {s}.deliveries WHERE id = $1"
                ),
                &[&id],
            )
            .await
            .map_err(LedgerError::from)?;
        let Some(row) = row else {
            return Err(AdminError::DeliveryNotFound(id));
        };
        let previous: DeliveryState = row
            .get::<_, String>(0)
            .parse()
            .unwrap_or(DeliveryState::Pending);
        if previous == DeliveryState::Succeeded {
            return Err(AdminError::AlreadySucceeded(id));
        }
        if row.get::<_, bool>(1) {
            return Err(AdminError::InFlight(id));
        }
        if !self.ledger.retry_delivery(client, id).await? {
            return Err(AdminError::DeliveryNotFound(id));
        }
        Ok(RetryOutcome {
            delivery_id: id,
            previous_status: previous,
            queued: true,
        })
    }

    /// Re-queue every retrying and disabled delivery (of one endpoint).
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

    /// Enable or disable a configured endpoint as a whole.
    pub async fn set_endpoint_enabled(
        &self,
        client: &Client,
        id: &str,
        enabled: bool,
        reason: &str,
    ) -> Result<EndpointToggle, AdminError> {
        self.ledger.ensure_exists(client).await?;
        configured_endpoint(self.cfg, id)?;
        // The row exists once a dispatcher has run; make sure it does now.
        self.ledger
            .register_endpoints(client, &[id.to_string()])
            .await?;
        let s = self.q();
        let was: bool = client
            .query_one(
                &format!("SELECT enabled FROM {s}.endpoints WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(LedgerError::from)?
            .get(0);
        if was != enabled {
            self.ledger
                .set_endpoint_enabled(client, id, enabled, (!enabled).then_some(reason))
                .await?;
        }
        Ok(EndpointToggle {
            endpoint: id.to_string(),
            enabled,
            changed: was != enabled,
        })
    }
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

/// Send a signed `walhook.ping` straight to a configured endpoint (no ledger).
pub async fn ping(cfg: &Config, id: &str) -> Result<PingOutcome, AdminError> {
    let ep = configured_endpoint(cfg, id)?;
    let client = http::build_client()?;
    ping_with(cfg, ep, &client, SystemTime::now()).await
}

/// [`ping`] with a given HTTP client and clock.
pub async fn ping_with(
    cfg: &Config,
    ep: &EndpointConfig,
    client: &reqwest::Client,
    now: SystemTime,
) -> Result<PingOutcome, AdminError> {
    let now_ms = unix_ms(now);
    let event = system::ping(&cfg.source.name, &ep.id, now_ms);
    let event_id = event.id;
    let body = Bytes::from(event.body);
    let headers = sign::signed_headers(
        ep,
        &cfg.delivery.header_prefix,
        &event_id,
        system::PING,
        &body,
        now_ms.div_euclid(1000),
    );
    let rec = http::attempt(client, &ep.url, &headers, body, ep.timeout).await;
    Ok(PingOutcome {
        endpoint: ep.id.clone(),
        target: url_origin(&ep.url),
        event_id,
        ok: rec.outcome.is_success(),
        status_code: rec.outcome.status(),
        outcome: rec.outcome.message(),
        duration_ms: rec.duration.as_millis().min(u64::MAX as u128) as u64,
        response_excerpt: rec.response_excerpt,
    })
}

/// Slot lag for humans: `lag 1.2 MB / 3s`, or what is known of it.
pub fn human_lag(bytes: Option<i64>, seconds: Option<f64>) -> String {
    match (bytes, seconds) {
        (Some(b), Some(t)) => format!(
            "lag {} / {}",
            human_bytes(b),
            human_duration(Duration::from_secs_f64(t))
        ),
        (Some(b), None) => format!("lag {}", human_bytes(b)),
        _ => "lag unknown".into(),
    }
}

/// A duration in the largest unit that keeps it readable (`3s`, `2m05s`, `4h10m`, `2d3h`).
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        if d.as_millis() < 10_000 && d.subsec_millis() != 0 {
            return format!("{:.1}s", d.as_secs_f64());
        }
        return format!("{s}s");
    }
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins:02}m")
    } else {
        format!("{mins}m{secs:02}s")
    }
}

/// Bytes with a binary unit (`512 B`, `1.5 MiB`).
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n.abs() < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v.abs() < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn event_filters() {
        assert_eq!(
            event_match("app:lead:1:k:lead.create:abcdefgh"),
            EventMatch::Id("app:lead:1:k:lead.create:abcdefgh".into())
        );
        assert_eq!(event_match("lead.*"), EventMatch::NameLike("lead.%".into()));
        assert_eq!(
            event_match("*.delete"),
            EventMatch::NameLike("%.delete".into())
        );
        assert_eq!(
            event_match("my_obj.create"),
            EventMatch::NameLike("my\\_obj.create".into())
        );
    }

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
    fn timestamps_are_utc_with_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_740_126_808_148);
        assert_eq!(rfc3339(t), "2025-02-21T08:33:28.148Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
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

    #[test]
    fn states_parse_and_print() {
        for s in DeliveryState::ALL {
            assert_eq!(s.as_str().parse::<DeliveryState>().unwrap(), s);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert_eq!(
            "failed".parse::<DeliveryState>().unwrap(),
            DeliveryState::Retrying
        );
        assert!("lost".parse::<DeliveryState>().is_err());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human_duration(Duration::from_secs(42)), "42s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(4 * 3600 + 600)), "4h10m");
        assert_eq!(
            human_duration(Duration::from_secs(2 * 86_400 + 3 * 3600)),
            "2d3h"
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn ping_body_is_the_documented_shape() {
        let v: serde_json::Value = serde_json::from_str(system::PING_BODY).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"before": {}, "after": {"ping": true}, "diff": {}})
        );
    }
}
