//! Leaf helpers for talking to PostgreSQL, used by every room above: SQL
//! quoting, the [`Lsn`] type and its forward-only [`Progress`], unix-time
//! conversions, error text that keeps the server's message, and the one place
//! where connections are opened (so connect timeouts, TLS and authentication
//! are decided once: [`conninfo`] reads the connection string as libpq does,
//! `tls` turns its TLS settings into rustls configurations).
//!
//! Nothing here knows walhook's tables or configuration.

pub mod conninfo;
mod tls;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgwire_replication::ReplicationConfig;
use tokio_postgres::config::Host;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{AsyncMessage, Client};

use self::conninfo::{ConnInfo, SslMode};
use crate::secret::Secret;

/// An SQL identifier, always double-quoted (`"` doubled inside).
pub fn quote_ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// An SQL string literal (`E'...'` when it holds a backslash).
pub fn quote_literal(text: &str) -> String {
    postgres_protocol::escape::escape_literal(text)
}

/// A position in the write-ahead log. Printed as Postgres does (`0/16B3748`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl From<PgLsn> for Lsn {
    fn from(l: PgLsn) -> Lsn {
        Lsn(u64::from(l))
    }
}

impl From<pgwire_replication::Lsn> for Lsn {
    fn from(l: pgwire_replication::Lsn) -> Lsn {
        Lsn(l.as_u64())
    }
}

impl From<Lsn> for pgwire_replication::Lsn {
    fn from(l: Lsn) -> pgwire_replication::Lsn {
        pgwire_replication::Lsn::from_u64(l.0)
    }
}

impl From<Lsn> for PgLsn {
    fn from(l: Lsn) -> PgLsn {
        PgLsn::from(l.0)
    }
}

/// A position that only moves forward: the highest [`Lsn`] it was ever
/// advanced to. Acknowledging a smaller LSN to the server would be harmless
/// there but means a bug here, so debug builds assert on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress(Lsn);

impl Progress {
    pub fn new(start: Lsn) -> Progress {
        Progress(start)
    }

    pub fn get(self) -> Lsn {
        self.0
    }

    /// Moves to `to` when it is ahead; returns whether it moved.
    pub fn advance(&mut self, to: Lsn) -> bool {
        if to > self.0 {
            self.0 = to;
            true
        } else {
            false
        }
    }
}

/// Microseconds between 1970-01-01 and 2000-01-01 (Postgres' epoch).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Milliseconds since the Unix epoch (negative before 1970).
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The current wall-clock time in unix milliseconds.
pub fn now_unix_ms() -> i64 {
    unix_ms(SystemTime::now())
}

pub fn system_time_from_unix_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

pub fn system_time_from_unix_micros(micros: i64) -> SystemTime {
    if micros >= 0 {
        UNIX_EPOCH + Duration::from_micros(micros as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs())
    }
}

/// The SQLSTATE of an error the server sent.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// An error as the server explained it: message, SQLSTATE, detail and hint
/// (tokio-postgres' own `Display` says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return error_chain(e);
    };
    let mut out = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    if let Some(detail) = db.detail() {
        out.push_str(&format!("; detail: {detail}"));
    }
    if let Some(hint) = db.hint() {
        out.push_str(&format!("; hint: {hint}"));
    }
    out
}

/// An error with its causes, `: `-separated, each said once.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A database error that prints the server's whole explanation.
#[derive(Debug)]
pub struct DbError(pub tokio_postgres::Error);

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> DbError {
        DbError(e)
    }
}

impl DbError {
    pub fn sqlstate(&self) -> Option<&str> {
        sqlstate(&self.0)
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the database URL is not valid: {0}")]
    Url(String),
    /// TLS could not be set up or the handshake failed: a certificate that
    /// does not verify, a server without TLS, a missing certificate file.
    #[error("cannot connect to the database ({target}) over TLS: {reason}")]
    Tls { target: String, reason: String },
    #[error("cannot connect to the database ({target}): {source}{}", advice(.source))]
    Refused {
        target: String,
        #[source]
        source: DbError,
    },
    #[error(
        "the database ({target}) did not answer the login within {after:?}: the server accepts connections but does not respond"
    )]
    Timeout { target: String, after: Duration },
}

