//! Binding and serving the admin HTTP: bind first so `walhook run` fails
//! fast on a taken port, then serve [`router`] until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{AdminState, router};
use crate::config::Config;
use crate::dispatch::http;
use crate::metrics::Metrics;

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot listen on {addr} for the admin API: {source}. Is another walhook (or another program) using it? Change admin.listen, or set it to \"\" to switch the admin HTTP off."
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("admin HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound admin server, not yet serving (binding first lets `run` fail
/// fast on a taken port).
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
}

impl AdminServer {
    /// Bind `cfg.admin.listen`; `None` when the admin HTTP is switched off.
    pub async fn bind(
        cfg: Arc<Config>,
        metrics: Arc<Metrics>,
        capture: bool,
    ) -> Result<Option<AdminServer>, ServeError> {
        let Some(addr) = cfg.admin.listen else {
            return Ok(None);
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let state = AdminState::new(cfg, metrics, capture)?;
        Ok(Some(AdminServer { listener, state }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown`; open connections get a few seconds to finish.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "admin HTTP listening");
        let app = router(self.state);
        let stop = shutdown.clone();
        let server = axum::serve(self.listener, app).with_graceful_shutdown(stop.cancelled_owned());
        tokio::select! {
            r = server => r?,
            _ = async {
                shutdown.cancelled().await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            } => tracing::debug!("admin HTTP: connections still open at shutdown; closing them"),
        }
        Ok(())
    }
}

/// Bind `cfg.admin.listen` and serve until `shutdown` (nothing when the
/// admin HTTP is off).
pub async fn serve(
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    capture: bool,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    match AdminServer::bind(cfg, metrics, capture).await? {
        Some(server) => server.serve(shutdown).await,
        None => Ok(()),
    }
}
