//! The admin HTTP API: `/healthz`, `/readyz`, `/metrics` (Prometheus text),
//! a JSON API mirroring the CLI under `/api`, and the delivery history page
//! at `/`.
//!
//! Promises:
//! - When `admin.token` is configured, every route but `/healthz` and
//!   `/readyz` needs `Authorization: Bearer <token>` (the page also takes
//!   `?token=` once and keeps it in the browser tab); tokens are compared in
//!   constant time.
//! - Errors are an [`ApiError`]: a status code and a message meant for the
//!   caller; database errors are logged, never returned.
//! - No secret (endpoint secret, admin token, database password) is ever in
//!   a response.
//! - [`router`] is separate from serving it, so tests drive it directly.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Secret};
use crate::dispatch::http;
use crate::ledger::LedgerError;
use crate::metrics::{LATENCY_BUCKETS, Metrics};

use super::report::{
    AdminError, DeliveryFilter, DeliveryState, Reports, SlotStatus, configured_endpoint,
    parse_since, ping_with,
};

/// The history page (plain HTML and JavaScript, no build step).
pub const PAGE: &str = include_str!("page.html");

/// How long a request waits for a database connection.
const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the admin API, each with its status code. Messages are meant
/// for the caller; internals (SQL, connection details) are only logged.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token is required (Authorization: Bearer <admin token>)")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "cross-origin requests are not accepted (open the admin page from this server's own address)"
    )]
    Forbidden,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error; see the walhook log")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::DeliveryNotFound(_)
            | AdminError::EventNotFound(_)
            | AdminError::UnknownEndpoint { .. } => ApiError::NotFound(e.to_string()),
            AdminError::BadRequest { .. } => ApiError::BadRequest(e.to_string()),
            AdminError::AlreadySucceeded(_) | AdminError::InFlight(_) => {
                ApiError::Conflict(e.to_string())
            }
            AdminError::Ledger(LedgerError::NotSetUp { .. }) => {
                ApiError::Unavailable(e.to_string())
            }
            AdminError::Ledger(ref inner) => {
                tracing::warn!(error = %inner, "admin API: ledger query failed");
                ApiError::Unavailable("the ledger database is not reachable right now".into())
            }
            AdminError::Sign { .. } | AdminError::Http(_) => {
                tracing::error!(error = %e, "admin API");
                ApiError::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.status();
        let mut resp = (
            code,
            Json(serde_json::json!({ "error": code.as_u16(), "message": self.to_string() })),
        )
            .into_response();
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"walhook\""),
            );
        }
        resp
    }
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr} for the admin API: {source}. Is another walhook (or another program) using it? Change admin.listen, or set it to \"\" to switch the admin HTTP off."
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("admin HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// A lazily (re)connected database client shared by the handlers.
struct Db {
    url: Secret,
    conn: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl Db {
    async fn get(&self) -> Result<Arc<Client>, ApiError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let connect =
            crate::pg::connect(&self.url, "walhook admin", crate::pg::DEFAULT_LOGIN_TIMEOUT);
        match tokio::time::timeout(DB_TIMEOUT, connect).await {
            Ok(Ok(c)) => {
                let c = Arc::new(c);
                *slot = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "admin API: cannot connect to the database");
                Err(ApiError::Unavailable(
                    "the ledger database is not reachable right now".into(),
                ))
            }
            Err(_) => Err(ApiError::Unavailable(
                "the ledger database did not answer in time".into(),
            )),
        }
    }
}

/// What the handlers share: config, this process's metrics, a database
/// client and an HTTP client (for pings).
pub struct AdminState {
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    /// This process reads the slot (then `/readyz` also wants it streaming).
    capture: bool,
    db: Db,
    http: reqwest::Client,
    token_digest: Option<[u8; 32]>,
    page_csp: String,
}

impl AdminState {
    pub fn new(
        cfg: Arc<Config>,
        metrics: Arc<Metrics>,
        capture: bool,
    ) -> Result<Arc<AdminState>, ServeError> {
        Ok(Arc::new(AdminState {
            token_digest: cfg.admin.token.as_ref().map(|t| digest(t.expose())),
            db: Db {
                url: cfg.source.url.clone(),
                conn: tokio::sync::Mutex::new(None),
            },
            cfg,
            metrics,
            capture,
            http: http::build_client()?,
            page_csp: page_csp(PAGE),
        }))
    }

