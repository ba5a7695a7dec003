//! What capture tells the operator besides its log: schema drift it follows
//! (warnings) and a capture blocked by something only the operator can fix
//! (an error). Both go to the ledger's notices, which `walhook status` and
//! the admin API read from any process; a blocked capture also goes to this
//! process's metrics (`/readyz` answers 503, `walhook_capture_blocked` is 1).
//!
//! A blocked capture is resolved when capture gets past what blocked it: past
//! the transaction it could not map (its commit position is remembered with
//! the notice, so another process that takes the slot over knows it too), or,
//! for what stopped it elsewhere (the publication, a mapped table, the
//! ledger), once a session streams again and hands over a commit or an idle
//! position. Writing a notice never fails capture: the ledger may be what is
//! broken.

use std::sync::Arc;

use tokio_postgres::Client;

use super::error::CaptureError;
use super::objects::Notice;
use crate::config::Config;
use crate::ledger::Ledger;
use crate::ledger::notices::{Level, NewNotice};
use crate::metrics::Metrics;
use crate::pg::{self, Lsn};

/// The notice kind of a blocked capture; its subject is the slot.
pub const BLOCKED: &str = "capture_blocked";

/// Why capture is blocked, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Blocked {
    message: String,
    /// The commit position of the transaction capture could not get past.
    at: Option<Lsn>,
}

/// Capture's notices, across its sessions.
pub struct Reporter {
    metrics: Arc<Metrics>,
    ledger: Ledger,
    slot: String,
    ledger_url: crate::config::Secret,
    blocked: Option<Blocked>,
    /// Whether a blocked capture left by an earlier process was looked up.
    loaded: bool,
    /// The open transaction when the last session failed.
    failed_at: Option<Lsn>,
}

impl Reporter {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Reporter {
        Reporter {
            metrics,
            ledger: Ledger::new(&cfg.ledger.schema),
            slot: cfg.source.slot.clone(),
            ledger_url: cfg.ledger_url().clone(),
            blocked: None,
            loaded: false,
            failed_at: None,
        }
    }

    /// The session failed inside the transaction committed at `at` (`None`:
    /// between transactions, or before streaming).
    pub fn session_failed_at(&mut self, at: Option<Lsn>) {
        self.failed_at = at;
    }

    /// Capture stopped on `e`, which needs the operator (`hint` says what to
    /// do): metrics and the ledger say so until it is resolved.
    pub async fn blocked(&mut self, e: &CaptureError, hint: &str) {
        let at = self
            .failed_at
            .take()
            .or(self.blocked.as_ref().and_then(|b| b.at));
        let message = format!("capture is stopped: {e}. {hint}");
        self.metrics.set_capture_blocked(Some(message.clone()));
        let notice = NewNotice {
            kind: BLOCKED.into(),
            subject: self.slot.clone(),
            level: Level::Error,
            message: message.clone(),
            at,
        };
        self.blocked = Some(Blocked { message, at });
        // The session's connections are gone: a short one of its own.
        match pg::connect(
            &self.ledger_url,
            "walhook capture notices",
            pg::DEFAULT_LOGIN_TIMEOUT,
        )
        .await
        {
            Ok(db) => self.write(self.ledger.set_notice(&db, &notice).await),
            Err(e) => self.write::<()>(Err(e.into())),
        }
    }

    /// Another process reads the slot: what blocked this one before it
    /// reached the slot is behind it (this process's metrics only; the
    /// ledger's notice belongs to the process that reads the slot).
    pub fn standing_by(&mut self) {
        if self.blocked.as_ref().is_some_and(|b| b.at.is_none()) {
            self.blocked = None;
            self.metrics.set_capture_blocked(None);
        }
        self.failed_at = None;
    }

    /// A session streams from the slot: the drift found at its start
    /// replaces the warnings; a blocked capture left by an earlier process
    /// is taken over.
    pub async fn streaming(&mut self, db: &Client, drift: &[Notice]) {
        let warnings: Vec<NewNotice> = drift.iter().map(Notice::to_ledger).collect();
        let synced = self.ledger.sync_warnings(db, &warnings).await;
        self.write(synced);
        if !self.loaded {
            self.loaded = true;
            match self.ledger.notice(db, BLOCKED, &self.slot).await {
                Ok(Some((message, at))) if self.blocked.is_none() => {
                    self.metrics.set_capture_blocked(Some(message.clone()));
                    self.blocked = Some(Blocked { message, at });
                }
                other => self.write(other.map(|_| ())),
            }
        }
    }

    /// Capture has handled everything before `lsn` (a commit's end, or a
    /// keepalive with no transaction open).
    pub async fn passed(&mut self, db: &Client, lsn: Lsn) {
        if self
            .blocked
            .as_ref()
            .is_some_and(|b| b.at.is_none_or(|at| lsn > at))
        {
            self.resolve(db).await;
        }
    }

    /// Drift seen while streaming (already logged).
    pub async fn drift(&mut self, db: &Client, notices: Vec<Notice>) {
        for n in notices {
            let written = self.ledger.set_notice(db, &n.to_ledger()).await;
            self.write(written);
        }
    }

    async fn resolve(&mut self, db: &Client) {
        if let Some(b) = self.blocked.take() {
            tracing::info!(was = %b.message, "capture is no longer blocked");
        }
        self.metrics.set_capture_blocked(None);
        let cleared = self.ledger.clear_notice(db, BLOCKED, &self.slot).await;
        self.write(cleared);
    }

    fn write<T>(&self, r: Result<T, crate::ledger::LedgerError>) {
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not write capture's notice to the ledger (`walhook status` may not show it)");
        }
    }
}
