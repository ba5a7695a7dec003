//! Strict parsing: the file's shape as serde structs (unknown keys rejected,
//! defaults, every single-key check done while deserializing), and TOML
//! errors turned into messages with the file, the line and the key path.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use toml::Spanned;

use super::ConfigError;
use super::de::{checked, positive_rate_opt, positive_usize_opt};
use super::duration;
use super::types::{DeliveryConfig, KeepBodies, ReplicaIdentity, RetryConfig, SigningScheme};
use crate::event::expr::ContentFilter;

/// The whole file. `[delivery]` is already its public type; the other tables
/// have `*_env` keys that the validation pass resolves.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    #[serde(default)]
    pub source: SourceFile,
    #[serde(default)]
    pub ledger: LedgerFile,
    #[serde(default)]
    pub objects: Vec<ObjectFile>,
    #[serde(default)]
    pub endpoints: Vec<EndpointFile>,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub admin: AdminFile,
    /// `[delivery.retry]` as written, for the endpoints' `retry` tables to
    /// be laid over.
    #[serde(skip)]
    pub global_retry: toml::Table,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct SourceFile {
    pub url: Option<String>,
    pub url_env: Option<String>,
    #[serde(deserialize_with = "source_name")]
    pub name: String,
    #[serde(deserialize_with = "slot_name")]
    pub slot: String,
    #[serde(deserialize_with = "sql_ident")]
    pub publication: String,
    #[serde(deserialize_with = "duration::nonzero")]
    pub connect_timeout: Duration,
    pub replica_identity: ReplicaIdentity,
    #[serde(deserialize_with = "duration::nonzero")]
    pub status_interval: Duration,
    pub failover: bool,
}

