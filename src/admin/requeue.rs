//! Putting work back in the queue, for `walhook deliveries retry|resend` and
//! the admin API: failed deliveries chosen by a filter, and a past event sent
//! to an endpoint again.
//!
//! `retry` re-queues only deliveries that have not succeeded (`retrying`,
//! `disabled`); a delivered event is sent again only on purpose, with
//! `resend`.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::reports::{AdminError, DeliveryState, Reports, parse_time};
use crate::ledger::requeue::{RequeueFilter, Resend};

/// Which failed deliveries to re-queue (every field narrows; none: every
/// retrying and disabled delivery). The CLI's flags and the JSON body of
/// `POST /api/deliveries/retry`; times as `--since` takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// `retrying` or `disabled`.
    pub status: Option<String>,
    /// An event name, a filter (`lead.*`, `*.delete`) or an event id.
    pub event: Option<String>,
    pub endpoint: Option<String>,
    /// Created since: a duration back from now, an RFC 3339 time or a date.
    pub since: Option<String>,
    /// Created before: the same forms.
    pub until: Option<String>,
    /// Count only; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What `retry` by filter did (or, with `dry_run`, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequeueOutcome {
    pub requeued: u64,
    pub dry_run: bool,
    /// The endpoint the filter named, if any.
    pub endpoint: Option<String>,
}

/// What `resend` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResendOutcome {
    pub event_id: String,
    pub endpoint: String,
    pub delivery_id: i64,
    /// The endpoint's earlier (succeeded) delivery of the event was opened
    /// again rather than a new one made.
    pub reopened: bool,
}

fn given(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The state `retry --status` accepts, or a message saying what to do instead.
fn retry_state(s: &str) -> Result<DeliveryState, AdminError> {
    let bad = |message: &str| AdminError::BadRequest {
        what: "status",
        message: message.to_string(),
    };
    match s.parse::<DeliveryState>()? {
        st @ (DeliveryState::Retrying | DeliveryState::Disabled) => Ok(st),
        DeliveryState::Succeeded => Err(bad(
            "retry does not send succeeded deliveries again; `walhook deliveries resend EVENT_ID --endpoint E` does, on purpose",
        )),
        DeliveryState::Pending => Err(bad(
            "pending deliveries are queued already; retry takes retrying or disabled",
        )),
        DeliveryState::Held => Err(bad(
            "held deliveries wait for their endpoint: `walhook endpoints enable E` sends them; retry takes retrying or disabled",
        )),
    }
}

impl RetryRequest {
    /// The ledger's filter, or a `BadRequest` naming the field.
    pub fn to_filter(&self, now: SystemTime) -> Result<RequeueFilter, AdminError> {
        let time = |what, v: Option<&str>| v.map(|s| parse_time(what, s, now)).transpose();
        Ok(RequeueFilter {
            status: given(&self.status).map(retry_state).transpose()?,
            event: given(&self.event).map(str::to_string),
            endpoint: given(&self.endpoint).map(str::to_string),
            since: time("since", given(&self.since))?,
            until: time("until", given(&self.until))?,
        })
    }
}

impl Reports<'_> {
    /// Re-queue (or count, with `dry_run`) the retrying and disabled
    /// deliveries `req` selects, except those being attempted right now.
    pub async fn requeue(
        &self,
        client: &Client,
        req: &RetryRequest,
    ) -> Result<RequeueOutcome, AdminError> {
        let filter = req.to_filter(SystemTime::now())?;
        self.ledger().ensure_exists(client).await?;
        if let Some(ep) = &filter.endpoint {
            self.known_endpoint(client, ep).await?;
        }
        let requeued = self.ledger().requeue(client, &filter, req.dry_run).await?;
        Ok(RequeueOutcome {
            requeued,
            dry_run: req.dry_run,
            endpoint: filter.endpoint,
        })
    }

    /// Send event `event_id` (its body kept in the ledger) to endpoint
    /// `endpoint` (configured or runtime) again, with a fresh retry cycle.
    pub async fn resend(
        &self,
        client: &Client,
        event_id: &str,
        endpoint: &str,
    ) -> Result<ResendOutcome, AdminError> {
        let event_id = event_id.trim();
        self.ledger().ensure_exists(client).await?;
        self.known_endpoint(client, endpoint).await?;
        let ledger = self.ledger();
        let (delivery_id, reopened) = match ledger.resend(client, event_id, endpoint).await? {
            Resend::Created(id) => (id, false),
            Resend::Reopened(id) => (id, true),
            Resend::Open(id, state) => {
                return Err(AdminError::ResendOpen {
                    delivery: id,
                    state: state.as_str(),
                    endpoint: endpoint.to_string(),
                });
            }
            Resend::NotKept => return Err(AdminError::BodyNotKept(event_id.to_string())),
            Resend::NotFound => return Err(AdminError::EventNotFound(event_id.to_string())),
        };
        Ok(ResendOutcome {
            event_id: event_id.to_string(),
            endpoint: endpoint.to_string(),
            delivery_id,
            reopened,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn request_to_filter() {
        let now = UNIX_EPOCH + Duration::from_secs(100_000);
        let req = RetryRequest {
            status: Some("disabled".into()),
            event: Some("lead.*".into()),
            endpoint: Some(" ".into()),
            since: Some("2h".into()),
            until: Some("1h".into()),
            dry_run: true,
        };
        let f = req.to_filter(now).unwrap();
        assert_eq!(f.status, Some(DeliveryState::Disabled));
        assert_eq!(f.event.as_deref(), Some("lead.*"));
        assert_eq!(f.endpoint, None);
        assert_eq!(f.since, Some(now - Duration::from_secs(7200)));
        assert_eq!(f.until, Some(now - Duration::from_secs(3600)));
        assert_eq!(
            RetryRequest::default().to_filter(now).unwrap(),
            RequeueFilter::default()
        );
    }

    #[test]
    fn retry_refuses_states_it_does_not_requeue() {
        for (s, needle) in [
            ("succeeded", "resend"),
            ("pending", "queued already"),
            ("held", "endpoints enable"),
            ("lost", "`lost`"),
        ] {
            let err = retry_state(s).unwrap_err().to_string();
            assert!(err.contains(needle), "{s}: {err}");
        }
        let bad = RetryRequest {
            until: Some("soon".into()),
            ..Default::default()
        };
        let err = bad.to_filter(UNIX_EPOCH).unwrap_err().to_string();
        assert!(err.starts_with("invalid until"), "{err}");
    }

    #[test]
    fn api_body_is_strict() {
        let r: RetryRequest =
            serde_json::from_str(r#"{"status":"retrying","dry_run":true}"#).unwrap();
        assert!(r.dry_run);
        assert!(serde_json::from_str::<RetryRequest>(r#"{"statuss":"x"}"#).is_err());
    }
}
