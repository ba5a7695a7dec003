//! The ledger writer of a capture session: a task that appends batches of
//! events in the order they are sent, one database transaction each, on its
//! own connection, and reports each commit back. Decoding overlaps with the
//! commit of the previous batch; the slot is acknowledged only up to what the
//! writer has reported committed.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use super::error::CaptureError;
use crate::ledger::{Appended, Ledger, LedgerError, NewEvent};
use crate::metrics::Metrics;
use crate::pg::Lsn;

/// Batches queued for the writer beyond the one it is writing. With the one
/// being filled, at most `WRITE_QUEUE + 2` batches (each within the capture's
/// batch limits) are in memory.
const WRITE_QUEUE: usize = 1;

/// Events for one ledger transaction, and the position to record with them.
pub struct Batch {
    pub events: Vec<NewEvent>,
    /// End LSN of the last complete transaction in the batch, if any.
    pub progress: Option<Lsn>,
    /// Body bytes of `events`.
    pub bytes: usize,
}

/// What the writer has committed so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    /// Batches committed, counted from the start of the session.
    pub batches: u64,
    /// The highest progress position among them (zero if none).
    pub lsn: Lsn,
}

/// The ledger writer: appends batches in the order they are sent, one
/// transaction each, and publishes what it has committed.
async fn write_batches(
    mut db: Client,
    ledger: Ledger,
    slot: String,
    metrics: Arc<Metrics>,
    mut batches: mpsc::Receiver<Batch>,
    written: watch::Sender<Written>,
) -> Result<(), LedgerError> {
    let mut done = Written::default();
    while let Some(batch) = batches.recv().await {
        let progress = batch.progress.map(|lsn| (slot.as_str(), lsn));
        let Appended { events, .. } = ledger.append(&mut db, &batch.events, progress).await?;
        for e in &batch.events {
            metrics.event_captured(&e.event.name);
        }
        if events > 0 {
            metrics.notify_new_deliveries();
        }
        done.batches += 1;
        if let Some(lsn) = batch.progress {
            done.lsn = done.lsn.max(lsn);
        }
        written.send_replace(done);
    }
    Ok(())
}

/// The session's end of the writer.
pub struct Writer {
    /// `None` once closed for a graceful stop.
    batches: Option<mpsc::Sender<Batch>>,
    written: watch::Receiver<Written>,
    task: tokio::task::JoinHandle<Result<(), LedgerError>>,
    sent: u64,
}

impl Writer {
    pub fn start(db: Client, ledger: Ledger, slot: String, metrics: Arc<Metrics>) -> Writer {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let (written_tx, written) = watch::channel(Written::default());
        let task = tokio::spawn(write_batches(db, ledger, slot, metrics, rx, written_tx));
        Writer {
            batches: Some(tx),
            written,
            task,
            sent: 0,
        }
    }

    /// Every batch sent so far is committed.
    pub fn idle(&self) -> bool {
        self.written.borrow().batches == self.sent
    }

    /// Queue a batch, waiting while the queue is full.
    pub async fn send(&mut self, batch: Batch) -> Result<(), CaptureError> {
        let tx = self.batches.as_ref().ok_or(CaptureError::WriterGone)?;
        if tx.send(batch).await.is_err() {
            return Err(self.failure().await);
        }
        self.sent += 1;
        Ok(())
    }

    /// Queue a batch only if there is room now; gives it back otherwise.
    pub fn try_send(&mut self, batch: Batch) -> Result<Option<Batch>, CaptureError> {
        let tx = self.batches.as_ref().ok_or(CaptureError::WriterGone)?;
        match tx.try_send(batch) {
            Ok(()) => {
                self.sent += 1;
                Ok(None)
            }
            Err(mpsc::error::TrySendError::Full(batch)) => Ok(Some(batch)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(CaptureError::WriterGone),
        }
    }

    /// Resolves when the writer has committed another batch (or failed).
    pub async fn committed(&mut self) -> Result<Written, CaptureError> {
        if self.written.changed().await.is_err() {
            return Err(self.failure().await);
        }
        Ok(*self.written.borrow_and_update())
    }

    /// Close the queue and wait until everything sent is committed.
    pub async fn finish(&mut self) -> Result<Written, CaptureError> {
        self.batches = None;
        match (&mut self.task).await {
            Ok(Ok(())) => Ok(*self.written.borrow()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(CaptureError::WriterGone),
        }
    }

    /// Why the writer ended early.
    async fn failure(&mut self) -> CaptureError {
        match (&mut self.task).await {
            Ok(Err(e)) => e.into(),
            _ => CaptureError::WriterGone,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A session that ends on an error must not leave a writer behind
        // that commits (harmlessly, but confusingly) after a new session started.
        self.task.abort();
    }
}
