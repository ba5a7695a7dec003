//! A libpq connection string (URL or `key=value` form) split into what
//! tokio-postgres understands and the TLS keys walhook reads itself.
//!
//! tokio-postgres knows `sslmode` only as disable/prefer/require and rejects
//! `sslrootcert`, `sslcert` and `sslkey` as unknown options, so those keys are
//! taken out of the string here, with libpq's meaning, and the rest is handed
//! to tokio-postgres' own parser unchanged.

use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// What `sslmode` asks for, as libpq means it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, plain otherwise; nothing is verified.
    Prefer,
    /// TLS or no connection; the certificate is not verified.
    Require,
    /// TLS; the certificate chain must lead to a trusted root, any host name.
    VerifyCa,
    /// TLS; the chain must verify and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// The `sslmode` value that means this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported (walhook tries TLS first): use prefer, or disable"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "sslmode={other} is not a valid sslmode; use disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }

    /// Whether the server's certificate chain is checked.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Where the trusted root certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the platform's trusted roots.
    System,
}

/// The TLS settings of one connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The effective mode (libpq's defaults and upgrades applied).
    pub mode: SslMode,
    /// Whom to trust; always set when `mode` verifies.
    pub roots: Option<RootCerts>,
    /// A client certificate chain and its private key (`sslcert`, `sslkey`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// A parsed connection string: the settings for tokio-postgres and the TLS
/// settings walhook applies itself.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub pg: tokio_postgres::Config,
    pub tls: TlsSettings,
}

impl ConnInfo {
    /// Why the replication connection cannot honour this string, if it
    /// cannot: pgwire-replication 0.5 authenticates with SCRAM-SHA-256 but
    /// never binds the channel (SCRAM-SHA-256-PLUS), so going on would
    /// silently drop what `channel_binding=require` asks for.
    pub fn replication_refusal(&self) -> Option<&'static str> {
        (self.pg.get_channel_binding() == tokio_postgres::config::ChannelBinding::Require).then_some(
            "channel_binding=require cannot be honoured by the replication connection (it authenticates with SCRAM-SHA-256 without channel binding); remove it and use sslmode=verify-full, which keeps a man in the middle out as well",
        )
    }
}

/// The keys taken out of the string before tokio-postgres sees it.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// The TLS keys as found in the string, before libpq's rules are applied.
#[derive(Debug, Default)]
struct RawTls {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
}

impl RawTls {
    /// Keeps `value` when `key` is one of ours; returns whether it was.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        // As in libpq, a key given twice takes its last value.
        *slot = Some(value);
        true
    }
}

/// Why a connection string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    /// The string cannot be read. tokio-postgres' message may quote a part
    /// of it, so it is shown only where the string is the caller's own.
    #[error("{0}")]
    Syntax(String),
    /// The TLS keys ask for something impossible or unsupported; the message
    /// quotes only TLS keys and their values, never the password.
    #[error("{0}")]
    Tls(String),
}

/// Parses a libpq-style URL or `key=value` string.
pub fn parse(text: &str) -> Result<ConnInfo, ConnInfoError> {
    let mut raw = RawTls::default();
    let rest = if is_url(text) {
        split_url(text, &mut raw)
    } else {
        split_key_values(text, &mut raw)
    }
    .map_err(ConnInfoError::Syntax)?;
    let pg = rest
        .parse::<tokio_postgres::Config>()
        .map_err(|e| ConnInfoError::Syntax(super::error_chain(&e)))?;
    Ok(ConnInfo {
        pg,
        tls: settings(raw).map_err(ConnInfoError::Tls)?,
    })
}

fn is_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// libpq's rules: the default mode, `sslrootcert=system`, and `require`
/// with a root certificate meaning `verify-ca`.
fn settings(raw: RawTls) -> Result<TlsSettings, String> {
    let roots = raw.sslrootcert.map(|r| match r.as_str() {
        "system" => RootCerts::System,
        file => RootCerts::File(PathBuf::from(file)),
    });
    let mode = match (
        raw.sslmode.as_deref().map(SslMode::parse).transpose()?,
        &roots,
    ) {
        // libpq 16: the platform's roots are only worth it with the host
        // name checked, so that is their default and nothing weaker is allowed.
        (None, Some(RootCerts::System)) => SslMode::VerifyFull,
        (Some(mode), Some(RootCerts::System)) if mode != SslMode::VerifyFull => {
            return Err(format!(
                "sslmode={} may not be used with sslrootcert=system (use sslmode=verify-full)",
                mode.as_str()
            ));
        }
        // libpq: "if a root CA file exists, sslmode=require behaves like verify-ca".
        (Some(SslMode::Require), Some(RootCerts::File(_))) => SslMode::VerifyCa,
        (Some(mode), _) => mode,
        (None, _) => SslMode::Prefer,
    };
    if mode.verifies() && roots.is_none() {
        return Err(format!(
            "sslmode={} needs sslrootcert: the CA certificate file (PEM) that signed the server's certificate, or sslrootcert=system for the platform's trusted roots",
            mode.as_str()
        ));
    }
    let client_cert = match (raw.sslcert, raw.sslkey) {
        (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
        (None, None) => None,
        (Some(_), None) => {
            return Err("sslcert needs sslkey (the client certificate's private key)".into());
        }
        (None, Some(_)) => {
            return Err("sslkey needs sslcert (the client certificate it belongs to)".into());
        }
    };
    Ok(TlsSettings {
        mode,
        roots,
        client_cert,
    })
}

/// Takes our keys out of a URL's query; the other parameters stay as they
/// were written. The query starts at the first `?` after the credentials, as
/// tokio-postgres reads it.
fn split_url(url: &str, raw: &mut RawTls) -> Result<String, String> {
    let after_creds = url.find('@').map_or(0, |at| at + 1);
    let Some(q) = url[after_creds..].find('?').map(|q| after_creds + q) else {
        return Ok(url.to_owned());
    };
    let mut kept = Vec::new();
    for pair in url[q + 1..].split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key)?;
        if !TLS_KEYS.contains(&key.as_str()) || !raw.take(&key, decode(value)?) {
            kept.push(pair);
        }
    }
    let mut out = url[..q].to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "a URL parameter is not valid UTF-8 once percent-decoded".to_owned())
}

