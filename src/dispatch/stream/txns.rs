//! The acknowledgement rule: the slot is confirmed past a transaction only
//! when every delivery of every event in it, and in every transaction before
//! it, is resolved (answered 2xx and recorded, or durably in the retry
//! ledger). [`Txns`] counts what is outstanding per transaction, in stream
//! order, and yields the position that may be acknowledged.

use std::collections::VecDeque;

use crate::pg::{Lsn, Progress};

/// A transaction's place in the stream (monotonic within one session).
pub type TxnSeq = u64;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Deliveries not resolved yet.
    outstanding: u32,
    /// Where it ends, once its Commit (or an Idle position) has arrived.
    end: Option<Lsn>,
}

/// Outstanding deliveries per transaction, oldest first.
#[derive(Debug, Default)]
pub struct Txns {
    /// Sequence number of `slots[0]`.
    base: TxnSeq,
    slots: VecDeque<Slot>,
    resolved: Progress,
}

impl Txns {
    /// The transaction events arrive for now (a new one after each end).
    pub fn current(&mut self) -> TxnSeq {
        if self.slots.back().is_none_or(|s| s.end.is_some()) {
            self.slots.push_back(Slot::default());
        }
        self.base + self.slots.len() as u64 - 1
    }

    /// `n` more deliveries of `txn` are outstanding.
    pub fn add(&mut self, txn: TxnSeq, n: u32) {
        if let Some(slot) = self.slot(txn) {
            slot.outstanding += n;
        }
    }

    /// The current transaction ends at `end`.
    pub fn end(&mut self, end: Lsn) -> bool {
        let txn = self.current();
        if let Some(slot) = self.slot(txn) {
            slot.end = Some(end);
        }
        self.settle()
    }

    /// One delivery of `txn` is resolved. Returns whether the resolved
    /// position moved.
    pub fn resolve(&mut self, txn: TxnSeq) -> bool {
        if let Some(slot) = self.slot(txn) {
            slot.outstanding = slot.outstanding.saturating_sub(1);
        }
        self.settle()
    }

    /// Everything up to here is resolved: the position to acknowledge.
    pub fn resolved(&self) -> Lsn {
        self.resolved.get()
    }

    /// Transactions whose deliveries are not all resolved yet.
    pub fn pending(&self) -> usize {
        self.slots.len()
    }

    fn slot(&mut self, txn: TxnSeq) -> Option<&mut Slot> {
        let i = txn.checked_sub(self.base)?;
        self.slots.get_mut(usize::try_from(i).ok()?)
    }

    /// Pops the finished transactions at the front.
    fn settle(&mut self) -> bool {
        let mut moved = false;
        while let Some(front) = self.slots.front() {
            match front.end {
                Some(end) if front.outstanding == 0 => {
                    moved |= self.resolved.advance(end);
                    self.slots.pop_front();
                    self.base += 1;
                }
                _ => break,
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_resolves_when_all_its_deliveries_do() {
        let mut t = Txns::default();
        let a = t.current();
        t.add(a, 2);
        assert!(!t.end(Lsn(100)));
        assert!(!t.resolve(a));
        assert_eq!(t.resolved(), Lsn(0));
        assert!(t.resolve(a));
        assert_eq!(t.resolved(), Lsn(100));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_later_transaction_waits_for_the_earlier_ones() {
        let mut t = Txns::default();
        let a = t.current();
        t.add(a, 1);
        t.end(Lsn(100));
        let b = t.current();
        assert_ne!(a, b);
        t.add(b, 1);
        t.end(Lsn(200));
        assert!(!t.resolve(b));
        assert_eq!(t.resolved(), Lsn(0));
        assert!(t.resolve(a));
        assert_eq!(t.resolved(), Lsn(200));
    }

    #[test]
    fn empty_transactions_and_idle_positions_resolve_at_once() {
        let mut t = Txns::default();
        assert!(t.end(Lsn(50)));
        assert_eq!(t.resolved(), Lsn(50));
        // An idle position behind an open delivery waits for it.
        let a = t.current();
        t.add(a, 1);
        t.end(Lsn(60));
        assert!(!t.end(Lsn(70)));
        assert!(t.resolve(a));
        assert_eq!(t.resolved(), Lsn(70));
    }

    #[test]
    fn the_position_never_goes_back() {
        let mut t = Txns::default();
        t.end(Lsn(90));
        assert!(!t.end(Lsn(80)));
        assert_eq!(t.resolved(), Lsn(90));
    }
}
