//! First attempts from memory: routing a delivery (now, behind its record,
//! or to the ledger), endpoint slots, results and deadlines, and parking an
//! endpoint whose first attempts keep failing.

use std::sync::Arc;
use std::time::Instant;

use super::{Attempted, Engine, PARK_AFTER, State};
use crate::dispatch::stream::WINDOW_BYTES;
use crate::dispatch::stream::order::Route;
use crate::dispatch::stream::writer::DeliveredItem;
use crate::dispatch::{http, outcome, sign};
use crate::ledger::queue::NextState;
use crate::ledger::spill::SpillState;
use crate::pg::now_unix_ms;

impl Engine {
    /// Sends a new delivery on its way: from memory, behind its record, or
    /// to the ledger.
    pub(super) fn route(&mut self, id: u64) {
        let d = &self.live[&id];
        let ep = d.ep;
        if !self.deps.fast || self.eps[ep].parked.is_some() {
            return self.spill_one(id, SpillState::Pending);
        }
        let full =
            self.window_len > self.deps.cfg.delivery.window || self.window_bytes > WINDOW_BYTES;
        if !self.per_record {
            return if full {
                self.spill_one(id, SpillState::Pending)
            } else {
                self.ready(id)
            };
        }
        let key = (ep, d.ev.record.clone());
        match self.order.route(&key, id) {
            Route::Ledger => self.spill_one(id, SpillState::Pending),
            Route::Wait | Route::Go if full => self.spill_record(&key, None),
            Route::Wait => {}
            Route::Go => self.ready(id),
        }
    }

    /// Its record's turn: attempt it when the endpoint has a free slot.
    pub(super) fn ready(&mut self, id: u64) {
        let ep = self.live[&id].ep;
        if self.eps[ep].in_flight < self.eps[ep].limit {
            self.attempt(id);
        } else {
            self.eps[ep].ready.push_back(id);
        }
    }

    fn attempt(&mut self, id: u64) {
        let Some(d) = self.live.get_mut(&id) else {
            return;
        };
        d.state = State::InFlight;
        let ep = &mut self.eps[d.ep];
        ep.in_flight += 1;
        let deadline = Instant::now() + self.deps.cfg.delivery.spill_after;
        self.deadlines.push_back((deadline, id));
        let headers = sign::signed_headers(
            &ep.cfg,
            &self.deps.cfg.delivery.header_prefix,
            &d.ev.captured.event.id,
            &d.ev.captured.event.name,
            &d.ev.body,
            now_unix_ms().div_euclid(1000),
        );
        let (client, url, timeout) = (self.deps.http.clone(), ep.cfg.url.clone(), ep.cfg.timeout);
        let body = d.ev.body.clone();
        self.attempts.spawn(async move {
            let record = http::attempt(&client, &url, &headers, body, timeout).await;
            Attempted {
                id,
                record,
                headers,
            }
        });
    }

    /// A slot of `ep` is free: start the next ready delivery.
    pub(super) fn free_slot(&mut self, ep: usize) {
        self.eps[ep].in_flight = self.eps[ep].in_flight.saturating_sub(1);
        while let Some(next) = self.eps[ep].ready.pop_front() {
            if self
                .live
                .get(&next)
                .is_some_and(|d| matches!(d.state, State::Queued))
            {
                self.attempt(next);
                return;
            }
        }
    }

    pub(super) fn on_attempt(&mut self, done: Attempted) {
        let Some(d) = self.live.get_mut(&done.id) else {
            return;
        };
        let ep = d.ep;
        match &mut d.state {
            State::InFlight => {}
            State::Leased {
                ledger_id: Some(lid),
                ..
            } => {
                let lid = *lid;
                return self.record_leased(done, lid);
            }
            State::Leased { result, .. } => {
                *result = Some(Box::new(done));
                return;
            }
            _ => return,
        }
        self.free_slot(ep);
        let ep_id = self.eps[ep].id.clone();
        self.outcomes.add(&ep_id, &done.record.outcome);
        if done.record.outcome.is_success() {
            self.on_success(done, ep);
        } else {
            self.on_failure(done, ep);
        }
    }

