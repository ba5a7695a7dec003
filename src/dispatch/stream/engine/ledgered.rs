//! The stream's side of the ledger: spilling deliveries (a record's in
//! order), what a committed spill or history write resolves, recording the
//! attempts that went on after their delivery spilled, and the periodic look
//! that frees records and endpoints again.

use std::time::Instant;

use super::{Attempted, Engine, State};
use crate::dispatch::outcome;
use crate::dispatch::stream::order::RecordKey;
use crate::dispatch::stream::refresh::{Ask, MAX_KEYS, Seen};
use crate::dispatch::stream::writer::{SpillDone, SpillItem};
use crate::ledger::spill::SpillState;
use crate::pg::now_unix_ms;

impl Engine {
    /// Every delivery of `key` in memory goes to the ledger, in order: the
    /// one in flight leased, `failed` with its attempt, the rest pending.
    /// An attempt still in flight goes on, leased, outside the endpoint's
    /// fast-path slots (its slot is freed here).
    pub(super) fn spill_record(&mut self, key: &RecordKey, failed: Option<(u64, SpillState)>) {
        let mut failed = failed;
        for id in self.order.spill(key, Instant::now()) {
            let state = match (failed.take(), self.live.get(&id).map(|d| &d.state)) {
                (Some((f, state)), _) if f == id => state,
                (other, current) => {
                    failed = other;
                    match current {
                        Some(State::InFlight) => {
                            self.free_slot(key.0);
                            SpillState::Leased
                        }
                        _ => SpillState::Pending,
                    }
                }
            };
            self.spill_one(id, state);
        }
        // A failed delivery that was not in its record's queue (it cannot
        // happen with per-record order, but nothing is dropped if it does).
        if let Some((id, state)) = failed {
            self.spill_one(id, state);
        }
    }

    pub(super) fn spill_one(&mut self, id: u64, state: SpillState) {
        let Some(d) = self.live.get_mut(&id) else {
            return;
        };
        d.state = match state {
            SpillState::Leased => State::Leased {
                ledger_id: None,
                result: None,
            },
            _ => State::Spilling,
        };
        let ep = &mut self.eps[d.ep];
        ep.spilling += 1;
        // A parked endpoint's records need no pin: it leaves the parking
        // only when none of its spills is in flight.
        d.pinned = self.per_record && ep.parked.is_none();
        if d.pinned {
            self.order.pin(&(d.ep, d.ev.record.clone()), Instant::now());
        }
        self.spill.push(SpillItem {
            id,
            ev: d.ev.clone(),
            endpoint: ep.id.clone(),
            state,
        });
    }

    pub(super) fn on_spill_done(&mut self, done: SpillDone) {
        self.spill.busy = false;
        match done {
            SpillDone::Spilled(ids) => {
                let now = Instant::now();
                for (id, ledger_id) in ids {
                    self.spilled(id, ledger_id, now);
                }
            }
            SpillDone::Recorded(ids) => {
                for lid in ids {
                    self.deps.leases.release(lid);
                }
            }
            SpillDone::Health => {}
        }
    }

    /// A spill committed at `now`: the delivery is resolved; a leased one
    /// waits for (or records) its attempt.
    fn spilled(&mut self, id: u64, ledger_id: Option<i64>, now: Instant) {
        let Some(d) = self.live.get_mut(&id) else {
            return;
        };
        let ep = &mut self.eps[d.ep];
        ep.spilling = ep.spilling.saturating_sub(1);
        ep.spilled_at = now;
        if d.pinned {
            self.order.written(&(d.ep, d.ev.record.clone()), now);
        }
        let leased = match &mut d.state {
            State::Leased { result, .. } => Some(result.take()),
            _ => None,
        };
        self.resolve(id);
        match (leased, ledger_id) {
            (Some(Some(done)), Some(lid)) => {
                self.deps.leases.hold(lid);
                self.record_leased(*done, lid);
            }
            (Some(None), Some(lid)) => {
                self.deps.leases.hold(lid);
                if let Some(d) = self.live.get_mut(&id) {
                    d.state = State::Leased {
                        ledger_id: Some(lid),
                        result: None,
                    };
                }
            }
            _ => {
                self.live.remove(&id);
            }
        }
    }

    /// The attempt of a delivery spilled while it ran ended: record it in
    /// the ledger under this process's lease.
    pub(super) fn record_leased(&mut self, done: Attempted, lid: i64) {
        let Some(d) = self.live.remove(&done.id) else {
            return;
        };
        let c = &d.ev.captured;
        let next = outcome::next_state(
            &self.eps[d.ep].cfg.retry,
            &done.record,
            c.commit_time_unix_micros.div_euclid(1000),
            1,
            now_unix_ms(),
        );
        let endpoint = self.eps[d.ep].id.clone();
        outcome::observe(&self.deps.metrics, &endpoint, &done.record, next);
        self.outcomes.add(&endpoint, &done.record.outcome);
        let row = outcome::attempt_row(lid, &endpoint, &done.record, &done.headers, next);
        self.leased_rows.push(row);
    }

    /// History rows committed: those deliveries are resolved.
    pub(super) fn on_recorded(&mut self, ids: Vec<u64>) {
        self.history.busy = false;
        for id in ids {
            self.resolve(id);
            self.live.remove(&id);
        }
    }

    /// Asks the ledger which records and parked endpoints are clear.
    pub(super) fn look(&mut self) {
        if self.looking {
            return;
        }
        let records = self
            .order
            .in_ledger()
            .take(MAX_KEYS)
            .map(|(ep, r)| (self.eps[*ep].id.to_string(), r.clone()))
            .collect();
        let parked = self
            .eps
            .iter()
            .filter(|e| e.parked.is_some() && !e.ledger_only)
            .map(|e| e.id.to_string())
            .collect();
        self.looking = self.asks.try_send(Ask { records, parked }).is_ok();
    }

    pub(super) fn on_seen(&mut self, seen: Seen) {
        self.looking = false;
        let index = |id: &str| self.eps.iter().position(|e| &*e.id == id);
        let cleared: Vec<RecordKey> = seen
            .cleared
            .into_iter()
            .filter_map(|(e, r)| index(&e).map(|i| (i, r)))
            .collect();
        self.order.cleared(cleared, seen.looked_at);
        for i in 0..self.eps.len() {
            let ep = &self.eps[i];
            let disabled = seen.disabled.iter().any(|d| **d == *ep.id);
            if disabled {
                self.park(i, "it is disabled");
                continue;
            }
            let idle = seen.idle.iter().any(|d| **d == *ep.id);
            if ep.parked.is_some()
                && !ep.ledger_only
                && idle
                && ep.spilling == 0
                && ep.spilled_at < seen.looked_at
            {
                tracing::info!(endpoint = %ep.id, "first attempts from the stream again");
                let ep = &mut self.eps[i];
                ep.parked = None;
                ep.trouble = 0;
            }
        }
        for i in 0..self.eps.len() {
            if self.eps[i].parked.is_none()
                && self.order.in_ledger_of(i) > super::MAX_RECORDS_IN_LEDGER
            {
                self.park(i, "the retry ledger holds many of its records");
            }
        }
    }
}
