//! Endpoints made at runtime (the subscriptions API, `walhook endpoints
//! add`): their rows in `runtime_endpoints`, with the signing secrets only
//! sealed (see [`crate::sealed`]), and the channel that tells every process
//! the set changed.
//!
//! Every change takes a new `version` from a sequence and sends a NOTIFY,
//! so a process can tell whether the set changed by comparing
//! `(count, max(version))` with what it last loaded.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio_postgres::{Client, Row};

use super::{Ledger, LedgerError};
use crate::config::{EndpointConfig, EndpointSecrets, RetryConfig, SigningScheme};
use crate::pg::{self, quote_ident};
use crate::sealed::{SealError, SealKey};
use crate::secret::Secret;

/// Why a delivery of a removed runtime endpoint is disabled.
pub const REMOVED_REASON: &str = "endpoint removed";

/// One runtime endpoint as stored: the secrets still sealed.
#[derive(Clone)]
pub struct RuntimeRow {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub signing: Vec<String>,
    pub timeout_ms: i64,
    /// The current secret, sealed.
    pub secret: Vec<u8>,
    /// The previous secret, sealed, while it still signs (rotation).
    pub old_secret: Option<Vec<u8>>,
    pub old_until: Option<SystemTime>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// What the set of runtime endpoints looks like from a distance: it
/// changed when this did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetVersion {
    pub count: i64,
    pub max_version: i64,
}

/// A new runtime endpoint, checked by the caller.
#[derive(Debug, Clone)]
pub struct NewRuntime {
    pub id: String,
    pub url: url::Url,
    pub events: Vec<String>,
    pub signing: Vec<SigningScheme>,
    pub timeout: Duration,
}

/// What an update changes (`None`: kept), checked by the caller.
#[derive(Debug, Clone, Default)]
pub struct RuntimeChange {
    pub url: Option<url::Url>,
    pub events: Option<Vec<String>>,
    pub signing: Option<Vec<SigningScheme>>,
    pub timeout: Option<Duration>,
}

/// The LISTEN/NOTIFY channel of changes to the runtime endpoints.
pub fn endpoints_channel(schema: &str) -> String {
    format!("{schema}_endpoints")
}

/// The text of a signing scheme as stored (and as in the config file).
pub fn scheme_name(s: SigningScheme) -> &'static str {
    match s {
        SigningScheme::Superleap => "superleap",
        SigningScheme::StandardWebhooks => "standard-webhooks",
    }
}

