//! The public, validated configuration types. `[delivery]` and
//! `[delivery.retry]` deserialize straight into their types; the other tables
//! go through the file shapes in `parse` because of their `*_env` keys.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::HeaderName;
use serde::Deserialize;

use super::keys::EndpointSecrets;
use super::{de, duration};
use crate::event::expr::ContentFilter;
use crate::pg::quote_ident;
use crate::sealed::SealKey;
use crate::secret::Secret;

/// What `setup` does to the replica identity of mapped tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ReplicaIdentity {
    /// `REPLICA IDENTITY FULL` is set by `setup` on mapped tables (default).
    Full,
    /// Tables are left as they are; old rows then hold only key columns.
    Default,
}

impl TryFrom<String> for ReplicaIdentity {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "full" => Ok(ReplicaIdentity::Full),
            "default" => Ok(ReplicaIdentity::Default),
            other => Err(format!(
                "unknown value {other:?}; expected \"full\" or \"default\""
            )),
        }
    }
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
    /// `setup` creates the slot as a failover slot (PostgreSQL 17+), which
    /// standbys with `sync_replication_slots` keep in step. Default false.
    pub failover: bool,
}

/// `[ledger]`: where the retry ledger and the delivery history live.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Schema of the ledger tables. Default `walhook`.
    pub schema: String,
    /// A separate database for the ledger (keys `url` / `url_env`); `None`:
    /// the source database.
    pub url: Option<Secret>,
    /// Whose bodies the ledger keeps. Default `Failed`.
    pub keep_bodies: KeepBodies,
    /// Succeeded history and finished deliveries older than this are pruned.
    /// Default 7 days.
    pub retention: Duration,
    /// Disabled deliveries are kept this long (unless retried). Default 30 days.
    pub retention_failed: Duration,
}

/// `ledger.keep_bodies`: which events' bodies the ledger keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum KeepBodies {
    /// Only events with a delivery that had to wait (`"failed"`): a success
    /// straight from the stream costs one narrow history row.
    Failed,
    /// Every delivered event's body too (`"all"`), for `deliveries show` and
    /// `resend`, at the cost of writing each body.
    All,
}

impl TryFrom<String> for KeepBodies {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "failed" => Ok(KeepBodies::Failed),
            "all" => Ok(KeepBodies::All),
            other => Err(format!(
                "unknown value {other:?}; expected \"failed\" or \"all\""
            )),
        }
    }
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
    /// Update events only when one of these columns changed (creates and
    /// deletes are not affected). Empty (the default): any included column.
    pub when_changed: Vec<String>,
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

impl std::str::FromStr for SigningScheme {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "superleap" => Ok(SigningScheme::Superleap),
            "standard-webhooks" => Ok(SigningScheme::StandardWebhooks),
            other => Err(format!(
                "unknown scheme {other:?}; expected \"superleap\" and/or \"standard-webhooks\""
            )),
        }
    }
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
    /// the first one signs the superleap header), parsed once. With
    /// `standard-webhooks` signing, every one has a Standard Webhooks key.
    pub secrets: EndpointSecrets,
    /// Event filters: `*`, `slug.*`, `*.verb`, exact names. Default `["*"]`.
    pub events: Vec<String>,
    /// Default `["superleap"]`. `standard-webhooks` requires every secret to be `whsec_<base64>`.
    pub signing: Vec<SigningScheme>,
    /// Per-attempt timeout. Default 10s.
    pub timeout: Duration,
    pub allow_insecure_http: bool,
    /// The retry policy of this endpoint: its `retry` table laid over
    /// `[delivery.retry]` key by key (the global policy without one).
    pub retry: RetryConfig,
    /// Extra request headers (`headers`), names checked at load.
    pub headers: Vec<ExtraHeader>,
    /// Requests per second at most, per process (`rate_limit`). Default none.
    pub rate_limit: Option<f64>,
    /// Attempts open at once at most, across every process (`max_in_flight`).
    /// Default none (the fair share of `delivery.max_in_flight`).
    pub max_in_flight: Option<usize>,
    /// Events pass only when this expression is true (`filter`). Default none.
    pub filter: Option<ContentFilter>,
}

impl EndpointConfig {
    /// Whether this endpoint subscribes to the event `name` (e.g. `lead.create`).
    pub fn subscribes_to(&self, name: &str) -> bool {
        crate::event::filter::subscribed(&self.events, name)
    }

    /// Whether every delivery of it is served from the retry ledger, where
    /// `rate_limit` and `max_in_flight` hold (no first attempts from the
    /// stream).
    pub fn ledger_only(&self) -> bool {
        self.rate_limit.is_some() || self.max_in_flight.is_some()
    }
}

/// One extra request header of an endpoint. The value may be a credential
/// (an API key for the receiver): it is a [`Secret`], sent marked sensitive
/// and recorded masked.
#[derive(Debug, Clone)]
pub struct ExtraHeader {
    pub name: HeaderName,
    /// Checked at load to be a valid header value.
    pub value: Secret,
}

/// `delivery.ordering`: whether a row's events reach an endpoint in order (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Ordering {
    PerRecord,
    None,
}

impl TryFrom<String> for Ordering {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "per-record" => Ok(Ordering::PerRecord),
            "none" => Ok(Ordering::None),
            other => Err(format!(
                "unknown value {other:?}; expected \"per-record\" or \"none\""
            )),
        }
    }
}

/// `delivery.header_prefix`, lowercased and checked once at load, with the
/// names of the three headers it prefixes, so they are valid by construction.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HeaderPrefix {
    prefix: String,
    event_id: HeaderName,
    event: HeaderName,
    signature: HeaderName,
}

