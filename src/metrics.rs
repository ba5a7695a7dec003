//! In-process counters shared by capture, dispatch and the admin API. No
//! global statics: one `Metrics` is created by `run` and passed to each task.
//! Gauges that live in the database (queue depth, slot lag) are read by the
//! admin side when `/metrics` is scraped.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::pg::Lsn;

/// Upper bounds (seconds) of the attempt latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Attempt latency histogram (cumulative on render).
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    pub counts: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

/// Counters and gauges of one walhook process.
#[derive(Debug, Default)]
pub struct Metrics {
    streaming: AtomicBool,
    acked_lsn: AtomicU64,
    last_commit_unix_micros: AtomicI64,
    truncates: AtomicU64,
    /// Why capture is stopped until the operator acts (`None`: it is not).
    capture_blocked: Mutex<Option<String>>,
    events_captured: Mutex<BTreeMap<String, u64>>,
    /// endpoint -> events its content filter kept from it.
    events_filtered: Mutex<BTreeMap<String, u64>>,
    /// endpoint -> outcome -> count; outcome is `success`, `failure` or `disabled`.
    deliveries: Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>,
    latency: Mutex<Histogram>,
    new_deliveries: Notify,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Relaxed);
    }
    pub fn streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }
    pub fn set_acked_lsn(&self, lsn: Lsn) {
        self.acked_lsn.store(lsn.as_u64(), Ordering::Relaxed);
    }
    pub fn acked_lsn(&self) -> Lsn {
        Lsn(self.acked_lsn.load(Ordering::Relaxed))
    }
    pub fn set_last_commit_unix_micros(&self, t: i64) {
        self.last_commit_unix_micros.store(t, Ordering::Relaxed);
    }
    pub fn last_commit_unix_micros(&self) -> i64 {
        self.last_commit_unix_micros.load(Ordering::Relaxed)
    }
    pub fn add_truncates(&self, n: u64) {
        self.truncates.fetch_add(n, Ordering::Relaxed);
    }
    pub fn truncates(&self) -> u64 {
        self.truncates.load(Ordering::Relaxed)
    }

    /// Capture is stopped by `why` until the operator acts (`None`: it
    /// is not, or no longer).
    pub fn set_capture_blocked(&self, why: Option<String>) {
        *self.capture_blocked.lock().unwrap() = why;
    }
    pub fn capture_blocked(&self) -> Option<String> {
        self.capture_blocked.lock().unwrap().clone()
    }

    pub fn event_captured(&self, name: &str) {
        let mut m = self.events_captured.lock().unwrap();
        match m.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                m.insert(name.to_string(), 1);
            }
        }
    }
    pub fn events_captured(&self) -> BTreeMap<String, u64> {
        self.events_captured.lock().unwrap().clone()
    }

    /// Count one event that `endpoint` subscribes to by name but its content
    /// filter kept from it (rejected, or could not decide).
    pub fn event_filtered(&self, endpoint: &str) {
        let mut m = self.events_filtered.lock().unwrap();
        match m.get_mut(endpoint) {
            Some(n) => *n += 1,
            None => {
                m.insert(endpoint.to_string(), 1);
            }
        }
    }
    pub fn events_filtered(&self) -> BTreeMap<String, u64> {
        self.events_filtered.lock().unwrap().clone()
    }

    /// Count one attempt of `endpoint` ending in `outcome` (`success`,
    /// `failure` or `disabled`).
    pub fn delivery_outcome(&self, endpoint: &str, outcome: &'static str) {
        let mut m = self.deliveries.lock().unwrap();
        // Looked up before inserting: the hot path allocates nothing.
        match m.get_mut(endpoint) {
            Some(counts) => *counts.entry(outcome).or_default() += 1,
            None => {
                m.insert(endpoint.to_string(), BTreeMap::from([(outcome, 1)]));
            }
        }
    }
    pub fn deliveries(&self) -> BTreeMap<(String, String), u64> {
        let m = self.deliveries.lock().unwrap();
        m.iter()
            .flat_map(|(ep, counts)| {
                counts
                    .iter()
                    .map(move |(outcome, n)| ((ep.clone(), outcome.to_string()), *n))
            })
            .collect()
    }

    pub fn observe_attempt_seconds(&self, secs: f64) {
        let mut h = self.latency.lock().unwrap();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            h.counts[i] += 1;
        }
        h.count += 1;
        h.sum += secs;
    }
    pub fn latency(&self) -> Histogram {
        self.latency.lock().unwrap().clone()
    }

    /// Wake the in-process dispatcher: new deliveries were committed.
    pub fn notify_new_deliveries(&self) {
        self.new_deliveries.notify_one();
    }
    /// Resolves when `notify_new_deliveries` is called (or was, since the last wait).
    pub async fn new_deliveries(&self) {
        self.new_deliveries.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let m = Metrics::new();
        m.observe_attempt_seconds(0.003);
        m.observe_attempt_seconds(0.2);
        m.observe_attempt_seconds(100.0);
        let h = m.latency();
        assert_eq!(h.count, 3);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[5], 1);
        assert_eq!(h.counts.iter().sum::<u64>(), 2);
    }

    #[test]
    fn counts_events_by_name() {
        let m = Metrics::new();
        m.event_captured("lead.create");
        m.event_captured("lead.create");
        m.event_captured("user.delete");
        let e = m.events_captured();
        assert_eq!(e["lead.create"], 2);
        assert_eq!(e["user.delete"], 1);
        m.event_filtered("crm");
        m.event_filtered("crm");
        assert_eq!(m.events_filtered()["crm"], 2);
    }
}