impl Default for SourceFile {
    fn default() -> Self {
        SourceFile {
            url: None,
            url_env: None,
            name: "app".into(),
            slot: "walhook".into(),
            publication: "walhook".into(),
            connect_timeout: Duration::from_secs(30),
            replica_identity: ReplicaIdentity::Full,
            status_interval: Duration::from_secs(1),
            failover: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct LedgerFile {
    #[serde(deserialize_with = "sql_ident")]
    pub schema: String,
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub keep_bodies: KeepBodies,
    #[serde(deserialize_with = "duration::nonzero")]
    pub retention: Duration,
    #[serde(deserialize_with = "duration::nonzero")]
    pub retention_failed: Duration,
}

impl Default for LedgerFile {
    fn default() -> Self {
        LedgerFile {
            schema: "walhook".into(),
            url: None,
            url_env: None,
            keep_bodies: KeepBodies::Failed,
            retention: Duration::from_secs(7 * 86_400),
            retention_failed: Duration::from_secs(30 * 86_400),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ObjectFile {
    /// (schema, table).
    #[serde(deserialize_with = "table_name")]
    pub table: (String, String),
    #[serde(deserialize_with = "slug")]
    pub slug: String,
    #[serde(default, deserialize_with = "column_names")]
    pub exclude_columns: Vec<String>,
    #[serde(default, deserialize_with = "watched_columns")]
    pub when_changed: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EndpointFile {
    #[serde(deserialize_with = "endpoint_id")]
    pub id: String,
    pub url: Option<String>,
    pub url_env: Option<String>,
    pub secret: Option<String>,
    pub secret_env: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub secrets_env: Option<Vec<String>>,
    #[serde(default = "all_events", deserialize_with = "event_filters")]
    pub events: Vec<String>,
    #[serde(default = "superleap_only", deserialize_with = "signing_schemes")]
    pub signing: Vec<SigningScheme>,
    #[serde(default = "ten_seconds", deserialize_with = "duration::nonzero")]
    pub timeout: Duration,
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// The keys of `[delivery.retry]` this endpoint sets, with where.
    pub retry: Option<RetryTable>,
    pub headers: Option<BTreeMap<String, HeaderSource>>,
    #[serde(default, deserialize_with = "positive_rate_opt")]
    pub rate_limit: Option<f64>,
    #[serde(default, deserialize_with = "positive_usize_opt")]
    pub max_in_flight: Option<usize>,
    pub filter: Option<Spanned<String>>,
}

/// An endpoint's `retry` table, each value with its place in the file.
pub(super) type RetryTable = BTreeMap<String, Spanned<toml::Value>>;

/// An extra header's value: the value itself, or `{ env = "VAR" }`.
pub(super) enum HeaderSource {
    Value(String),
    Env(String),
}

impl<'de> Deserialize<'de> for HeaderSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderSource;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or { env = \"VARIABLE\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HeaderSource, E> {
                Ok(HeaderSource::Value(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderSource, A::Error> {
                let mut env = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "env" {
                        return Err(de::Error::unknown_field(&key, &["env"]));
                    }
                    env = Some(map.next_value::<String>()?);
                }
                env.map(HeaderSource::Env)
                    .ok_or_else(|| de::Error::custom("expected { env = \"VARIABLE\" }"))
            }
        }
        d.deserialize_any(V)
    }
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}

fn superleap_only() -> Vec<SigningScheme> {
    vec![SigningScheme::Superleap]
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct AdminFile {
    pub enabled: bool,
    pub listen: String,
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub secrets_key_env: String,
}

impl Default for AdminFile {
    fn default() -> Self {
        AdminFile {
            enabled: true,
            listen: "127.0.0.1:9187".into(),
            token: None,
            token_env: None,
            secrets_key_env: super::types::DEFAULT_SECRETS_KEY_ENV.into(),
        }
    }
}

/// Parse `text` into the file shape; errors name `origin`, the line and the key.
pub(super) fn read(text: &str, origin: &str) -> Result<ConfigFile, ConfigError> {
    let mut file: ConfigFile = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|e| {
            let path = e.path().to_string();
            // The root path prints as "."; syntax errors come before any key.
            let path = (path != ".").then_some(path);
            ConfigError::Parse {
                path: origin.to_owned(),
                message: describe(text, path.as_deref(), e.inner()),
            }
        })?;
    // The file parsed once already, so this cannot fail; an empty table
    // would only mean no global keys to inherit.
    let raw: toml::Table = text.parse().unwrap_or_default();
    if let Some(toml::Value::Table(delivery)) = raw.get("delivery")
        && let Some(toml::Value::Table(retry)) = delivery.get("retry")
    {
        file.global_retry = retry.clone();
    }
    Ok(file)
}

/// An endpoint's retry policy: its `retry` table laid over `[delivery.retry]`
/// (`global`) key by key, read as [`RetryConfig`] with the same checks.
/// Errors name `endpoints[i].retry.<key>` and the key's line.
pub(super) fn retry_overlay(
    text: &str,
    origin: &str,
    i: usize,
    global: &toml::Table,
    own: &RetryTable,
) -> Result<RetryConfig, ConfigError> {
    let mut merged = global.clone();
    for (key, value) in own {
        merged.insert(key.clone(), value.get_ref().clone());
    }
    serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
        let path = e.path().to_string();
        let key = (path != ".").then_some(path);
        let full = key.as_ref().map(|k| format!("endpoints[{i}].retry.{k}"));
        let message = describe("", full.as_deref(), e.inner());
        let line = key
            .as_deref()
            .and_then(|k| own.get(k.split(['[', '.']).next().unwrap_or(k)))
            .or_else(|| own.values().next())
            .map(|v| line_at(text, v.span().start));
        ConfigError::Parse {
            path: origin.to_owned(),
            message: match line {
                Some(n) => format!("line {n}: {message}"),
                None => message,
            },
        }
    })
}

/// An endpoint's `filter`, compiled; an error names the endpoint, the line
/// of the key and the position within the expression.
pub(super) fn compile_filter(
    text: &str,
    origin: &str,
    i: usize,
    id: &str,
    filter: &Spanned<String>,
) -> Result<ContentFilter, ConfigError> {
    ContentFilter::compile(filter.get_ref()).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        message: format!(
            "line {}: `endpoints[{i}].filter` (endpoint {id:?}): invalid expression at {e}",
            line_at(text, filter.span().start)
        ),
    })
}

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// `line N: <what>`, where what names the key path (for an unknown key, the
/// key itself and the keys allowed there).
fn describe(text: &str, path: Option<&str>, e: &toml::de::Error) -> String {
    let raw = e
        .message()
        .trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    let body = if let Some(rest) = raw.strip_prefix("unknown field `") {
        // serde lists the expected names in backquotes: "expected one of `a`, `b`".
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let key = path.unwrap_or(field);
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        if expected.is_empty() {
            format!("unknown key `{key}`")
        } else {
            format!(
                "unknown key `{key}`, expected one of: {}",
                expected.join(", ")
            )
        }
    } else if let Some(rest) = raw.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let key = path.map_or(field.to_owned(), |p| format!("{p}.{field}"));
        format!("`{key}`: missing; {}", missing_hint(field))
    } else if let Some(p) = path {
        let msg = if is_secret_path(p) { redact(&raw) } else { raw };
        format!("`{p}`: {msg}")
    } else {
        raw
    };
    let line = e.span().map(|span| line_at(text, span.start));
    match line {
        Some(n) => format!("line {n}: {body}"),
        None => body,
    }
}

/// What a required key holds, for the message saying it is missing.
fn missing_hint(field: &str) -> &'static str {
    match field {
        "table" => "expected \"schema.table\" or \"table\" (schema public)",
        "slug" => "expected a slug like \"lead\"",
        "id" => "every endpoint needs an id like \"crm\"",
        _ => "this key is required",
    }
}

