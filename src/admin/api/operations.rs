//! The routes that put work back in the queue: `POST /api/deliveries/retry`
//! (failed deliveries chosen by a JSON filter) and `POST
//! /api/events/{id}/resend` (a past event to an endpoint again).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::{AdminState, ApiError};
use crate::admin::requeue::RetryRequest;

/// A JSON body, or 400 saying what is wrong with it; an empty body is `{}`.
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let text = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &body[..]
    };
    serde_json::from_slice(text)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

pub(super) async fn retry_filtered(
    State(st): State<Arc<AdminState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RetryRequest = json_body(&body)?;
    let db = st.db.ledger().await?;
    let out = st.reports().requeue(&db, &req).await?;
    if !out.dry_run {
        tracing::info!(requeued = out.requeued, filter = ?req, "deliveries re-queued through the admin API");
    }
    Ok(Json(out).into_response())
}

/// Body of `POST /api/events/{id}/resend`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResendBody {
    endpoint: Option<String>,
}

pub(super) async fn resend_event(
    State(st): State<Arc<AdminState>>,
    Path(event_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ResendBody = json_body(&body)?;
    let endpoint = req
        .endpoint
        .filter(|e| !e.trim().is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest("give the endpoint to send to: {\"endpoint\": \"ID\"}".into())
        })?;
    let db = st.db.ledger().await?;
    let out = st.reports().resend(&db, &event_id, endpoint.trim()).await?;
    tracing::info!(event = %out.event_id, endpoint = %out.endpoint, delivery = out.delivery_id, "event resent through the admin API");
    Ok(Json(out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let r: RetryRequest = json_body(&Bytes::from_static(b" ")).unwrap();
        assert_eq!(r, RetryRequest::default());
        let err = json_body::<ResendBody>(&Bytes::from_static(b"{\"ep\": 1}")).unwrap_err();
        assert!(matches!(err, ApiError::BadRequest(m) if m.contains("unknown field")));
    }
}
