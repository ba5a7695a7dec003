//! Configuration: strict TOML (unknown keys rejected), durations with units,
//! `*_env` indirection for secrets and URLs, secrets that cannot be printed.
//!
//! INTERFACE (fixed; other modules rely on these names):
//! - `Config::load(path) -> Result<Config, ConfigError>`: read, parse, resolve env, validate.
//! - `Config::from_toml_str(text, origin) -> Result<Config, ConfigError>`: same from a string
//!   (`origin` is used in messages as the file name).
//! - `Config::from_toml_str_with_env(text, origin, env)`: same with an injected environment.
//! - `duration_from_str("1h30m")`: the duration syntax, also for CLI flags.
//! - All fields below are public and already resolved (env looked up, defaults applied).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::pg::quote_ident;
use serde::de::{self, DeserializeSeed, Visitor};

pub use crate::secret::Secret;

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: SourceConfig,
    pub ledger: LedgerConfig,
    pub objects: Vec<ObjectConfig>,
    pub endpoints: Vec<EndpointConfig>,
    pub delivery: DeliveryConfig,
    pub admin: AdminConfig,
}

/// What `setup` does to the replica identity of mapped tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `REPLICA IDENTITY FULL` is set by `setup` on mapped tables (default).
    Full,
    /// Tables are left as they are; old rows then hold only key columns.
    Default,
}

/// `[source]`: the database to replicate from and the slot/publication names.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// `url` or the value of the variable named by `url_env` (default `DATABASE_URL`).
    pub url: Secret,
    /// First part of event ids. Default `app`. `[A-Za-z0-9_-]+`.
    pub name: String,
    /// Replication slot name. Default `walhook`. `[a-z0-9_]{1,63}` (Postgres' rule).
    pub slot: String,
    /// Publication name. Default `walhook`.
    pub publication: String,
    /// How long `run`/`setup`/`check` try to reach the database at start. Default 30s.
    pub connect_timeout: Duration,
    /// `replica_identity = "full" | "default"`. Default full.
    pub replica_identity: ReplicaIdentity,
    /// Interval between status updates to the server. Default 1s (key `status_interval`).
    pub status_interval: Duration,
}

/// `[ledger]`: where the durable events, deliveries and progress live.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Schema of the ledger tables. Default `walhook`.
    pub schema: String,
    /// A separate database for the ledger; `None` = the source database.
    /// (Keys `url` / `url_env`.) Only the source database is supported by `run` for
    /// now: the validator rejects a different one with a clear message.
    pub url: Option<Secret>,
}

/// A mapped table.
#[derive(Debug, Clone)]
pub struct ObjectConfig {
    /// Schema name (`public` when the config wrote just `leads`).
    pub schema: String,
    /// Table name.
    pub table: String,
    /// The object slug: `[a-z][a-z0-9_]*`, unique.
    pub slug: String,
    /// Columns never shown in any event body. Default empty.
    pub exclude_columns: Vec<String>,
}

impl ObjectConfig {
    /// `schema.table`, quoted for SQL when needed.
    pub fn qualified_sql(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

/// A signature scheme an endpoint's requests carry (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningScheme {
    /// `x-superleap-signature: sha256=<hex>` over the raw body, key = secret's UTF-8 bytes.
    Superleap,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
}

/// One `[[endpoints]]` receiver: validated URL, at least one secret, filters, schemes.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// `[a-z0-9][a-z0-9_-]*`, unique.
    pub id: String,
    /// `url` or `url_env`. https, or http on a loopback host, or http anywhere with
    /// `allow_insecure_http = true`.
    pub url: url::Url,
    /// From `secret`, `secret_env`, `secrets` or `secrets_env` (lists allow rotation;
    /// the first one signs the superleap header). At least one.
    pub secrets: Vec<Secret>,
    /// Event filters: `*`, `slug.*`, `*.verb`, exact names. Default `["*"]`.
    pub events: Vec<String>,
    /// Default `["superleap"]`. `standard-webhooks` requires every secret to be `whsec_<base64>`.
    pub signing: Vec<SigningScheme>,
    /// Per-attempt timeout. Default 10s.
    pub timeout: Duration,
    pub allow_insecure_http: bool,
}

/// `delivery.ordering`: whether a row's events reach an endpoint in order (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    PerRecord,
    None,
}

/// `[delivery]`: concurrency, headers, leases and the retry policy.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Default per-record.
    pub ordering: Ordering,
    /// Default 256.
    pub max_in_flight: usize,
    /// Header name prefix. Default `x-superleap`.
    pub header_prefix: String,
    /// How long a claimed delivery stays leased to one process. Default 60s.
    /// Must exceed every endpoint timeout.
    pub lease: Duration,
    /// Disable an endpoint that has failed continuously this long. Default none.
    pub endpoint_disable_after: Option<Duration>,
    /// Endpoint id that receives `endpoint.disabled` notifications. Default none.
    pub notify_endpoint: Option<String>,
    pub retry: RetryConfig,
}

/// The retry policy (SPEC §5). Defaults are the three-day rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Default 30s.
    pub initial: Duration,
    /// Default 2.0.
    pub multiplier: f64,
    /// Default 6h.
    pub max_interval: Duration,
    /// Exponential backoff until the event is this old. Default 24h.
    pub backoff_window: Duration,
    /// Then one attempt every this long. Default 24h.
    pub then_every: Duration,
    /// A delivery still failing when the event is this old is disabled. Default 72h.
    pub disable_after: Duration,
    /// Fraction of each delay that is randomised (+-). Default 0.2. Range 0..=1.
    pub jitter: f64,
    /// A fixed schedule that replaces the exponential part. Default none.
    pub schedule: Option<Vec<Duration>>,
    /// With a schedule: attempts after which the delivery is disabled
    /// (default: schedule length + 1, the first attempt plus one per entry).
    pub max_attempts: Option<u32>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Duration::from_secs(30),
            multiplier: 2.0,
            max_interval: Duration::from_secs(6 * 3600),
            backoff_window: Duration::from_secs(24 * 3600),
            then_every: Duration::from_secs(24 * 3600),
            disable_after: Duration::from_secs(72 * 3600),
            jitter: 0.2,
            schedule: None,
            max_attempts: None,
        }
    }
}

/// `[admin]`: the admin HTTP API; a non-loopback `listen` always has a token.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Default `127.0.0.1:9187`. `listen = ""` or `enabled = false` switches the admin HTTP off.
    pub listen: Option<SocketAddr>,
    /// `token` or `token_env`. Required when `listen` is not a loopback address.
    pub token: Option<Secret>,
}

/// A configuration error: names the file, the key and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or type error, unknown key; `message` already names the key.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// A semantic error on one key.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: String,
        key: String,
        message: String,
    },
}

impl Config {
    /// Read the file at `path`, then as [`Config::from_toml_str`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parse, resolve `*_env` keys from the process environment, apply defaults, validate.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::from_toml_str_with_env(text, origin, &|name| std::env::var(name).ok())
    }

    /// Same as [`Config::from_toml_str`], with environment variables looked up through
    /// `env` (tests pass a fake environment instead of mutating the process one).
    pub fn from_toml_str_with_env(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| describe_toml_error(origin, text, &e))?;
        Resolver { origin, env }.config(raw)
    }

    /// The mapped object for a table, by its exact schema and table name.
    pub fn object(&self, schema: &str, table: &str) -> Option<&ObjectConfig> {
        self.objects
            .iter()
            .find(|o| o.schema == schema && o.table == table)
    }

    /// The endpoint with this id.
    pub fn endpoint(&self, id: &str) -> Option<&EndpointConfig> {
        self.endpoints.iter().find(|e| e.id == id)
    }

    /// Things that are valid but probably not what the operator meant (for `check`
    /// and a log line at start): filters naming no configured object, no endpoints,
    /// `replica_identity = "default"`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.endpoints.is_empty() {
            out.push(
                "no [[endpoints]]: events are recorded in the ledger but not delivered".into(),
            );
        }
        let slugs: Vec<&str> = self.objects.iter().map(|o| o.slug.as_str()).collect();
        for ep in &self.endpoints {
            for filter in &ep.events {
                if let Some((slug, _)) = filter.split_once('.')
                    && slug != "*"
                    && !slugs.contains(&slug)
                    && !crate::event::system::NAMES
                        .iter()
                        .any(|e| e.starts_with(&format!("{slug}.")))
                {
                    let known = slugs.join(", ");
                    out.push(format!(
                        "endpoint `{}`: event filter `{filter}` names no configured object (slugs: {known})",
                        ep.id
                    ));
                }
            }
        }
        if self.source.replica_identity == ReplicaIdentity::Default {
            out.push(
                "replica_identity = \"default\": `before` of update and delete events holds only key columns"
                    .into(),
            );
        }
        out
    }
}

impl EndpointConfig {
    /// Whether this endpoint subscribes to the event `name` (e.g. `lead.create`).
    pub fn subscribes_to(&self, name: &str) -> bool {
        crate::event::filter::subscribed(&self.events, name)
    }
}

/// The Standard Webhooks key: the bytes of a `whsec_<base64>` secret (standard
/// alphabet, padded), or `None` when the secret is not of that form.
pub fn whsec_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let b64 = secret.strip_prefix("whsec_")?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()
        .filter(|key| !key.is_empty())
}

