//! How much the ledger dispatcher may claim per endpoint: a fair share of
//! `delivery.max_in_flight` (so one endpoint that hangs cannot take every
//! slot), an endpoint's own `max_in_flight` (held across processes by the
//! claim statement, which counts the endpoint's live leases; here only this
//! process's part), and its `rate_limit` as a token bucket of this process.
//!
//! Pure: the caller passes the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::EndpointConfig;

/// A token bucket of `rate` tokens per second holding at most a tenth of a
/// second's worth (at least one): requests are spaced by `1 / rate` with
/// bursts of at most `rate / 10`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: f64, now: Instant) -> TokenBucket {
        let burst = (rate / 10.0).max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.max(0.0).floor() as usize
    }

    /// Spend one token (the caller checked [`TokenBucket::available`]).
    pub fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// When the next whole token is there, if there is none now.
    pub fn next_token_at(&self) -> Option<Instant> {
        (self.tokens < 1.0)
            .then(|| self.at + Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }
}

/// One endpoint's limits in this process.
#[derive(Debug)]
struct Lane {
    /// Attempts in flight at most in this process.
    local: usize,
    used: usize,
    /// `max_in_flight` across processes (0: none).
    cap: i64,
    bucket: Option<TokenBucket>,
}

/// The claim limits of every configured endpoint, in configuration order.
#[derive(Debug)]
pub struct Limits {
    max: usize,
    ids: Vec<String>,
    caps: Vec<i64>,
    lanes: Vec<Lane>,
    index: HashMap<String, usize>,
}

impl Limits {
    /// `max`: `delivery.max_in_flight`, shared fairly by `endpoints`.
    pub fn new(max: usize, endpoints: &[EndpointConfig], now: Instant) -> Limits {
        let share = (max / endpoints.len().max(1)).max(1);
        let lanes: Vec<Lane> = endpoints
            .iter()
            .map(|e| Lane {
                local: e.max_in_flight.map_or(share, |m| m.min(share)),
                used: 0,
                cap: e.max_in_flight.map_or(0, |m| m as i64),
                bucket: e.rate_limit.map(|r| TokenBucket::new(r, now)),
            })
            .collect();
        Limits {
            max,
            ids: endpoints.iter().map(|e| e.id.clone()).collect(),
            caps: lanes.iter().map(|l| l.cap).collect(),
            index: endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| (e.id.clone(), i))
                .collect(),
            lanes,
        }
    }

    /// `delivery.max_in_flight`.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The endpoint ids, in the order of [`Limits::claimable`].
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Each endpoint's `max_in_flight` across processes (0: none).
    pub fn caps(&self) -> &[i64] {
        &self.caps
    }

    /// How many more of each endpoint this process may claim now.
    pub fn claimable(&mut self, now: Instant) -> Vec<i64> {
        self.lanes
            .iter_mut()
            .map(|l| {
                let free = l.local.saturating_sub(l.used);
                let tokens = l.bucket.as_mut().map_or(free, |b| b.available(now));
                free.min(tokens) as i64
            })
            .collect()
    }

    /// A delivery of `endpoint` was claimed: a slot and a token are used.
    pub fn claimed(&mut self, endpoint: &str, now: Instant) {
        if let Some(l) = self.index.get(endpoint).map(|i| &mut self.lanes[*i]) {
            l.used += 1;
            if let Some(b) = l.bucket.as_mut() {
                b.take(now);
            }
        }
    }

    /// An attempt of `endpoint` finished: its slot is free.
    pub fn released(&mut self, endpoint: &str) {
        if let Some(l) = self.index.get(endpoint).map(|i| &mut self.lanes[*i]) {
            l.used = l.used.saturating_sub(1);
        }
    }

    /// When a rate-limited endpoint that ran out of tokens has one again:
    /// the dispatcher looks for its due deliveries then.
    pub fn wake_at(&self) -> Option<Instant> {
        self.lanes
            .iter()
            .filter_map(|l| l.bucket.as_ref()?.next_token_at())
            .min()
    }

    /// Whether some endpoint has `rate_limit` or `max_in_flight`.
    pub fn any_limited(&self) -> bool {
        self.lanes.iter().any(|l| l.cap > 0 || l.bucket.is_some())
    }
}

#[cfg(test)]
mod tests;
