//! `/api/backfills`: list, ask for and cancel backfills, as `walhook
//! backfill` does (the same checks, in [`crate::admin::backfill`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{AdminState, ApiError};
use crate::admin::backfill::{self, BackfillError};
use crate::ledger::backfills::BackfillRequest;

impl From<BackfillError> for ApiError {
    fn from(e: BackfillError) -> Self {
        match e {
            BackfillError::NotFound(_) => ApiError::NotFound(e.to_string()),
            BackfillError::Ended { .. } => ApiError::Conflict(e.to_string()),
            e if e.is_bad_request() => ApiError::BadRequest(e.to_string()),
            e => {
                tracing::warn!(error = %e, "admin API: backfill query failed");
                ApiError::Unavailable("the database is not reachable right now".into())
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    limit: Option<i64>,
}

pub(super) async fn list(
    State(st): State<Arc<AdminState>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let db = st.db.ledger().await?;
    let limit = q.limit.unwrap_or(backfill::LIST_LIMIT);
    Ok(Json(backfill::list(&st.cfg, &db, limit).await?).into_response())
}

/// The body of `POST /api/backfills`, as the command's options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Ask {
    slug: String,
    endpoint: Option<String>,
    #[serde(rename = "where")]
    where_sql: Option<String>,
    /// `"create"` sends `{slug}.create` events.
    #[serde(rename = "as")]
    as_kind: Option<String>,
    rate: Option<f64>,
}

pub(super) async fn ask(
    State(st): State<Arc<AdminState>>,
    body: Result<Json<Ask>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(ask) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let as_create = match ask.as_kind.as_deref() {
        None | Some("backfill") => false,
        Some("create") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "`as` is \"create\" or absent, not {other:?}"
            )));
        }
    };
    let req = BackfillRequest {
        slug: ask.slug,
        endpoint: ask.endpoint.filter(|e| !e.is_empty()),
        where_sql: ask.where_sql.filter(|w| !w.trim().is_empty()),
        as_create,
        rate: ask.rate,
    };
    let (source, db) = (st.db.source().await?, st.db.ledger().await?);
    let queued = backfill::queue(&st.cfg, &source, &db, &req).await?;
    tracing::info!(backfill = queued.backfill.id, object = %req.slug, "backfill queued through the admin API");
    Ok((StatusCode::CREATED, Json(queued)).into_response())
}

pub(super) async fn cancel(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "`{}` is not a backfill id (a whole number)",
            id.chars().take(80).collect::<String>()
        ))
    })?;
    let db = st.db.ledger().await?;
    let out = backfill::cancel(&st.cfg, &db, id).await?;
    tracing::info!(backfill = id, "backfill cancelled through the admin API");
    Ok(Json(out).into_response())
}