const DURATION_EXPECTED: &str = "a duration like \"30s\", \"5m\", \"24h\" (units ms, s, m, h, d)";

/// Parse a duration: one or more `<number><unit>` parts, units `ms`, `s`, `m`, `h`,
/// `d`, e.g. `500ms`, `30s`, `1h30m`, `1.5h`. Zero is accepted here; callers decide.
/// The error names the input and what is expected (durations are never secrets).
pub fn duration_from_str(s: &str) -> Result<Duration, String> {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let bad = || format!("invalid duration {s:?}: expected {DURATION_EXPECTED}");
    let text = s.trim();
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0; // nanoseconds
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b' ' {
            i += 1;
            continue;
        }
        let int_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_part = &text[int_start..i];
        let mut frac_part = "";
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let frac_start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_part = &text[frac_start..i];
            if frac_part.is_empty() {
                return Err(bad());
            }
        }
        if int_part.is_empty() {
            return Err(bad());
        }
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit: u128 = match &text[unit_start..i] {
            "ms" => NANOS_PER_SEC / 1000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            "d" => 86_400 * NANOS_PER_SEC,
            _ => return Err(bad()),
        };
        let whole: u128 = int_part.parse().map_err(|_| bad())?;
        let mut nanos = whole.checked_mul(unit).ok_or_else(bad)?;
        if !frac_part.is_empty() {
            // Digits past 18 are below a nanosecond for every unit.
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().map_err(|_| bad())?;
            nanos += frac * unit / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(nanos).ok_or_else(bad)?;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| bad())?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