impl ConnectError {
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ConnectError::Refused { source, .. } => source.sqlstate(),
            _ => None,
        }
    }

    /// Waiting will not fix it: a bad URL, a certificate that does not
    /// verify, a refused login, a missing database.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ConnectError::Url(_) | ConnectError::Tls { .. })
            || matches!(self.sqlstate(), Some("28P01" | "28000" | "3D000"))
    }
}

/// What to do about a refused login, after the server's own words (which
/// say what happened but not what to change on walhook's side).
fn advice(e: &DbError) -> &'static str {
    let Some(db) = e.0.as_db_error() else {
        return "";
    };
    let message = db.message();
    match db.code().code() {
        "28P01" => {
            ". The password is wrong for this role: check the one in the database URL (source.url, or the variable url_env names)"
        }
        "28000"
            if message.contains("no pg_hba.conf entry") && message.contains("no encryption") =>
        {
            ". pg_hba.conf has no line that lets this role in without TLS: if the server takes it over TLS (a hostssl line), add sslmode=require (or verify-full with sslrootcert) to the URL; otherwise the DBA must add a line for this host, role and database"
        }
        "28000" if message.contains("no pg_hba.conf entry") => {
            ". pg_hba.conf has no line for this host, role and database: the DBA must add one (e.g. `hostssl <db> <role> <walhook's address> scram-sha-256`) and reload PostgreSQL"
        }
        "28000" if message.contains("requires a valid client certificate") => {
            ". The server authenticates this role by certificate (`cert` in pg_hba.conf): give sslcert and sslkey in the URL"
        }
        "28000" if message.contains("certificate authentication failed") => {
            ". The client certificate's common name (CN) must be the role's name, or map to it in pg_ident.conf"
        }
        "28000" if message.contains("rejects connection") => {
            ". A `reject` line in pg_hba.conf matches this host, role and database"
        }
        "28000" if message.contains("not permitted to log in") => {
            ". The role lacks LOGIN: ALTER ROLE ... LOGIN"
        }
        "3D000" => ". Check the database name in the URL",
        _ => "",
    }
}

/// Parses a libpq-style URL or key=value string, TLS keys included.
pub fn parse_conninfo(url: &Secret) -> Result<ConnInfo, ConnectError> {
    conninfo::parse(url.expose()).map_err(|e| ConnectError::Url(e.to_string()))
}

/// Parses a libpq-style URL or key=value string.
pub fn parse_url(url: &Secret) -> Result<tokio_postgres::Config, ConnectError> {
    parse_conninfo(url).map(|info| info.pg)
}

/// The first host of `cfg`, as it is named in messages and TLS.
fn first_host(cfg: &tokio_postgres::Config) -> String {
    match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    }
}

/// A connection target with the password hidden, for messages:
/// `user@host:port/db`.
pub fn describe_target(url: &Secret) -> String {
    match conninfo::parse(url.expose()) {
        Ok(ConnInfo { pg: cfg, .. }) => {
            let port = cfg.get_ports().first().copied().unwrap_or(5432);
            format!(
                "{}@{}:{}/{}",
                cfg.get_user().unwrap_or("?"),
                first_host(&cfg),
                port,
                cfg.get_dbname().unwrap_or("?")
            )
        }
        Err(_) => "<unparseable database URL>".into(),
    }
}

/// How long one login may take when the caller gives no deadline.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection (its driver runs on its own task). `timeout` bounds the
/// whole login: TCP, TLS, authentication and a first round trip, so a server
/// that accepts TCP and never answers cannot hang the caller.
pub async fn connect(
    url: &Secret,
    application_name: &str,
    timeout: Duration,
) -> Result<Client, ConnectError> {
    connect_notifying(url, application_name, timeout, |_| {}).await
}

