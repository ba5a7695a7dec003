//! `/metrics`: the Prometheus text exposition (format 0.0.4) of this
//! process's counters and, when the database answers the scrape, the
//! ledger's and the slot's gauges.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::{AdminState, ApiError};
use crate::admin::reports::{DeliveryState, SlotStatus};
use crate::metrics::{LATENCY_BUCKETS, Metrics};

/// Gauges read from the database when `/metrics` is scraped.
#[derive(Debug, Clone, Default)]
pub struct DbGauges {
    /// `None` when the source database did not answer (the ledger's gauges
    /// are still shown when the ledger lives in a database of its own).
    pub slot: Option<SlotStatus>,
    /// (endpoint, state) -> deliveries; pending, retrying and disabled.
    pub queue: BTreeMap<(String, DeliveryState), i64>,
    /// endpoint -> enabled
    pub endpoints: BTreeMap<String, bool>,
}

async fn db_gauges(st: &AdminState) -> Result<DbGauges, ApiError> {
    let db = st.db.ledger().await?;
    let r = st.reports();
    let slot = match st.db.source().await {
        Ok(source) => r
            .slot(&source, &db)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "/metrics: cannot read the slot"))
            .ok(),
        Err(_) => None,
    };
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

pub(super) async fn metrics(State(st): State<Arc<AdminState>>) -> Response {
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

/// The Prometheus text exposition of this process's counters and, when the
/// database answered, the ledger's gauges.
pub fn render_metrics(m: &Metrics, db: Option<&DbGauges>) -> String {
    let mut out = String::new();
    process_counters(&mut out, m);
    attempt_durations(&mut out, m);
    single(
        &mut out,
        "walhook_truncates_total",
        "counter",
        "TRUNCATEs of mapped tables this process saw (they emit no row events).",
        m.truncates(),
    );
    single(
        &mut out,
        "walhook_streaming",
        "gauge",
        "1 while this process reads the replication slot.",
        u8::from(m.streaming()),
    );
    single(
        &mut out,
        "walhook_capture_blocked",
        "gauge",
        "1 while capture is stopped by something only the operator can fix (the log, /readyz and `walhook status` say what).",
        u8::from(m.capture_blocked().is_some()),
    );
    single(
        &mut out,
        "walhook_ledger_up",
        "gauge",
        "1 when the ledger database answered this scrape.",
        u8::from(db.is_some()),
    );
    if let Some(db) = db {
        if let Some(slot) = &db.slot {
            slot_gauges(&mut out, slot);
        }
        ledger_gauges(&mut out, db);
    }
    out
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

/// A family with one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl Display) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Events captured and attempts finished, by label.
fn process_counters(out: &mut String, m: &Metrics) {
    family(
        out,
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
        out,
        "walhook_events_filtered_total",
        "counter",
        "Events an endpoint subscribes to by name that its content filter kept from it (false, or undecided), by endpoint.",
    );
    for (ep, n) in m.events_filtered() {
        let _ = writeln!(
            out,
            "walhook_events_filtered_total{{endpoint=\"{}\"}} {n}",
            label(&ep)
        );
    }
    family(
        out,
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
}

/// The attempt-duration histogram (cumulative buckets).
fn attempt_durations(out: &mut String, m: &Metrics) {
    let name = "walhook_attempt_duration_seconds";
    family(
        out,
        name,
        "histogram",
        "Duration of delivery attempts made by this process.",
    );
    let h = m.latency();
    let mut cumulative = 0u64;
    for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += h.counts[i];
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// Lag (when known) and whether some process reads the slot.
fn slot_gauges(out: &mut String, slot: &SlotStatus) {
    if let Some(b) = slot.lag_bytes {
        single(
            out,
            "walhook_replication_lag_bytes",
            "gauge",
            "WAL retained for the slot beyond what walhook acknowledged.",
            b,
        );
    }
    if let Some(s) = slot.lag_seconds {
        single(
            out,
            "walhook_replication_lag_seconds",
            "gauge",
            "How far behind the slot is in time (0 when caught up).",
            s,
        );
    }
    single(
        out,
        "walhook_slot_active",
        "gauge",
        "1 while some process reads the replication slot.",
        u8::from(slot.active),
    );
}

/// The queue by endpoint and state, and which endpoints are enabled.
fn ledger_gauges(out: &mut String, db: &DbGauges) {
    family(
        out,
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
        out,
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
        m.event_filtered("crm");
        m.observe_attempt_seconds(0.003);
        m.observe_attempt_seconds(0.2);
        m.observe_attempt_seconds(100.0);
        let text = render_metrics(&m, None);
        assert!(text.contains("walhook_events_captured_total{event=\"lead.create\"} 2\n"));
        assert!(
            text.contains("walhook_deliveries_total{endpoint=\"crm\",outcome=\"success\"} 1\n")
        );
        assert!(text.contains("endpoint=\"we\\\"ird\""), "{text}");
        assert!(text.contains("walhook_events_filtered_total{endpoint=\"crm\"} 1\n"));
        assert!(text.contains("walhook_attempt_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("walhook_attempt_duration_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(text.contains("walhook_attempt_duration_seconds_bucket{le=\"30\"} 2\n"));
        assert!(text.contains("walhook_attempt_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("walhook_attempt_duration_seconds_count 3\n"));
        assert!(text.contains("walhook_ledger_up 0\n"));
        assert!(text.contains("walhook_capture_blocked 0\n"));
        m.set_capture_blocked(Some("key column dropped".into()));
        assert!(render_metrics(&m, None).contains("walhook_capture_blocked 1\n"));
        assert!(!text.contains("walhook_replication_lag_bytes"));

        let mut g = DbGauges::default();
        let slot = SlotStatus {
            lag_bytes: Some(1234),
            lag_seconds: Some(0.0),
            ..SlotStatus::default()
        };
        g.slot = Some(slot);
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
}