fn scheme_names(schemes: &[SigningScheme]) -> Vec<String> {
    schemes
        .iter()
        .map(|s| scheme_name(*s).to_string())
        .collect()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl RuntimeRow {
    fn from_row(r: &Row) -> RuntimeRow {
        RuntimeRow {
            id: r.get("id"),
            url: r.get("url"),
            events: r.get("events"),
            signing: r.get("signing"),
            timeout_ms: r.get("timeout_ms"),
            secret: r.get("secret"),
            old_secret: r.get("old_secret"),
            old_until: r.get("old_until"),
            version: r.get("version"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
        }
    }

    /// The endpoint as dispatch sees it at `now`: the secrets opened with
    /// `key` (the current one first: it signs the `superleap` header; the
    /// old one signs Standard Webhooks alongside until `old_until`), the
    /// global retry policy, no extra headers, limits or filter.
    pub fn endpoint(
        &self,
        key: &SealKey,
        retry: &RetryConfig,
        now: SystemTime,
    ) -> Result<EndpointConfig, SealError> {
        let open = |sealed: &[u8]| -> Result<Secret, SealError> {
            let bytes = key.open(&self.id, sealed)?;
            String::from_utf8(bytes)
                .map(Secret::new)
                .map_err(|_| SealError::DoesNotOpen)
        };
        let mut secrets = vec![open(&self.secret)?];
        if let (Some(old), Some(until)) = (&self.old_secret, self.old_until)
            && until > now
        {
            secrets.push(open(old)?);
        }
        let url = url::Url::parse(&self.url).map_err(|_| SealError::DoesNotOpen)?;
        Ok(EndpointConfig {
            id: self.id.clone(),
            url,
            secrets: EndpointSecrets::new(secrets).expect("one secret at least"),
            events: self.events.clone(),
            signing: self.signing.iter().filter_map(|s| s.parse().ok()).collect(),
            timeout: Duration::from_millis(self.timeout_ms.max(1) as u64),
            allow_insecure_http: false,
            retry: retry.clone(),
            headers: Vec::new(),
            rate_limit: None,
            max_in_flight: None,
            filter: None,
        })
    }
}

const COLUMNS: &str =
    "id, url, events, signing, timeout_ms, secret, old_secret, old_until, version,
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at,
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS updated_at";

impl Ledger {
    /// Every runtime endpoint, by id.
    pub async fn runtime_endpoints(&self, client: &Client) -> Result<Vec<RuntimeRow>, LedgerError> {
        let s = quote_ident(self.schema());
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM {s}.runtime_endpoints ORDER BY id"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(RuntimeRow::from_row).collect())
    }

    /// One runtime endpoint.
    pub async fn runtime_endpoint(
        &self,
        client: &Client,
        id: &str,
    ) -> Result<Option<RuntimeRow>, LedgerError> {
        let s = quote_ident(self.schema());
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM {s}.runtime_endpoints WHERE id = $1"),
                &[&id],
            )
            .await?;
        Ok(row.as_ref().map(RuntimeRow::from_row))
    }

    /// How the set looks now (see [`SetVersion`]).
    pub async fn runtime_version(&self, client: &Client) -> Result<SetVersion, LedgerError> {
        let s = quote_ident(self.schema());
        let row = client
            .query_one(
                &format!("SELECT count(*), coalesce(max(version), 0) FROM {s}.runtime_endpoints"),
                &[],
            )
            .await?;
        Ok(SetVersion {
            count: row.get(0),
            max_version: row.get(1),
        })
    }

    /// Adds `new` with its sealed secret; `false` when the id is taken.
    /// Its state row (enabled, failing) is made or reset too.
    pub async fn insert_runtime_endpoint(
        &self,
        client: &mut Client,
        new: &NewRuntime,
        sealed_secret: &[u8],
    ) -> Result<bool, LedgerError> {
        let s = quote_ident(self.schema());
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO {s}.runtime_endpoints (id, url, events, signing, timeout_ms, secret)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING"
                ),
                &[
                    &new.id,
                    &new.url.as_str(),
                    &new.events,
                    &scheme_names(&new.signing),
                    &millis(new.timeout),
                    &sealed_secret,
                ],
            )
            .await?;
        if n == 1 {
            tx.execute(
                &format!(
                    "INSERT INTO {s}.endpoints (id) VALUES ($1)
                     ON CONFLICT (id) DO UPDATE SET enabled = true, disabled_at = NULL,
                       disabled_reason = NULL, failing_since = NULL, updated_at = now()"
                ),
                &[&new.id],
            )
            .await?;
            notify(&tx, self.schema()).await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Applies `change` to runtime endpoint `id`; `false` when there is none.
    pub async fn update_runtime_endpoint(
        &self,
        client: &mut Client,
        id: &str,
        change: &RuntimeChange,
    ) -> Result<bool, LedgerError> {
        let s = quote_ident(self.schema());
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                &format!(
                    "UPDATE {s}.runtime_endpoints SET
                       url = coalesce($2, url), events = coalesce($3, events),
                       signing = coalesce($4, signing), timeout_ms = coalesce($5, timeout_ms),
                       version = nextval('{s}.runtime_endpoints_version'), updated_at = now()
                     WHERE id = $1"
                ),
                &[
                    &id,
                    &change.url.as_ref().map(|u| u.as_str()),
                    &change.events,
                    &change.signing.as_deref().map(scheme_names),
                    &change.timeout.map(millis),
                ],
            )
            .await?;
        commit_changed(tx, self.schema(), n == 1).await
    }

    /// A new sealed secret for `id`; the current one keeps signing for
    /// `keep_old` (none when zero; an older one still kept is dropped).
    /// `false` when there is no such endpoint.
    pub async fn rotate_runtime_secret(
        &self,
        client: &mut Client,
        id: &str,
        sealed_secret: &[u8],
        keep_old: Duration,
    ) -> Result<bool, LedgerError> {
        let s = quote_ident(self.schema());
        let keep_ms = millis(keep_old);
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                &format!(
                    "UPDATE {s}.runtime_endpoints SET
                       old_secret = CASE WHEN $3::bigint > 0 THEN secret END,
                       old_until = CASE WHEN $3::bigint > 0
                                   THEN now() + $3::bigint * interval '1 millisecond' END,
                       secret = $2,
                       version = nextval('{s}.runtime_endpoints_version'), updated_at = now()
                     WHERE id = $1"
                ),
                &[&id, &sealed_secret, &keep_ms],
            )
            .await?;
        commit_changed(tx, self.schema(), n == 1).await
    }

    /// Removes runtime endpoint `id`. Its open deliveries are disabled with
    /// [`REMOVED_REASON`] in the same transaction (they stay in the history
    /// until retention prunes them). `None` when there is no such endpoint,
    /// else how many deliveries were disabled.
    pub async fn delete_runtime_endpoint(
        &self,
        client: &mut Client,
        id: &str,
    ) -> Result<Option<u64>, LedgerError> {
        let s = quote_ident(self.schema());
        let tx = client.transaction().await?;
        let n = tx
            .execute(
                &format!("DELETE FROM {s}.runtime_endpoints WHERE id = $1"),
                &[&id],
            )
            .await?;
        if n == 0 {
            return Ok(None);
        }
        tx.execute(&format!("DELETE FROM {s}.endpoints WHERE id = $1"), &[&id])
            .await?;
        let disabled = tx
            .execute(
                &format!(
                    "UPDATE {s}.deliveries SET status = 'disabled', last_error = $2,
                       lease_owner = NULL, lease_until = NULL, updated_at = now()
                     WHERE endpoint_id = $1 AND status IN ('pending', 'retrying')"
                ),
                &[&id, &REMOVED_REASON],
            )
            .await?;
        notify(&tx, self.schema()).await?;
        tx.commit().await?;
        Ok(Some(disabled))
    }

    /// Disables the open deliveries of endpoints in `ids` that are not (or
    /// no longer) runtime endpoints, with [`REMOVED_REASON`]. Returns how many.
    pub async fn disable_removed(
        &self,
        client: &Client,
        ids: &[String],
    ) -> Result<u64, LedgerError> {
        let s = quote_ident(self.schema());
        Ok(client
            .execute(
                &format!(
                    "UPDATE {s}.deliveries SET status = 'disabled', last_error = $2,
                       lease_owner = NULL, lease_until = NULL, updated_at = now()
                     WHERE endpoint_id = ANY($1) AND status IN ('pending', 'retrying')
                       AND (lease_until IS NULL OR lease_until < now())
                       AND endpoint_id NOT IN (SELECT id FROM {s}.runtime_endpoints)"
                ),
                &[&ids, &REMOVED_REASON],
            )
            .await?)
    }

    /// A session that LISTENs on [`endpoints_channel`] and wakes `wake` on
    /// every notification. It lives as long as the returned client.
    pub async fn listen_endpoints(
        &self,
        url: &Secret,
        timeout: Duration,
        wake: Arc<Notify>,
    ) -> Result<Client, LedgerError> {
        let client = pg::connect_notifying(url, "walhook endpoints", timeout, move |_| {
            wake.notify_one()
        })
        .await?;
        client
            .batch_execute(&format!(
                "LISTEN {}",
                quote_ident(&endpoints_channel(self.schema()))
            ))
            .await?;
        Ok(client)
    }
}

