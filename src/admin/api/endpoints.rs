//! The subscriptions API: endpoints made, changed, removed and given a new
//! secret at runtime. `GET /api/endpoints` (in `handlers`) lists both kinds.
//!
//! Bodies are JSON (`Content-Type: application/json`, which a cross-site
//! form cannot send), unknown keys refused. A secret is in the answer of
//! `POST /api/endpoints` and of `rotate-secret` only, and never logged.
//! Each write uses a connection of its own: its transaction must not share
//! the session the read handlers use concurrently.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio_postgres::Client;

use super::{AdminState, ApiError, DB_TIMEOUT};
use crate::admin::subscriptions::{AddRequest, SubsError, Subscriptions, UpdateRequest};
use crate::config::duration_from_str;

impl From<SubsError> for ApiError {
    fn from(e: SubsError) -> Self {
        match e {
            SubsError::NoKey { .. } => ApiError::Unavailable(e.to_string()),
            SubsError::Invalid { .. } => ApiError::BadRequest(e.to_string()),
            SubsError::FromConfig(_) | SubsError::Exists(_) => ApiError::Conflict(e.to_string()),
            SubsError::NotFound(_) => ApiError::NotFound(e.to_string()),
            SubsError::Ledger(e) => crate::admin::reports::AdminError::Ledger(e).into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: String,
    url: String,
    events: Option<Vec<String>>,
    signing: Option<Vec<String>>,
    /// `10s`, `1500ms`.
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    url: Option<String>,
    events: Option<Vec<String>>,
    signing: Option<Vec<String>>,
    timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// `24h`; `0s`: the old secret stops at once.
    keep_old: Option<String>,
}

/// The JSON body, or a 400 saying what is wrong.
fn body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &Bytes) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::BadRequest(
            "send the body as JSON with `Content-Type: application/json`".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("invalid body: {e}")))
}

fn duration(what: &str, text: Option<String>) -> Result<Option<Duration>, ApiError> {
    text.map(|t| {
        duration_from_str(&t).map_err(|e| ApiError::BadRequest(format!("invalid {what}: {e}")))
    })
    .transpose()
}

async fn write_db(st: &AdminState) -> Result<Client, ApiError> {
    let connect = crate::pg::connect(
        st.cfg.ledger_url(),
        "walhook admin",
        crate::pg::DEFAULT_LOGIN_TIMEOUT,
    );
    match tokio::time::timeout(DB_TIMEOUT, connect).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "admin API: cannot connect to the ledger");
            Err(ApiError::Unavailable(
                "the ledger database is not reachable right now".into(),
            ))
        }
        Err(_) => Err(ApiError::Unavailable(
            "the ledger database did not answer in time".into(),
        )),
    }
}

/// `POST /api/endpoints`: 201 with the endpoint and its secret (once).
pub(super) async fn create_endpoint(
    State(st): State<Arc<AdminState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let b: CreateBody = body(&headers, &bytes)?;
    let req = AddRequest {
        id: b.id,
        url: b.url,
        events: b.events,
        signing: b.signing,
        timeout: duration("timeout", b.timeout)?,
    };
    let mut db = write_db(&st).await?;
    let out = Subscriptions::new(&st.cfg).add(&mut db, req).await?;
    tracing::info!(endpoint = %out.endpoint.id, "runtime endpoint added through the admin API");
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `PATCH /api/endpoints/{id}`.
pub(super) async fn update_endpoint(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let b: UpdateBody = body(&headers, &bytes)?;
    let req = UpdateRequest {
        url: b.url,
        events: b.events,
        signing: b.signing,
        timeout: duration("timeout", b.timeout)?,
    };
    let mut db = write_db(&st).await?;
    let out = Subscriptions::new(&st.cfg)
        .update(&mut db, &id, req)
        .await?;
    tracing::info!(endpoint = %id, "runtime endpoint updated through the admin API");
    Ok(Json(out).into_response())
}

/// `DELETE /api/endpoints/{id}`.
pub(super) async fn delete_endpoint(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut db = write_db(&st).await?;
    let out = Subscriptions::new(&st.cfg).remove(&mut db, &id).await?;
    tracing::info!(endpoint = %id, disabled = out.deliveries_disabled, "runtime endpoint removed through the admin API");
    Ok(Json(out).into_response())
}

/// `POST /api/endpoints/{id}/rotate-secret`: the new secret (once).
pub(super) async fn rotate_secret(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    // No body: the default keep-old period.
    let b: RotateBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        body(&headers, &bytes)?
    };
    let keep_old = duration("keep_old", b.keep_old)?;
    let mut db = write_db(&st).await?;
    let out = Subscriptions::new(&st.cfg)
        .rotate(&mut db, &id, keep_old)
        .await?;
    tracing::info!(endpoint = %id, "runtime endpoint secret rotated through the admin API");
    Ok(Json(out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_codes_that_say_why() {
        let e = ApiError::from(SubsError::NoKey {
            var: "WALHOOK_SECRETS_KEY".into(),
        });
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.to_string().contains("WALHOOK_SECRETS_KEY"));
        let e = ApiError::from(SubsError::FromConfig("crm".into()));
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(e.to_string().contains("config file"));
        let e = ApiError::from(SubsError::NotFound("x".into()));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn bodies_are_json_with_known_keys() {
        let mut headers = HeaderMap::new();
        let b = Bytes::from_static(br#"{"url":"https://example.com/h"}"#);
        assert!(body::<UpdateBody>(&headers, &b).is_err(), "no content type");
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(body::<UpdateBody>(&headers, &b).is_ok());
        let b = Bytes::from_static(br#"{"secret":"mine"}"#);
        assert!(body::<UpdateBody>(&headers, &b).is_err(), "unknown key");
    }
}
