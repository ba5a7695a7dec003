//! The validation pass: resolves `*_env` keys through the injected
//! environment and checks what involves more than one key (uniqueness, the
//! lease against endpoint timeouts, secrets against signing schemes...).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use reqwest::header::{HeaderName, HeaderValue};

use super::keys::EndpointSecrets;
use super::parse::{
    self, AdminFile, ConfigFile, EndpointFile, HeaderSource, LedgerFile, ObjectFile, SourceFile,
};
use super::types::{
    AdminConfig, DeliveryConfig, EndpointConfig, ExtraHeader, HeaderPrefix, LedgerConfig,
    ObjectConfig, RetryConfig, SigningScheme, SourceConfig,
};
use super::{Config, ConfigError};
use crate::sealed::SealKey;
use crate::secret::Secret;

type Res<T> = Result<T, ConfigError>;

/// The file name for messages and where `*_env` names are looked up.
pub(super) struct Validator<'a> {
    pub origin: &'a str,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// The file's text, for the lines of keys checked after parsing.
    pub text: &'a str,
}

impl Validator<'_> {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            key: key.into(),
            message: message.into(),
        }
    }

    pub(super) fn config(&self, file: ConfigFile) -> Res<Config> {
        let source = self.source(file.source)?;
        let ledger = self.ledger(file.ledger, &source)?;
        let objects = self.objects(file.objects)?;
        let endpoints = self.endpoints(file.endpoints, &file.delivery, &file.global_retry)?;
        self.delivery(&file.delivery, &endpoints)?;
        let admin = self.admin(file.admin)?;
        Ok(Config {
            source,
            ledger,
            objects,
            endpoints,
            delivery: file.delivery,
            admin,
        })
    }

    /// Look up the environment variable named by `key` (a `*_env` key).
    fn env_var(&self, key: &str, name: &str) -> Res<String> {
        if name.trim().is_empty() {
            return Err(self.invalid(key, "must name an environment variable"));
        }
        match (self.env)(name) {
            None => Err(self.invalid(key, format!("environment variable `{name}` is not set"))),
            Some(v) if v.trim().is_empty() => Err(self.invalid(
                key,
                format!("environment variable `{name}` is set but empty"),
            )),
            Some(v) => Ok(v),
        }
    }

    /// `key = value` or `key_env = NAME`, at most one. Returns the key that supplied
    /// the value (full path) and the value.
    fn value_or_env(
        &self,
        table: &str,
        key: &str,
        value: Option<String>,
        env_name: Option<String>,
    ) -> Res<Option<(String, String)>> {
        let key_path = format!("{table}.{key}");
        match (value, env_name) {
            (Some(_), Some(_)) => Err(self.invalid(
                key_path,
                format!("set either `{key}` or `{key}_env`, not both"),
            )),
            (Some(v), None) if v.trim().is_empty() => {
                Err(self.invalid(key_path, "must not be empty"))
            }
            (Some(v), None) => Ok(Some((key_path, v))),
            (None, Some(name)) => {
                let env_path = format!("{table}.{key}_env");
                let value = self.env_var(&env_path, &name)?;
                Ok(Some((env_path, value)))
            }
            (None, None) => Ok(None),
        }
    }

    fn source(&self, file: SourceFile) -> Res<SourceConfig> {
        let env_name = match (&file.url, file.url_env) {
            // Without either key the conventional variable is used.
            (None, None) => Some("DATABASE_URL".to_owned()),
            (_, env_name) => env_name,
        };
        let (url_key, url) = self
            .value_or_env("source", "url", file.url, env_name)?
            .ok_or_else(|| self.invalid("source.url", "missing; set `url` or `url_env`"))?;
        self.database_url(&url_key, &url, true)?;
        Ok(SourceConfig {
            url: Secret::new(url),
            name: file.name,
            slot: file.slot,
            publication: file.publication,
            connect_timeout: file.connect_timeout,
            replica_identity: file.replica_identity,
            status_interval: file.status_interval,
            failover: file.failover,
        })
    }

    /// A PostgreSQL connection string walhook can use, TLS keys included
    /// (libpq's meaning of `sslmode`, `sslrootcert`, `sslcert`, `sslkey`);
    /// `replication` when capture also opens its replication connection with it.
    fn database_url(&self, key: &str, url: &str, replication: bool) -> Res<()> {
        match crate::pg::conninfo::parse(url) {
            // The parser's message may quote the value, which holds the password.
            Err(crate::pg::conninfo::ConnInfoError::Syntax(_)) => Err(self.invalid(
                key,
                "not a valid PostgreSQL connection string; expected postgres://user:password@host:5432/dbname or \"host=... user=... dbname=...\"",
            )),
            // These quote only TLS keys and their values.
            Err(e @ crate::pg::conninfo::ConnInfoError::Tls(_)) => Err(self.invalid(key, e.to_string())),
            Ok(info) => match info.replication_refusal().filter(|_| replication) {
                Some(why) => Err(self.invalid(key, why)),
                None => Ok(()),
            },
        }
    }

    fn ledger(&self, file: LedgerFile, source: &SourceConfig) -> Res<LedgerConfig> {
        let url = match self.value_or_env("ledger", "url", file.url, file.url_env)? {
            // The same database as the source is not a separate one.
            Some((_, url)) if url == source.url.expose() => None,
            Some((key, url)) => {
                self.database_url(&key, &url, false)?;
                Some(Secret::new(url))
            }
            None => None,
        };
        Ok(LedgerConfig {
            schema: file.schema,
            url,
            keep_bodies: file.keep_bodies,
            retention: file.retention,
            retention_failed: file.retention_failed,
        })
    }

    fn objects(&self, files: Vec<ObjectFile>) -> Res<Vec<ObjectConfig>> {
        if files.is_empty() {
            return Err(self.invalid(
                "objects",
                "no table is mapped; add at least one [[objects]] with `table` and `slug`",
            ));
        }
        let mut out: Vec<ObjectConfig> = Vec::with_capacity(files.len());
        for (i, file) in files.into_iter().enumerate() {
            let (schema, table) = file.table;
            let slug = file.slug;
            if let Some(other) = out.iter().position(|o| o.slug == slug) {
                return Err(self.invalid(
                    format!("objects[{i}].slug"),
                    format!(
                        "slug {slug:?} is already used by objects[{other}]; slugs must be unique"
                    ),
                ));
            }
            if let Some(other) = out
                .iter()
                .position(|o| o.schema == schema && o.table == table)
            {
                return Err(self.invalid(
                    format!("objects[{i}].table"),
                    format!("table {schema}.{table} is already mapped by objects[{other}]; map each table once"),
                ));
            }
            if let Some(c) = file
                .when_changed
                .iter()
                .find(|c| file.exclude_columns.contains(c))
            {
                return Err(self.invalid(
                    format!("objects[{i}].when_changed"),
                    format!("column {c:?} is also in exclude_columns; an excluded column cannot decide which updates are sent"),
                ));
            }
            out.push(ObjectConfig {
                schema,
                table,
                slug,
                exclude_columns: file.exclude_columns,
                when_changed: file.when_changed,
            });
        }
        Ok(out)
    }

    fn endpoints(
        &self,
        files: Vec<EndpointFile>,
        delivery: &DeliveryConfig,
        global_retry: &toml::Table,
    ) -> Res<Vec<EndpointConfig>> {
        let mut out: Vec<EndpointConfig> = Vec::with_capacity(files.len());
        for (i, file) in files.into_iter().enumerate() {
            let ep = self.endpoint(i, file, delivery, global_retry)?;
            if let Some(other) = out.iter().position(|e| e.id == ep.id) {
                return Err(self.invalid(
                    format!("endpoints[{i}].id"),
                    format!(
                        "id {:?} is already used by endpoints[{other}]; ids must be unique",
                        ep.id
                    ),
                ));
            }
            out.push(ep);
        }
        Ok(out)
    }

    fn endpoint(
        &self,
        i: usize,
        file: EndpointFile,
        delivery: &DeliveryConfig,
        global_retry: &toml::Table,
    ) -> Res<EndpointConfig> {
        let base = format!("endpoints[{i}]");
        let (url_key, url_text) = self
            .value_or_env(&base, "url", file.url.clone(), file.url_env.clone())?
            .ok_or_else(|| {
                self.invalid(format!("{base}.url"), "missing; set `url` or `url_env`")
            })?;
        let url = self.endpoint_url(&url_key, &url_text, file.allow_insecure_http)?;
        let (secret_key, secrets) = self.endpoint_secrets(&base, &file)?;
        if file.signing.contains(&SigningScheme::StandardWebhooks)
            && let Some(n) = secrets
                .iter()
                .position(|k| k.standard_webhooks_key().is_err())
        {
            return Err(self.invalid(
                secret_key,
                format!("\"standard-webhooks\" signing needs every secret in the form whsec_<base64>; secret #{} is not (its value is not shown)", n + 1),
            ));
        }
        let retry = match &file.retry {
            Some(own) => {
                let r = parse::retry_overlay(self.text, self.origin, i, global_retry, own)?;
                self.retry_checks(&format!("{base}.retry"), &r)?;
                r
            }
            None => delivery.retry.clone(),
        };
        let headers = match &file.headers {
            Some(h) => self.endpoint_headers(&base, h, &delivery.header_prefix)?,
            None => Vec::new(),
        };
        let filter = match &file.filter {
            Some(f) => Some(parse::compile_filter(
                self.text,
                self.origin,
                i,
                &file.id,
                f,
            )?),
            None => None,
        };
        Ok(EndpointConfig {
            id: file.id,
            url,
            secrets,
            events: file.events,
            signing: file.signing,
            timeout: file.timeout,
            allow_insecure_http: file.allow_insecure_http,
            retry,
            headers,
            rate_limit: file.rate_limit,
            max_in_flight: file.max_in_flight,
            filter,
        })
    }

    /// An endpoint's extra headers: names a receiver may be sent (not
    /// walhook's own, not hop-by-hop or framing ones), values resolved and
    /// valid. Values are never quoted.
    fn endpoint_headers(
        &self,
        base: &str,
        headers: &BTreeMap<String, HeaderSource>,
        prefix: &HeaderPrefix,
    ) -> Res<Vec<ExtraHeader>> {
        let mut out: Vec<ExtraHeader> = Vec::with_capacity(headers.len());
        for (written, source) in headers {
            let key = format!("{base}.headers.{written}");
            let name = HeaderName::from_bytes(written.as_bytes()).map_err(|_| {
                self.invalid(
                    &key,
                    "not a valid header name; expected letters, digits and `-`, like \"x-api-key\"",
                )
            })?;
            if let Some(why) = reserved_header(name.as_str(), prefix) {
                return Err(self.invalid(&key, format!("`{name}` cannot be set here: {why}")));
            }
            if out.iter().any(|h| h.name == name) {
                return Err(self.invalid(
                    &key,
                    format!("header `{name}` is set twice (names are case-insensitive)"),
                ));
            }
            let (key, value) = match source {
                HeaderSource::Value(v) => (key, v.clone()),
                HeaderSource::Env(var) => {
                    let key = format!("{key}.env");
                    let value = self.env_var(&key, var)?;
                    (key, value)
                }
            };
            if value.trim().is_empty() {
                return Err(self.invalid(&key, "must not be empty"));
            }
            if HeaderValue::from_str(&value).is_err() {
                return Err(self.invalid(&key, "not a valid header value (visible ASCII, spaces and tabs only; the value is not shown)"));
            }
            out.push(ExtraHeader {
                name,
                value: Secret::new(value),
            });
        }
        Ok(out)
    }

    /// Parse and check an endpoint URL (see [`endpoint_url`]).
    fn endpoint_url(&self, key: &str, text: &str, allow_insecure_http: bool) -> Res<url::Url> {
        endpoint_url(text, allow_insecure_http).map_err(|m| self.invalid(key, m))
    }

    /// Exactly one of `secret`, `secret_env`, `secrets`, `secrets_env`; returns the
    /// key used and the secrets (at least one, none empty), parsed.
    fn endpoint_secrets(&self, base: &str, file: &EndpointFile) -> Res<(String, EndpointSecrets)> {
        let given: Vec<&str> = [
            ("secret", file.secret.is_some()),
            ("secret_env", file.secret_env.is_some()),
            ("secrets", file.secrets.is_some()),
            ("secrets_env", file.secrets_env.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        let key = match given.as_slice() {
            [] => {
                return Err(self.invalid(
                    format!("{base}.secret"),
                    "missing; set one of `secret`, `secret_env`, `secrets` or `secrets_env`",
                ));
            }
            [one] => format!("{base}.{one}"),
            [first, ..] => {
                return Err(self.invalid(
                    format!("{base}.{first}"),
                    format!("set only one of `secret`, `secret_env`, `secrets`, `secrets_env` (found {})", given.join(", ")),
                ));
            }
        };
        let values: Vec<String> = if let Some(s) = &file.secret {
            vec![s.clone()]
        } else if let Some(name) = &file.secret_env {
            vec![self.env_var(&key, name)?]
        } else if let Some(list) = &file.secrets {
            list.clone()
        } else {
            let names = file.secrets_env.as_deref().unwrap_or_default();
            names
                .iter()
                .map(|name| self.env_var(&key, name))
                .collect::<Res<_>>()?
        };
        if values.iter().any(|v| v.trim().is_empty()) {
            return Err(self.invalid(&key, "a secret must not be empty"));
        }
        let secrets = EndpointSecrets::new(values.into_iter().map(Secret::new).collect())
            .ok_or_else(|| self.invalid(&key, "must hold at least one secret"))?;
        Ok((key, secrets))
    }

    fn delivery(&self, d: &DeliveryConfig, endpoints: &[EndpointConfig]) -> Res<()> {
        if let Some(id) = &d.notify_endpoint
            && !endpoints.iter().any(|e| &e.id == id)
        {
            let known: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
            let known = if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            };
            return Err(self.invalid(
                "delivery.notify_endpoint",
                format!("no endpoint has id {id:?} (endpoints: {known})"),
            ));
        }
        self.retry_checks("delivery.retry", &d.retry)
    }

    /// What a retry policy must hold across its keys; `table` names it in
    /// messages (`delivery.retry`, `endpoints[0].retry`).
    fn retry_checks(&self, table: &str, r: &RetryConfig) -> Res<()> {
        if r.max_interval < r.initial {
            return Err(self.invalid(
                format!("{table}.max_interval"),
                format!(
                    "{} is shorter than `initial` ({})",
                    humantime::format_duration(r.max_interval),
                    humantime::format_duration(r.initial)
                ),
            ));
        }
        if r.max_attempts.is_some() && r.schedule.is_none() {
            return Err(self.invalid(
                format!("{table}.max_attempts"),
                "only applies with `schedule`; set a schedule or remove it",
            ));
        }
        Ok(())
    }

    fn admin(&self, file: AdminFile) -> Res<AdminConfig> {
        let token = self
            .value_or_env("admin", "token", file.token, file.token_env)?
            .map(|(_, t)| Secret::new(t));
        let text = file.listen.trim();
        let listen = if !file.enabled || text.is_empty() {
            None
        } else {
            Some(parse_listen(text).ok_or_else(|| {
                self.invalid(
                    "admin.listen",
                    format!("{:?} is not an address; expected ip:port like \"127.0.0.1:9187\", or \"\" to switch the admin API off", file.listen),
                )
            })?)
        };
        if let Some(addr) = listen
            && token.is_none()
            && !addr.ip().is_loopback()
        {
            return Err(self.invalid(
                "admin.listen",
                format!("{addr} is reachable from other hosts, so the admin API needs a token; set `admin.token_env` (or `admin.token`), or listen on 127.0.0.1"),
            ));
        }
        let secrets_key_env = file.secrets_key_env.trim().to_owned();
        if secrets_key_env.is_empty() {
            return Err(self.invalid("admin.secrets_key_env", "must name an environment variable"));
        }
        let secrets_key = match (self.env)(&secrets_key_env) {
            Some(text) if !text.trim().is_empty() => {
                Some(SealKey::from_base64(&text).map_err(|e| {
                    self.invalid(
                        "admin.secrets_key_env",
                        format!("the variable {secrets_key_env} does not hold a usable key: {e}"),
                    )
                })?)
            }
            _ => None,
        };
        Ok(AdminConfig {
            listen,
            token,
            secrets_key_env,
            secrets_key,
        })
    }
}

