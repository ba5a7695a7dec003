//! `walhook endpoints ping` and `POST /api/endpoints/{id}/ping`: a signed
//! `walhook.ping` sent straight to a configured endpoint, bypassing the
//! ledger, to check the URL, the receiver and its signature check.

use std::time::SystemTime;

use bytes::Bytes;

use crate::config::{Config, EndpointConfig};
use crate::dispatch::{http, sign};
use crate::event::system;
use crate::pg::unix_ms;

use super::reports::{AdminError, PingOutcome, configured_endpoint, url_origin};

/// Send a signed `walhook.ping` straight to a configured endpoint (no ledger).
pub async fn ping(cfg: &Config, id: &str) -> Result<PingOutcome, AdminError> {
    let ep = configured_endpoint(cfg, id)?;
    let client = http::build_client()?;
    ping_with(cfg, ep, &client, SystemTime::now()).await
}

/// [`ping`] with a given HTTP client and clock.
pub async fn ping_with(
    cfg: &Config,
    ep: &EndpointConfig,
    client: &reqwest::Client,
    now: SystemTime,
) -> Result<PingOutcome, AdminError> {
    let now_ms = unix_ms(now);
    let event = system::ping(&cfg.source.name, &ep.id, now_ms);
    let event_id = event.id;
    let body = Bytes::from(event.body);
    let headers = sign::signed_headers(
        ep,
        &cfg.delivery.header_prefix,
        &event_id,
        system::PING,
        &body,
        now_ms.div_euclid(1000),
    );
    let rec = http::attempt(client, &ep.url, &headers, body, ep.timeout).await;
    Ok(PingOutcome {
        endpoint: ep.id.clone(),
        target: url_origin(&ep.url),
        event_id,
        ok: rec.outcome.is_success(),
        status_code: rec.outcome.status(),
        outcome: rec.outcome.message(),
        duration_ms: rec.duration.as_millis().min(u64::MAX as u128) as u64,
        response_excerpt: rec.response_excerpt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_body_is_the_documented_shape() {
        let v: serde_json::Value = serde_json::from_str(system::PING_BODY).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"before": {}, "after": {"ping": true}, "diff": {}})
        );
    }
}
