//! Endpoints made at runtime (the subscriptions API and `walhook endpoints
//! add/update/remove/rotate-secret`): the checks, the generated secret and
//! the ledger calls both front ends share.
//!
//! Promises: a generated secret is returned once, by `add` and `rotate`,
//! and stored only sealed with the key from `admin.secrets_key_env`; no
//! other result holds it. Config-file endpoints are never changed here.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::RngCore;
use serde::Serialize;
use tokio_postgres::Client;

use super::human::url_origin;
use crate::config::{self, Config, EndpointConfig, SigningScheme};
use crate::ledger::endpoints::{NewRuntime, RuntimeChange, RuntimeRow};
use crate::ledger::{Ledger, LedgerError};
use crate::sealed::SealKey;

/// How long the old secret keeps signing after a rotation, by default.
pub const DEFAULT_KEEP_OLD: Duration = Duration::from_secs(24 * 3600);
/// The longest per-attempt timeout a runtime endpoint may have.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Random bytes in a generated `whsec_` secret.
const SECRET_BYTES: usize = 32;

/// Why a runtime endpoint operation was refused. Messages name what to do
/// and never hold a secret.
#[derive(Debug, thiserror::Error)]
pub enum SubsError {
    #[error(
        "endpoints made at runtime need a key to seal their secrets: set {var} to 32 random bytes in base64 (e.g. `export {var}=$(openssl rand -base64 32)`), the same in every walhook process; `[admin] secrets_key_env` names another variable"
    )]
    NoKey { var: String },
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error(
        "endpoint `{0}` comes from the config file ([[endpoints]]), which the API and `walhook endpoints add/update/remove/rotate-secret` do not change: edit it in the config file and restart walhook"
    )]
    FromConfig(String),
    #[error(
        "an endpoint with id `{0}` already exists; choose another id, or change it with `walhook endpoints update` (PATCH /api/endpoints/{0})"
    )]
    Exists(String),
    #[error(
        "no endpoint made at runtime has id `{0}`; `walhook endpoints list` (GET /api/endpoints) shows them"
    )]
    NotFound(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// A new endpoint as asked for (the API's body, the command's flags).
#[derive(Debug, Clone, Default)]
pub struct AddRequest {
    pub id: String,
    pub url: String,
    /// Default `["*"]`.
    pub events: Option<Vec<String>>,
    /// Default `["superleap", "standard-webhooks"]`.
    pub signing: Option<Vec<String>>,
    /// Default 10s.
    pub timeout: Option<Duration>,
}

/// What to change (`None`: keep).
#[derive(Debug, Clone, Default)]
pub struct UpdateRequest {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub signing: Option<Vec<String>>,
    pub timeout: Option<Duration>,
}

/// A runtime endpoint as shown: never a secret, the URL's origin only
/// (its path and query may hold credentials).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuntimeView {
    pub id: String,
    /// Always `api`.
    pub source: &'static str,
    pub target: String,
    pub events: Vec<String>,
    pub signing: Vec<String>,
    pub timeout_ms: i64,
    /// Until when the previous secret still signs (after a rotation).
    pub old_secret_until: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// The answer to `add` and `rotate`: the secret, shown this once.
#[derive(Debug, Clone, Serialize)]
pub struct WithSecret {
    pub endpoint: RuntimeView,
    /// The signing secret (`whsec_…`). walhook never shows it again.
    pub secret: String,
}

/// The answer to `remove`.
#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub id: String,
    /// Its open deliveries, disabled with the reason "endpoint removed".
    pub deliveries_disabled: u64,
}

impl RuntimeView {
    /// The view of a stored row.
    pub fn of(row: &RuntimeRow) -> RuntimeView {
        let target = url::Url::parse(&row.url)
            .map(|u| url_origin(&u))
            .unwrap_or_default();
        let old_secret_until = match (&row.old_secret, row.old_until) {
            (Some(_), Some(at)) if at > SystemTime::now() => {
                Some(humantime::format_rfc3339_seconds(at).to_string())
            }
            _ => None,
        };
        RuntimeView {
            id: row.id.clone(),
            source: "api",
            target,
            events: row.events.clone(),
            signing: row.signing.clone(),
            timeout_ms: row.timeout_ms,
            old_secret_until,
            created_at: row.created_at.clone(),
            updated_at: row.updated_at.clone(),
        }
    }
}

