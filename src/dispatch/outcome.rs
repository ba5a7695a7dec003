//! What a finished attempt leads to, wherever it was sent from: the next
//! state of the delivery (the retry policy), the attempt's history row, the
//! metrics, and what it means for the endpoint as a whole (410 Gone,
//! `endpoint_disable_after`, the `endpoint.disabled` notification).

use std::collections::HashSet;
use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio_postgres::Client;

use super::http::{AttemptRecord, Outcome};
use super::retry::{self, Decision};
use crate::config::{Config, RetryConfig};
use crate::event::system;
use crate::ledger::queue::{AttemptRow, NextState};
use crate::ledger::{Ledger, LedgerError, NewEvent};
use crate::metrics::Metrics;
use crate::pg::{Lsn, now_unix_ms};

/// How often successes are written to the endpoints' health even when this
/// process saw no failure (another process may have).
const HEALTH_REFRESH: Duration = Duration::from_secs(5);

/// The delivery's next state after `record`, its `cycle_attempts`-th attempt
/// of the cycle that started at `cycle_started_ms`.
pub fn next_state(
    policy: &RetryConfig,
    record: &AttemptRecord,
    cycle_started_ms: i64,
    cycle_attempts: u32,
    now_ms: i64,
) -> NextState {
    let Some(failure) = record.failure() else {
        return NextState::Succeeded;
    };
    match retry::after_failure(
        policy,
        cycle_started_ms,
        cycle_attempts,
        now_ms,
        &failure,
        rand::random::<f64>(),
    ) {
        Decision::RetryAt(at) => NextState::RetryAt(at),
        Decision::Disable => NextState::Disabled,
    }
}

/// The history row of one attempt (never a secret: signatures are HMAC
/// outputs, and the URL is not part of it).
pub fn attempt_row(
    delivery_id: i64,
    endpoint: &str,
    record: &AttemptRecord,
    headers: &HeaderMap,
    next: NextState,
) -> AttemptRow {
    let outcome = &record.outcome;
    AttemptRow {
        delivery_id,
        endpoint_id: endpoint.to_string(),
        started_unix_ms: record.started_at_unix_ms,
        duration_ms: record.duration.as_millis().min(i32::MAX as u128) as i32,
        status_code: outcome.status().map(i32::from),
        error_kind: (!outcome.is_success()).then(|| outcome.error_kind().to_string()),
        error: (!outcome.is_success()).then(|| outcome.message()),
        response_excerpt: record.response_excerpt.clone(),
        request_headers: headers_json(headers),
        next,
    }
}

/// Counts the attempt in the metrics.
pub fn observe(metrics: &Metrics, endpoint: &str, record: &AttemptRecord, next: NextState) {
    let label = match next {
        NextState::Succeeded => "success",
        NextState::RetryAt(_) => "failure",
        NextState::Disabled => "disabled",
    };
    metrics.delivery_outcome(endpoint, label);
    metrics.observe_attempt_seconds(record.duration.as_secs_f64());
}

