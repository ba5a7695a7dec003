//! The replication connection goes to the primary. `source.url` may name
//! several hosts (`host=a,b port=5432,5433 target_session_attrs=read-write`):
//! the SQL connections pick one as libpq does (tokio-postgres handles the
//! list), but the replication crate connects to one host. So with several
//! hosts each is tried in order on a replication session that has not
//! started streaming, and the first that is not in recovery gets the
//! START_REPLICATION: the probe and the stream are one session, so no
//! failover can slip between them.

use std::time::Duration;

use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig};

use super::error::{CaptureError, NoPrimary};

/// A replication session that has not started streaming, on host `at`.
pub struct Probe {
    pub client: ReplicationClient,
    /// `host:port`.
    pub at: String,
    /// The server is a standby (`pg_is_in_recovery()`).
    pub in_recovery: bool,
}

/// `host:port` of a replication config, for messages.
pub fn host_of(cfg: &ReplicationConfig) -> String {
    format!("{}:{}", cfg.host, cfg.port)
}

/// Opens a replication session on `cfg` without starting it and asks the
/// server whether it is in recovery; `timeout` bounds the login and the
/// question.
pub async fn probe(cfg: ReplicationConfig, timeout: Duration) -> Result<Probe, PgWireError> {
    let at = host_of(&cfg);
    let asked = async {
        let mut client = ReplicationClient::connect_gated(cfg).await?;
        let rows = client.simple_query("SELECT pg_is_in_recovery()").await?;
        let value = rows.first().and_then(|r| r.first()).cloned().flatten();
        Ok::<_, PgWireError>((client, value.as_deref() == Some(b"t".as_slice())))
    };
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok((client, in_recovery))) => Ok(Probe {
            client,
            at,
            in_recovery,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(PgWireError::Io(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{at} did not answer within {timeout:?}"),
        )))),
    }
}

/// The replication client capture streams from. With one host it connects
/// as it always did (START_REPLICATION follows the login at once); with
/// several, it starts the session of the first host that is not in
/// recovery.
pub async fn connect(
    configs: Vec<ReplicationConfig>,
    timeout: Duration,
) -> Result<ReplicationClient, CaptureError> {
    if configs.len() == 1 {
        let cfg = configs.into_iter().next().expect("one config");
        return Ok(ReplicationClient::connect(cfg).await?);
    }
    let mut tried = Vec::new();
    for cfg in configs {
        let at = host_of(&cfg);
        match probe(cfg, timeout).await {
            Ok(p) if !p.in_recovery => {
                tracing::info!(host = %p.at, "the replication connection goes to the primary");
                let mut client = p.client;
                client.start().await?;
                return Ok(client);
            }
            Ok(_) => tried.push(format!("{at}: a standby (in recovery)")),
            Err(e) => tried.push(format!("{at}: {e}")),
        }
    }
    Err(NoPrimary { tried }.into())
}