// ---------------------------------------------------------------------------
// Raw TOML shapes. Every table rejects unknown keys; everything is optional here
// so that missing keys get our own message (naming the key) in validation.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    source: RawSource,
    #[serde(default)]
    ledger: RawLedger,
    #[serde(default)]
    objects: Vec<RawObject>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    admin: RawAdmin,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSource {
    url: Option<String>,
    url_env: Option<String>,
    name: Option<String>,
    slot: Option<String>,
    publication: Option<String>,
    connect_timeout: Option<RawDuration>,
    replica_identity: Option<String>,
    status_interval: Option<RawDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    schema: Option<String>,
    url: Option<String>,
    url_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObject {
    table: Option<String>,
    slug: Option<String>,
    exclude_columns: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    id: Option<String>,
    url: Option<String>,
    url_env: Option<String>,
    secret: Option<String>,
    secret_env: Option<String>,
    secrets: Option<Vec<String>>,
    secrets_env: Option<Vec<String>>,
    events: Option<Vec<String>>,
    signing: Option<Vec<String>>,
    timeout: Option<RawDuration>,
    allow_insecure_http: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    ordering: Option<String>,
    max_in_flight: Option<i64>,
    header_prefix: Option<String>,
    lease: Option<RawDuration>,
    endpoint_disable_after: Option<RawDuration>,
    notify_endpoint: Option<String>,
    #[serde(default)]
    retry: RawRetry,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial: Option<RawDuration>,
    multiplier: Option<f64>,
    max_interval: Option<RawDuration>,
    backoff_window: Option<RawDuration>,
    then_every: Option<RawDuration>,
    disable_after: Option<RawDuration>,
    jitter: Option<f64>,
    schedule: Option<Vec<RawDuration>>,
    max_attempts: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    enabled: Option<bool>,
    listen: Option<String>,
    token: Option<String>,
    token_env: Option<String>,
}

/// A duration parsed while deserializing, so a bad one is reported with its line.
#[derive(Clone, Copy)]
struct RawDuration(Duration);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(DURATION_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                duration_from_str(v).map(RawDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

// ---------------------------------------------------------------------------
// TOML errors: toml gives a message and a byte span but not the key path, so the
// path is recovered from a second, tolerant pass that records where every key is.

fn describe_toml_error(origin: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let raw = e
        .message()
        .trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    let span = e.span();
    let line = span.as_ref().map(|s| {
        let end = s.start.min(text.len());
        text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    });
    let path = span.as_ref().and_then(|s| key_path_at(text, s.start));
    let body = if let Some(rest) = raw.strip_prefix("unknown field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let full = match &path {
            Some(p) if p == field || p.ends_with(&format!(".{field}")) => p.clone(),
            _ => field.to_owned(),
        };
        // serde lists the expected names in backquotes: "expected one of `a`, `b`".
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        if expected.is_empty() {
            format!("unknown key `{full}`")
        } else {
            format!(
                "unknown key `{full}`, expected one of: {}",
                expected.join(", ")
            )
        }
    } else if let Some(p) = &path {
        let msg = if is_secret_path(p) { redact(&raw) } else { raw };
        format!("`{p}`: {msg}")
    } else {
        raw
    };
    let message = match line {
        Some(n) => format!("line {n}: {body}"),
        None => body,
    };
    ConfigError::Parse {
        path: origin.to_owned(),
        message,
    }
}

/// Keys whose values may be secrets: their values never appear in a message.
fn is_secret_path(path: &str) -> bool {
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

/// The dotted path of the key at or just before byte `offset` (the key whose
/// value or name the error points into).
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let mut keys = Vec::new();
    // A failure part-way (a syntax error, or a datetime, whose internal key is not
    // spanned) leaves the keys read so far; both passes walk the document in the
    // same order, so those cover every key up to the typed pass's error.
    let _ = KeyCollector {
        prefix: String::new(),
        out: &mut keys,
    }
    .deserialize(toml::de::Deserializer::new(text));
    keys.into_iter()
        .filter(|(start, _)| *start <= offset)
        .max_by_key(|(start, path)| (*start, path.len()))
        .map(|(_, path)| path)
}

/// Records `(key start offset, dotted path)` for every key in a document.
struct KeyCollector<'a> {
    prefix: String,
    out: &'a mut Vec<(usize, String)>,
}

impl<'de> DeserializeSeed<'de> for KeyCollector<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyCollector<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<toml::Spanned<String>>()? {
            let path = if self.prefix.is_empty() {
                key.get_ref().clone()
            } else {
                format!("{}.{}", self.prefix, key.get_ref())
            };
            self.out.push((key.span().start, path.clone()));
            map.next_value_seed(KeyCollector {
                prefix: path,
                out: &mut *self.out,
            })?;
        }
        Ok(())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(KeyCollector {
                prefix: format!("{}[{i}]", self.prefix),
                out: &mut *self.out,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Resolution and validation: raw shapes -> the public, checked types.

struct Resolver<'a> {
    origin: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

type Res<T> = Result<T, ConfigError>;

impl Resolver<'_> {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_owned(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Res<Config> {
        let source = self.source(raw.source)?;
        let ledger = self.ledger(raw.ledger, &source)?;
        let objects = self.objects(raw.objects)?;
        let endpoints = self.endpoints(raw.endpoints)?;
        let delivery = self.delivery(raw.delivery, &endpoints)?;
        let admin = self.admin(raw.admin)?;
        Ok(Config {
            source,
            ledger,
            objects,
            endpoints,
            delivery,
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
        let env_path = format!("{table}.{key}_env");
        match (value, env_name) {
            (Some(_), Some(_)) => Err(self.invalid(
                key_path,
                format!("set either `{key}` or `{key}_env`, not both"),
            )),
            (Some(v), None) if v.trim().is_empty() => {
                Err(self.invalid(key_path, "must not be empty"))
            }
            (Some(v), None) => Ok(Some((key_path, v))),
            (None, Some(name)) => Ok(Some((env_path.clone(), self.env_var(&env_path, &name)?))),
            (None, None) => Ok(None),
        }
    }

    fn duration(
        &self,
        key: &str,
        raw: Option<RawDuration>,
        default: Duration,
        allow_zero: bool,
    ) -> Res<Duration> {
        let d = raw.map_or(default, |r| r.0);
        if !allow_zero && d.is_zero() {
            return Err(self.invalid(
                key,
                format!("must be longer than zero; expected {DURATION_EXPECTED}"),
            ));
        }
        Ok(d)
    }

    fn source(&self, raw: RawSource) -> Res<SourceConfig> {
        let env_name = match (&raw.url, raw.url_env) {
            // Without either key the conventional variable is used.
            (None, None) => Some("DATABASE_URL".to_owned()),
            (_, env_name) => env_name,
        };
        let (url_key, url) = self
            .value_or_env("source", "url", raw.url, env_name)?
            .expect("url or url_env is always set here");
        match url.parse::<tokio_postgres::Config>() {
            // The parser's message may quote the value, which holds the password.
            Err(_) => {
                return Err(self.invalid(
                    url_key,
                    "not a valid PostgreSQL connection string; expected postgres://user:password@host:5432/dbname or \"host=... user=... dbname=...\"",
                ));
            }
            Ok(pg) if pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require => {
                return Err(self.invalid(
                    url_key,
                    "sslmode=require is not supported yet: walhook's ledger connection has no TLS. Connect over a trusted network (sslmode=disable or prefer) or through a local TLS-terminating proxy",
                ));
            }
            Ok(_) => {}
        }
        let name = raw.name.unwrap_or_else(|| "app".into());
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(self.invalid(
                "source.name",
                format!("{name:?} is not a valid name; expected letters, digits, `_` or `-` (it starts every event id)"),
            ));
        }
        let slot = raw.slot.unwrap_or_else(|| "walhook".into());
        if slot.is_empty()
            || slot.len() > 63
            || !slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(self.invalid(
                "source.slot",
                format!("{slot:?} is not a valid replication slot name; expected 1 to 63 characters of a-z, 0-9, `_`"),
            ));
        }
        let publication = raw.publication.unwrap_or_else(|| "walhook".into());
        self.sql_ident("source.publication", &publication)?;
        let replica_identity = match raw.replica_identity.as_deref().unwrap_or("full") {
            "full" => ReplicaIdentity::Full,
            "default" => ReplicaIdentity::Default,
            other => {
                return Err(self.invalid(
                    "source.replica_identity",
                    format!("unknown value {other:?}; expected \"full\" or \"default\""),
                ));
            }
        };
        Ok(SourceConfig {
            url: Secret::new(url),
            name,
            slot,
            publication,
            connect_timeout: self.duration(
                "source.connect_timeout",
                raw.connect_timeout,
                Duration::from_secs(30),
                false,
            )?,
            replica_identity,
            status_interval: self.duration(
                "source.status_interval",
                raw.status_interval,
                Duration::from_secs(1),
                false,
            )?,
        })
    }

    /// Publication and schema names: plain lower-case SQL identifiers, so that they
    /// mean the same quoted or not.
    fn sql_ident(&self, key: &str, name: &str) -> Res<()> {
        let mut bytes = name.bytes();
        let ok = matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b == b'_')
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && name.len() <= 63;
        if ok {
            Ok(())
        } else {
            Err(self.invalid(
                key,
                format!("{name:?} is not a valid identifier; expected a-z or `_`, then a-z, 0-9 or `_` (at most 63)"),
            ))
        }
    }

    fn ledger(&self, raw: RawLedger, source: &SourceConfig) -> Res<LedgerConfig> {
        let schema = raw.schema.unwrap_or_else(|| "walhook".into());
        self.sql_ident("ledger.schema", &schema)?;
        if let Some((key, url)) = self.value_or_env("ledger", "url", raw.url, raw.url_env)?
            && url != source.url.expose()
        {
            return Err(self.invalid(
                    key,
                    format!("a separate ledger database is not supported yet: the ledger lives in the source database (schema `{schema}`); remove `ledger.url` / `ledger.url_env`, or set it to the source URL"),
                ));
        }
        // The same database as the source is not a separate one.
        Ok(LedgerConfig { schema, url: None })
    }

    fn objects(&self, raws: Vec<RawObject>) -> Res<Vec<ObjectConfig>> {
        if raws.is_empty() {
            return Err(self.invalid(
                "objects",
                "no table is mapped; add at least one [[objects]] with `table` and `slug`",
            ));
        }
        let mut out: Vec<ObjectConfig> = Vec::with_capacity(raws.len());
        for (i, raw) in raws.into_iter().enumerate() {
            let base = format!("objects[{i}]");
            let table_key = format!("{base}.table");
            let slug_key = format!("{base}.slug");
            let table = raw.table.ok_or_else(|| {
                self.invalid(
                    &table_key,
                    "missing; expected \"schema.table\" or \"table\" (schema public)",
                )
            })?;
            let (schema, table) = split_table(&table).ok_or_else(|| {
                self.invalid(
                    &table_key,
                    format!("{table:?} is not a table name; expected \"schema.table\" or \"table\" (schema public), names exactly as in the database"),
                )
            })?;
            let slug = raw
                .slug
                .ok_or_else(|| self.invalid(&slug_key, "missing; expected a slug like \"lead\""))?;
            if !is_slug(&slug) {
                return Err(self.invalid(
                    &slug_key,
                    format!("{slug:?} is not a valid slug; expected a-z, then a-z, 0-9 or `_`"),
                ));
            }
            if let Some(other) = out.iter().position(|o| o.slug == slug) {
                return Err(self.invalid(
                    &slug_key,
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
                    &table_key,
                    format!("table {schema}.{table} is already mapped by objects[{other}]; map each table once"),
                ));
            }
            let exclude_columns = raw.exclude_columns.unwrap_or_default();
            if exclude_columns.iter().any(|c| c.is_empty()) {
                return Err(self.invalid(
                    format!("{base}.exclude_columns"),
                    "column names must not be empty",
                ));
            }
            out.push(ObjectConfig {
                schema,
                table,
                slug,
                exclude_columns,
            });
        }
        Ok(out)
    }

    fn endpoints(&self, raws: Vec<RawEndpoint>) -> Res<Vec<EndpointConfig>> {
        let mut out: Vec<EndpointConfig> = Vec::with_capacity(raws.len());
        for (i, raw) in raws.into_iter().enumerate() {
            let ep = self.endpoint(i, raw)?;
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

    fn endpoint(&self, i: usize, raw: RawEndpoint) -> Res<EndpointConfig> {
        let base = format!("endpoints[{i}]");
        let id_key = format!("{base}.id");
        let id = raw.id.clone().ok_or_else(|| {
            self.invalid(&id_key, "missing; every endpoint needs an id like \"crm\"")
        })?;
        if !is_endpoint_id(&id) {
            return Err(self.invalid(
                &id_key,
                format!("{id:?} is not a valid endpoint id; expected a-z or 0-9, then a-z, 0-9, `_` or `-`"),
            ));
        }
        let allow_insecure_http = raw.allow_insecure_http.unwrap_or(false);
        let (url_key, url_text) = self
            .value_or_env(&base, "url", raw.url.clone(), raw.url_env.clone())?
            .ok_or_else(|| {
                self.invalid(format!("{base}.url"), "missing; set `url` or `url_env`")
            })?;
        let url = self.endpoint_url(&url_key, &url_text, allow_insecure_http)?;
        let (secret_key, secrets) = self.endpoint_secrets(&base, &raw)?;

        let events_key = format!("{base}.events");
        let events = raw.events.unwrap_or_else(|| vec!["*".into()]);
        if events.is_empty() {
            return Err(self.invalid(
                &events_key,
                "an empty list subscribes to nothing; use [\"*\"] for every event",
            ));
        }
        for filter in &events {
            if !is_event_filter(filter) {
                return Err(self.invalid(
                    &events_key,
                    format!("invalid event filter {filter:?}; expected \"*\", \"slug.*\", \"*.create\" (or update, delete), \"slug.create\", or one of walhook's own events \"endpoint.disabled\", \"walhook.ping\""),
                ));
            }
        }

        let signing_key = format!("{base}.signing");
        let names = raw.signing.unwrap_or_else(|| vec!["superleap".into()]);
        if names.is_empty() {
            return Err(self.invalid(
                &signing_key,
                "must list at least one scheme: \"superleap\" and/or \"standard-webhooks\"",
            ));
        }
        let mut signing = Vec::with_capacity(names.len());
        for name in &names {
            let scheme = match name.as_str() {
                "superleap" => SigningScheme::Superleap,
                "standard-webhooks" => SigningScheme::StandardWebhooks,
                other => {
                    return Err(self.invalid(
                        &signing_key,
                        format!("unknown scheme {other:?}; expected \"superleap\" and/or \"standard-webhooks\""),
                    ));
                }
            };
            if signing.contains(&scheme) {
                return Err(self.invalid(&signing_key, format!("{name:?} is listed twice")));
            }
            signing.push(scheme);
        }
        if signing.contains(&SigningScheme::StandardWebhooks)
            && let Some(n) = secrets.iter().position(|s| whsec_key(s.expose()).is_none())
        {
            return Err(self.invalid(
                    secret_key,
                    format!("\"standard-webhooks\" signing needs every secret in the form whsec_<base64>; secret #{} is not (its value is not shown)", n + 1),
                ));
        }

        Ok(EndpointConfig {
            id,
            url,
            secrets,
            events,
            signing,
            timeout: self.duration(
                &format!("{base}.timeout"),
                raw.timeout,
                Duration::from_secs(10),
                false,
            )?,
            allow_insecure_http,
        })
    }

    /// Parse and check an endpoint URL. The URL is never quoted in a message: it
    /// may carry credentials or a token.
    fn endpoint_url(&self, key: &str, text: &str, allow_insecure_http: bool) -> Res<url::Url> {
        let url = url::Url::parse(text.trim()).map_err(|e| {
            self.invalid(
                key,
                format!("not a valid URL ({e}); expected https://host/path"),
            )
        })?;
        match url.scheme() {
            "https" => {}
            "http" if allow_insecure_http || is_loopback_host(&url) => {}
            "http" => {
                return Err(self.invalid(
                    key,
                    "plain http:// is accepted only for loopback hosts (127.0.0.1, ::1, localhost); use https://, or set `allow_insecure_http = true` on this endpoint",
                ));
            }
            other => {
                return Err(self.invalid(
                    key,
                    format!("unsupported scheme `{other}`; expected https:// (or http:// on a loopback host)"),
                ));
            }
        }
        if url.host().is_none() {
            return Err(self.invalid(key, "the URL has no host; expected https://host/path"));
        }
        Ok(url)
    }

    /// Exactly one of `secret`, `secret_env`, `secrets`, `secrets_env`; returns the
    /// key used and the secrets (at least one, none empty).
    fn endpoint_secrets(&self, base: &str, raw: &RawEndpoint) -> Res<(String, Vec<Secret>)> {
        let given: Vec<&str> = [
            ("secret", raw.secret.is_some()),
            ("secret_env", raw.secret_env.is_some()),
            ("secrets", raw.secrets.is_some()),
            ("secrets_env", raw.secrets_env.is_some()),
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
        let values: Vec<String> = if let Some(s) = &raw.secret {
            vec![s.clone()]
        } else if let Some(name) = &raw.secret_env {
            vec![self.env_var(&key, name)?]
        } else if let Some(list) = &raw.secrets {
            list.clone()
        } else {
            let names = raw.secrets_env.as_deref().unwrap_or_default();
            names
                .iter()
                .map(|name| self.env_var(&key, name))
                .collect::<Res<_>>()?
        };
        if values.is_empty() {
            return Err(self.invalid(&key, "must hold at least one secret"));
        }
        if values.iter().any(|v| v.trim().is_empty()) {
            return Err(self.invalid(&key, "a secret must not be empty"));
        }
        Ok((key, values.into_iter().map(Secret::new).collect()))
    }

    fn delivery(&self, raw: RawDelivery, endpoints: &[EndpointConfig]) -> Res<DeliveryConfig> {
        let ordering = match raw.ordering.as_deref().unwrap_or("per-record") {
            "per-record" => Ordering::PerRecord,
            "none" => Ordering::None,
            other => {
                return Err(self.invalid(
                    "delivery.ordering",
                    format!("unknown value {other:?}; expected \"per-record\" or \"none\""),
                ));
            }
        };
        let max_in_flight = raw.max_in_flight.unwrap_or(256);
        let max_in_flight = usize::try_from(max_in_flight)
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| {
                self.invalid(
                    "delivery.max_in_flight",
                    format!("{max_in_flight} is out of range; expected at least 1"),
                )
            })?;
        let header_prefix = raw
            .header_prefix
            .unwrap_or_else(|| "x-superleap".into())
            .to_ascii_lowercase();
        let prefix_ok = header_prefix
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && !header_prefix.ends_with('-')
            && header_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !prefix_ok {
            return Err(self.invalid(
                "delivery.header_prefix",
                format!("{header_prefix:?} is not a valid header name prefix; expected letters, digits and inner `-`, like \"x-superleap\""),
            ));
        }
        let lease = self.duration("delivery.lease", raw.lease, Duration::from_secs(60), false)?;
        if let Some(ep) = endpoints.iter().find(|e| e.timeout >= lease) {
            return Err(self.invalid(
                "delivery.lease",
                format!(
                    "{} must be longer than every endpoint timeout, but endpoint `{}` has timeout {}",
                    humantime::format_duration(lease),
                    ep.id,
                    humantime::format_duration(ep.timeout)
                ),
            ));
        }
        let endpoint_disable_after = match raw.endpoint_disable_after {
            None => None,
            Some(d) => Some(self.duration(
                "delivery.endpoint_disable_after",
                Some(d),
                Duration::ZERO,
                false,
            )?),
        };
        if let Some(id) = &raw.notify_endpoint
            && !endpoints.iter().any(|e| &e.id == id)
        {
            let known: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
            return Err(self.invalid(
                "delivery.notify_endpoint",
                format!(
                    "no endpoint has id {id:?} (endpoints: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        Ok(DeliveryConfig {
            ordering,
            max_in_flight,
            header_prefix,
            lease,
            endpoint_disable_after,
            notify_endpoint: raw.notify_endpoint,
            retry: self.retry(raw.retry)?,
        })
    }

    fn retry(&self, raw: RawRetry) -> Res<RetryConfig> {
        let d = RetryConfig::default();
        let initial = self.duration("delivery.retry.initial", raw.initial, d.initial, false)?;
        let multiplier = raw.multiplier.unwrap_or(d.multiplier);
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(self.invalid(
                "delivery.retry.multiplier",
                format!("{multiplier} is out of range; expected a number >= 1.0"),
            ));
        }
        let max_interval = self.duration(
            "delivery.retry.max_interval",
            raw.max_interval,
            d.max_interval,
            false,
        )?;
        if max_interval < initial {
            return Err(self.invalid(
                "delivery.retry.max_interval",
                format!(
                    "{} is shorter than `initial` ({})",
                    humantime::format_duration(max_interval),
                    humantime::format_duration(initial)
                ),
            ));
        }
        // Zero is meaningful: no exponential phase, straight to `then_every`.
        let backoff_window = self.duration(
            "delivery.retry.backoff_window",
            raw.backoff_window,
            d.backoff_window,
            true,
        )?;
        let then_every = self.duration(
            "delivery.retry.then_every",
            raw.then_every,
            d.then_every,
            false,
        )?;
        let disable_after = self.duration(
            "delivery.retry.disable_after",
            raw.disable_after,
            d.disable_after,
            false,
        )?;
        let jitter = raw.jitter.unwrap_or(d.jitter);
        if !(0.0..=1.0).contains(&jitter) {
            return Err(self.invalid(
                "delivery.retry.jitter",
                format!("{jitter} is out of range; expected a fraction from 0.0 to 1.0"),
            ));
        }
        let schedule = match raw.schedule {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(self.invalid(
                    "delivery.retry.schedule",
                    "must not be empty; remove it to use the exponential backoff",
                ));
            }
            Some(list) => {
                if list.iter().any(|r| r.0.is_zero()) {
                    return Err(self.invalid(
                        "delivery.retry.schedule",
                        format!(
                            "every delay must be longer than zero; expected {DURATION_EXPECTED}"
                        ),
                    ));
                }
                Some(list.into_iter().map(|r| r.0).collect::<Vec<_>>())
            }
        };
        let max_attempts = match raw.max_attempts {
            None => None,
            Some(_) if schedule.is_none() => {
                return Err(self.invalid(
                    "delivery.retry.max_attempts",
                    "only applies with `schedule`; set a schedule or remove it",
                ));
            }
            Some(n) => Some(u32::try_from(n).ok().filter(|&n| n >= 1).ok_or_else(|| {
                self.invalid(
                    "delivery.retry.max_attempts",
                    format!("{n} is out of range; expected at least 1"),
                )
            })?),
        };
        Ok(RetryConfig {
            initial,
            multiplier,
            max_interval,
            backoff_window,
            then_every,
            disable_after,
            jitter,
            schedule,
            max_attempts,
        })
    }

    fn admin(&self, raw: RawAdmin) -> Res<AdminConfig> {
        let token = self
            .value_or_env("admin", "token", raw.token, raw.token_env)?
            .map(|(_, t)| Secret::new(t));
        let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:9187".into());
        let listen = if !raw.enabled.unwrap_or(true) || listen_text.trim().is_empty() {
            None
        } else {
            Some(parse_listen(listen_text.trim()).ok_or_else(|| {
                self.invalid(
                    "admin.listen",
                    format!("{listen_text:?} is not an address; expected ip:port like \"127.0.0.1:9187\", or \"\" to switch the admin API off"),
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
        Ok(AdminConfig { listen, token })
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

/// `leads` -> (`public`, `leads`); `crm.students` -> (`crm`, `students`).
fn split_table(text: &str) -> Option<(String, String)> {
    let ok = |s: &str| !s.is_empty() && s.trim() == s && !s.contains('"');
    match text.split('.').collect::<Vec<_>>().as_slice() {
        [table] if ok(table) => Some(("public".into(), (*table).into())),
        [schema, table] if ok(schema) && ok(table) => Some(((*schema).into(), (*table).into())),
        _ => None,
    }
}

fn is_slug(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_endpoint_id(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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

#[cfg(test)]
mod tests {
    use super::*;

    const DB_URL: &str = "postgres://walhook:db-pass-123@127.0.0.1:5432/app";

    fn fake_env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// A minimal valid config with `extra` appended (and `source_extra` inside [source]).
    fn minimal(source_extra: &str, extra: &str) -> String {
        format!(
            "[source]\nurl = \"{DB_URL}\"\n{source_extra}\n\n[[objects]]\ntable = \"leads\"\nslug = \"lead\"\n\n{extra}\n"
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str_with_env(text, "walhook.toml", &no_env)
    }

    fn parse_ok(text: &str) -> Config {
        match parse(text) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid config, got: {e}\n--- config:\n{text}"),
        }
    }

    /// The error message; also checks it names the file.
    fn parse_err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("walhook.toml: "), "{msg}");
                msg
            }
        }
    }

    fn assert_err(text: &str, needles: &[&str]) {
        let msg = parse_err(text);
        for n in needles {
            assert!(msg.contains(n), "error {msg:?} does not contain {n:?}");
        }
    }

    const ENDPOINT: &str = "[[endpoints]]\nid = \"crm\"\nurl = \"https://example.com/hook\"\nsecret = \"s3cr3t-value\"\n";

    fn endpoint(extra: &str) -> String {
        minimal("", &format!("{ENDPOINT}{extra}"))
    }

    #[test]
    fn example_file_parses() {
        let env = fake_env(&[
            ("DATABASE_URL", DB_URL),
            ("WALHOOK_CRM_SECRET", "crm-secret-xyz"),
            ("WALHOOK_ADMIN_TOKEN", "admin-token-xyz"),
        ]);
        let c = Config::from_toml_str_with_env(
            include_str!("../config.example.toml"),
            "config.example.toml",
            &env,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.source.url.expose(), DB_URL);
        let slugs: Vec<_> = c.objects.iter().map(|o| o.slug.as_str()).collect();
        assert_eq!(slugs, ["lead", "user", "opportunity", "student"]);
        assert_eq!(c.objects[1].exclude_columns, ["password_hash"]);
        assert_eq!(c.objects[3].schema, "crm");
        assert_eq!(c.objects[3].table, "students");
        assert_eq!(c.endpoints[0].secrets[0].expose(), "crm-secret-xyz");
        assert_eq!(c.endpoints[0].events, ["lead.*", "opportunity.create"]);
        assert_eq!(
            c.admin.token.as_ref().map(Secret::expose),
            Some("admin-token-xyz")
        );
        assert_eq!(c.delivery.retry, RetryConfig::default());
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn example_file_keys_are_the_defaults() {
        // The example documents the defaults: apart from what it sets on purpose it
        // must give the same config as a minimal file.
        let env = fake_env(&[
            ("DATABASE_URL", DB_URL),
            ("WALHOOK_CRM_SECRET", "x"),
            ("WALHOOK_ADMIN_TOKEN", "t"),
        ]);
        let ex = Config::from_toml_str_with_env(include_str!("../config.example.toml"), "x", &env)
            .unwrap();
        let min = parse_ok(&endpoint(""));
        assert_eq!(format!("{:?}", ex.source), format!("{:?}", min.source));
        assert_eq!(format!("{:?}", ex.ledger), format!("{:?}", min.ledger));
        assert_eq!(format!("{:?}", ex.delivery), format!("{:?}", min.delivery));
        assert_eq!(ex.endpoints[0].timeout, min.endpoints[0].timeout);
        assert_eq!(ex.endpoints[0].signing, min.endpoints[0].signing);
        assert_eq!(ex.admin.listen, min.admin.listen);
    }

    #[test]
    fn spec_example_parses() {
        let spec = r#"
[source]
url_env = "DATABASE_URL"          # or url = "postgres://..."
name = "app"                      # first part of event ids
slot = "walhook"
publication = "walhook"

[ledger]
schema = "walhook"                # in the source database unless url is set

[[objects]]
table = "public.leads"
slug = "lead"

[[objects]]
table = "public.users"
slug = "user"
exclude_columns = ["password_hash"]

[[objects]]
table = "crm.students"            # a custom object
slug = "student"

[[endpoints]]
id = "crm"
url = "https://example.com/hooks/walhook"
secret_env = "WALHOOK_CRM_SECRET"
events = ["lead.*", "opportunity.create"]   # default ["*"]
signing = ["superleap"]                     # and/or "standard-webhooks"
timeout = "10s"

[delivery]
ordering = "per-record"           # or "none"
max_in_flight = 256

[delivery.retry]                  # defaults = the three-day rule
initial = "30s"
multiplier = 2.0
max_interval = "6h"
backoff_window = "24h"            # exponential until the event is this old
then_every = "24h"                # then once a day
disable_after = "72h"             # then the delivery is disabled
# schedule = ["1m", "5m", "15m", "1h"]    # alternative: a fixed list

[admin]
listen = "127.0.0.1:9187"
token_env = "WALHOOK_ADMIN_TOKEN"
"#;
        let env = fake_env(&[
            ("DATABASE_URL", DB_URL),
            ("WALHOOK_CRM_SECRET", "x"),
            ("WALHOOK_ADMIN_TOKEN", "t"),
        ]);
        let c = Config::from_toml_str_with_env(spec, "walhook.toml", &env).unwrap();
        // `opportunity.create` names no object there: valid, but worth a warning.
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("opportunity.create"), "{w:?}");
    }

    #[test]
    fn defaults() {
        let env = fake_env(&[("DATABASE_URL", DB_URL)]);
        let text = "[[objects]]\ntable = \"leads\"\nslug = \"lead\"\n";
        let c = Config::from_toml_str_with_env(text, "walhook.toml", &env).unwrap();
        assert_eq!(c.source.url.expose(), DB_URL);
        assert_eq!(c.source.name, "app");
        assert_eq!(c.source.slot, "walhook");
        assert_eq!(c.source.publication, "walhook");
        assert_eq!(c.source.connect_timeout, Duration::from_secs(30));
        assert_eq!(c.source.replica_identity, ReplicaIdentity::Full);
        assert_eq!(c.source.status_interval, Duration::from_secs(1));
        assert_eq!(c.ledger.schema, "walhook");
        assert!(c.ledger.url.is_none());
        assert_eq!(c.objects[0].schema, "public");
        assert_eq!(c.objects[0].table, "leads");
        assert!(c.objects[0].exclude_columns.is_empty());
        assert!(c.endpoints.is_empty());
        assert_eq!(c.delivery.ordering, Ordering::PerRecord);
        assert_eq!(c.delivery.max_in_flight, 256);
        assert_eq!(c.delivery.header_prefix, "x-superleap");
        assert_eq!(c.delivery.lease, Duration::from_secs(60));
        assert_eq!(c.delivery.endpoint_disable_after, None);
        assert_eq!(c.delivery.notify_endpoint, None);
        let r = &c.delivery.retry;
        assert_eq!(r.initial, Duration::from_secs(30));
        assert_eq!(r.multiplier, 2.0);
        assert_eq!(r.max_interval, Duration::from_secs(6 * 3600));
        assert_eq!(r.backoff_window, Duration::from_secs(24 * 3600));
        assert_eq!(r.then_every, Duration::from_secs(24 * 3600));
        assert_eq!(r.disable_after, Duration::from_secs(72 * 3600));
        assert_eq!(r.jitter, 0.2);
        assert_eq!(r.schedule, None);
        assert_eq!(r.max_attempts, None);
        assert_eq!(c.admin.listen, Some("127.0.0.1:9187".parse().unwrap()));
        assert!(c.admin.token.is_none());
        assert_eq!(c.warnings().len(), 1, "no endpoints: {:?}", c.warnings());
    }

    #[test]
    fn endpoint_defaults() {
        let c = parse_ok(&endpoint(""));
        let e = &c.endpoints[0];
        assert_eq!(e.id, "crm");
        assert_eq!(e.url.as_str(), "https://example.com/hook");
        assert_eq!(e.secrets.len(), 1);
        assert_eq!(e.events, ["*"]);
        assert_eq!(e.signing, [SigningScheme::Superleap]);
        assert_eq!(e.timeout, Duration::from_secs(10));
        assert!(!e.allow_insecure_http);
        assert!(e.subscribes_to("lead.create"));
    }

    #[test]
    fn missing_database_url_names_key_and_variable() {
        let text = "[[objects]]\ntable = \"leads\"\nslug = \"lead\"\n";
        let e = Config::from_toml_str_with_env(text, "walhook.toml", &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`source.url_env`"), "{e}");
        assert!(e.contains("DATABASE_URL"), "{e}");
        assert!(e.contains("not set"), "{e}");
        let env = fake_env(&[("DATABASE_URL", "  ")]);
        let e = Config::from_toml_str_with_env(text, "walhook.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("DATABASE_URL") && e.contains("empty"), "{e}");
    }

    #[test]
    fn tls_required_database_is_rejected_clearly() {
        assert_err(
            &minimal("", "").replace(DB_URL, &format!("{DB_URL}?sslmode=require")),
            &["`source.url`", "sslmode=require is not supported yet"],
        );
        parse_ok(&minimal("", "").replace(DB_URL, &format!("{DB_URL}?sslmode=disable")));
    }

    #[test]
    fn url_env_indirection() {
        let text =
            "[source]\nurl_env = \"MY_DB\"\n[[objects]]\ntable = \"leads\"\nslug = \"lead\"\n";
        let env = fake_env(&[("MY_DB", DB_URL), ("DATABASE_URL", "postgres://other/x")]);
        let c = Config::from_toml_str_with_env(text, "walhook.toml", &env).unwrap();
        assert_eq!(c.source.url.expose(), DB_URL);
        assert_err(
            &minimal("url_env = \"X\"", ""),
            &["`source.url`", "either `url` or `url_env`"],
        );
        assert_err(
            &minimal("", "").replace(DB_URL, ""),
            &["`source.url`", "empty"],
        );
        assert_err(
            &minimal("", "").replace(DB_URL, "not a url at all ="),
            &["`source.url`", "PostgreSQL connection string"],
        );
    }

    #[test]
    fn unknown_keys_name_the_path_and_line() {
        assert_err(
            &minimal("slott = \"x\"", ""),
            &[
                "line 3",
                "unknown key `source.slott`, expected one of: url, url_env, name, slot",
            ],
        );
        assert_err(
            "bogus = 1\n",
            &["line 1", "unknown key `bogus`", "source, ledger, objects"],
        );
        assert_err(
            &minimal(
                "",
                "[[objects]]\ntable = \"users\"\nslug = \"user\"\nexclude = []\n",
            ),
            &["unknown key `objects[1].exclude`", "exclude_columns"],
        );
        assert_err(
            &endpoint("secret_envs = \"X\"\n"),
            &["unknown key `endpoints[0].secret_envs`"],
        );
        assert_err(
            &minimal("", "[delivery.retry]\ninitial = \"1s\"\ninitail = \"1s\"\n"),
            &["line 11", "unknown key `delivery.retry.initail`"],
        );
        assert_err(
            &minimal("", "[delivery]\nretry = { intial = \"1s\" }\n"),
            &["unknown key `delivery.retry.intial`"],
        );
        assert_err(
            &minimal("", "[admin]\ntokn = \"x\"\n"),
            &["unknown key `admin.tokn`"],
        );
        assert_err(
            &minimal("", "[ledger]\nschem = \"x\"\n"),
            &["unknown key `ledger.schem`"],
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        assert_err(
            &minimal("", "[delivery]\nmax_in_flight = \"many\"\n"),
            &["line 10", "`delivery.max_in_flight`", "invalid type"],
        );
        assert_err(
            &endpoint("allow_insecure_http = \"yes\"\n"),
            &["`endpoints[0].allow_insecure_http`"],
        );
        assert_err(
            &endpoint("events = [\"*\", 3]\n"),
            &["`endpoints[0].events"],
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        assert_err("[source\nurl = 1\n", &["line 1"]);
    }

    #[test]
    fn datetime_value_still_names_the_key() {
        assert_err(
            &minimal("when = 1979-05-27", ""),
            &["line 3", "unknown key `source.when`"],
        );
        assert_err(
            &minimal(
                "",
                "[delivery]
header_prefix = 1979-05-27T07:32:00Z
",
            ),
            &["line 10", "`delivery.header_prefix`", "invalid type"],
        );
    }

    #[test]
    fn duration_parsing() {
        let d = |s| duration_from_str(s).unwrap();
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("5m"), Duration::from_secs(300));
        assert_eq!(d("24h"), Duration::from_secs(86_400));
        assert_eq!(d("3d"), Duration::from_secs(3 * 86_400));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("1h 30m"), Duration::from_secs(5400));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("0.25s"), Duration::from_millis(250));
        assert_eq!(d("0s"), Duration::ZERO);
        for bad in [
            "",
            "30",
            "s",
            "30x",
            "-5s",
            "1.s",
            ".5s",
            "5 s",
            "1w",
            "30S",
            "1h-",
            "99999999999999999999999d",
        ] {
            let e = duration_from_str(bad).unwrap_err();
            assert!(
                e.contains(r#"expected a duration like "30s", "5m", "24h" (units ms, s, m, h, d)"#),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn bad_durations_in_config() {
        assert_err(
            &minimal("connect_timeout = \"30 seconds\"", ""),
            &[
                "line 3",
                "`source.connect_timeout`",
                "expected a duration like \"30s\"",
            ],
        );
        assert_err(
            &endpoint("timeout = 10\n"),
            &[
                "`endpoints[0].timeout`",
                "invalid type: integer",
                "expected a duration like",
            ],
        );
        assert_err(
            &minimal("", "[delivery.retry]\nschedule = [\"1m\", \"5\"]\n"),
            &["`delivery.retry.schedule", "expected a duration like"],
        );
    }

    #[test]
    fn zero_durations_rejected() {
        let cases = [
            (
                minimal("connect_timeout = \"0s\"", ""),
                "source.connect_timeout",
            ),
            (
                minimal("status_interval = \"0ms\"", ""),
                "source.status_interval",
            ),
            (endpoint("timeout = \"0s\"\n"), "endpoints[0].timeout"),
            (
                minimal("", "[delivery]\nlease = \"0s\"\n"),
                "delivery.lease",
            ),
            (
                minimal("", "[delivery]\nendpoint_disable_after = \"0s\"\n"),
                "delivery.endpoint_disable_after",
            ),
            (
                minimal("", "[delivery.retry]\ninitial = \"0s\"\n"),
                "delivery.retry.initial",
            ),
            (
                minimal("", "[delivery.retry]\nmax_interval = \"0s\"\n"),
                "delivery.retry.max_interval",
            ),
            (
                minimal("", "[delivery.retry]\nthen_every = \"0s\"\n"),
                "delivery.retry.then_every",
            ),
            (
                minimal("", "[delivery.retry]\ndisable_after = \"0s\"\n"),
                "delivery.retry.disable_after",
            ),
            (
                minimal("", "[delivery.retry]\nschedule = [\"1s\", \"0s\"]\n"),
                "delivery.retry.schedule",
            ),
        ];
        for (text, key) in cases {
            assert_err(&text, &[&format!("`{key}`"), "longer than zero"]);
        }
        // A zero backoff window means "no exponential phase" and is allowed.
        let c = parse_ok(&minimal("", "[delivery.retry]\nbackoff_window = \"0s\"\n"));
        assert_eq!(c.delivery.retry.backoff_window, Duration::ZERO);
    }

    #[test]
    fn source_names() {
        for bad in ["Walhook", "wal-hook", "", &"a".repeat(64)] {
            assert_err(
                &minimal(&format!("slot = \"{bad}\""), ""),
                &["`source.slot`"],
            );
        }
        let c = parse_ok(&minimal(&format!("slot = \"{}\"", "a".repeat(63)), ""));
        assert_eq!(c.source.slot.len(), 63);
        for bad in ["", "my app", "a:b"] {
            assert_err(
                &minimal(&format!("name = \"{bad}\""), ""),
                &["`source.name`"],
            );
        }
        assert_eq!(
            parse_ok(&minimal("name = \"My-App_2\"", "")).source.name,
            "My-App_2"
        );
        for bad in ["", "1pub", "Pub", "a-b", "a.b"] {
            assert_err(
                &minimal(&format!("publication = \"{bad}\""), ""),
                &["`source.publication`", "identifier"],
            );
            assert_err(
                &minimal("", &format!("[ledger]\nschema = \"{bad}\"\n")),
                &["`ledger.schema`", "identifier"],
            );
        }
        assert_eq!(
            parse_ok(&minimal("replica_identity = \"default\"", ""))
                .source
                .replica_identity,
            ReplicaIdentity::Default
        );
        assert_err(
            &minimal("replica_identity = \"nothing\"", ""),
            &["`source.replica_identity`", "\"full\" or \"default\""],
        );
    }

    #[test]
    fn ledger_url() {
        let same = parse_ok(&minimal("", &format!("[ledger]\nurl = \"{DB_URL}\"\n")));
        assert!(same.ledger.url.is_none());
        let other = minimal(
            "",
            "[ledger]\nurl = \"postgres://u:ledger-pass@127.0.0.1/other\"\n",
        );
        let msg = parse_err(&other);
        assert!(msg.contains("`ledger.url`"), "{msg}");
        assert!(
            msg.contains("separate ledger database is not supported yet"),
            "{msg}"
        );
        assert!(!msg.contains("ledger-pass"), "{msg}");
        assert_err(
            &minimal("", "[ledger]\nurl_env = \"LEDGER_DB\"\n"),
            &["`ledger.url_env`", "LEDGER_DB", "not set"],
        );
    }

    #[test]
    fn objects() {
        let c = parse_ok(&minimal(
            "",
            "[[objects]]\ntable = \"crm.students\"\nslug = \"student\"\nexclude_columns = [\"ssn\"]\n",
        ));
        assert_eq!(c.objects[1].schema, "crm");
        assert_eq!(c.objects[1].table, "students");
        assert_eq!(c.objects[1].exclude_columns, ["ssn"]);
        assert_eq!(c.objects[1].qualified_sql(), "\"crm\".\"students\"");
        assert_eq!(
            c.object("crm", "students").map(|o| o.slug.as_str()),
            Some("student")
        );
        assert!(c.object("public", "students").is_none());

        let no_objects = format!("[source]\nurl = \"{DB_URL}\"\n");
        assert_err(&no_objects, &["`objects`", "at least one"]);
        for bad in ["Lead", "1lead", "lead-x", "", "_lead"] {
            assert_err(
                &minimal(
                    "",
                    &format!("[[objects]]\ntable = \"x\"\nslug = \"{bad}\"\n"),
                ),
                &["`objects[1].slug`", "not a valid slug"],
            );
        }
        assert_err(
            &minimal("", "[[objects]]\ntable = \"users\"\nslug = \"lead\"\n"),
            &["`objects[1].slug`", "unique"],
        );
        assert_err(
            &minimal(
                "",
                "[[objects]]\ntable = \"public.leads\"\nslug = \"lead2\"\n",
            ),
            &["`objects[1].table`", "already mapped"],
        );
        for bad in ["a.b.c", "", ".x", "x.", " leads"] {
            assert_err(
                &minimal(
                    "",
                    &format!("[[objects]]\ntable = \"{bad}\"\nslug = \"x\"\n"),
                ),
                &["`objects[1].table`", "schema.table"],
            );
        }
        assert_err(
            &minimal("", "[[objects]]\nslug = \"x\"\n"),
            &["`objects[1].table`", "missing"],
        );
        assert_err(
            &minimal("", "[[objects]]\ntable = \"x\"\n"),
            &["`objects[1].slug`", "missing"],
        );
        assert_err(
            &minimal(
                "",
                "[[objects]]\ntable = \"x\"\nslug = \"x\"\nexclude_columns = [\"\"]\n",
            ),
            &["`objects[1].exclude_columns`"],
        );
    }

    #[test]
    fn endpoint_ids() {
        for good in ["crm", "0crm", "crm_2-b"] {
            let text = endpoint("").replace("id = \"crm\"", &format!("id = \"{good}\""));
            assert_eq!(parse_ok(&text).endpoints[0].id, good);
        }
        for bad in ["Crm", "-crm", "_crm", "", "c.rm"] {
            let text = endpoint("").replace("id = \"crm\"", &format!("id = \"{bad}\""));
            assert_err(&text, &["`endpoints[0].id`", "not a valid endpoint id"]);
        }
        let dup = minimal("", &format!("{ENDPOINT}\n{ENDPOINT}"));
        assert_err(&dup, &["`endpoints[1].id`", "unique"]);
        let c = parse_ok(&endpoint(""));
        assert!(c.endpoint("crm").is_some());
        assert!(c.endpoint("other").is_none());
    }

    #[test]
    fn endpoint_urls() {
        let with_url =
            |url: &str, extra: &str| endpoint(extra).replace("https://example.com/hook", url);
        for good in [
            "https://example.com/a?b=c",
            "http://127.0.0.1:8080/hook",
            "http://127.3.2.1/hook",
            "http://[::1]:9000/",
            "http://localhost:3000/x",
            "http://LOCALHOST/x",
        ] {
            parse_ok(&with_url(good, ""));
        }
        for bad in [
            "http://example.com/hook",
            "http://10.0.0.1/x",
            "http://[::2]/x",
            "http://localhost.example.com/",
        ] {
            assert_err(
                &with_url(bad, ""),
                &["`endpoints[0].url`", "loopback", "allow_insecure_http"],
            );
            let c = parse_ok(&with_url(bad, "allow_insecure_http = true\n"));
            assert!(c.endpoints[0].allow_insecure_http);
        }
        for bad in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "ws://127.0.0.1/",
        ] {
            assert_err(
                &with_url(bad, ""),
                &["`endpoints[0].url`", "unsupported scheme"],
            );
        }
        assert_err(
            &with_url("example.com/hook", ""),
            &["`endpoints[0].url`", "not a valid URL"],
        );
        assert_err(&with_url("https://", ""), &["`endpoints[0].url`"]);

        let no_url = endpoint("").replace("url = \"https://example.com/hook\"\n", "");
        assert_err(&no_url, &["`endpoints[0].url`", "missing"]);
        assert_err(
            &endpoint("url_env = \"U\"\n"),
            &["`endpoints[0].url`", "not both"],
        );
        let env_url = endpoint("").replace(
            "url = \"https://example.com/hook\"",
            "url_env = \"CRM_URL\"",
        );
        let env = fake_env(&[("CRM_URL", "https://hooks.example.com/x")]);
        let c = Config::from_toml_str_with_env(&env_url, "walhook.toml", &env).unwrap();
        assert_eq!(c.endpoints[0].url.as_str(), "https://hooks.example.com/x");
        let e = parse_err(&env_url);
        assert!(
            e.contains("`endpoints[0].url_env`") && e.contains("CRM_URL"),
            "{e}"
        );
    }

    #[test]
    fn endpoint_secrets() {
        let base = endpoint("").replace("secret = \"s3cr3t-value\"\n", "");
        assert_err(&base, &["`endpoints[0].secret`", "missing"]);
        assert_err(
            &format!("{base}secret = \"a\"\nsecret_env = \"B\"\n"),
            &["`endpoints[0].secret`", "only one"],
        );
        assert_err(
            &format!("{base}secrets = []\n"),
            &["`endpoints[0].secrets`", "at least one"],
        );
        assert_err(
            &format!("{base}secret = \"\"\n"),
            &["`endpoints[0].secret`", "empty"],
        );
        assert_err(
            &format!("{base}secret_env = \"CRM_SECRET\"\n"),
            &["`endpoints[0].secret_env`", "`CRM_SECRET` is not set"],
        );
        let env = fake_env(&[("S1", "one"), ("S2", "two")]);
        let c = Config::from_toml_str_with_env(
            &format!("{base}secrets_env = [\"S1\", \"S2\"]\n"),
            "walhook.toml",
            &env,
        )
        .unwrap();
        let got: Vec<_> = c.endpoints[0].secrets.iter().map(Secret::expose).collect();
        assert_eq!(got, ["one", "two"]);
        let e = Config::from_toml_str_with_env(
            &format!("{base}secrets_env = [\"S1\", \"S3\"]\n"),
            "walhook.toml",
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`endpoints[0].secrets_env`") && e.contains("`S3`"),
            "{e}"
        );
        let c = parse_ok(&format!("{base}secrets = [\"new\", \"old\"]\n"));
        assert_eq!(c.endpoints[0].secrets.len(), 2);
    }

    #[test]
    fn signing_schemes() {
        let both = parse_ok(
            &endpoint("signing = [\"superleap\", \"standard-webhooks\"]\n")
                .replace("s3cr3t-value", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        );
        assert_eq!(
            both.endpoints[0].signing,
            [SigningScheme::Superleap, SigningScheme::StandardWebhooks]
        );
        let msg = parse_err(&endpoint("signing = [\"standard-webhooks\"]\n"));
        assert!(
            msg.contains("`endpoints[0].secret`") && msg.contains("whsec_"),
            "{msg}"
        );
        assert!(!msg.contains("s3cr3t-value"), "{msg}");
        for bad in ["whsec_", "whsec_not*base64!", "whsec_abc"] {
            let text = endpoint("signing = [\"standard-webhooks\"]\n").replace("s3cr3t-value", bad);
            let msg = parse_err(&text);
            assert!(msg.contains("whsec_<base64>"), "{msg}");
        }
        let rotation = endpoint("signing = [\"standard-webhooks\"]\n").replace(
            "secret = \"s3cr3t-value\"",
            "secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"old-plain-secret\"]",
        );
        let msg = parse_err(&rotation);
        assert!(
            msg.contains("`endpoints[0].secrets`") && msg.contains("#2"),
            "{msg}"
        );
        assert!(!msg.contains("old-plain-secret"), "{msg}");
        assert_err(
            &endpoint("signing = []\n"),
            &["`endpoints[0].signing`", "at least one"],
        );
        assert_err(
            &endpoint("signing = [\"svix\"]\n"),
            &["`endpoints[0].signing`", "unknown scheme"],
        );
        assert_err(
            &endpoint("signing = [\"superleap\", \"superleap\"]\n"),
            &["`endpoints[0].signing`", "twice"],
        );
        assert_eq!(whsec_key("whsec_AAEC").as_deref(), Some(&[0u8, 1, 2][..]));
        assert_eq!(whsec_key("AAEC"), None);
    }

    #[test]
    fn event_filters() {
        for good in [
            "*",
            "lead.*",
            "*.create",
            "*.update",
            "*.delete",
            "lead.create",
            "student.delete",
        ] {
            let c = parse_ok(&endpoint(&format!("events = [\"{good}\"]\n")));
            assert_eq!(c.endpoints[0].events, [good]);
        }
        for bad in [
            "",
            "lead",
            "*.*",
            "lead.created",
            "Lead.create",
            "lead.create.x",
            "*.insert",
            "lead.",
            ".create",
            "**",
        ] {
            assert_err(
                &endpoint(&format!("events = [\"{bad}\"]\n")),
                &["`endpoints[0].events`", "invalid event filter"],
            );
        }
        assert_err(
            &endpoint("events = []\n"),
            &["`endpoints[0].events`", "subscribes to nothing"],
        );

        let c = parse_ok(&endpoint("events = [\"lead.create\", \"*.delete\"]\n"));
        let ep = &c.endpoints[0];
        assert!(ep.subscribes_to("lead.create") && ep.subscribes_to("user.delete"));
        assert!(!ep.subscribes_to("lead.update"));
    }

    #[test]
    fn delivery_settings() {
        let c = parse_ok(&endpoint(
            "[delivery]\nordering = \"none\"\nmax_in_flight = 1\nheader_prefix = \"X-Acme\"\nlease = \"2m\"\nendpoint_disable_after = \"3d\"\nnotify_endpoint = \"crm\"\n",
        ));
        let d = &c.delivery;
        assert_eq!(d.ordering, Ordering::None);
        assert_eq!(d.max_in_flight, 1);
        assert_eq!(d.header_prefix, "x-acme");
        assert_eq!(d.lease, Duration::from_secs(120));
        assert_eq!(
            d.endpoint_disable_after,
            Some(Duration::from_secs(3 * 86_400))
        );
        assert_eq!(d.notify_endpoint.as_deref(), Some("crm"));

        assert_err(
            &minimal("", "[delivery]\nordering = \"fifo\"\n"),
            &["`delivery.ordering`", "\"per-record\" or \"none\""],
        );
        for bad in ["0", "-3"] {
            assert_err(
                &minimal("", &format!("[delivery]\nmax_in_flight = {bad}\n")),
                &["`delivery.max_in_flight`", "at least 1"],
            );
        }
        for bad in ["", "x superleap", "x-", "-x", "x_y"] {
            assert_err(
                &minimal("", &format!("[delivery]\nheader_prefix = \"{bad}\"\n")),
                &["`delivery.header_prefix`"],
            );
        }
        assert_err(
            &endpoint("timeout = \"60s\"\n"),
            &[
                "`delivery.lease`",
                "longer than every endpoint timeout",
                "`crm`",
            ],
        );
        assert_err(
            &endpoint("timeout = \"30s\"\n[delivery]\nlease = \"20s\"\n"),
            &["`delivery.lease`"],
        );
        assert_err(
            &endpoint("[delivery]\nnotify_endpoint = \"ops\"\n"),
            &["`delivery.notify_endpoint`", "\"ops\"", "crm"],
        );
    }

    #[test]
    fn retry_settings() {
        let c = parse_ok(&minimal(
            "",
            "[delivery.retry]\ninitial = \"1s\"\nmultiplier = 3\nmax_interval = \"1m\"\nbackoff_window = \"10s\"\nthen_every = \"5s\"\ndisable_after = \"30s\"\njitter = 0\nschedule = [\"1s\", \"2s\", \"500ms\"]\nmax_attempts = 4\n",
        ));
        let r = &c.delivery.retry;
        assert_eq!(r.initial, Duration::from_secs(1));
        assert_eq!(r.multiplier, 3.0);
        assert_eq!(r.max_interval, Duration::from_secs(60));
        assert_eq!(r.backoff_window, Duration::from_secs(10));
        assert_eq!(r.then_every, Duration::from_secs(5));
        assert_eq!(r.disable_after, Duration::from_secs(30));
        assert_eq!(r.jitter, 0.0);
        assert_eq!(
            r.schedule.as_deref(),
            Some(
                &[
                    Duration::from_secs(1),
                    Duration::from_secs(2),
                    Duration::from_millis(500)
                ][..]
            )
        );
        assert_eq!(r.max_attempts, Some(4));

        let retry = |body: &str| minimal("", &format!("[delivery.retry]\n{body}\n"));
        assert_err(
            &retry("multiplier = 0.5"),
            &["`delivery.retry.multiplier`", ">= 1.0"],
        );
        assert_err(&retry("multiplier = nan"), &["`delivery.retry.multiplier`"]);
        assert_err(
            &retry("jitter = 1.5"),
            &["`delivery.retry.jitter`", "0.0 to 1.0"],
        );
        assert_err(&retry("jitter = -0.1"), &["`delivery.retry.jitter`"]);
        assert_err(
            &retry("schedule = []"),
            &["`delivery.retry.schedule`", "must not be empty"],
        );
        assert_err(
            &retry("schedule = [\"1s\"]\nmax_attempts = 0"),
            &["`delivery.retry.max_attempts`", "at least 1"],
        );
        assert_err(
            &retry("max_attempts = 3"),
            &["`delivery.retry.max_attempts`", "schedule"],
        );
        assert_err(
            &retry("initial = \"1h\"\nmax_interval = \"1m\""),
            &["`delivery.retry.max_interval`", "shorter than `initial`"],
        );
        assert_eq!(parse_ok(&retry("jitter = 1")).delivery.retry.jitter, 1.0);
    }

    #[test]
    fn admin_settings() {
        let off = parse_ok(&minimal("", "[admin]\nlisten = \"\"\n"));
        assert!(off.admin.listen.is_none());
        let disabled = parse_ok(&minimal(
            "",
            "[admin]\nenabled = false\nlisten = \"0.0.0.0:9187\"\n",
        ));
        assert!(disabled.admin.listen.is_none());
        let local = parse_ok(&minimal("", "[admin]\nlisten = \"localhost:9000\"\n"));
        assert_eq!(local.admin.listen, Some("127.0.0.1:9000".parse().unwrap()));
        let v6 = parse_ok(&minimal("", "[admin]\nlisten = \"[::1]:9187\"\n"));
        assert_eq!(v6.admin.listen, Some("[::1]:9187".parse().unwrap()));

        let msg = parse_err(&minimal("", "[admin]\nlisten = \"0.0.0.0:9187\"\n"));
        assert!(
            msg.contains("`admin.listen`") && msg.contains("token"),
            "{msg}"
        );
        let c = parse_ok(&minimal(
            "",
            "[admin]\nlisten = \"0.0.0.0:9187\"\ntoken = \"tok-123\"\n",
        ));
        assert_eq!(c.admin.token.as_ref().map(Secret::expose), Some("tok-123"));
        let env = fake_env(&[("ADMIN_TOKEN", "tok-456")]);
        let c = Config::from_toml_str_with_env(
            &minimal(
                "",
                "[admin]\nlisten = \"10.0.0.5:9187\"\ntoken_env = \"ADMIN_TOKEN\"\n",
            ),
            "walhook.toml",
            &env,
        )
        .unwrap();
        assert_eq!(c.admin.token.as_ref().map(Secret::expose), Some("tok-456"));
        assert_err(
            &minimal("", "[admin]\ntoken_env = \"ADMIN_TOKEN\"\n"),
            &["`admin.token_env`", "`ADMIN_TOKEN` is not set"],
        );
        assert_err(
            &minimal("", "[admin]\ntoken = \"a\"\ntoken_env = \"B\"\n"),
            &["`admin.token`", "not both"],
        );
        for bad in ["9187", "127.0.0.1", "example.com:80", "127.0.0.1:99999"] {
            assert_err(
                &minimal("", &format!("[admin]\nlisten = \"{bad}\"\n")),
                &["`admin.listen`", "127.0.0.1:9187"],
            );
        }
    }

    #[test]
    fn secrets_never_in_debug_output() {
        let text = minimal(
            "",
            "[[endpoints]]\nid = \"crm\"\nurl = \"https://example.com/h\"\nsecrets = [\"hook-secret-1\", \"hook-secret-2\"]\n[admin]\ntoken = \"admin-token-1\"\n",
        );
        let c = parse_ok(&text);
        let dbg = format!("{c:?} {:#?}", c);
        for s in [
            "db-pass-123",
            "hook-secret-1",
            "hook-secret-2",
            "admin-token-1",
        ] {
            assert!(!dbg.contains(s), "{s} leaked into Debug output");
        }
        assert!(dbg.contains("Secret(***)"));
    }

    #[test]
    fn secrets_never_in_errors() {
        const S: &str = "very-secret-value";
        let cases = [
            // Type errors on secret-bearing keys quote the value in serde's message.
            endpoint(&format!("secrets = \"{S}\"\n")).replace("secret = \"s3cr3t-value\"\n", ""),
            minimal("", &format!("[admin]\ntoken = [\"{S}\"]\nlisten = 5\n")),
            minimal("", &format!("[admin]\ntoken = {{ x = \"{S}\" }}\n")),
            minimal("", "").replace(
                DB_URL,
                &format!("postgres://u:{S}@127.0.0.1/db?sslmode=nope"),
            ),
            minimal("", "").replace(DB_URL, &format!("{S} is not a url")),
            endpoint("signing = [\"standard-webhooks\"]\n").replace("s3cr3t-value", S),
            endpoint("").replace(
                "https://example.com/hook",
                &format!("http://user:{S}@example.com/"),
            ),
            endpoint("").replace("https://example.com/hook", &format!("https://[{S}]/")),
            minimal(
                "",
                &format!("[ledger]\nurl = \"postgres://u:{S}@127.0.0.1/x\"\n"),
            ),
            // Syntax errors: an unterminated string holding a secret.
            minimal("", &format!("[admin]\ntoken = \"{S}\n")),
            minimal("", &format!("[admin]\ntoken = '{S}\n")),
            minimal("", &format!("[admin]\ntoken = {S}\n")),
        ];
        for text in cases {
            let msg = parse_err(&text);
            let dbg = format!("{:?}", parse(&text).unwrap_err());
            assert!(
                !msg.contains(S) && !dbg.contains(S),
                "secret leaked: {msg}\n{text}"
            );
        }
        // Secrets from the environment are not echoed either.
        let env = fake_env(&[("CRM_SECRET", S)]);
        let text = endpoint("signing = [\"standard-webhooks\"]\n")
            .replace("secret = \"s3cr3t-value\"", "secret_env = \"CRM_SECRET\"");
        let msg = Config::from_toml_str_with_env(&text, "walhook.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`endpoints[0].secret_env`") && !msg.contains(S),
            "{msg}"
        );
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walhook.toml");
        std::fs::write(&path, minimal("slott = 1", "")).unwrap();
        let msg = Config::load(&path).unwrap_err().to_string();
        assert!(
            msg.contains("walhook.toml") && msg.contains("source.slott"),
            "{msg}"
        );
        let missing = Config::load(&dir.path().join("nope.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("cannot read config file") && missing.contains("nope.toml"),
            "{missing}"
        );
    }
}
