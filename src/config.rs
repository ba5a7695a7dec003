//! Configuration: strict TOML (unknown keys rejected), durations with units,
//! `*_env` indirection for secrets and URLs, secrets that cannot be printed.
//!
//! INTERFACE (fixed; other modules rely on these names):
//! - `Config::load(path) -> Result<Config, ConfigError>`: read, parse, resolve env, validate.
//! - `Config::from_toml_str(text, origin) -> Result<Config, ConfigError>`: same from a string
//!   (`origin` is used in messages as the file name).
//! - All fields below are public and already resolved (env looked up, defaults applied).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A secret value (database URL with password, HMAC secret, admin token).
/// Its `Debug` prints `Secret(***)`; it has no `Display` and no `Serialize`, so it
/// cannot reach a log line, an error or the API by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The raw value, for the few places that must use it (HMAC key, connect).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `REPLICA IDENTITY FULL` is set by `setup` on mapped tables (default).
    Full,
    /// Tables are left as they are; old rows then hold only key columns.
    Default,
}

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

/// Quote an SQL identifier (always quoted, `"` doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningScheme {
    /// `x-superleap-signature: sha256=<hex>` over the raw body, key = secret's UTF-8 bytes.
    Superleap,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    PerRecord,
    None,
}

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
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    pub fn from_toml_str(_text: &str, _origin: &str) -> Result<Config, ConfigError> {
        todo!("config helper")
    }
}
