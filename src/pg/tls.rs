//! TLS for every connection walhook opens, with rustls: a client
//! configuration for tokio-postgres (through tokio-postgres-rustls), the
//! replication connection's own settings (pgwire-replication's `TlsConfig`),
//! and plain-words explanations for handshakes that fail.
//!
//! Both kinds of connection trust the same roots: a PEM file, either the one
//! `sslrootcert` names or, for `sslrootcert=system`, the platform's bundle
//! (the file OpenSSL would use; `SSL_CERT_FILE` wins).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conninfo::{RootCerts, SslMode, TlsSettings};

/// The crypto provider of every connection (pgwire-replication uses ring too).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The tokio-postgres connector for `tls`.
pub fn connector(tls: &TlsSettings) -> Result<MakeRustlsConnect, String> {
    if tls.mode == SslMode::Disable {
        // Never used: no certificate file is read (libpq ignores them too).
        let plain = TlsSettings {
            mode: SslMode::Disable,
            roots: None,
            client_cert: None,
        };
        return Ok(MakeRustlsConnect::new(client_config(&plain)?));
    }
    Ok(MakeRustlsConnect::new(client_config(tls)?))
}

/// The rustls client configuration that checks what `tls.mode` asks for.
fn client_config(tls: &TlsSettings) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (&tls.roots, tls.mode.verifies()) {
        (Some(roots), true) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(
                Arc::new(root_store(roots)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("TLS setup: {e}"))?;
            if tls.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        _ => Arc::new(Unverified(provider.signature_verification_algorithms)),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match &tls.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = load_certs(cert, "sslcert")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read sslkey {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!("sslcert and sslkey do not make a usable client certificate: {e}")
            })
        }
    }
}

/// The PEM file of trusted roots: `sslrootcert`'s file, or the platform's.
pub fn roots_file(roots: &RootCerts) -> Result<PathBuf, String> {
    match roots {
        RootCerts::File(path) => Ok(path.clone()),
        RootCerts::System => openssl_probe::probe().cert_file.ok_or_else(|| {
            "sslrootcert=system: no certificate bundle found on this machine (install the ca-certificates package or set SSL_CERT_FILE)".to_owned()
        }),
    }
}

fn root_store(roots: &RootCerts) -> Result<RootCertStore, String> {
    let path = roots_file(roots)?;
    let mut store = RootCertStore::empty();
    let (added, _unusable) = store.add_parsable_certificates(load_certs(&path, "sslrootcert")?);
    if added == 0 {
        return Err(format!(
            "sslrootcert {} holds no usable CA certificate",
            path.display()
        ));
    }
    Ok(store)
}

fn load_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read {key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key} {} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the host name
/// is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            // webpki checks the name last, so the chain has verified by now.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `sslmode=prefer` and `require`: encryption without checking who the
/// server is (as libpq without a root certificate). The handshake's own
/// signatures are still checked, so the session keys belong to the
/// certificate presented.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The replication connection's TLS settings for `tls`, connecting to a
/// server known as `host` (sent as SNI, and the name verify-full checks).
pub fn replication_tls(
    tls: &TlsSettings,
    host: &str,
) -> Result<pgwire_replication::TlsConfig, String> {
    use pgwire_replication::{SslMode as Mode, TlsConfig};
    let roots = match (&tls.roots, tls.mode.verifies()) {
        (Some(roots), true) => Some(roots_file(roots)?),
        _ => None,
    };
    let mut rc = match tls.mode {
        SslMode::Disable => return Ok(TlsConfig::disabled()),
        SslMode::Prefer => TlsConfig {
            mode: Mode::Prefer,
            ..TlsConfig::default()
        },
        SslMode::Require => TlsConfig::require(),
        SslMode::VerifyCa => TlsConfig::verify_ca(roots),
        SslMode::VerifyFull => TlsConfig::verify_full(roots),
    };
    // Set even for an IP address: rustls then checks the certificate's IP
    // names (as libpq does) and sends no SNI, where pgwire-replication would
    // otherwise refuse verify-full for an IP outright.
    rc = rc.with_sni_hostname(host);
    if let Some((cert, key)) = &tls.client_cert {
        rc = rc.with_client_cert(cert.clone(), key.clone());
    }
    Ok(rc)
}

/// Why a TLS handshake failed, in words an operator can act on; `None` when
/// `e` is no TLS failure walhook can explain (a network error, say).
pub fn explain(e: &tokio_postgres::Error, tls: &TlsSettings, host: &str) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return Some(explain_rustls(r, tls, host));
        }
        if let Some(r) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(explain_rustls(r, tls, host));
        }
        if s.to_string() == "server does not support TLS" {
            return Some(format!(
                "the server does not accept TLS connections (its ssl setting is off), and sslmode={} requires TLS",
                tls.mode.as_str()
            ));
        }
        source = s.source();
    }
    None
}

