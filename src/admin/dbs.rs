//! The databases a command talks to: the source (slot, publication, mapped
//! tables) and the ledger's, which is the same database unless
//! `[ledger] url` names another. One connection serves both then.

use tokio_postgres::Client;

use crate::config::Config;
use crate::pg::{self, ConnectError};
use crate::source::setup::separate_ledger;

/// A database that did not answer within `source.connect_timeout`; each
/// message names the keys to check.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error(
        "cannot reach the database {target}: {source}. Check that PostgreSQL is running and source.url / source.url_env (`walhook check` tells more)."
    )]
    Source {
        target: String,
        #[source]
        source: ConnectError,
    },
    #[error(
        "cannot reach the ledger database {target}: {source}. Check that its PostgreSQL is running and ledger.url / ledger.url_env (`walhook check` tells more)."
    )]
    Ledger {
        target: String,
        #[source]
        source: ConnectError,
    },
}

/// Connections to the source and the ledger's database.
pub struct Dbs {
    source: Client,
    /// `None`: the ledger lives in the source database.
    ledger: Option<Client>,
}

impl Dbs {
    /// Connects to both (once when they are one database); `app` is the
    /// `application_name`.
    pub async fn connect(cfg: &Config, app: &str) -> Result<Dbs, ReachError> {
        let source = connect_source(cfg, app).await?;
        let ledger = if separate_ledger(cfg) {
            Some(connect_ledger(cfg, app).await?)
        } else {
            None
        };
        Ok(Dbs { source, ledger })
    }

    pub fn source(&self) -> &Client {
        &self.source
    }

    pub fn ledger(&self) -> &Client {
        self.ledger.as_ref().unwrap_or(&self.source)
    }
}

/// A connection to the source database.
pub async fn connect_source(cfg: &Config, app: &str) -> Result<Client, ReachError> {
    pg::connect_within(&cfg.source.url, app, cfg.source.connect_timeout)
        .await
        .map_err(|source| ReachError::Source {
            target: pg::describe_target(&cfg.source.url),
            source,
        })
}

/// A connection to the ledger's database (the source's unless
/// `[ledger] url` is set), for commands that need nothing else.
pub async fn connect_ledger(cfg: &Config, app: &str) -> Result<Client, ReachError> {
    if !separate_ledger(cfg) {
        return connect_source(cfg, app).await;
    }
    let url = cfg.ledger_url();
    pg::connect_within(url, app, cfg.source.connect_timeout)
        .await
        .map_err(|source| ReachError::Ledger {
            target: pg::describe_target(url),
            source,
        })
}
