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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_endpoints_are_created_used_rotated_moved_and_removed_while_running() {
    let fixed = Receiver::start(Behaviour::AlwaysOk).await;
    let first = Receiver::start(Behaviour::AlwaysOk).await;
    let second = Receiver::start(Behaviour::AlwaysOk).await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let cfg_ep = format!(
        "[[endpoints]]\nid = \"fixed\"\nurl = \"{}fixed\"\nsecret = \"fixed-secret\"\n",
        fixed.url()
    );
    let admin = format!("[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n");
    let s = prepare("runtime_api", &cfg_ep, &admin).await;
    let env = [(KEY_ENV, key())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Capture and the API in one process, dispatch in another.
    let mut capture = Daemon::spawn_env(&s.config, &["--no-dispatch"], None, &env);
    let mut dispatch = Daemon::spawn_env(&s.config, &["--no-capture", "--no-admin"], None, &env);
    wait_ready(&base).await;

    // Created: the secret is in this answer only.
    let body = json!({"id": "subs", "url": format!("{}one", first.url()), "events": ["lead.*"]});
    let (status, created) = call(&base, "POST", "/api/endpoints", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret1 = created["secret"].as_str().expect("secret").to_string();
    assert!(secret1.starts_with("whsec_"), "{created}");
    let (_, again) = call(
        &base,
        "POST",
        "/api/endpoints",
        Some(json!({"id": "subs", "url": first.url()})),
    )
    .await;
    assert!(
        again["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already exists"),
        "{again}"
    );

    insert(&s.client, "a").await;
    let r = request_for(&first, "a").await;
    assert_eq!(
        signed_by(&r, &secret1),
        (true, true),
        "signed with the returned secret"
    );

    // Rotated: both secrets sign during the keep-old period.
    let (status, rotated) = call(
        &base,
        "POST",
        "/api/endpoints/subs/rotate-secret",
        Some(json!({"keep_old": "1h"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let secret2 = rotated["secret"].as_str().expect("new secret").to_string();
    assert_ne!(secret1, secret2);
    assert!(
        rotated["endpoint"]["old_secret_until"].is_string(),
        "{rotated}"
    );
    // Processes pick the change up within their poll at the latest.
    wait_until(WAIT, "a delivery signed with both secrets", || async {
        let id = format!("b{}", rand_suffix());
        insert(&s.client, &id).await;
        let r = request_for(&first, &id).await;
        let (new_sl, new_sw) = signed_by(&r, &secret2);
        let (_, old_sw) = signed_by(&r, &secret1);
        (new_sl && new_sw && old_sw).then_some(())
    })
    .await;

    // Moved: the next deliveries go to the new URL.
    let (status, patched) = call(
        &base,
        "PATCH",
        "/api/endpoints/subs",
        Some(json!({"url": format!("{}two", second.url())})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    wait_until(WAIT, "deliveries at the new URL", || async {
        let id = format!("c{}", rand_suffix());
        insert(&s.client, &id).await;
        // Captured and handled (the config endpoint got it).
        request_for(&fixed, &id).await;
        tokio::time::timeout(Duration::from_secs(3), request_for(&second, &id))
            .await
            .ok()
    })
    .await;

    // Config endpoints are read-only here.
    for (method, path) in [
        ("PATCH", "/api/endpoints/fixed"),
        ("DELETE", "/api/endpoints/fixed"),
        ("POST", "/api/endpoints/fixed/rotate-secret"),
    ] {
        let body = (method != "DELETE").then(|| json!({}));
        let (status, answer) = call(&base, method, path, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{method} {path}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains("config file"),
            "{answer}"
        );
    }

    // Listed with their source, never with a secret.
    let (status, list) = call(&base, "GET", "/api/endpoints", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = list.to_string();
    let source = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["source"].clone())
    };
    assert_eq!(source("subs"), Some(json!("api")), "{text}");
    assert_eq!(source("fixed"), Some(json!("config")), "{text}");

    // Secrets: not in the list's answer nor in the table (its file on disk
    // included) in clear; both are stored while the old one still signs.
    s.client
        .batch_execute("CHECKPOINT")
        .await
        .expect("checkpoint");
    let in_file = |needle: String| {
        let client = &s.client;
        async move {
            let r = client
                .query_one(
                    "SELECT position(convert_to($1, 'UTF8') IN pg_read_binary_file(pg_relation_filepath('walhook.runtime_endpoints')))",
                    &[&needle],
                )
                .await
                .expect("read the table's file");
            r.get::<_, i32>(0) > 0
        }
    };
    // The file is what was read (the endpoint's id and URL are in clear).
    assert!(in_file(format!("{}two", second.url())).await);
    for secret in [&secret1, &secret2] {
        let bare = secret.trim_start_matches("whsec_");
        assert!(!text.contains(bare), "the endpoint list shows a secret");
        assert!(
            !in_file(bare.to_string()).await,
            "the table file holds a secret in clear"
        );
        let row: String = s
            .client
            .query_one(
                "SELECT coalesce(string_agg(t::text, ''), '') FROM walhook.runtime_endpoints t",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!row.contains(bare));
    }
    // Removed: no deliveries for events after it.
    let (status, removed) = call(&base, "DELETE", "/api/endpoints/subs", None).await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    let late = wait_until(WAIT, "the removal reaches capture", || async {
        let id = format!("d{}", rand_suffix());
        let lsn = insert(&s.client, &id).await;
        app::wait_slot_confirmed(&s.client, &s.db.name, &lsn, WAIT).await;
        let n: i64 = s
            .client
            .query_one("SELECT count(*) FROM walhook.deliveries d JOIN walhook.events e ON e.seq = d.event_seq WHERE d.endpoint_id = 'subs' AND e.record_key = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(id)
    })
    .await;
    assert!(
        !String::from_utf8_lossy(
            &second
                .requests()
                .iter()
                .flat_map(|r| r.body.to_vec())
                .collect::<Vec<u8>>()
        )
        .contains(&format!("\"{late}\"")),
        "a removed endpoint got an event"
    );

    // Nor in either process's log.
    let logs = format!(
        "{}\n{}",
        capture.log_for(Duration::from_millis(200)),
        dispatch.log_for(Duration::from_millis(200))
    );
    for secret in [&secret1, &secret2] {
        assert!(
            !logs.contains(secret.trim_start_matches("whsec_")),
            "a log holds a secret:\n{logs}"
        );
    }
    assert!(logs.contains("runtime endpoint added"), "{logs}");
    drop(s);
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
    let cfg_path = s.config.clone();

    // No key: a clear error naming the variable.
    let url = format!("{}hook", rx.url());
    let (ok, _, err) = cli(&cfg_path, &["add", "crm", "--url", &url], None);
    assert!(!ok);
    assert!(err.contains(KEY_ENV), "{err}");
    // Config endpoints are refused, naming the file.
    let (ok, _, err) = cli(&cfg_path, &["remove", "sink"], Some(&key));
    assert!(!ok);
    assert!(
        err.contains("walhook.toml") && err.contains("config file"),
        "{err}"
    );
    // Bad input is refused like in the config file.
    let (ok, _, err) = cli(
        &cfg_path,
        &["add", "crm", "--url", "http://example.com/x"],
        Some(&key),
    );
    assert!(!ok && err.contains("loopback"), "{err}");

    let (ok, out, err) = cli(
        &cfg_path,
        &[
            "add",
            "crm",
            "--url",
            &url,
            "--events",
            "lead.create",
            "--json",
        ],
        Some(&key),
    );
    assert!(ok, "{err}");
    let added: Value = serde_json::from_str(&out).unwrap();
    let secret = added["secret"].as_str().unwrap().to_string();

    insert(&s.client, "x1").await;
    let r = request_for(&rx, "x1").await;
    assert_eq!(signed_by(&r, &secret), (true, true));

    let (ok, out, err) = cli(&cfg_path, &["list"], Some(&key));
    assert!(ok, "{err}");
    assert!(out.contains("crm (api)"), "{out}");
    assert!(!out.contains(secret.trim_start_matches("whsec_")));

    let (ok, out, err) = cli(
        &cfg_path,
        &["update", "crm", "--timeout", "5s", "--json"],
        Some(&key),
    );
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["timeout_ms"],
        5000
    );

    let (ok, out, err) = cli(
        &cfg_path,
        &["rotate-secret", "crm", "--keep-old", "0s", "--json"],
        Some(&key),
    );
    assert!(ok, "{err}");
    let rotated: Value = serde_json::from_str(&out).unwrap();
    let secret2 = rotated["secret"].as_str().unwrap().to_string();
    assert!(rotated["endpoint"]["old_secret_until"].is_null());
    wait_until(WAIT, "deliveries signed by the new secret only", || async {
        let id = format!("x{}", rand_suffix());
        insert(&s.client, &id).await;
        let r = request_for(&rx, &id).await;
        (signed_by(&r, &secret2) == (true, true) && signed_by(&r, &secret).1 == false).then_some(())
    })
    .await;

    let (ok, out, err) = cli(&cfg_path, &["remove", "crm"], Some(&key));
    assert!(ok, "{err}");
    assert!(out.contains("removed"), "{out}");
    let (ok, _, err) = cli(&cfg_path, &["remove", "crm"], Some(&key));
    assert!(!ok && err.contains("no endpoint made at runtime"), "{err}");
    run.stop().await;
}