/// A new `whsec_` secret: 32 random bytes from the OS, standard base64.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("whsec_{}", BASE64.encode(bytes))
}

/// Runtime endpoint operations on one configuration's ledger.
pub struct Subscriptions<'a> {
    cfg: &'a Config,
    ledger: Ledger,
}

impl<'a> Subscriptions<'a> {
    pub fn new(cfg: &'a Config) -> Subscriptions<'a> {
        Subscriptions {
            cfg,
            ledger: Ledger::new(&cfg.ledger.schema),
        }
    }

    fn key(&self) -> Result<&'a SealKey, SubsError> {
        self.cfg
            .admin
            .secrets_key
            .as_ref()
            .ok_or_else(|| SubsError::NoKey {
                var: self.cfg.admin.secrets_key_env.clone(),
            })
    }

    fn not_from_config(&self, id: &str) -> Result<(), SubsError> {
        match self.cfg.endpoint(id) {
            Some(_) => Err(SubsError::FromConfig(id.to_string())),
            None => Ok(()),
        }
    }

    /// Every runtime endpoint.
    pub async fn list(&self, client: &Client) -> Result<Vec<RuntimeView>, SubsError> {
        self.ledger.ensure_exists(client).await?;
        let rows = self.ledger.runtime_endpoints(client).await?;
        Ok(rows.iter().map(RuntimeView::of).collect())
    }

    /// Adds an endpoint with a new secret, returned once.
    pub async fn add(&self, client: &mut Client, req: AddRequest) -> Result<WithSecret, SubsError> {
        let key = self.key()?;
        if !config::valid_endpoint_id(&req.id) {
            return Err(invalid(
                "id",
                format!(
                    "{:?} is not a valid endpoint id; expected a-z or 0-9, then a-z, 0-9, `_` or `-`",
                    req.id
                ),
            ));
        }
        self.not_from_config(&req.id)?;
        let new = NewRuntime {
            url: check_url(&req.url)?,
            events: check_events(req.events.unwrap_or_else(|| vec!["*".into()]))?,
            signing: check_signing(req.signing.as_deref())?
                .unwrap_or_else(|| vec![SigningScheme::Superleap, SigningScheme::StandardWebhooks]),
            timeout: check_timeout(req.timeout.unwrap_or(Duration::from_secs(10)))?,
            id: req.id,
        };
        self.ledger.ensure_exists(client).await?;
        let secret = generate_secret();
        let sealed = key.seal(&new.id, secret.as_bytes());
        if !self
            .ledger
            .insert_runtime_endpoint(client, &new, &sealed)
            .await?
        {
            return Err(SubsError::Exists(new.id));
        }
        let endpoint = self.view(client, &new.id).await?;
        Ok(WithSecret { endpoint, secret })
    }

    /// Changes what `req` sets; the secret stays.
    pub async fn update(
        &self,
        client: &mut Client,
        id: &str,
        req: UpdateRequest,
    ) -> Result<RuntimeView, SubsError> {
        self.not_from_config(id)?;
        let change = RuntimeChange {
            url: req.url.as_deref().map(check_url).transpose()?,
            events: req.events.map(check_events).transpose()?,
            signing: check_signing(req.signing.as_deref())?,
            timeout: req.timeout.map(check_timeout).transpose()?,
        };
        self.ledger.ensure_exists(client).await?;
        if !self
            .ledger
            .update_runtime_endpoint(client, id, &change)
            .await?
        {
            return Err(SubsError::NotFound(id.to_string()));
        }
        self.view(client, id).await
    }

    /// Removes an endpoint; its open deliveries are disabled.
    pub async fn remove(&self, client: &mut Client, id: &str) -> Result<Removed, SubsError> {
        self.not_from_config(id)?;
        self.ledger.ensure_exists(client).await?;
        match self.ledger.delete_runtime_endpoint(client, id).await? {
            Some(n) => Ok(Removed {
                id: id.to_string(),
                deliveries_disabled: n,
            }),
            None => Err(SubsError::NotFound(id.to_string())),
        }
    }