/// Takes our keys out of a `key=value` string (libpq's quoting: `'...'`
/// with `\` escapes) and writes the others back, quoted.
fn split_key_values(text: &str, raw: &mut RawTls) -> Result<String, String> {
    let mut kept = String::new();
    for (key, value) in key_values(text)? {
        if !raw.take(&key, value.clone()) {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push_str(&format!("{key}='{quoted}' "));
        }
    }
    Ok(kept.trim_end().to_owned())
}

/// The `key=value` pairs of a libpq connection string, values unquoted.
fn key_values(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // Not quoting the word: it may be a piece of an unquoted password.
            return Err("a parameter of the connection string has no `=`".into());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\'') if quoted => break,
                Some(c) if !quoted && c.is_whitespace() => break,
                Some('\\') => value.extend(chars.next()),
                Some(c) => value.push(c),
                None if quoted => {
                    return Err(format!("unterminated quoted value for `{key}`"));
                }
                None => break,
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(text: &str) -> TlsSettings {
        parse(text).unwrap_or_else(|e| panic!("{text}: {e}")).tls
    }

    #[test]
    fn tls_keys_are_read_from_a_url_and_the_rest_goes_to_tokio_postgres() {
        let info = parse(
            "postgres://u:p%3Fw@db.example:6432/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem&connect_timeout=3",
        )
        .expect("parses");
        assert_eq!(info.pg.get_password(), Some(&b"p?w"[..]));
        assert_eq!(info.pg.get_application_name(), Some("x"));
        assert_eq!(
            info.pg.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(
            info.tls,
            TlsSettings {
                mode: SslMode::VerifyFull,
                roots: Some(RootCerts::File("/etc/ca.pem".into())),
                client_cert: Some(("/c.pem".into(), "/k.pem".into())),
            }
        );
    }

    #[test]
    fn tls_keys_are_read_from_key_values_with_quoting() {
        let info = parse(
            r"host=localhost user=app password='it\'s a pw' dbname = crm sslmode=verify-ca sslrootcert='/my certs/ca.pem'",
        )
        .expect("parses");
        assert_eq!(info.pg.get_password(), Some(&b"it's a pw"[..]));
        assert_eq!(info.pg.get_dbname(), Some("crm"));
        assert_eq!(info.tls.mode, SslMode::VerifyCa);
        assert_eq!(
            info.tls.roots,
            Some(RootCerts::File("/my certs/ca.pem".into()))
        );
    }

    #[test]
    fn libpq_defaults_and_upgrades_apply() {
        assert_eq!(tls("postgres://u@h/db").mode, SslMode::Prefer);
        assert_eq!(tls("host=h sslmode=disable").mode, SslMode::Disable);
        assert_eq!(
            tls("postgres://u@h/db?sslmode=require").mode,
            SslMode::Require
        );
        // A root certificate turns require into verify-ca, as in libpq.
        assert_eq!(
            tls("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem").mode,
            SslMode::VerifyCa
        );
        let system = tls("postgres://u@h/db?sslrootcert=system");
        assert_eq!(system.mode, SslMode::VerifyFull);
        assert_eq!(system.roots, Some(RootCerts::System));
    }

    #[test]
    fn wrong_tls_settings_are_refused_clearly() {
        let err = |text: &str| parse(text).expect_err(text).to_string();
        assert!(
            err("postgres://u@h/db?sslmode=nope").contains("sslmode=nope is not a valid sslmode")
        );
        assert!(err("host=h sslmode=allow").contains("not supported"));
        assert!(err("postgres://u@h/db?sslmode=verify-full").contains("needs sslrootcert"));
        assert!(
            err("postgres://u@h/db?sslmode=require&sslrootcert=system")
                .contains("may not be used with sslrootcert=system")
        );
        assert!(err("postgres://u@h/db?sslcert=/c.pem").contains("sslcert needs sslkey"));
        assert!(err("host=h password='open").contains("unterminated"));
        assert!(err("postgres://u@h/db?sslcrl=/x").contains("sslcrl"));
    }

    #[test]
    fn errors_never_quote_the_password() {
        for text in [
            "postgres://u:hunter2@h/db?sslmode=hunter",
            "host=h password=hunter2 sslmode=bad port=x",
            "host=h password=my hunter2",
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn a_url_without_tls_keys_is_passed_on_unchanged() {
        let mut raw = RawTls::default();
        let url = "postgres://u:p@h1,h2/db?target_session_attrs=read-write&options=-c%20a%3Db";
        assert_eq!(split_url(url, &mut raw).expect("splits"), url);
        assert_eq!(
            split_url("postgres://u@h/db?sslmode=disable", &mut raw).expect("splits"),
            "postgres://u@h/db"
        );
    }
}