/// Parse and check an endpoint URL: https, or http on a loopback host (or
/// anywhere with `allow_insecure_http`), with a host. The URL is never
/// quoted in the message: it may carry credentials or a token.
pub fn endpoint_url(text: &str, allow_insecure_http: bool) -> Result<url::Url, String> {
    let url = url::Url::parse(text.trim())
        .map_err(|e| format!("not a valid URL ({e}); expected https://host/path"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http || is_loopback_host(&url) => {}
        "http" => {
            return Err("plain http:// is accepted only for loopback hosts (127.0.0.1, ::1, localhost); use https://, or set `allow_insecure_http = true` on this endpoint".into());
        }
        other => {
            return Err(format!(
                "unsupported scheme `{other}`; expected https:// (or http:// on a loopback host)"
            ));
        }
    }
    if url.host().is_none() {
        return Err("the URL has no host; expected https://host/path".into());
    }
    Ok(url)
}

/// Why a header name is not one an endpoint may set, if it is not.
fn reserved_header(name: &str, prefix: &HeaderPrefix) -> Option<&'static str> {
    const FRAMING: [&str; 12] = [
        "content-type",
        "content-length",
        "content-encoding",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    ];
    if FRAMING.contains(&name) {
        Some("walhook or HTTP itself sets it")
    } else if name == "user-agent" {
        Some("walhook sends `walhook/<version>`")
    } else if name
        .strip_prefix(prefix.as_str())
        .is_some_and(|rest| rest.starts_with('-'))
    {
        Some("walhook's own headers use the `delivery.header_prefix` prefix")
    } else if name.starts_with("webhook-") {
        Some("`webhook-*` are the Standard Webhooks headers walhook signs")
    } else if name.starts_with("proxy-") {
        Some("proxy headers are hop-by-hop")
    } else {
        None
    }
}

fn parse_listen(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    let port: u16 = text.strip_prefix("localhost:")?.parse().ok()?;
    Some(SocketAddr::from(([127, 0, 0, 1], port)))
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}