    /// A new secret, returned once; the current one keeps signing for
    /// `keep_old` (default [`DEFAULT_KEEP_OLD`]; zero: not at all).
    pub async fn rotate(
        &self,
        client: &mut Client,
        id: &str,
        keep_old: Option<Duration>,
    ) -> Result<WithSecret, SubsError> {
        let key = self.key()?;
        self.not_from_config(id)?;
        self.ledger.ensure_exists(client).await?;
        let secret = generate_secret();
        let sealed = key.seal(id, secret.as_bytes());
        let keep_old = keep_old.unwrap_or(DEFAULT_KEEP_OLD);
        if !self
            .ledger
            .rotate_runtime_secret(client, id, &sealed, keep_old)
            .await?
        {
            return Err(SubsError::NotFound(id.to_string()));
        }
        let endpoint = self.view(client, id).await?;
        Ok(WithSecret { endpoint, secret })
    }

    /// Runtime endpoint `id` as dispatch serves it (secrets opened), e.g.
    /// to ping it.
    pub async fn endpoint_config(
        &self,
        client: &Client,
        id: &str,
    ) -> Result<EndpointConfig, SubsError> {
        self.ledger.ensure_exists(client).await?;
        let row = self
            .ledger
            .runtime_endpoint(client, id)
            .await?
            .ok_or_else(|| SubsError::NotFound(id.to_string()))?;
        let key = self.key()?;
        row.endpoint(key, &self.cfg.delivery.retry, SystemTime::now())
            .map_err(|e| invalid("key", e.to_string()))
    }

    async fn view(&self, client: &Client, id: &str) -> Result<RuntimeView, SubsError> {
        match self.ledger.runtime_endpoint(client, id).await? {
            Some(row) => Ok(RuntimeView::of(&row)),
            None => Err(SubsError::NotFound(id.to_string())),
        }
    }
}

fn invalid(what: &'static str, message: impl Into<String>) -> SubsError {
    SubsError::Invalid {
        what,
        message: message.into(),
    }
}

fn check_url(text: &str) -> Result<url::Url, SubsError> {
    config::endpoint_url(text, false).map_err(|m| invalid("url", m))
}

fn check_events(events: Vec<String>) -> Result<Vec<String>, SubsError> {
    config::check_event_filters(&events).map_err(|m| invalid("events", m))?;
    Ok(events)
}

fn check_signing(names: Option<&[String]>) -> Result<Option<Vec<SigningScheme>>, SubsError> {
    let Some(names) = names else {
        return Ok(None);
    };
    if names.is_empty() {
        return Err(invalid(
            "signing",
            "an empty list signs nothing; expected \"superleap\" and/or \"standard-webhooks\"",
        ));
    }
    let mut out = Vec::new();
    for n in names {
        let s: SigningScheme = n.parse().map_err(|m: String| invalid("signing", m))?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(Some(out))
}

fn check_timeout(t: Duration) -> Result<Duration, SubsError> {
    if t.is_zero() || t > MAX_TIMEOUT {
        return Err(invalid(
            "timeout",
            format!(
                "{} is out of range; expected more than 0s and at most 5m",
                humantime::format_duration(t)
            ),
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_whsec_and_differ() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        let key = config::decode_whsec(&a).unwrap();
        assert_eq!(key.len(), SECRET_BYTES);
    }

    #[test]
    fn requests_are_checked_like_the_config() {
        assert!(matches!(
            check_url("http://example.com/hook"),
            Err(SubsError::Invalid { what: "url", .. })
        ));
        assert!(check_url("http://127.0.0.1:9/hook").is_ok());
        assert!(check_events(vec!["lead.*".into()]).is_ok());
        assert!(check_events(vec![]).is_err());
        assert!(check_signing(Some(&["nope".to_string()])).is_err());
        assert!(check_timeout(Duration::ZERO).is_err());
        assert!(check_timeout(Duration::from_secs(301)).is_err());
    }
}