/// [`connect`], calling `on_notification` with the channel of every
/// NOTIFY this session receives (after it has run LISTEN).
pub async fn connect_notifying(
    url: &Secret,
    application_name: &str,
    timeout: Duration,
    on_notification: impl Fn(&str) + Send + 'static,
) -> Result<Client, ConnectError> {
    let ConnInfo { pg: mut cfg, tls } = parse_conninfo(url)?;
    let target = || describe_target(url);
    cfg.application_name(application_name);
    // Idempotent DDL (`IF NOT EXISTS`) would otherwise fill the log with NOTICEs.
    let options = format!(
        "{} -c client_min_messages=warning",
        cfg.get_options().unwrap_or_default()
    );
    cfg.options(options.trim());
    cfg.connect_timeout(timeout);
    cfg.ssl_mode(driver_ssl_mode(&cfg, tls.mode));
    let connector = tls::connector(&tls).map_err(|reason| ConnectError::Tls {
        target: target(),
        reason,
    })?;
    let login = async {
        let (client, conn) = cfg.connect(connector).await?;
        tokio::spawn(drive(conn, on_notification));
        client.simple_query("").await?;
        Ok::<_, tokio_postgres::Error>(client)
    };
    match tokio::time::timeout(timeout, login).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(match tls::explain(&e, &tls, &first_host(&cfg)) {
            Some(reason) => ConnectError::Tls {
                target: target(),
                reason,
            },
            None => ConnectError::Refused {
                target: target(),
                source: DbError(e),
            },
        }),
        Err(_) => Err(ConnectError::Timeout {
            target: target(),
            after: timeout,
        }),
    }
}

/// tokio-postgres' `sslmode` for libpq's `mode`: it knows no verify modes
/// (the rustls configuration does the verifying), and, as in libpq, a Unix
/// socket never uses TLS (the server offers none there).
fn driver_ssl_mode(cfg: &tokio_postgres::Config, mode: SslMode) -> tokio_postgres::config::SslMode {
    use tokio_postgres::config::SslMode as Driver;
    let hosts = cfg.get_hosts();
    if !hosts.is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_))) {
        return Driver::Disable;
    }
    match mode {
        SslMode::Disable => Driver::Disable,
        SslMode::Prefer => Driver::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Driver::Require,
    }
}

/// Runs a connection until it closes, handing NOTIFY channels on.
async fn drive<S, T>(mut conn: tokio_postgres::Connection<S, T>, on_notification: impl Fn(&str))
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => on_notification(n.channel()),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::debug!(error = %e, "database connection closed");
                break;
            }
            None => break,
        }
    }
}