    fn on_success(&mut self, done: Attempted, ep: usize) {
        let Some(d) = self.live.get_mut(&done.id) else {
            return;
        };
        d.state = State::Recording;
        let ev = d.ev.clone();
        self.eps[ep].trouble = 0;
        let endpoint = self.eps[ep].id.clone();
        outcome::observe(
            &self.deps.metrics,
            &endpoint,
            &done.record,
            NextState::Succeeded,
        );
        let r = &done.record;
        self.history.push(DeliveredItem {
            id: done.id,
            ev: Arc::clone(&ev),
            endpoint,
            started_unix_ms: r.started_at_unix_ms,
            duration_ms: r.duration.as_millis().min(i32::MAX as u128) as i32,
            status_code: r.outcome.status().map_or(0, |c| c as i16),
            response_excerpt: r.response_excerpt.clone(),
        });
        if self.per_record
            && let Some(next) = self.order.done(&(ep, ev.record.clone()), done.id)
        {
            self.ready(next);
        }
    }

    fn on_failure(&mut self, done: Attempted, ep: usize) {
        let d = &self.live[&done.id];
        let c = &d.ev.captured;
        // The cycle starts at the commit (SPEC §5: ages from commit time).
        let next = outcome::next_state(
            &self.eps[ep].cfg.retry,
            &done.record,
            c.commit_time_unix_micros.div_euclid(1000),
            1,
            now_unix_ms(),
        );
        let endpoint = self.eps[ep].id.clone();
        outcome::observe(&self.deps.metrics, &endpoint, &done.record, next);
        let row = outcome::attempt_row(0, &endpoint, &done.record, &done.headers, next);
        let failed = (done.id, SpillState::Failed(row));
        if self.per_record {
            let key = (ep, d.ev.record.clone());
            self.spill_record(&key, Some(failed));
        } else {
            self.spill_one(failed.0, failed.1);
        }
        self.trouble(ep);
    }

    /// First attempts unanswered after `spill_after` go to the ledger,
    /// leased: they go on and their results are recorded there.
    pub(super) fn on_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(&(at, id)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(d) = self.live.get(&id) else {
                continue;
            };
            if !matches!(d.state, State::InFlight) {
                continue;
            }
            let ep = d.ep;
            let key = (ep, d.ev.record.clone());
            if self.per_record {
                // Frees the slot of the attempt that goes on, leased.
                self.spill_record(&key, None);
            } else {
                self.free_slot(ep);
                self.spill_one(id, SpillState::Leased);
            }
            self.trouble(ep);
        }
    }

    /// Another first attempt of `ep` failed or went unanswered.
    fn trouble(&mut self, ep: usize) {
        self.eps[ep].trouble += 1;
        if self.eps[ep].trouble >= PARK_AFTER {
            self.park(ep, "its first attempts keep failing");
        }
    }

    /// Every delivery of `ep` goes to the ledger until it has none left
    /// there. Those in memory go now, with their records (an attempt in
    /// flight goes on, leased), so nothing of a record stays behind in
    /// memory while later events of it wait in the ledger.
    pub(super) fn park(&mut self, ep: usize, why: &'static str) {
        if self.eps[ep].parked.is_some() {
            return;
        }
        tracing::info!(endpoint = %self.eps[ep].id, why,
            "the endpoint's deliveries go to the retry ledger for now");
        self.eps[ep].parked = Some(why);
        self.eps[ep].ready.clear();
        let mut held: Vec<(u64, String)> = self
            .live
            .iter()
            .filter(|(_, d)| d.ep == ep && matches!(d.state, State::Queued | State::InFlight))
            .map(|(id, d)| (*id, d.ev.record.clone()))
            .collect();
        held.sort_unstable();
        for (id, record) in held {
            let state = self.live.get(&id).map(|d| &d.state);
            let spill = match state {
                Some(State::Queued) => SpillState::Pending,
                Some(State::InFlight) => SpillState::Leased,
                // Already spilled with its record.
                _ => continue,
            };
            if self.per_record {
                // Frees the slots of attempts that go on, leased.
                self.spill_record(&(ep, record), None);
            } else {
                if matches!(spill, SpillState::Leased) {
                    self.free_slot(ep);
                }
                self.spill_one(id, spill);
            }
        }
        self.order.forget_endpoint(ep);
    }
}
