//! What capture hands to dispatch: the events of committed transactions in
//! commit order, transaction ends, and where the stream is when nothing is
//! open. Dispatch answers with the position up to which everything is
//! resolved (delivered and recorded, or durably in the retry ledger); only
//! that position is acknowledged to the slot.

use super::Event;
use crate::pg::Lsn;

/// An event with where it sits in the WAL.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    pub event: Event,
    /// The transaction's commit LSN.
    pub commit_lsn: Lsn,
    /// 0-based index of the change among the transaction's row changes.
    pub change_index: u32,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_unix_micros: i64,
    /// Only for this endpoint (a backfill with `--endpoint`), else for every
    /// subscribed one.
    pub only: Option<String>,
}

/// One item of the captured stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// Events of the transaction being read, in order (a large transaction
    /// comes in several chunks; the stream only carries committed ones).
    Events(Vec<Captured>),
    /// The transaction whose events came before ends at `end_lsn`.
    Commit { end_lsn: Lsn },
    /// No transaction is open and the stream has reached `wal_end`: once
    /// everything before is resolved, the slot may advance to it.
    Idle { wal_end: Lsn },
}