/// The request headers as a JSON object, for the attempt's history row. Every
/// value was built from a `&str`, so reading it back as UTF-8 loses nothing.
/// A sensitive value (an endpoint's extra header) is recorded as `***`.
pub fn headers_json(headers: &HeaderMap) -> String {
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(name, value)| {
            let text = if value.is_sensitive() {
                "***".to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_owned(), serde_json::Value::String(text))
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Endpoint-level consequences of a batch of attempts: the failing clock of
/// each endpoint (for `endpoint_disable_after`), 410 Gone, and the
/// `endpoint.disabled` notification.
pub struct Health {
    endpoint_ids: Vec<String>,
    /// Endpoints whose failing clock may be running in the ledger: only
    /// their successes need a write to stop it. All of them at start and
    /// again every `HEALTH_REFRESH`, since another process may have started
    /// the clock meanwhile.
    maybe_failing: HashSet<String>,
    refreshed: tokio::time::Instant,
}

/// The endpoint-level facts of one batch of attempts.
#[derive(Debug, Default)]
pub struct BatchOutcomes {
    succeeded: Vec<String>,
    failed: Vec<String>,
    gone: Vec<String>,
}

impl BatchOutcomes {
    pub fn is_empty(&self) -> bool {
        self.succeeded.is_empty() && self.failed.is_empty()
    }

    pub fn add(&mut self, endpoint: &str, outcome: &Outcome) {
        let list = match outcome {
            Outcome::Success(_) => &mut self.succeeded,
            _ => &mut self.failed,
        };
        if !list.iter().any(|e| e == endpoint) {
            list.push(endpoint.to_string());
        }
        if matches!(outcome, Outcome::Status(410)) && !self.gone.iter().any(|e| e == endpoint) {
            self.gone.push(endpoint.to_string());
        }
    }
}

impl Health {
    pub fn new(cfg: &Config) -> Health {
        let endpoint_ids: Vec<String> = cfg.endpoints.iter().map(|e| e.id.clone()).collect();
        Health {
            maybe_failing: endpoint_ids.iter().cloned().collect(),
            endpoint_ids,
            refreshed: tokio::time::Instant::now(),
        }
    }

    /// Apply one batch's outcomes to the ledger's endpoint state, disabling
    /// endpoints that answered 410 or have failed for `endpoint_disable_after`.
    pub async fn apply(
        &mut self,
        cfg: &Config,
        ledger: &Ledger,
        db: &Client,
        batch: BatchOutcomes,
    ) -> Result<(), LedgerError> {
        let BatchOutcomes {
            mut succeeded,
            failed,
            gone,
        } = batch;
        for ep in &gone {
            let reason = Some("the endpoint answered 410 Gone");
            if ledger.set_endpoint_enabled(db, ep, false, reason).await? {
                tracing::warn!(endpoint = %ep, "endpoint answered 410 Gone: disabled; enable it again with `walhook endpoints enable`");
                notify_disabled(cfg, ledger, db, ep, "410 Gone").await?;
            }
        }
        // Successes of endpoints not known to be failing need no write.
        if self.refreshed.elapsed() >= HEALTH_REFRESH {
            self.maybe_failing.extend(self.endpoint_ids.iter().cloned());
            self.refreshed = tokio::time::Instant::now();
        }
        succeeded.retain(|ep| self.maybe_failing.contains(ep));
        if succeeded.is_empty() && failed.is_empty() {
            return Ok(());
        }
        let disable_after = cfg.delivery.endpoint_disable_after;
        let disabled = ledger
            .endpoint_health(db, &succeeded, &failed, disable_after)
            .await?;
        for ep in &succeeded {
            self.maybe_failing.remove(ep);
        }
        self.maybe_failing.extend(failed);
        for ep in disabled {
            tracing::warn!(endpoint = %ep, "endpoint failed continuously for endpoint_disable_after: disabled");
            notify_disabled(cfg, ledger, db, &ep, "failing continuously").await?;
        }
        Ok(())
    }
}

/// Queue an `endpoint.disabled` event for the notification endpoint, if one
/// is configured (and is not the endpoint that was disabled).
async fn notify_disabled(
    cfg: &Config,
    ledger: &Ledger,
    db: &Client,
    endpoint: &str,
    reason: &str,
) -> Result<(), LedgerError> {
    let Some(target) = cfg.delivery.notify_endpoint.clone() else {
        return Ok(());
    };
    if target == endpoint {
        return Ok(());
    }
    let now_ms = now_unix_ms();
    let event = system::endpoint_disabled(&cfg.source.name, endpoint, reason, now_ms);
    let ev = NewEvent {
        event,
        commit_lsn: Lsn::ZERO,
        change_index: 0,
        commit_time_unix_micros: now_ms * 1000,
        endpoints: vec![target],
    };
    ledger.append_one(db, &ev).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: Outcome) -> AttemptRecord {
        AttemptRecord {
            started_at_unix_ms: 1_000,
            duration: Duration::from_millis(12),
            outcome,
            response_excerpt: None,
            retry_after: None,
        }
    }

    #[test]
    fn success_ends_the_delivery_and_failure_schedules_a_retry() {
        let policy = RetryConfig::default();
        let ok = record(Outcome::Success(204));
        assert_eq!(next_state(&policy, &ok, 0, 1, 1_000), NextState::Succeeded);
        let failed = record(Outcome::Status(500));
        assert!(matches!(
            next_state(&policy, &failed, 0, 1, 1_000),
            NextState::RetryAt(at) if at > 1_000
        ));
    }

    #[test]
    fn batch_outcomes_collect_each_endpoint_once() {
        let mut b = BatchOutcomes::default();
        b.add("a", &Outcome::Success(200));
        b.add("a", &Outcome::Success(200));
        b.add("b", &Outcome::Status(410));
        b.add("b", &Outcome::Timeout);
        assert_eq!(b.succeeded, ["a"]);
        assert_eq!(b.failed, ["b"]);
        assert_eq!(b.gone, ["b"]);
    }

    #[test]
    fn rows_carry_errors_only_for_failures() {
        let headers = HeaderMap::new();
        let row = attempt_row(
            7,
            "crm",
            &record(Outcome::Success(200)),
            &headers,
            NextState::Succeeded,
        );
        assert_eq!(
            (row.status_code, row.error_kind, row.duration_ms),
            (Some(200), None, 12)
        );
        let row = attempt_row(
            7,
            "crm",
            &record(Outcome::Timeout),
            &headers,
            NextState::Disabled,
        );
        assert_eq!(row.error_kind.as_deref(), Some("timeout"));
        assert_eq!(row.request_headers, "{}");
    }
}
