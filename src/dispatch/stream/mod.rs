//! The fast path: first attempts straight from the replication stream.
//!
//! Capture hands over committed events ([`StreamItem`]); each subscribed
//! endpoint gets its first attempt from memory, with no ledger write before
//! it. A success costs one narrow history row, written in batches. What
//! cannot be delivered at once is spilled to the retry ledger, where the
//! ledger dispatcher takes over: a failed first attempt, one not answered
//! within `delivery.spill_after` (it goes on, leased, and its result is
//! recorded there), a full window, a disabled or troubled endpoint, a record
//! whose earlier deliveries wait in the ledger. The stream publishes the
//! position up to which every delivery is resolved (recorded or durably in
//! the ledger); capture acknowledges only that ([`txns`]).
//!
//! One task owns all of this state; attempts run on tasks of their own and
//! the two ledger writers on theirs ([`writer`]).

mod engine;
pub mod order;
mod refresh;
pub mod txns;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::leases::Leases;
use crate::config::Config;
use crate::event::stream::{Captured, StreamItem};
use crate::ledger::{Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::pg::{self, Lsn};

/// Items buffered between capture and the stream.
const ITEM_BUFFER: usize = 64;

/// Bodies held in memory for first attempts at most (with `delivery.window`
/// events).
pub const WINDOW_BYTES: usize = 16 << 20;

/// An event as the stream holds it: the captured event, its body shared by
/// every endpoint's attempt, its transaction and record.
#[derive(Debug)]
pub struct Ev {
    pub captured: Captured,
    pub body: Bytes,
    pub txn: txns::TxnSeq,
    /// `slug:record_key`.
    pub record: String,
}

impl Ev {
    /// The body as text (it was made from a `String`).
    pub fn body_text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap_or_default()
    }
}

/// Why the stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("the delivery stream stopped")]
    Gone,
}

/// What the stream needs from the process.
#[derive(Clone)]
pub struct StreamDeps {
    pub cfg: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub http: reqwest::Client,
    /// This process's lease owner id.
    pub owner: String,
    pub leases: Leases,
    /// `false` (`walhook run --no-dispatch`): no first attempts; every
    /// delivery goes to the ledger for the dispatchers.
    pub fast: bool,
    /// The endpoints made at runtime, kept up to date.
    pub runtime: super::runtime::RuntimeWatch,
}

/// The capture session's end of the stream.
pub struct Stream {
    items: mpsc::Sender<StreamItem>,
    resolved: watch::Receiver<Lsn>,
    task: JoinHandle<Result<(), StreamError>>,
}

impl Stream {
    /// Connects the stream's ledger sessions and starts it.
    pub async fn start(deps: StreamDeps) -> Result<Stream, StreamError> {
        let (items_tx, items_rx) = mpsc::channel(ITEM_BUFFER);
        let (resolved_tx, resolved) = watch::channel(Lsn::ZERO);
        let url = deps.cfg.ledger_url().clone();
        let login = pg::DEFAULT_LOGIN_TIMEOUT;
        let connect = |name: &'static str| {
            let url = url.clone();
            async move {
                pg::connect(&url, name, login)
                    .await
                    .map_err(|e| StreamError::Ledger(e.into()))
            }
        };
        let dbs = engine::Connections {
            spill: connect("walhook stream spill").await?,
            history: connect("walhook stream history").await?,
            refresh: connect("walhook stream refresh").await?,
        };
        let ledger = Ledger::new(&deps.cfg.ledger.schema);
        let engine = engine::Engine::start(deps, ledger, dbs, resolved_tx).await?;
        let task = tokio::spawn(engine.run(items_rx));
        Ok(Stream {
            items: items_tx,
            resolved,
            task,
        })
    }

    /// Hands over one item, waiting while the stream is full.
    pub async fn send(&mut self, item: StreamItem) -> Result<(), StreamError> {
        if self.items.send(item).await.is_err() {
            return Err(self.failure().await);
        }
        Ok(())
    }

    /// Resolves when the resolved position moved (or the stream failed).
    pub async fn resolved_changed(&mut self) -> Result<Lsn, StreamError> {
        if self.resolved.changed().await.is_err() {
            return Err(self.failure().await);
        }
        Ok(*self.resolved.borrow_and_update())
    }

    /// Graceful stop: no more items; first attempts in flight finish or
    /// spill, everything is resolved, within `deadline`. Returns the final
    /// resolved position.
    pub async fn finish(&mut self, deadline: Duration) -> Result<Lsn, StreamError> {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.items, closed));
        match tokio::time::timeout(deadline, &mut self.task).await {
            Ok(Ok(Ok(()))) => Ok(*self.resolved.borrow()),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(StreamError::Gone),
            Err(_) => {
                tracing::warn!(
                    "the delivery stream did not settle in time; what is unresolved is sent again after the restart"
                );
                self.task.abort();
                Ok(*self.resolved.borrow())
            }
        }
    }

    async fn failure(&mut self) -> StreamError {
        match (&mut self.task).await {
            Ok(Err(e)) => e,
            _ => StreamError::Gone,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A session that ends on an error leaves no stream behind: what it
        // had not resolved is replayed by the next session.
        self.task.abort();
    }
}