    fn reports(&self) -> Reports<'_> {
        Reports::new(&self.cfg)
    }

    /// Whether `given` is the configured token (true when none is configured).
    fn authorized(&self, given: Option<&str>) -> bool {
        match (&self.token_digest, given) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(g)) => constant_time_eq(want, &digest(g)),
        }
    }
}

impl AdminState {
    /// Without a token, only a loopback listener is allowed (the config sees
    /// to it); also refuse requests naming another host, which is what a DNS
    /// rebinding page in the operator's browser would send.
    fn check_host(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.token_digest.is_some() {
            return Ok(());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if host_is_local(host) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// `localhost`, or an IP literal (with or without a port).
fn host_is_local(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Compares digests (fixed length) without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A CSP that allows exactly the page's inline script (by hash) and nothing
/// from elsewhere.
fn page_csp(page: &str) -> String {
    let script = page
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map(|(s, _)| s)
        .unwrap_or("");
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script.as_bytes()));
    format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Token and same-origin guard for everything but `/healthz`, `/readyz` and `/`.
async fn guard(State(st): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    if let Err(e) = check_origin(&req).and_then(|()| st.check_host(req.headers())) {
        return e.into_response();
    }
    if !st.authorized(bearer(req.headers())) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// A browser on another site must not be able to make changes (or, with no
/// token, read) through the operator's loopback admin port: refuse
/// cross-origin writes, and host names other than the ones we serve.
fn check_origin(req: &Request) -> Result<(), ApiError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if req.method() != axum::http::Method::GET
        && let Some(origin) = req.headers().get(header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or("");
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
        if origin_host != host {
            return Err(ApiError::Forbidden);
        }
    }
    Ok(())
}

/// The routes, on `state`.
pub fn router(state: Arc<AdminState>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/deliveries", get(list_deliveries))
        .route("/api/deliveries/retry-failed", post(retry_failed))
        .route("/api/deliveries/{id}", get(show_delivery))
        .route("/api/deliveries/{id}/retry", post(retry_delivery))
        .route("/api/endpoints", get(list_endpoints))
        .route("/api/endpoints/{id}/enable", post(enable_endpoint))
        .route("/api/endpoints/{id}/disable", post(disable_endpoint))
        .route("/api/endpoints/{id}/ping", post(ping_endpoint))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(page))
        .merge(protected)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<Arc<AdminState>>) -> Response {
    let ledger_ok = match st.db.get().await {
        Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    let streaming = st.metrics.streaming();
    let ready = ledger_ok && (!st.capture || streaming);
    let body = serde_json::json!({
        "ready": ready,
        "ledger": ledger_ok,
        "capture": st.capture,
        "streaming": streaming,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    token: Option<String>,
}

async fn page(
    State(st): State<Arc<AdminState>>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    let given = bearer(&headers).or(q.token.as_deref());
    let mut resp = if let Err(e) = st.check_host(&headers) {
        e.into_response()
    } else if st.authorized(given) {
        Html(PAGE).into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Html(
                "<!doctype html><meta charset=utf-8><title>walhook</title>\
                 <p>This walhook admin page needs the admin token: open it as \
                 <code>/?token=&lt;admin token&gt;</code>.</p>",
            ),
        )
            .into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&st.page_csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn status(State(st): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let db = st.db.get().await?;
    Ok(Json(st.reports().status(&db).await?).into_response())
}

/// Query of `GET /api/deliveries`; empty values mean "any".
#[derive(Debug, Default, Deserialize)]
pub struct DeliveriesQuery {
    pub status: Option<String>,
    pub event: Option<String>,
    pub endpoint: Option<String>,
    pub since: Option<String>,
    pub before: Option<String>,
    pub limit: Option<String>,
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl DeliveriesQuery {
    /// The filter, or a 400 naming the bad parameter.
    pub fn to_filter(&self, now: SystemTime) -> Result<DeliveryFilter, AdminError> {
        let int = |what: &'static str, v: Option<&str>| -> Result<Option<i64>, AdminError> {
            v.map(|v| {
                v.parse::<i64>().map_err(|_| AdminError::BadRequest {
                    what,
                    message: format!("`{v}` is not a whole number"),
                })
            })
            .transpose()
        };
        Ok(DeliveryFilter {
            status: non_empty(&self.status).map(str::parse).transpose()?,
            event: non_empty(&self.event).map(str::to_string),
            endpoint: non_empty(&self.endpoint).map(str::to_string),
            since: non_empty(&self.since)
                .map(|s| parse_since(s, now))
                .transpose()?,
            before: int("before", non_empty(&self.before))?,
            limit: int("limit", non_empty(&self.limit))?,
        })
    }
}

async fn list_deliveries(
    State(st): State<Arc<AdminState>>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Response, ApiError> {
    let filter = q.to_filter(SystemTime::now())?;
    let db = st.db.get().await?;
    Ok(Json(st.reports().list_deliveries(&db, &filter).await?).into_response())
}

async fn show_delivery(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let db = st.db.get().await?;
    Ok(Json(st.reports().show(&db, &id).await?).into_response())
}

fn delivery_id(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "`{}` is not a delivery id (a whole number)",
            id.chars().take(80).collect::<String>()
        ))
    })
}

async fn retry_delivery(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = delivery_id(&id)?;
    let db = st.db.get().await?;
    let out = st.reports().retry(&db, id).await?;
    tracing::info!(delivery = id, "delivery re-queued through the admin API");
    Ok(Json(out).into_response())
}

#[derive(Debug, Deserialize)]
struct RetryFailedQuery {
    endpoint: Option<String>,
}

async fn retry_failed(
    State(st): State<Arc<AdminState>>,
    Query(q): Query<RetryFailedQuery>,
) -> Result<Response, ApiError> {
    let db = st.db.get().await?;
    let out = st
        .reports()
        .retry_all_failed(&db, non_empty(&q.endpoint))
        .await?;
    tracing::info!(requeued = out.requeued, endpoint = ?out.endpoint, "failed deliveries re-queued through the admin API");
    Ok(Json(out).into_response())
}

async fn list_endpoints(State(st): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let db = st.db.get().await?;
    Ok(Json(st.reports().endpoints(&db).await?).into_response())
}

async fn set_enabled(st: &AdminState, id: &str, enabled: bool) -> Result<Response, ApiError> {
    let db = st.db.get().await?;
    let out = st
        .reports()
        .set_endpoint_enabled(&db, id, enabled, "disabled through the admin API")
        .await?;
    if out.changed {
        tracing::info!(endpoint = %id, enabled, "endpoint state changed through the admin API");
    }
    Ok(Json(out).into_response())
}

async fn enable_endpoint(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&st, &id, true).await
}

async fn disable_endpoint(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&st, &id, false).await
}

async fn ping_endpoint(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ep = configured_endpoint(&st.cfg, &id)?;
    let out = ping_with(&st.cfg, ep, &st.http, SystemTime::now()).await?;
    Ok(Json(out).into_response())
}

/// Gauges read from the database when `/metrics` is scraped.
#[derive(Debug, Clone, Default)]
pub struct DbGauges {
    pub slot: SlotStatus,
    /// (endpoint, state) -> deliveries; pending, retrying and disabled.
    pub queue: BTreeMap<(String, DeliveryState), i64>,
    /// endpoint -> enabled
    pub endpoints: BTreeMap<String, bool>,
}

async fn db_gauges(st: &AdminState) -> Result<DbGauges, ApiError> {
    let db = st.db.get().await?;
    let r = st.reports();
    let slot = r.slot(&db).await?;
    let queue = r.open_counts(&db).await?;
    let endpoints = r
        .endpoints(&db)
        .await?
        .into_iter()
        .filter(|e| e.configured)
        .map(|e| (e.id, e.enabled))
        .collect();
    Ok(DbGauges {
        slot,
        queue,
        endpoints,
    })
}

async fn metrics(State(st): State<Arc<AdminState>>) -> Response {
    let gauges = db_gauges(&st).await.ok();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        render_metrics(&st.metrics, gauges.as_ref()),
    )
        .into_response()
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The Prometheus text exposition of this process's counters and, when the
/// database answered, the ledger's gauges.
pub fn render_metrics(m: &Metrics, db: Option<&DbGauges>) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "walhook_events_captured_total",
        "counter",
        "Events this process captured into the ledger, by event name.",
    );
    for (name, n) in m.events_captured() {
        let _ = writeln!(
            out,
            "walhook_events_captured_total{{event=\"{}\"}} {n}",
            label(&name)
        );
    }
    family(
        &mut out,
        "walhook_deliveries_total",
        "counter",
        "Delivery attempts this process finished, by endpoint and outcome (success; failure: a retry is scheduled; disabled: gave up).",
    );
    for ((ep, outcome), n) in m.deliveries() {
        let _ = writeln!(
            out,
            "walhook_deliveries_total{{endpoint=\"{}\",outcome=\"{}\"}} {n}",
            label(&ep),
            label(&outcome)
        );
    }
    family(
        &mut out,
        "walhook_attempt_duration_seconds",
        "histogram",
        "Duration of delivery attempts made by this process.",
    );
    let h = m.latency();
    let mut cumulative = 0u64;
    for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += h.counts[i];
        let _ = writeln!(
            out,
            "walhook_attempt_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "walhook_attempt_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(out, "walhook_attempt_duration_seconds_sum {}", h.sum);
    let _ = writeln!(out, "walhook_attempt_duration_seconds_count {}", h.count);
    family(
        &mut out,
        "walhook_truncates_total",
        "counter",
        "TRUNCATEs of mapped tables this process saw (they emit no row events).",
    );
    let _ = writeln!(out, "walhook_truncates_total {}", m.truncates());
    family(
        &mut out,
        "walhook_streaming",
        "gauge",
        "1 while this process reads the replication slot.",
    );
    let _ = writeln!(out, "walhook_streaming {}", u8::from(m.streaming()));
    family(
        &mut out,
        "walhook_ledger_up",
        "gauge",
        "1 when the ledger database answered this scrape.",
    );
    let _ = writeln!(out, "walhook_ledger_up {}", u8::from(db.is_some()));
    let Some(db) = db else {
        return out;
    };
    if let Some(b) = db.slot.lag_bytes {
        family(
            &mut out,
            "walhook_replication_lag_bytes",
            "gauge",
            "WAL retained for the slot beyond what walhook acknowledged.",
        );
        let _ = writeln!(out, "walhook_replication_lag_bytes {b}");
    }
    if let Some(s) = db.slot.lag_seconds {
        family(
            &mut out,
            "walhook_replication_lag_seconds",
            "gauge",
            "How far behind the slot is in time (0 when caught up).",
        );
        let _ = writeln!(out, "walhook_replication_lag_seconds {s}");
    }
    family(
        &mut out,
        "walhook_slot_active",
        "gauge",
        "1 while some process reads the replication slot.",
    );
    let _ = writeln!(out, "walhook_slot_active {}", u8::from(db.slot.active));
    family(
        &mut out,
        "walhook_deliveries_queued",
        "gauge",
        "Deliveries in the ledger by endpoint and state: pending and retrying (the queue), disabled (gave up).",
    );
    for ((ep, state), n) in &db.queue {
        let _ = writeln!(
            out,
            "walhook_deliveries_queued{{endpoint=\"{}\",state=\"{}\"}} {n}",
            label(ep),
            state.as_str()
        );
    }
    family(
        &mut out,
        "walhook_endpoint_enabled",
        "gauge",
        "1 when the endpoint is enabled, 0 when disabled as a whole.",
    );
    for (ep, on) in &db.endpoints {
        let _ = writeln!(
            out,
            "walhook_endpoint_enabled{{endpoint=\"{}\"}} {}",
            label(ep),
            u8::from(*on)
        );
    }
    out
}

