//! One function per route of the admin API; each is a thin call into
//! [`Reports`](crate::admin::reports::Reports) or [`ping`](crate::admin::ping).

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::auth::bearer;
use super::{AdminState, ApiError, PAGE};
use crate::admin::ping::ping_with;
use crate::admin::reports::{AdminError, DeliveryFilter, configured_endpoint, parse_since};

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(st): State<Arc<AdminState>>) -> Response {
    let ledger_ok = match st.db.ledger().await {
        Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    let streaming = st.metrics.streaming();
    // A blocked capture may stream for a moment between its retries: it is
    // not ready until the operator has fixed what blocks it.
    let blocked = st.metrics.capture_blocked();
    let ready = ledger_ok && (!st.capture || (streaming && blocked.is_none()));
    let body = serde_json::json!({
        "ready": ready,
        "ledger": ledger_ok,
        "capture": st.capture,
        "streaming": streaming,
        "blocked": blocked,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// A CSP that allows exactly the page's inline script (by hash) and nothing
/// from elsewhere.
pub(super) fn page_csp(page: &str) -> String {
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

#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    token: Option<String>,
}

pub(super) async fn page(
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

pub(super) async fn status(State(st): State<Arc<AdminState>>) -> Result<Response, ApiError> {
    let (source, db) = (st.db.source().await?, st.db.ledger().await?);
    Ok(Json(st.reports().status(&source, &db).await?).into_response())
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

pub(super) async fn list_deliveries(
    State(st): State<Arc<AdminState>>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Response, ApiError> {
    let filter = q.to_filter(SystemTime::now())?;
    let db = st.db.ledger().await?;
    Ok(Json(st.reports().list_deliveries(&db, &filter).await?).into_response())
}

pub(super) async fn show_delivery(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let db = st.db.ledger().await?;
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

pub(super) async fn retry_delivery(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = delivery_id(&id)?;
    let db = st.db.ledger().await?;
    let out = st.reports().retry(&db, id).await?;
    tracing::info!(delivery = id, "delivery re-queued through the admin API");
    Ok(Json(out).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct RetryFailedQuery {
    endpoint: Option<String>,
}

pub(super) async fn retry_failed(
    State(st): State<Arc<AdminState>>,
    Query(q): Query<RetryFailedQuery>,
) -> Result<Response, ApiError> {
    let db = st.db.ledger().await?;
    let out = st
        .reports()
        .retry_all_failed(&db, non_empty(&q.endpoint))
        .await?;
    tracing::info!(requeued = out.requeued, endpoint = ?out.endpoint, "failed deliveries re-queued through the admin API");
    Ok(Json(out).into_response())
}

pub(super) async fn list_endpoints(
    State(st): State<Arc<AdminState>>,
) -> Result<Response, ApiError> {
    let db = st.db.ledger().await?;
    Ok(Json(st.reports().endpoints(&db).await?).into_response())
}

async fn set_enabled(st: &AdminState, id: &str, enabled: bool) -> Result<Response, ApiError> {
    let db = st.db.ledger().await?;
    let out = st
        .reports()
        .set_endpoint_enabled(&db, id, enabled, "disabled through the admin API")
        .await?;
    if out.changed {
        tracing::info!(endpoint = %id, enabled, "endpoint state changed through the admin API");
    }
    Ok(Json(out).into_response())
}

pub(super) async fn enable_endpoint(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&st, &id, true).await
}

pub(super) async fn disable_endpoint(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&st, &id, false).await
}

pub(super) async fn ping_endpoint(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ep = configured_endpoint(&st.cfg, &id)?;
    let out = ping_with(&st.cfg, ep, &st.http, SystemTime::now()).await?;
    Ok(Json(out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::admin::reports::DeliveryState;

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
}