async fn notify(tx: &tokio_postgres::Transaction<'_>, schema: &str) -> Result<(), LedgerError> {
    tx.execute("SELECT pg_notify($1, '')", &[&endpoints_channel(schema)])
        .await?;
    Ok(())
}

/// Commits `tx`; when it `changed` an endpoint, every process is told first
/// (the notification is sent at commit). Returns `changed`.
async fn commit_changed(
    tx: tokio_postgres::Transaction<'_>,
    schema: &str,
    changed: bool,
) -> Result<bool, LedgerError> {
    if changed {
        notify(&tx, schema).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SealKey {
        use base64::Engine as _;
        SealKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([byte; 32])).unwrap()
    }

    fn row(k: &SealKey, old_until: SystemTime) -> RuntimeRow {
        RuntimeRow {
            id: "crm".into(),
            url: "https://example.com/h".into(),
            events: vec!["lead.*".into()],
            signing: vec!["superleap".into(), "standard-webhooks".into()],
            timeout_ms: 2_000,
            secret: k.seal("crm", b"whsec_bmV3"),
            old_secret: Some(k.seal("crm", b"whsec_b2xk")),
            old_until: Some(old_until),
            version: 1,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn the_old_secret_signs_until_its_time_then_not() {
        let k = key(3);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let r = row(&k, now + Duration::from_secs(60));
        let retry = RetryConfig::default();
        let ep = r.endpoint(&k, &retry, now).unwrap();
        let secrets: Vec<&str> = ep.secrets.iter().map(|s| s.secret().expose()).collect();
        assert_eq!(secrets, ["whsec_bmV3", "whsec_b2xk"], "the new one first");
        assert_eq!(ep.signing.len(), 2);
        assert_eq!(ep.timeout, Duration::from_secs(2));
        let later = now + Duration::from_secs(61);
        let ep = r.endpoint(&k, &retry, later).unwrap();
        assert_eq!(ep.secrets.len(), 1);
        assert_eq!(ep.secrets.primary().secret().expose(), "whsec_bmV3");
    }

    #[test]
    fn another_key_or_a_moved_row_does_not_open() {
        let k = key(3);
        let now = SystemTime::UNIX_EPOCH;
        let r = row(&k, now);
        assert!(r.endpoint(&key(4), &RetryConfig::default(), now).is_err());
        let mut moved = r.clone();
        moved.id = "other".into();
        assert!(moved.endpoint(&k, &RetryConfig::default(), now).is_err());
    }
}
