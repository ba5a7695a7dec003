//! Why a capture session ended. [`super::policy`] decides what to do about it.

use super::objects::ResolveError;
use crate::dispatch::stream::StreamError;
use crate::event::EventError;
use crate::ledger::LedgerError;
use crate::pg::{self, ConnectError};
use crate::pgoutput::DecodeError;

/// Why a capture session ended.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("replication stream: {0}")]
    Replication(#[from] pgwire_replication::PgWireError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("catalog lookup: {0}")]
    Catalog(#[from] pg::DbError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Objects(#[from] ResolveError),
    #[error("capture stopped: {0}")]
    Publication(String),
    #[error("change for relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error("replication stream ended")]
    Ended,
    #[error(
        "the replication connection did not start streaming within {0:?}: the server accepts connections but does not answer"
    )]
    StartTimeout(std::time::Duration),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    NoPrimary(#[from] NoPrimary),
}

impl From<tokio_postgres::Error> for CaptureError {
    fn from(e: tokio_postgres::Error) -> CaptureError {
        CaptureError::Catalog(pg::DbError(e))
    }
}

impl CaptureError {
    /// The SQLSTATE, when the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            CaptureError::Replication(e) => replication_sqlstate(e),
            CaptureError::Ledger(e) => e.sqlstate(),
            CaptureError::Connect(e) => e.sqlstate(),
            CaptureError::Catalog(e) => e.sqlstate(),
            CaptureError::Stream(StreamError::Ledger(e)) => e.sqlstate(),
            CaptureError::Objects(ResolveError::Catalog(e)) => e.sqlstate(),
            CaptureError::Objects(ResolveError::Ledger(e)) => e.sqlstate(),
            _ => None,
        }
    }
}

/// The SQLSTATE inside a replication error: pgwire-replication hands server
/// errors over as text shaped `message (SQLSTATE XXXXX)`.
pub fn replication_sqlstate(e: &pgwire_replication::PgWireError) -> Option<&str> {
    let text = match e {
        pgwire_replication::PgWireError::Server(text)
        | pgwire_replication::PgWireError::Auth(text) => text.as_str(),
        _ => return None,
    };
    let at = text.rfind("SQLSTATE ")? + "SQLSTATE ".len();
    let code = text.get(at..at + 5)?;
    code.bytes()
        .all(|b| b.is_ascii_alphanumeric())
        .then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire_replication::PgWireError;

    #[test]
    fn sqlstates_are_read_from_replication_errors() {
        let e = PgWireError::Server(
            "replication slot \"walhook\" is active for PID 4242 (SQLSTATE 55006)".into(),
        );
        assert_eq!(replication_sqlstate(&e), Some("55006"));
        assert_eq!(
            replication_sqlstate(&PgWireError::Server("no code here".into())),
            None
        );
        assert_eq!(
            replication_sqlstate(&PgWireError::Protocol("x (SQLSTATE 55006)".into())),
            None
        );
    }
}

/// Why no host of `source.url` could take the replication session.
#[derive(Debug, thiserror::Error)]
#[error(
    "no host of source.url is a primary that accepts the replication connection ({}); walhook keeps trying",
    .tried.join("; ")
)]
pub struct NoPrimary {
    /// `host:port: why` for each host, in order.
    pub tried: Vec<String>,
}
