//! Who may call the admin API: the bearer token (compared in constant time),
//! and the guards against a browser on another site using the operator's
//! admin port (cross-origin writes, DNS rebinding).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AdminState, ApiError};

/// The admin token, kept as its SHA-256 digest so every comparison is
/// between equal-length values and takes the same time whatever was given.
pub(super) struct Token([u8; 32]);

impl Token {
    pub(super) fn new(token: &str) -> Token {
        Token(digest(token))
    }

    pub(super) fn matches(&self, given: &str) -> bool {
        self.0.ct_eq(&digest(given)).into()
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl AdminState {
    /// Whether `given` is the configured token (true when none is configured).
    pub(super) fn authorized(&self, given: Option<&str>) -> bool {
        match (&self.token, given) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(g)) => want.matches(g),
        }
    }

    /// Without a token, only a loopback listener is allowed (the config sees
    /// to it); also refuse requests naming another host, which is what a DNS
    /// rebinding page in the operator's browser would send.
    pub(super) fn check_host(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.token.is_some() {
            return Ok(());
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if host_is_local(host) {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// `localhost`, or an IP literal (with or without a port).
fn host_is_local(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// The token of an `Authorization: Bearer <token>` header.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Token and same-origin guard for everything but `/healthz`, `/readyz` and `/`.
pub(super) async fn guard(State(st): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    if let Err(e) = check_origin(&req).and_then(|()| st.check_host(req.headers())) {
        return e.into_response();
    }
    if !st.authorized(bearer(req.headers())) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// A browser on another site must not be able to make changes (or, with no
/// token, read) through the operator's loopback admin port: refuse
/// cross-origin writes, and host names other than the ones we serve.
fn check_origin(req: &Request) -> Result<(), ApiError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if req.method() != Method::GET
        && let Some(origin) = req.headers().get(header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or("");
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
        if origin_host != host {
            return Err(ApiError::Forbidden);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn local_hosts() {
        for h in [
            "localhost",
            "localhost:9187",
            "127.0.0.1:9187",
            "[::1]:9187",
            "::1",
            "10.0.0.1",
        ] {
            assert!(host_is_local(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:9187",
            "127.0.0.1.nip.io:80",
            "",
        ] {
            assert!(!host_is_local(h), "{h}");
        }
    }

    #[test]
    fn token_comparison() {
        let t = Token::new("s3cret");
        assert!(t.matches("s3cret"));
        assert!(!t.matches("s3creT"));
        assert!(!t.matches(""));
    }

    #[test]
    fn bearer_header_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  xyz "),
        );
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