impl HeaderPrefix {
    /// A prefix of letters, digits and inner `-` (lowercased), like `X-Acme`.
    pub fn new(text: &str) -> Result<HeaderPrefix, String> {
        let prefix = text.to_ascii_lowercase();
        let bad = || {
            format!(
                "{prefix:?} is not a valid header name prefix; expected letters, digits and inner `-`, like \"x-superleap\""
            )
        };
        let ok = prefix
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && !prefix.ends_with('-')
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(bad());
        }
        let name = |suffix: &str| HeaderName::try_from(format!("{prefix}-{suffix}"));
        match (name("event-id"), name("event"), name("signature")) {
            (Ok(event_id), Ok(event), Ok(signature)) => Ok(HeaderPrefix {
                prefix,
                event_id,
                event,
                signature,
            }),
            _ => Err(bad()),
        }
    }

    /// The lowercased prefix, e.g. `x-superleap`.
    pub fn as_str(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}-event-id`.
    pub fn event_id(&self) -> &HeaderName {
        &self.event_id
    }

    /// `{prefix}-event`.
    pub fn event(&self) -> &HeaderName {
        &self.event
    }

    /// `{prefix}-signature`.
    pub fn signature(&self) -> &HeaderName {
        &self.signature
    }
}

impl Default for HeaderPrefix {
    /// `x-superleap`.
    fn default() -> Self {
        HeaderPrefix {
            prefix: "x-superleap".to_owned(),
            event_id: HeaderName::from_static("x-superleap-event-id"),
            event: HeaderName::from_static("x-superleap-event"),
            signature: HeaderName::from_static("x-superleap-signature"),
        }
    }
}

impl TryFrom<String> for HeaderPrefix {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        HeaderPrefix::new(&text)
    }
}

impl std::fmt::Debug for HeaderPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.prefix, f)
    }
}

/// `[delivery]`: concurrency, headers, leases and the retry policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Default per-record.
    pub ordering: Ordering,
    /// Default 256.
    #[serde(deserialize_with = "de::positive_usize")]
    pub max_in_flight: usize,
    /// Header name prefix. Default `x-superleap`.
    pub header_prefix: HeaderPrefix,
    /// How long a claimed delivery stays leased to one process without a
    /// renewal. Default 15s. A process renews the leases of its attempts in
    /// flight every third of it, so an attempt may take longer; after a
    /// crash, what the dead process held comes back within this long.
    #[serde(deserialize_with = "duration::nonzero")]
    pub lease: Duration,
    /// A first attempt from the stream not answered within this long is
    /// handed to the retry ledger (it goes on; its result is recorded there),
    /// so a slow endpoint never holds the slot. Default 1s.
    #[serde(deserialize_with = "duration::nonzero")]
    pub spill_after: Duration,
    /// Events held in memory for their first attempts at most; beyond it
    /// (or beyond `WINDOW_BYTES` of bodies) new events go to the retry
    /// ledger. Default 20000.
    #[serde(deserialize_with = "de::positive_usize")]
    pub window: usize,
    /// Disable an endpoint that has failed continuously this long. Default none.
    #[serde(deserialize_with = "duration::nonzero_opt")]
    pub endpoint_disable_after: Option<Duration>,
    /// Endpoint id that receives `endpoint.disabled` notifications. Default none.
    pub notify_endpoint: Option<String>,
    pub retry: RetryConfig,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            ordering: Ordering::PerRecord,
            max_in_flight: 256,
            header_prefix: HeaderPrefix::default(),
            lease: Duration::from_secs(15),
            spill_after: Duration::from_secs(1),
            window: 20_000,
            endpoint_disable_after: None,
            notify_endpoint: None,
            retry: RetryConfig::default(),
        }
    }
}

/// The retry policy (SPEC §5). Defaults are the three-day rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Default 30s.
    #[serde(deserialize_with = "duration::nonzero")]
    pub initial: Duration,
    /// Default 2.0.
    #[serde(deserialize_with = "de::multiplier")]
    pub multiplier: f64,
    /// Default 6h.
    #[serde(deserialize_with = "duration::nonzero")]
    pub max_interval: Duration,
    /// Exponential backoff until the event is this old. Default 24h. Zero is
    /// meaningful: no exponential phase, straight to `then_every`.
    #[serde(deserialize_with = "duration::any")]
    pub backoff_window: Duration,
    /// Then one attempt every this long. Default 24h.
    #[serde(deserialize_with = "duration::nonzero")]
    pub then_every: Duration,
    /// A delivery still failing when the event is this old is disabled. Default 72h.
    #[serde(deserialize_with = "duration::nonzero")]
    pub disable_after: Duration,
    /// Fraction of each delay that is randomised (+-). Default 0.2. Range 0..=1.
    #[serde(deserialize_with = "de::fraction")]
    pub jitter: f64,
    /// A fixed schedule that replaces the exponential part. Default none.
    #[serde(deserialize_with = "duration::schedule")]
    pub schedule: Option<Vec<Duration>>,
    /// With a schedule: attempts after which the delivery is disabled
    /// (default: schedule length + 1, the first attempt plus one per entry).
    #[serde(deserialize_with = "de::positive_u32_opt")]
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
    /// The variable holding the key that seals the secrets of endpoints
    /// made through the API or `walhook endpoints add` (`secrets_key_env`,
    /// default `WALHOOK_SECRETS_KEY`).
    pub secrets_key_env: String,
    /// That key, when the variable is set: 32 bytes, standard base64.
    /// `None`: no runtime endpoints.
    pub secrets_key: Option<SealKey>,
}

/// The default of `admin.secrets_key_env`.
pub const DEFAULT_SECRETS_KEY_ENV: &str = "WALHOOK_SECRETS_KEY";
