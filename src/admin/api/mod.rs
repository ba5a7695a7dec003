//! The admin HTTP API: `/healthz`, `/readyz`, `/metrics` (Prometheus text),
//! a JSON API mirroring the CLI under `/api`, and the delivery history page
//! at `/`.
//!
//! - `auth`: the bearer token and the same-origin and host guards.
//! - `handlers`: one function per route.
//! - `backfills`: the `/api/backfills` routes.
//! - `endpoints`: the subscriptions API (runtime endpoints).
//! - `metrics`: the Prometheus text exposition.
//! - `operations`: re-queueing by a filter, resending an event.
//! - `server`: binding and serving with graceful shutdown.
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

mod auth;
mod backfills;
mod endpoints;
mod handlers;
mod metrics;
mod operations;
mod server;

pub use handlers::DeliveriesQuery;
pub use metrics::{DbGauges, render_metrics};
pub use server::{AdminServer, ServeError, serve};

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use tokio_postgres::Client;

use crate::config::{Config, Secret};
use crate::dispatch::http;
use crate::ledger::LedgerError;

use super::reports::{AdminError, Reports};
use auth::Token;

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

    fn unreachable(what: &str) -> ApiError {
        ApiError::Unavailable(format!("the {what} database is not reachable right now"))
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::DeliveryNotFound(_)
            | AdminError::EventNotFound(_)
            | AdminError::UnknownEndpoint { .. } => ApiError::NotFound(e.to_string()),
            AdminError::BadRequest { .. } | AdminError::UnknownState(_) => {
                ApiError::BadRequest(e.to_string())
            }
            AdminError::AlreadySucceeded(_)
            | AdminError::InFlight(_)
            | AdminError::BodyNotKept(_)
            | AdminError::ResendOpen { .. } => ApiError::Conflict(e.to_string()),
            AdminError::Ledger(LedgerError::NotSetUp { .. }) => {
                ApiError::Unavailable(e.to_string())
            }
            AdminError::Ledger(_) => {
                tracing::warn!(error = %e, "admin API: ledger query failed");
                ApiError::unreachable("ledger")
            }
            AdminError::Source(_) => {
                tracing::warn!(error = %e, "admin API: source database query failed");
                ApiError::unreachable("source")
            }
            AdminError::Http(_) => {
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

/// A lazily (re)connected database client shared by the handlers.
struct Db {
    url: Secret,
    /// `source` or `ledger`, for messages.
    what: &'static str,
    conn: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl Db {
    fn new(url: &Secret, what: &'static str) -> Db {
        Db {
            url: url.clone(),
            what,
            conn: tokio::sync::Mutex::new(None),
        }
    }

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
                tracing::warn!(error = %e, database = self.what, "admin API: cannot connect to the database");
                Err(ApiError::unreachable(self.what))
            }
            Err(_) => Err(ApiError::Unavailable(format!(
                "the {} database did not answer in time",
                self.what
            ))),
        }
    }
}

/// The handlers' databases: the source (the slot's state) and the ledger's,
/// one and the same unless `[ledger] url` names another.
struct Dbs {
    source: Db,
    ledger: Option<Db>,
}

impl Dbs {
    fn new(cfg: &Config) -> Dbs {
        Dbs {
            source: Db::new(&cfg.source.url, "source"),
            ledger: crate::source::setup::separate_ledger(cfg)
                .then(|| Db::new(cfg.ledger_url(), "ledger")),
        }
    }

    async fn ledger(&self) -> Result<Arc<Client>, ApiError> {
        self.ledger.as_ref().unwrap_or(&self.source).get().await
    }

    async fn source(&self) -> Result<Arc<Client>, ApiError> {
        self.source.get().await
    }
}

/// What the handlers share: config, this process's metrics, the database
/// clients and an HTTP client (for pings).
pub struct AdminState {
    cfg: Arc<Config>,
    metrics: Arc<crate::metrics::Metrics>,
    /// This process reads the slot (then `/readyz` also wants it streaming).
    capture: bool,
    db: Dbs,
    http: reqwest::Client,
    token: Option<Token>,
    page_csp: String,
}

impl AdminState {
    pub fn new(
        cfg: Arc<Config>,
        metrics: Arc<crate::metrics::Metrics>,
        capture: bool,
    ) -> Result<Arc<AdminState>, ServeError> {
        Ok(Arc::new(AdminState {
            token: cfg.admin.token.as_ref().map(|t| Token::new(t.expose())),
            db: Dbs::new(&cfg),
            cfg,
            metrics,
            capture,
            http: http::build_client()?,
            page_csp: handlers::page_csp(PAGE),
        }))
    }

    fn reports(&self) -> Reports<'_> {
        Reports::new(&self.cfg)
    }
}

/// The routes, on `state`.
pub fn router(state: Arc<AdminState>) -> Router {
    use handlers::*;
    let protected = Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/api/status", get(status))
        .route("/api/deliveries", get(list_deliveries))
        .route("/api/deliveries/retry-failed", post(retry_failed))
        .route("/api/deliveries/{id}", get(show_delivery))
        .route("/api/deliveries/{id}/retry", post(retry_delivery))
        .route("/api/deliveries/retry", post(operations::retry_filtered))
        .route("/api/events/{id}/resend", post(operations::resend_event))
        .route(
            "/api/endpoints",
            get(list_endpoints).post(endpoints::create_endpoint),
        )
        .route(
            "/api/endpoints/{id}",
            patch(endpoints::update_endpoint).delete(endpoints::delete_endpoint),
        )
        .route(
            "/api/endpoints/{id}/rotate-secret",
            post(endpoints::rotate_secret),
        )
        .route("/api/endpoints/{id}/enable", post(enable_endpoint))
        .route("/api/endpoints/{id}/disable", post(disable_endpoint))
        .route("/api/endpoints/{id}/ping", post(ping_endpoint))
        .route("/api/backfills", get(backfills::list).post(backfills::ask))
        .route("/api/backfills/{id}/cancel", post(backfills::cancel))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::guard));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(page))
        .merge(protected)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_codes_without_internals() {
        let e = ApiError::from(AdminError::DeliveryNotFound(7));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e = ApiError::from(AdminError::Ledger(LedgerError::Connect(
            crate::pg::ConnectError::Url("postgres://u:pw@h".into()),
        )));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.to_string().contains("pw"));
        let e = ApiError::from(AdminError::from(
            "lost"
                .parse::<crate::ledger::history::DeliveryState>()
                .unwrap_err(),
        ));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }
}
