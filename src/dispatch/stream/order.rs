//! Per-record order across the stream and the retry ledger (SPEC §6): an
//! event of record R for endpoint E goes out from memory only when no
//! earlier event of (E, R) is in flight or waiting in the ledger. Otherwise
//! it waits behind it: in memory while the earlier one is in flight, in the
//! ledger once that one spilled.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// (endpoint index, `slug:record_key`).
pub type RecordKey = (usize, String);

/// Where a new delivery goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// First of its record in memory: attempt it.
    Go,
    /// Behind an earlier delivery of its record in memory.
    Wait,
    /// Its record has deliveries in the ledger: spill it behind them.
    Ledger,
}

/// The order state of one stream session.
#[derive(Debug, Default)]
pub struct Order<K> {
    /// Deliveries in memory per record, oldest first; the front one is in
    /// flight (or queued for a free slot).
    queues: HashMap<RecordKey, VecDeque<K>>,
    /// Records with open deliveries in the ledger.
    in_ledger: HashMap<RecordKey, InLedger>,
}

/// What this process knows of a record's deliveries in the ledger.
#[derive(Debug, Clone, Copy)]
struct InLedger {
    /// Spills of it being written now: nothing may clear it meanwhile.
    writing: u32,
    /// When the last spill of it was committed: a look at the ledger that
    /// started before cannot clear it.
    committed_at: Instant,
}

impl<K: Copy + PartialEq> Order<K> {
    /// Records known to have open ledger deliveries at start.
    pub fn with_in_ledger(keys: impl IntoIterator<Item = RecordKey>, now: Instant) -> Order<K> {
        Order {
            queues: HashMap::new(),
            in_ledger: keys
                .into_iter()
                .map(|k| {
                    let state = InLedger {
                        writing: 0,
                        committed_at: now,
                    };
                    (k, state)
                })
                .collect(),
        }
    }

    /// Where delivery `id` of `key` goes; `Go` and `Wait` enqueue it.
    pub fn route(&mut self, key: &RecordKey, id: K) -> Route {
        if self.in_ledger.contains_key(key) {
            return Route::Ledger;
        }
        match self.queues.get_mut(key) {
            Some(q) => {
                q.push_back(id);
                Route::Wait
            }
            None => {
                self.queues.insert(key.clone(), VecDeque::from([id]));
                Route::Go
            }
        }
    }

    /// The front delivery of `key` is done (delivered): the next one, if
    /// any, may go.
    pub fn done(&mut self, key: &RecordKey, id: K) -> Option<K> {
        let q = self.queues.get_mut(key)?;
        if q.front() != Some(&id) {
            return None;
        }
        q.pop_front();
        let next = q.front().copied();
        if next.is_none() {
            self.queues.remove(key);
        }
        next
    }

    /// Every delivery of `key` in memory, oldest first, handed to the
    /// ledger: from now on the record waits there. [`Order::pin`] each one
    /// that is written there.
    pub fn spill(&mut self, key: &RecordKey, now: Instant) -> Vec<K> {
        self.in_ledger.entry(key.clone()).or_insert(InLedger {
            writing: 0,
            committed_at: now,
        });
        self.queues
            .remove(key)
            .map(|q| q.into_iter().collect())
            .unwrap_or_default()
    }

    /// A delivery of `key` is being written to the ledger: nothing clears
    /// the record until [`Order::written`] says it is committed.
    pub fn pin(&mut self, key: &RecordKey, now: Instant) {
        self.in_ledger
            .entry(key.clone())
            .or_insert(InLedger {
                writing: 0,
                committed_at: now,
            })
            .writing += 1;
    }

    /// A spill of `key` was committed at `at`.
    pub fn written(&mut self, key: &RecordKey, at: Instant) {
        if let Some(state) = self.in_ledger.get_mut(key) {
            state.writing = state.writing.saturating_sub(1);
            state.committed_at = at;
        }
    }

    /// Records the ledger had no open delivery for, as seen by a query that
    /// started at `looked_at`: those not spilled to since may go out from
    /// memory again.
    pub fn cleared(&mut self, keys: impl IntoIterator<Item = RecordKey>, looked_at: Instant) {
        for key in keys {
            if self
                .in_ledger
                .get(&key)
                .is_some_and(|s| s.writing == 0 && s.committed_at < looked_at)
            {
                self.in_ledger.remove(&key);
            }
        }
    }

    /// Records waiting in the ledger, to ask it which are clear.
    pub fn in_ledger(&self) -> impl Iterator<Item = &RecordKey> {
        self.in_ledger.keys()
    }

    /// How many records of endpoint `ep` wait in the ledger.
    pub fn in_ledger_of(&self, ep: usize) -> usize {
        self.in_ledger.keys().filter(|(e, _)| *e == ep).count()
    }

    /// Forget the records of endpoint `ep` in the ledger (the endpoint is
    /// parked as a whole instead).
    pub fn forget_endpoint(&mut self, ep: usize) {
        self.in_ledger.retain(|(e, _), _| *e != ep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(r: &str) -> RecordKey {
        (0, r.to_string())
    }

    #[test]
    fn a_record_goes_one_at_a_time() {
        let mut o: Order<u32> = Order::default();
        assert_eq!(o.route(&key("a"), 1), Route::Go);
        assert_eq!(o.route(&key("a"), 2), Route::Wait);
        assert_eq!(o.route(&key("b"), 3), Route::Go);
        assert_eq!(o.route(&key("a"), 4), Route::Wait);
        assert_eq!(o.done(&key("a"), 1), Some(2));
        assert_eq!(o.done(&key("a"), 2), Some(4));
        assert_eq!(o.done(&key("a"), 4), None);
        // Free again.
        assert_eq!(o.route(&key("a"), 5), Route::Go);
    }

    #[test]
    fn a_spilled_record_waits_in_the_ledger_until_cleared() {
        let t0 = Instant::now();
        let mut o: Order<u32> = Order::default();
        o.route(&key("a"), 1);
        o.route(&key("a"), 2);
        assert_eq!(o.spill(&key("a"), t0), vec![1, 2]);
        o.pin(&key("a"), t0);
        assert_eq!(o.route(&key("a"), 3), Route::Ledger);
        // Nothing clears it while the spill is being written.
        o.cleared([key("a")], t0 + Duration::from_secs(1));
        assert_eq!(o.route(&key("a"), 4), Route::Ledger);
        let committed = t0 + Duration::from_millis(5);
        o.written(&key("a"), committed);
        // A look that started before the commit cannot clear it.
        o.cleared([key("a")], committed - Duration::from_millis(1));
        assert_eq!(o.route(&key("a"), 5), Route::Ledger);
        o.cleared([key("a")], committed + Duration::from_millis(1));
        assert_eq!(o.route(&key("a"), 6), Route::Go);
    }

    #[test]
    fn only_the_front_delivery_can_be_done() {
        let mut o: Order<u32> = Order::default();
        o.route(&key("a"), 1);
        o.route(&key("a"), 2);
        assert_eq!(o.done(&key("a"), 2), None);
        assert_eq!(o.done(&key("a"), 1), Some(2));
    }

    #[test]
    fn endpoints_are_counted_and_forgotten_apart() {
        let t0 = Instant::now();
        let mut o: Order<u32> = Order::with_in_ledger([(0, "a".into()), (1, "a".into())], t0);
        assert_eq!(o.in_ledger_of(0), 1);
        o.forget_endpoint(0);
        assert_eq!(o.in_ledger_of(0), 0);
        assert_eq!(o.in_ledger_of(1), 1);
    }
}