/// Keeps trying to connect until `timeout` has passed (start-up of every
/// command); each try gets what is left of it. Gives up at once on what
/// waiting cannot fix.
pub async fn connect_within(
    url: &Secret,
    application_name: &str,
    timeout: Duration,
) -> Result<Client, ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match connect(url, application_name, left.max(Duration::from_millis(100))).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                if e.is_permanent() || tokio::time::Instant::now() + delay >= deadline {
                    return Err(e);
                }
                tracing::warn!(error = %e, "database not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Settings for a logical replication session on `slot` with pgoutput over
/// `publication`, from the database URL (its first host), TLS included. The
/// caller adds what is specific to its session (start position, status
/// interval, options).
pub fn replication_config(
    url: &Secret,
    slot: &str,
    publication: &str,
) -> Result<ReplicationConfig, ConnectError> {
    Ok(replication_configs(url, slot, publication)?.remove(0))
}

/// [`replication_config`] for each host the URL names, in order
/// (`host=a,b port=5432,5433`, or `postgres://u@a:5432,b:5433/db`): the
/// replication connection takes one host, so the caller picks the primary.
/// Never empty. As libpq, one port applies to every host, or each host has
/// its own; so does `hostaddr`.
pub fn replication_configs(
    url: &Secret,
    slot: &str,
    publication: &str,
) -> Result<Vec<ReplicationConfig>, ConnectError> {
    let info = parse_conninfo(url)?;
    if let Some(why) = info.replication_refusal() {
        return Err(ConnectError::Url(why.into()));
    }
    let ConnInfo { pg, tls } = info;
    let user = pg.get_user().unwrap_or("postgres").to_string();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let dbname = pg.get_dbname().unwrap_or(&user).to_string();
    let ports = pg.get_ports();
    // Names inside publication_names are split like identifiers: quote ours
    // so that a mixed-case name is not folded to lower case.
    let publication = quote_ident(publication);
    let localhost = [Host::Tcp("localhost".into())];
    let hosts = match pg.get_hosts() {
        [] => &localhost[..],
        hosts => hosts,
    };
    if ports.len() > 1 && ports.len() != hosts.len() {
        return Err(ConnectError::Url(format!(
            "{} hosts but {} ports: give one port for all hosts or one per host",
            hosts.len(),
            ports.len()
        )));
    }
    let mut configs = Vec::with_capacity(hosts.len());
    for (i, host) in hosts.iter().enumerate() {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let (user, password, dbname) = (user.clone(), password.clone(), dbname.clone());
        let (slot, publication) = (slot.to_string(), publication.clone());
        let h = match host {
            Host::Unix(dir) => {
                // pgwire-replication uses no TLS on a socket, as libpq.
                configs.push(ReplicationConfig::unix(
                    dir.display().to_string(),
                    port,
                    user,
                    password,
                    dbname,
                    slot,
                    publication,
                ));
                continue;
            }
            Host::Tcp(h) => h,
        };
        // With hostaddr, connect there and still check the certificate (and
        // send SNI) for the host name, as libpq.
        let address = pg
            .get_hostaddrs()
            .get(i)
            .map_or_else(|| h.clone(), |a| a.to_string());
        let tls = tls::replication_tls(&tls, h).map_err(|reason| ConnectError::Tls {
            target: describe_target(url),
            reason,
        })?;
        configs.push(
            ReplicationConfig::new(address, user, password, dbname, slot, publication)
                .with_port(port)
                .with_tls(tls),
        );
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(quote_ident("leads"), "\"leads\"");
        assert_eq!(quote_ident("My\"Table"), "\"My\"\"Table\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn lsn_prints_like_postgres() {
        assert_eq!(Lsn(0x016B_3748).to_string(), "0/16B3748");
        assert_eq!(Lsn((3 << 32) | 0xA0).to_string(), "3/A0");
    }

    #[test]
    fn progress_only_moves_forward() {
        let mut p = Progress::new(Lsn(100));
        assert!(!p.advance(Lsn(50)));
        assert!(!p.advance(Lsn(100)));
        assert_eq!(p.get(), Lsn(100));
        assert!(p.advance(Lsn(101)));
        assert_eq!(p.get(), Lsn(101));
    }

    #[test]
    fn unix_time_round_trips_before_and_after_1970() {
        for ms in [-1_500, 0, 1_741_686_315_971] {
            assert_eq!(unix_ms(system_time_from_unix_ms(ms)), ms);
        }
        assert_eq!(
            unix_ms(system_time_from_unix_micros(1_741_686_315_971_999)),
            1_741_686_315_971
        );
    }

    #[test]
    fn targets_never_show_the_password() {
        let t = describe_target(&Secret::new("postgres://app:hunter2@db.example:6432/crm"));
        assert_eq!(t, "app@db.example:6432/crm");
    }

    #[test]
    fn one_replication_config_per_host() {
        let url = Secret::new("host=10.0.0.1,10.0.0.2 port=5432,5433 user=w dbname=app");
        let all = replication_configs(&url, "s", "p").unwrap();
        let at: Vec<_> = all.iter().map(|c| (c.host.as_str(), c.port)).collect();
        assert_eq!(at, [("10.0.0.1", 5432), ("10.0.0.2", 5433)]);
        let url = Secret::new("postgres://w@a:6000,b:6001/app");
        let all = replication_configs(&url, "s", "p").unwrap();
        let at: Vec<_> = all.iter().map(|c| (c.host.as_str(), c.port)).collect();
        assert_eq!(at, [("a", 6000), ("b", 6001)]);
        let url = Secret::new("host=a,b port=6000 user=w");
        let all = replication_configs(&url, "s", "p").unwrap();
        let at: Vec<_> = all.iter().map(|c| (c.host.as_str(), c.port)).collect();
        assert_eq!(at, [("a", 6000), ("b", 6000)]);
        let url = Secret::new("host=a,b,c port=1,2 user=w");
        assert!(replication_configs(&url, "s", "p").is_err());
    }

    #[test]
    fn bad_urls_are_permanent_errors() {
        let e = parse_url(&Secret::new("postgres://[::1")).unwrap_err();
        assert!(e.is_permanent());
    }
}
