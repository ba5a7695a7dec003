//! Configuration: strict TOML (unknown keys rejected), durations with units,
//! `*_env` indirection for secrets and URLs, secrets that cannot be printed.
//!
//! One pass of serde structs (`parse`: shapes, defaults, single-key checks,
//! errors with key path and line), then one validation pass (`validate`:
//! environment lookups and checks across keys). Every field of [`Config`] is
//! resolved: env looked up, defaults applied, signing keys decoded.

mod de;
mod duration;
mod keys;
mod parse;
mod types;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use self::duration::duration_from_str;
pub use self::keys::{EndpointSecrets, SigningKey, WhsecError, decode_whsec};
pub use self::parse::check_event_filters;
pub use self::parse::valid_endpoint_id;
pub use self::types::{
    AdminConfig, DEFAULT_SECRETS_KEY_ENV, DeliveryConfig, EndpointConfig, ExtraHeader,
    HeaderPrefix, KeepBodies, LedgerConfig, ObjectConfig, Ordering, ReplicaIdentity, RetryConfig,
    SigningScheme, SourceConfig,
};
pub use self::validate::endpoint_url;
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

/// A configuration error: names the file, the key and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or type error, unknown key, a value that fails its key's
    /// own check; `message` has the line (when known) and names the key.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// A semantic error on one key found by the validation pass.
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
    /// `origin` names the file in messages.
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
        let file = parse::read(text, origin)?;
        validate::Validator { origin, env, text }.config(file)
    }

    /// The mapped object for a table, by its exact schema and table name.
    pub fn object(&self, schema: &str, table: &str) -> Option<&ObjectConfig> {
        self.objects
            .iter()
            .find(|o| o.schema == schema && o.table == table)
    }

    /// The endpoint with this id.
    /// The ledger's database: `ledger.url`, else the source database.
    pub fn ledger_url(&self) -> &Secret {
        self.ledger.url.as_ref().unwrap_or(&self.source.url)
    }

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
                "no [[endpoints]]: events are not delivered, except to endpoints added at runtime (`walhook endpoints add`)".into(),
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