/// A bound admin server, not yet serving (binding first lets `run` fail
/// fast on a taken port).
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
}

impl AdminServer {
    /// Bind `cfg.admin.listen`; `None` when the admin HTTP is switched off.
    pub async fn bind(
        cfg: Arc<Config>,
        metrics: Arc<Metrics>,
        capture: bool,
    ) -> Result<Option<AdminServer>, ServeError> {
        let Some(addr) = cfg.admin.listen else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let state = AdminState::new(cfg, metrics, capture)?;
        Ok(Some(AdminServer { listener, state }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown`; open connections get a few seconds to finish.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "admin HTTP listening");
        let app = router(self.state);
        let stop = shutdown.clone();
        let server = axum::serve(self.listener, app).with_graceful_shutdown(stop.cancelled_owned());
        tokio::select! {
            r = server => r?,
            _ = async {
                shutdown.cancelled().await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            } => tracing::debug!("admin HTTP: connections still open at shutdown; closing them"),
        }
        Ok(())
    }
}

/// Bind `cfg.admin.listen` and serve until `shutdown` (nothing when the
/// admin HTTP is off).
pub async fn serve(
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    capture: bool,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    match AdminServer::bind(cfg, metrics, capture).await? {
        Some(server) => server.serve(shutdown).await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_is_cumulative_and_escaped() {
        let m = Metrics::new();
        m.event_captured("lead.create");
        m.event_captured("lead.create");
        m.delivery_outcome("crm", "success");
        m.delivery_outcome("we\"ird", "failure");
        m.observe_attempt_seconds(0.003);
        m.observe_attempt_seconds(0.2);
        m.observe_attempt_seconds(100.0);
        let text = render_metrics(&m, None);
        assert!(text.contains("walhook_events_captured_total{event=\"lead.create\"} 2\n"));
        assert!(
            text.contains("walhook_deliveries_total{endpoint=\"crm\",outcome=\"success\"} 1\n")
        );
        assert!(text.contains("endpoint=\"we\\\"ird\""), "{text}");
        assert!(text.contains("walhook_attempt_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("walhook_attempt_duration_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(text.contains("walhook_attempt_duration_seconds_bucket{le=\"30\"} 2\n"));
        assert!(text.contains("walhook_attempt_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("walhook_attempt_duration_seconds_count 3\n"));
        assert!(text.contains("walhook_ledger_up 0\n"));
        assert!(!text.contains("walhook_replication_lag_bytes"));

        let mut g = DbGauges::default();
        g.slot.lag_bytes = Some(1234);
        g.slot.lag_seconds = Some(0.0);
        g.queue.insert(("crm".into(), DeliveryState::Retrying), 4);
        g.endpoints.insert("crm".into(), false);
        let text = render_metrics(&m, Some(&g));
        assert!(text.contains("walhook_replication_lag_bytes 1234\n"));
        assert!(text.contains("walhook_replication_lag_seconds 0\n"));
        assert!(
            text.contains("walhook_deliveries_queued{endpoint=\"crm\",state=\"retrying\"} 4\n")
        );
        assert!(text.contains("walhook_endpoint_enabled{endpoint=\"crm\"} 0\n"));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {base} ")), "{line}");
        }
    }

    #[test]
    fn local_hosts() {
        for h in [
            "localhost",
            "localhost:9187",
            "127.0.0.1:9187",
            "[::1]:9187",
            "::1",
            "10.0.0.1",
        ] {
            assert!(host_is_local(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:9187",
            "127.0.0.1.nip.io:80",
            "",
        ] {
            assert!(!host_is_local(h), "{h}");
        }
    }

    #[test]
    fn token_comparison() {
        let a = digest("s3cret");
        assert!(constant_time_eq(&a, &digest("s3cret")));
        assert!(!constant_time_eq(&a, &digest("s3creT")));
        assert!(!constant_time_eq(&a, &digest("")));
    }

    #[test]
    fn bearer_header_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  xyz "),
        );
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn csp_pins_the_page_script() {
        let csp = page_csp("<html><script>let a = 1;</script></html>");
        let want = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"let a = 1;"));
        assert!(csp.contains(&format!("'sha256-{want}'")), "{csp}");
        let script_src = csp
            .split("; ")
            .find(|d| d.starts_with("script-src"))
            .unwrap();
        assert!(!script_src.contains("unsafe"), "{csp}");
        // The real page has exactly one inline script, so the hash covers all of it.
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert!(!PAGE.contains("<script src"));
    }

    #[test]
    fn query_to_filter() {
        let q = DeliveriesQuery {
            status: Some("disabled".into()),
            event: Some("".into()),
            endpoint: Some("crm".into()),
            since: Some("1h".into()),
            before: None,
            limit: Some("10".into()),
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let f = q.to_filter(now).unwrap();
        assert_eq!(f.status, Some(DeliveryState::Disabled));
        assert_eq!(f.event, None);
        assert_eq!(f.endpoint.as_deref(), Some("crm"));
        assert_eq!(f.since, Some(now - Duration::from_secs(3600)));
        assert_eq!(f.limit, Some(10));
        let bad = DeliveriesQuery {
            limit: Some("ten".into()),
            ..Default::default()
        };
        assert!(matches!(
            ApiError::from(bad.to_filter(now).unwrap_err()),
            ApiError::BadRequest(_)
        ));
    }

    #[test]
    fn errors_map_to_codes_without_internals() {
        let e = ApiError::from(AdminError::DeliveryNotFound(7));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e = ApiError::from(AdminError::Ledger(LedgerError::Connect(
            crate::pg::ConnectError::Url("postgres://u:pw@h".into()),
        )));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.to_string().contains("pw"));
    }
}