/// Keys whose values may be secrets: their values never appear in a message.
/// Extra headers are all treated as secrets (one may be an API key).
fn is_secret_path(path: &str) -> bool {
    if path.contains(".headers") {
        return true;
    }
    let leaf = path.rsplit('.').next().unwrap_or(path);
    let leaf = leaf.split('[').next().unwrap_or(leaf);
    matches!(leaf, "url" | "secret" | "secrets" | "token")
}

fn redact(message: &str) -> String {
    match message.split_once(", expected ") {
        Some((_, expected)) => {
            format!("invalid value (not shown, it may be a secret), expected {expected}")
        }
        None => "invalid value (not shown, it may be a secret)".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Single-key checks, run while deserializing so that errors carry the key's
// path and line. Values named here are never secrets.

fn source_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |name: String| {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(name)
        } else {
            Err(format!(
                "{name:?} is not a valid name; expected letters, digits, `_` or `-` (it starts every event id)"
            ))
        }
    })
}

fn slot_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |slot: String| {
        let ok = !slot.is_empty()
            && slot.len() <= 63
            && slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(slot)
        } else {
            Err(format!(
                "{slot:?} is not a valid replication slot name; expected 1 to 63 characters of a-z, 0-9, `_`"
            ))
        }
    })
}

/// Publication and schema names: plain lower-case SQL identifiers, so that they
/// mean the same quoted or not.
fn sql_ident<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |name: String| {
        let mut bytes = name.bytes();
        let ok = matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b == b'_')
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && name.len() <= 63;
        if ok {
            Ok(name)
        } else {
            Err(format!(
                "{name:?} is not a valid identifier; expected a-z or `_`, then a-z, 0-9 or `_` (at most 63)"
            ))
        }
    })
}