fn explain_rustls(e: &rustls::Error, tls: &TlsSettings, host: &str) -> String {
    let trusted = match &tls.roots {
        Some(RootCerts::File(path)) => format!("the CA in sslrootcert ({})", path.display()),
        Some(RootCerts::System) => "the platform's trusted roots (sslrootcert=system)".to_owned(),
        None => "a trusted CA".to_owned(),
    };
    let why = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => format!("it is not signed by {trusted}"),
            CertificateError::NotValidForName => {
                format!("it is not valid for the host name \"{host}\"")
            }
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "it is not valid for the host name \"{host}\" (it names {}); connect with one of those names, or use sslmode=verify-ca to check the chain only",
                presented
                    .iter()
                    .map(|n| bare_name(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            CertificateError::Expired => "it has expired".to_owned(),
            CertificateError::ExpiredContext { not_after, .. } => {
                format!("it expired at {}", unix_time(*not_after))
            }
            CertificateError::NotValidYet => "it is not valid yet".to_owned(),
            CertificateError::NotValidYetContext { not_before, .. } => {
                format!("it is not valid before {}", unix_time(*not_before))
            }
            other => format!(
                "it is not acceptable: {}",
                rustls::Error::InvalidCertificate(other.clone())
            ),
        },
        rustls::Error::AlertReceived(alert) => {
            return format!(
                "the server ended the TLS handshake ({alert:?}){}",
                if tls.client_cert.is_some() {
                    ": it may not accept walhook's client certificate (sslcert): is it signed by a CA the server trusts (ssl_ca_file)?"
                } else {
                    ""
                }
            );
        }
        other => return format!("the TLS handshake failed: {other}"),
    };
    format!(
        "the server's certificate for \"{host}\" did not verify (sslmode={}): {why}",
        tls.mode.as_str()
    )
}

/// `localhost` from rustls' `DnsName("localhost")` (and an IP address
/// from `IpAddress(..)`'s quoted form alike); anything else as it is.
fn bare_name(presented: &str) -> &str {
    match (presented.find('"'), presented.rfind('"')) {
        (Some(a), Some(b)) if b > a => &presented[a + 1..b],
        _ => presented,
    }
}

fn unix_time(t: UnixTime) -> String {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (unix time)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: SslMode, roots: Option<RootCerts>) -> TlsSettings {
        TlsSettings {
            mode,
            roots,
            client_cert: None,
        }
    }

    #[test]
    fn certificate_failures_are_explained_with_the_host() {
        let tls = settings(SslMode::VerifyFull, Some(RootCerts::File("/ca.pem".into())));
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let text = explain_rustls(&unknown, &tls, "db.example");
        assert!(text.contains("\"db.example\""), "{text}");
        assert!(
            text.contains("not signed by the CA in sslrootcert (/ca.pem)"),
            "{text}"
        );
        let expired = rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_000)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_600_000_000)),
        });
        let text = explain_rustls(&expired, &tls, "db.example");
        assert!(text.contains("expired at 2020-09-13T12:26:40Z"), "{text}");
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("db.example").expect("name"),
            presented: vec!["DnsName(\"other.example\")".into()],
        });
        let text = explain_rustls(&name, &tls, "db.example");
        assert!(
            text.contains("not valid for the host name \"db.example\""),
            "{text}"
        );
        assert!(text.contains("other.example"), "{text}");
    }

    #[test]
    fn system_roots_need_a_bundle_on_the_machine() {
        // The test machines install ca-certificates; a missing file is an error.
        match roots_file(&RootCerts::System) {
            Ok(path) => assert!(path.exists(), "{}", path.display()),
            Err(e) => assert!(e.contains("SSL_CERT_FILE"), "{e}"),
        }
    }

    #[test]
    fn replication_tls_follows_the_mode() {
        use pgwire_replication::SslMode as Mode;
        let ca = Some(RootCerts::File("/ca.pem".into()));
        let full = replication_tls(&settings(SslMode::VerifyFull, ca.clone()), "db").expect("tls");
        assert_eq!(full.mode, Mode::VerifyFull);
        assert_eq!(full.ca_pem_path, Some(PathBuf::from("/ca.pem")));
        assert_eq!(full.sni_hostname.as_deref(), Some("db"));
        let prefer = replication_tls(&settings(SslMode::Prefer, None), "db").expect("tls");
        assert_eq!(prefer.mode, Mode::Prefer);
        let off = replication_tls(&settings(SslMode::Disable, None), "db").expect("tls");
        assert_eq!(off.mode, Mode::Disable);
    }

    #[test]
    fn missing_files_are_named() {
        let tls = settings(
            SslMode::VerifyFull,
            Some(RootCerts::File("/nonexistent/ca.pem".into())),
        );
        let e = client_config(&tls).expect_err("no such file");
        assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
    }
}
