//! A walhook with real deliveries for the admin tests (CLI, API, browser):
//! two endpoints on loopback receivers, `ok` (answers 200) and `bad`
//! (answers 500 with an HTML-ish body), a retry policy scaled down to seconds
//! so `bad`'s deliveries end up disabled, and recognisable secrets so tests
//! can grep every output for them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use crate::common::app::{self, InProcess, LEADS, LEADS_OBJECTS};
use crate::common::{Behaviour, Receiver, Reply, TestDb, free_port, fresh_db, wait_until};

pub const ENDPOINT_SECRET: &str = "EPSECRET-2f9c4a7d1e";
pub const ADMIN_TOKEN: &str = "ADMTOKEN-8b3e6f0c5a";
pub const DB_PASSWORD: &str = "DBPASSWD-5d1a9e7b3c";
/// In the query of endpoint `ok`'s URL: only the URL's origin is ever shown.
pub const URL_KEY: &str = "URLQUERYKEY-7c2b";
/// Every secret the scenario configures; none may appear in any output.
pub const SECRETS: [&str; 4] = [ENDPOINT_SECRET, ADMIN_TOKEN, DB_PASSWORD, URL_KEY];

/// What the `bad` receiver answers: untrusted markup the page must escape.
pub const BAD_BODY: &str = "<img src=x onerror=alert(1)><b>nope</b>";

/// Retries fast, then gives up after 2 s (the three-day rule in seconds).
pub const FAST_RETRY: &str = r#"
[delivery]
lease = "10s"

[delivery.retry]
initial = "100ms"
multiplier = 2.0
max_interval = "300ms"
backoff_window = "1s"
then_every = "500ms"
disable_after = "2s"
"#;

/// Panics naming the secret and where it leaked.
pub fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} contains the secret {s}:\n{text}");
    }
}

pub struct Scenario {
    pub db: TestDb,
    pub client: tokio_postgres::Client,
    pub ok: Receiver,
    pub bad: Receiver,
    /// The config text (with the database password in its URL).
    pub text: String,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
    pub run: Option<InProcess>,
    /// `admin.listen` when the scenario serves the admin HTTP.
    pub admin: Option<SocketAddr>,
}

/// Options of [`Scenario::start`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Serve the admin HTTP from the in-process walhook (with a token).
    pub admin: bool,
    /// Run `walhook setup` and the daemon.
    pub no_run: bool,
}

/// The config text for `db`: database password in the URL, endpoints `ok`
/// and `bad`, fast retries, and `admin` as given.
pub fn config(db: &TestDb, ok: &Receiver, bad: &Receiver, admin: &str) -> String {
    let url_with_password = db
        .url
        .replacen("postgres@", &format!("postgres:{DB_PASSWORD}@"), 1);
    assert_ne!(
        url_with_password, db.url,
        "test database URL has the expected shape"
    );
    let endpoints = format!(
        "[[endpoints]]\nid = \"ok\"\nurl = \"{}hooks/ok?key={URL_KEY}\"\nsecret = \"{ENDPOINT_SECRET}\"\ntimeout = \"2s\"\n\n\
         [[endpoints]]\nid = \"bad\"\nurl = \"{}hooks/bad\"\nsecret = \"{ENDPOINT_SECRET}\"\ntimeout = \"2s\"\n",
        ok.url(),
        bad.url()
    );
    app::config_text(
        db,
        LEADS_OBJECTS,
        &format!("{endpoints}\n{FAST_RETRY}\n{admin}\n"),
    )
    .replace(&db.url, &url_with_password)
}

impl Scenario {
    /// Database, receivers, config; with `opts.no_run` nothing else,
    /// otherwise setup and walhook running (capture, dispatch, and admin
    /// HTTP when `opts.admin`).
    pub async fn start(hint: &str, opts: Options) -> Scenario {
        let db = fresh_db(hint).await;
        db.psql(LEADS).await;
        let ok = Receiver::start(Behaviour::AlwaysOk).await;
        let bad = Receiver::start(Behaviour::script(|_, _| {
            Reply::Status(
                500,
                vec![("content-type".into(), "text/html".into())],
                Bytes::from_static(BAD_BODY.as_bytes()),
            )
        }))
        .await;
        let admin_addr: Option<SocketAddr> = opts
            .admin
            .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let admin = match admin_addr {
            Some(a) => format!("[admin]\nlisten = \"{a}\"\ntoken = \"{ADMIN_TOKEN}\"\n"),
            None => "[admin]\nlisten = \"\"\n".into(),
        };
        let text = config(&db, &ok, &bad, &admin);
        let (dir, config) = app::write_config(&text);
        let client = db.connect().await;
        let mut s = Scenario {
            db,
            client,
            ok,
            bad,
            text,
            config,
            _dir: dir,
            run: None,
            admin: admin_addr,
        };
        if !opts.no_run {
            let cfg = app::parse(&s.text);
            app::setup(&cfg).await;
            s.run = Some(InProcess::start(
                cfg,
                walhook::Roles {
                    capture: true,
                    dispatch: true,
                    admin: opts.admin,
                },
            ));
        }
        s
    }

    /// Insert leads `ids` (one `lead.create` each, fanned out to both endpoints).
    pub async fn insert(&self, ids: &[&str]) {
        for id in ids {
            self.client
                .execute(
                    "INSERT INTO leads (id, name, score) VALUES ($1, 'Ada', 1)",
                    &[id],
                )
                .await
                .expect("insert lead");
        }
    }

    /// Deliveries by (endpoint, status).
    pub async fn count(&self, endpoint: &str, status: &str) -> i64 {
        self.client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE endpoint_id = $1 AND status = $2",
                    super::app::ALL_DELIVERIES
                ),
                &[&endpoint, &status],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0)
    }

    /// Wait until `ok` has `n` succeeded deliveries and `bad` has `n` disabled ones.
    pub async fn wait_settled(&self, n: i64) {
        wait_until(
            Duration::from_secs(40),
            &format!("{n} succeeded deliveries to ok and {n} disabled ones to bad"),
            || async {
                (self.count("ok", "succeeded").await == n
                    && self.count("bad", "disabled").await == n)
                    .then_some(())
            },
        )
        .await;
    }

    /// A delivery id of `endpoint` in `status`.
    pub async fn delivery_id(&self, endpoint: &str, status: &str) -> i64 {
        self.client
            .query_one(
                &format!(
                    "SELECT max(id) FROM {} WHERE endpoint_id = $1 AND status = $2",
                    super::app::ALL_DELIVERIES
                ),
                &[&endpoint, &status],
            )
            .await
            .expect("delivery id")
            .get::<_, Option<i64>>(0)
            .unwrap_or_else(|| panic!("no {status} delivery to {endpoint}"))
    }

    pub async fn attempts(&self, delivery: i64) -> i64 {
        self.client
            .query_one(
                "SELECT (SELECT count(*) FROM walhook.attempts WHERE delivery_id = $1)
                      + (SELECT count(*) FROM walhook.delivered WHERE delivery_id = $1)",
                &[&delivery],
            )
            .await
            .expect("attempts")
            .get(0)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin HTTP is on"))
    }

    pub async fn stop(mut self) {
        if let Some(run) = self.run.take() {
            run.stop().await;
        }
    }
}

/// `walhook <args> --config <path>` off the async runtime.
pub async fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        app::run_cli(&config, &args)
    })
    .await
    .expect("cli task")
}
