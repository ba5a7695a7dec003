//! Endpoints made at runtime (the subscriptions API and `walhook endpoints
//! add/update/remove/rotate-secret`) while walhook keeps running: capture in
//! one process, dispatch in another, neither restarted. Deliveries are signed
//! with the secret the API returned once; a rotation signs with both secrets;
//! a new URL takes the next deliveries; a removed endpoint gets none. The
//! secrets are never in an API answer after creation, in either process's
//! log, or in the ledger's table file in clear.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use walhook::config::decode_whsec;
use walhook::dispatch::sign::{verify_standard_webhooks, verify_superleap};

use crate::common::app::{self, InProcess, LEADS, LEADS_OBJECTS};
use crate::common::daemon::Daemon;
use crate::common::{
    Behaviour, Receiver, RecordedRequest, TestDb, free_port, fresh_db, wait_until,
};

const TOKEN: &str = "RTTOKEN-41c9d2";
const KEY_ENV: &str = "WALHOOK_SECRETS_KEY";
const WAIT: Duration = Duration::from_secs(30);

fn key() -> String {
    base64::engine::general_purpose::STANDARD.encode([0x5au8; 32])
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// `method path` with the token and a JSON body (if any): (status, body).
async fn call(base: &str, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let url = format!("{base}{path}");
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http().request(m, url).bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("admin HTTP answers");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn insert(db: &tokio_postgres::Client, id: &str) -> String {
    db.execute(
        "INSERT INTO leads (id, name, score) VALUES ($1, 'Ada', 1)",
        &[&id],
    )
    .await
    .expect("insert lead");
    let row = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap();
    row.get(0)
}

/// The request for lead `id` among those `rx` received, waiting for it.
async fn request_for(rx: &Receiver, id: &str) -> RecordedRequest {
    wait_until(WAIT, &format!("lead {id} delivered"), || async {
        rx.requests()
            .into_iter()
            .find(|r| String::from_utf8_lossy(&r.body).contains(&format!("\"{id}\"")))
    })
    .await
}

/// Whether `secret` signed `r`: (its superleap header, the Standard Webhooks
/// signature header).
fn signed_by(r: &RecordedRequest, secret: &str) -> (bool, bool) {
    let superleap = r
        .header("x-superleap-signature")
        .is_some_and(|h| verify_superleap(secret.as_bytes(), &r.body, h));
    let key = decode_whsec(secret).expect("a whsec_ secret");
    let sw = verify_standard_webhooks(
        &key,
        r.header("webhook-id").unwrap_or_default(),
        r.header("webhook-timestamp").unwrap_or_default(),
        &r.body,
        r.header("webhook-signature").unwrap_or_default(),
    );
    (superleap, sw)
}

struct Setup {
    db: TestDb,
    client: tokio_postgres::Client,
    text: String,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn prepare(hint: &str, endpoints: &str, admin: &str) -> Setup {
    let db = fresh_db(hint).await;
    db.psql(LEADS).await;
    let rest = format!("{endpoints}\n{admin}\n[delivery.retry]\ninitial = \"100ms\"\n");
    let text = app::config_text(&db, LEADS_OBJECTS, &rest);
    let (dir, config) = app::write_config(&text);
    app::setup(&app::parse(&text)).await;
    let client = db.connect().await;
    Setup {
        db,
        client,
        text,
        config,
        _dir: dir,
    }
}

async fn wait_ready(base: &str) {
    wait_until(WAIT, "the admin API answers", || async {
        let r = http().get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
}

/// The API scenario: capture and the API in one process, dispatch in
/// another; a config endpoint `fixed` shows an event was handled.
struct Api {
    base: String,
    s: Setup,
    fixed: Receiver,
    first: Receiver,
    second: Receiver,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        call(&self.base, method, path, body).await
    }

    /// Inserts new leads until one reaches `rx` (a change reaches every
    /// process within its poll at the latest); returns its request.
    async fn delivered_to(&self, rx: &Receiver, what: &str) -> RecordedRequest {
        wait_until(WAIT, what, || async {
            let id = format!("l{}", rand_suffix());
            insert(&self.s.client, &id).await;
            // Captured and handled: the config endpoint got it.
            request_for(&self.fixed, &id).await;
            tokio::time::timeout(Duration::from_secs(3), request_for(rx, &id))
                .await
                .ok()
        })
        .await
    }

    async fn create(&self) -> String {
        let url = format!("{}one", self.first.url());
        let body = json!({"id": "subs", "url": url, "events": ["lead.*"]});
        let (status, created) = self
            .call("POST", "/api/endpoints", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let secret = created["secret"].as_str().expect("secret").to_string();
        assert!(secret.starts_with("whsec_"), "{created}");
        let (status, again) = self.call("POST", "/api/endpoints", Some(body)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{again}");
        let r = self
            .delivered_to(&self.first, "a delivery to the new endpoint")
            .await;
        assert_eq!(
            signed_by(&r, &secret),
            (true, true),
            "signed with the returned secret"
        );
        secret
    }

    async fn rotate(&self, old: &str) -> String {
        let body = json!({"keep_old": "1h"});
        let path = "/api/endpoints/subs/rotate-secret";
        let (status, rotated) = self.call("POST", path, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{rotated}");
        let new = rotated["secret"].as_str().expect("new secret").to_string();
        assert_ne!(old, new);
        assert!(
            rotated["endpoint"]["old_secret_until"].is_string(),
            "{rotated}"
        );
        wait_until(WAIT, "a delivery signed with both secrets", || async {
            let r = self.delivered_to(&self.first, "a delivery").await;
            let (new_sl, new_sw) = signed_by(&r, &new);
            (new_sl && new_sw && signed_by(&r, old).1).then_some(())
        })
        .await;
        new
    }

    async fn move_url(&self) {
        let body = json!({"url": format!("{}two", self.second.url())});
        let (status, patched) = self.call("PATCH", "/api/endpoints/subs", Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{patched}");
        self.delivered_to(&self.second, "deliveries at the new URL")
            .await;
    }

    async fn config_endpoints_are_read_only(&self) {
        for (method, path) in [
            ("PATCH", "/api/endpoints/fixed"),
            ("DELETE", "/api/endpoints/fixed"),
            ("POST", "/api/endpoints/fixed/rotate-secret"),
        ] {
            let body = (method != "DELETE").then(|| json!({}));
            let (status, answer) = self.call(method, path, body).await;
            assert_eq!(status, StatusCode::CONFLICT, "{method} {path}: {answer}");
            let message = answer["message"].as_str().unwrap_or_default();
            assert!(message.contains("config file"), "{answer}");
        }
    }

    /// Both kinds listed with their source; the answer's text.
    async fn list(&self) -> String {
        let (status, list) = self.call("GET", "/api/endpoints", None).await;
        assert_eq!(status, StatusCode::OK);
        let source = |id: &str| {
            let all = list.as_array().expect("a list");
            all.iter()
                .find(|e| e["id"] == id)
                .map(|e| e["source"].clone())
        };
        assert_eq!(source("subs"), Some(json!("api")), "{list}");
        assert_eq!(source("fixed"), Some(json!("config")), "{list}");
        list.to_string()
    }

    /// Whether the table's file on disk holds `needle`.
    async fn in_table_file(&self, needle: &str) -> bool {
        let r = self
            .s
            .client
            .query_one(
                "SELECT position(convert_to($1, 'UTF8') IN pg_read_binary_file(pg_relation_filepath('walhook.runtime_endpoints')))",
                &[&needle],
            )
            .await
            .expect("read the table's file");
        r.get::<_, i32>(0) > 0
    }

    /// Neither secret is in the table (its file on disk included) in
    /// clear; both are stored while the old one still signs.
    async fn secrets_sealed(&self, secrets: [&str; 2]) {
        let client = &self.s.client;
        client
            .batch_execute("CHECKPOINT")
            .await
            .expect("checkpoint");
        // The file is what was read: the URL is in clear.
        assert!(
            self.in_table_file(&format!("{}two", self.second.url()))
                .await
        );
        let rows: String = client
            .query_one(
                "SELECT coalesce(string_agg(t::text, ''), '') FROM walhook.runtime_endpoints t",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        for secret in secrets {
            let bare = secret.trim_start_matches("whsec_");
            assert!(
                !self.in_table_file(bare).await,
                "the table file holds a secret in clear"
            );
            assert!(!rows.contains(bare), "the table holds a secret in clear");
        }
    }

    /// Removed: events after it get no delivery to it.
    async fn remove(&self) {
        let (status, removed) = self.call("DELETE", "/api/endpoints/subs", None).await;
        assert_eq!(status, StatusCode::OK, "{removed}");
        let client = &self.s.client;
        wait_until(WAIT, "the removal reaches capture", || async {
            let id = format!("d{}", rand_suffix());
            let lsn = insert(client, &id).await;
            app::wait_slot_confirmed(client, &self.s.db.name, &lsn, WAIT).await;
            let n: i64 = client
                .query_one(
                    "SELECT count(*) FROM walhook.deliveries d JOIN walhook.events e ON e.seq = d.event_seq
                     WHERE d.endpoint_id = 'subs' AND e.record_key = $1",
                    &[&id],
                )
                .await
                .unwrap()
                .get(0);
            (n == 0).then_some(())
        })
        .await;
        let (status, _) = self.call("DELETE", "/api/endpoints/subs", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_endpoints_are_created_used_rotated_moved_and_removed_while_running() {
    let fixed = Receiver::start(Behaviour::AlwaysOk).await;
    let port = free_port();
    let cfg_ep = format!(
        "[[endpoints]]\nid = \"fixed\"\nurl = \"{}fixed\"\nsecret = \"fixed-secret\"\n",
        fixed.url()
    );
    let admin = format!("[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n");
    let api = Api {
        base: format!("http://127.0.0.1:{port}"),
        s: prepare("runtime_api", &cfg_ep, &admin).await,
        fixed,
        first: Receiver::start(Behaviour::AlwaysOk).await,
        second: Receiver::start(Behaviour::AlwaysOk).await,
    };
    let key = key();
    let env = [(KEY_ENV, key.as_str())];
    let config = &api.s.config;
    let mut capture = Daemon::spawn_env(config, &["--no-dispatch"], None, &env);
    let mut dispatch = Daemon::spawn_env(config, &["--no-capture", "--no-admin"], None, &env);
    wait_ready(&api.base).await;

    let secret1 = api.create().await;
    let secret2 = api.rotate(&secret1).await;
    api.move_url().await;
    api.config_endpoints_are_read_only().await;
    let listed = api.list().await;
    api.secrets_sealed([&secret1, &secret2]).await;
    api.remove().await;

    let logs = format!(
        "{}\n{}",
        capture.log_for(Duration::from_millis(200)),
        dispatch.log_for(Duration::from_millis(200))
    );
    assert!(logs.contains("runtime endpoint added"), "{logs}");
    for secret in [&secret1, &secret2] {
        let bare = secret.trim_start_matches("whsec_");
        assert!(!listed.contains(bare), "the endpoint list shows a secret");
        assert!(!logs.contains(bare), "a log holds a secret:\n{logs}");
    }
}

fn rand_suffix() -> u32 {
    rand::random::<u32>() % 1_000_000
}

/// `walhook endpoints <args>` with `env`: (ok, stdout, stderr).
fn cli(config: &std::path::Path, args: &[&str], key: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(app::bin());
    cmd.arg("endpoints").args(args).arg("--config").arg(config);
    cmd.env_remove("DATABASE_URL").env_remove(KEY_ENV);
    if let Some(k) = key {
        cmd.env(KEY_ENV, k);
    }
    let out = cmd.output().expect("run walhook");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `walhook endpoints <args> --json` with the key, which must succeed: its
/// JSON answer.
fn cli_json(config: &std::path::Path, args: &[&str], key: &str) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (ok, out, err) = cli(config, &args, Some(key));
    assert!(ok, "walhook endpoints {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// What the CLI refuses, each with a message saying why.
fn cli_refusals(config: &std::path::Path, key: &str, url: &str) {
    // No key: a clear error naming the variable.
    let (ok, _, err) = cli(config, &["add", "crm", "--url", url], None);
    assert!(!ok && err.contains(KEY_ENV), "{err}");
    // Config endpoints are read-only, naming the file.
    let (ok, _, err) = cli(config, &["remove", "sink"], Some(key));
    assert!(!ok, "{err}");
    assert!(
        err.contains("walhook.toml") && err.contains("config file"),
        "{err}"
    );
    // A URL the config file would refuse.
    let (ok, _, err) = cli(
        config,
        &["add", "crm", "--url", "http://example.com/x"],
        Some(key),
    );
    assert!(!ok && err.contains("loopback"), "{err}");
}

/// A lead inserted again and again until a delivery to `rx` is signed as
/// `pred` wants (a running process picks a change up within its poll).
async fn signed_delivery(
    client: &tokio_postgres::Client,
    rx: &Receiver,
    what: &str,
    pred: impl Fn(&RecordedRequest) -> bool,
) {
    wait_until(WAIT, what, || async {
        let id = format!("x{}", rand_suffix());
        insert(client, &id).await;
        let r = tokio::time::timeout(Duration::from_secs(3), request_for(rx, &id))
            .await
            .ok()?;
        pred(&r).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_runtime_endpoints_that_a_running_process_serves() {
    let rx = Receiver::start(Behaviour::AlwaysOk).await;
    let s = prepare("runtime_cli", "", "[admin]\nlisten = \"\"\n").await;
    let key = key();
    let cfg = walhook::config::Config::from_toml_str_with_env(&s.text, "test.toml", &|name| {
        (name == KEY_ENV).then(|| key.clone())
    })
    .expect("config");
    let run = InProcess::start(cfg, walhook::Roles::default());
    let config = s.config.as_path();
    let url = format!("{}hook", rx.url());
    cli_refusals(config, &key, &url);

    let add = ["add", "crm", "--url", &url, "--events", "lead.create"];
    let secret = cli_json(config, &add, &key)["secret"]
        .as_str()
        .unwrap()
        .to_string();
    signed_delivery(
        &s.client,
        &rx,
        "a delivery signed with the printed secret",
        |r| signed_by(r, &secret) == (true, true),
    )
    .await;

    let pinged = cli_json(config, &["ping", "crm"], &key);
    assert_eq!(pinged["ok"], json!(true), "{pinged}");
    let ping = wait_until(WAIT, "the ping arrives", || async {
        rx.requests()
            .into_iter()
            .find(|r| r.header("x-superleap-event") == Some("walhook.ping"))
    })
    .await;
    assert_eq!(signed_by(&ping, &secret), (true, true));

    let (ok, out, err) = cli(config, &["list"], Some(&key));
    assert!(ok, "{err}");
    assert!(out.contains("crm (api)"), "{out}");
    assert!(!out.contains(secret.trim_start_matches("whsec_")));
    let updated = cli_json(config, &["update", "crm", "--timeout", "5s"], &key);
    assert_eq!(updated["timeout_ms"], 5000);
    let toggled = cli_json(config, &["disable", "crm"], &key);
    assert_eq!(
        (toggled["enabled"].clone(), toggled["changed"].clone()),
        (json!(false), json!(true))
    );
    let toggled = cli_json(config, &["enable", "crm"], &key);
    assert_eq!(toggled["enabled"], json!(true));

    let rotated = cli_json(config, &["rotate-secret", "crm", "--keep-old", "0s"], &key);
    let secret2 = rotated["secret"].as_str().unwrap().to_string();
    assert!(rotated["endpoint"]["old_secret_until"].is_null());
    signed_delivery(
        &s.client,
        &rx,
        "deliveries signed by the new secret only",
        |r| signed_by(r, &secret2) == (true, true) && !signed_by(r, &secret).1,
    )
    .await;

    let (ok, out, err) = cli(config, &["remove", "crm"], Some(&key));
    assert!(ok && out.contains("removed"), "{out}{err}");
    let (ok, _, err) = cli(config, &["remove", "crm"], Some(&key));
    assert!(!ok && err.contains("no endpoint made at runtime"), "{err}");
    run.stop().await;
}