/// `leads` -> (`public`, `leads`); `crm.students` -> (`crm`, `students`).
fn table_name<'de, D: Deserializer<'de>>(d: D) -> Result<(String, String), D::Error> {
    checked(d, |text: String| {
        let ok = |s: &str| !s.is_empty() && s.trim() == s && !s.contains('"');
        match text.split('.').collect::<Vec<_>>().as_slice() {
            [table] if ok(table) => Ok(("public".into(), (*table).into())),
            [schema, table] if ok(schema) && ok(table) => Ok(((*schema).into(), (*table).into())),
            _ => Err(format!(
                "{text:?} is not a table name; expected \"schema.table\" or \"table\" (schema public), names exactly as in the database"
            )),
        }
    })
}

fn is_slug(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn slug<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |slug: String| {
        if is_slug(&slug) {
            Ok(slug)
        } else {
            Err(format!(
                "{slug:?} is not a valid slug; expected a-z, then a-z, 0-9 or `_`"
            ))
        }
    })
}

fn column_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    checked(d, |columns: Vec<String>| {
        if columns.iter().any(String::is_empty) {
            Err("column names must not be empty".into())
        } else {
            Ok(columns)
        }
    })
}

/// `when_changed`: a non-empty list of column names, each once.
fn watched_columns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    checked(d, |columns: Vec<String>| {
        if columns.is_empty() {
            return Err(
                "an empty list would drop every update; remove the key to send every update".into(),
            );
        }
        if columns.iter().any(String::is_empty) {
            return Err("column names must not be empty".into());
        }
        match columns
            .iter()
            .enumerate()
            .find(|(n, c)| columns[..*n].contains(c))
        {
            Some((_, c)) => Err(format!("column {c:?} is listed twice")),
            None => Ok(columns),
        }
    })
}

fn endpoint_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked(d, |id: String| {
        if valid_endpoint_id(&id) {
            Ok(id)
        } else {
            Err(format!(
                "{id:?} is not a valid endpoint id; expected a-z or 0-9, then a-z, 0-9, `_` or `-`"
            ))
        }
    })
}

fn is_event_filter(f: &str) -> bool {
    if f == "*" || crate::event::system::NAMES.contains(&f) {
        return true;
    }
    let Some((slug, verb)) = f.split_once('.') else {
        return false;
    };
    let verb_ok = matches!(verb, "create" | "update" | "delete");
    match (slug, verb) {
        ("*", "*") => false,
        ("*", _) => verb_ok,
        (_, "*") => is_slug(slug),
        _ => is_slug(slug) && verb_ok,
    }
}

fn event_filters<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    checked(d, |events: Vec<String>| {
        check_event_filters(&events).map(|()| events)
    })
}

/// Whether `events` is a valid `events` list of an endpoint: not empty,
/// each a filter walhook knows.
pub fn check_event_filters(events: &[String]) -> Result<(), String> {
    if events.is_empty() {
        return Err("an empty list subscribes to nothing; use [\"*\"] for every event".into());
    }
    match events.iter().find(|f| !is_event_filter(f)) {
        Some(bad) => Err(format!(
            "invalid event filter {bad:?}; expected \"*\", \"slug.*\", \"*.create\" (or update, delete), \"slug.create\", or one of walhook's own events \"endpoint.disabled\", \"walhook.ping\""
        )),
        None => Ok(()),
    }
}

fn signing_schemes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SigningScheme>, D::Error> {
    checked(d, |names: Vec<String>| {
        if names.is_empty() {
            return Err(
                "must list at least one scheme: \"superleap\" and/or \"standard-webhooks\"".into(),
            );
        }
        let mut schemes = Vec::with_capacity(names.len());
        for name in &names {
            let scheme: SigningScheme = name.parse()?;
            if schemes.contains(&scheme) {
                return Err(format!("{name:?} is listed twice"));
            }
            schemes.push(scheme);
        }
        Ok(schemes)
    })
}

/// Whether `id` is a valid endpoint id: a-z or 0-9, then a-z, 0-9, `_` or `-`.
pub fn valid_endpoint_id(id: &str) -> bool {
    let mut bytes = id.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
