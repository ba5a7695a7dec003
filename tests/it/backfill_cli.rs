//! `walhook init` against a real database, and backfills asked for through
//! the command line and the admin API while `walhook run` runs: rows arrive
//! as `slug.backfill`, progress shows in `backfill list` and `status`, a slow
//! one can be cancelled, and a bad `--where` fails at once with the server's
//! message.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::admin::cli;
use crate::common::app::{self, CRM_TABLES, InProcess};
use crate::common::{Behaviour, Receiver, TestDb, free_port, fresh_db, wait_until};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0);
INSERT INTO items SELECT g, 0 FROM generate_series(1, 300) g;";
const ITEMS_OBJECTS: &str = "[[objects]]\ntable = \"items\"\nslug = \"item\"\n";
const TOKEN: &str = "bf-admin-token";

/// `walhook init` with `DATABASE_URL` set to `url` (the helper clears it).
async fn init_with_env(config: &Path, url: &str) -> (bool, String, String) {
    let (config, url) = (config.to_path_buf(), url.to_string());
    tokio::task::spawn_blocking(move || {
        let out = Command::new(app::bin())
            .args(["init", "--config"])
            .arg(&config)
            .env("DATABASE_URL", url)
            .output()
            .expect("run walhook init");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// The secret in init's `export WALHOOK_SECRET='...'` line.
fn printed_secret(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.contains("export WALHOOK_SECRET="))
        .unwrap_or_else(|| panic!("no export line:\n{stdout}"));
    line.split('\'').nth(1).unwrap().to_string()
}

fn load_with(text: &str, url: &str, secret: &str) -> walhook::config::Config {
    let env = |name: &str| match name {
        "WALHOOK_SECRET" => Some(secret.to_string()),
        "DATABASE_URL" => Some(url.to_string()),
        _ => None,
    };
    walhook::config::Config::from_toml_str_with_env(text, "walhook.toml", &env)
        .unwrap_or_else(|e| panic!("the written config does not load: {e}\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_a_config_of_the_databases_tables_that_loads() {
    let db = fresh_db("init").await;
    db.psql(CRM_TABLES).await;
    db.psql("CREATE TABLE audit_log (at timestamptz, what text)")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");

    // Without a config, a command says so once and points to init.
    for command in [
        &["status"][..],
        &["check", "--json"],
        &["run"],
        &["backfill", "list"],
    ] {
        let (ok, _, err) = cli(&path, command).await;
        assert!(!ok, "{command:?}");
        assert!(err.contains("walhook init"), "{command:?}: {err}");
        assert_eq!(err.matches("walhook.toml").count(), 1, "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    let (ok, out, err) = cli(&path, &["init", "--database-url", &db.url]).await;
    assert!(ok, "{out}{err}");
    let text = std::fs::read_to_string(&path).unwrap();
    let secret = printed_secret(&out);
    assert!(secret.starts_with("whsec_"), "{out}");
    assert_eq!(
        out.matches(&secret).count(),
        1,
        "the secret is shown once:\n{out}"
    );
    assert!(!text.contains(&secret), "the secret is not in the file");
    for next in ["walhook setup", "walhook check", "walhook run"] {
        assert!(out.contains(next), "{out}");
    }
    // Every table with a primary key, one mapped and the others commented;
    // not the one without a key.
    for table in [
        "crm.students",
        "public.leads",
        "public.opportunities",
        "public.users",
    ] {
        assert!(
            text.contains(&format!("table = \"{table}\"")),
            "{table}:\n{text}"
        );
    }
    assert!(text.contains("# slug = \"opportunity\""), "{text}");
    assert!(!text.contains("audit_log"), "{text}");
    let cfg = load_with(&text, "unused", &secret);
    assert_eq!(cfg.objects.len(), 1);
    assert_eq!(cfg.objects[0].slug, "student");
    assert_eq!(cfg.endpoints[0].id, "receiver");
    assert_eq!(cfg.source.url.expose(), db.url);

    // An existing file is kept, unless --force.
    let (ok, _, err) = cli(&path, &["init", "--database-url", &db.url]).await;
    assert!(!ok);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    // From DATABASE_URL, the file reads the URL from there too.
    std::fs::remove_file(&path).unwrap();
    let (ok, out, err) = init_with_env(&path, &db.url).await;
    assert!(ok, "{out}{err}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("url_env = \"DATABASE_URL\""), "{text}");
    let cfg = load_with(&text, &db.url, &printed_secret(&out));
    assert_eq!(cfg.source.url.expose(), db.url);

    // A password given on the command line stays out of the file.
    let with_password = db.url.replacen("postgres@", "postgres:pw-4c1e9a@", 1);
    let (ok, out, err) = cli(
        &path,
        &["init", "--force", "--database-url", &with_password],
    )
    .await;
    assert!(ok, "{out}{err}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("pw-4c1e9a") && !out.contains("pw-4c1e9a"),
        "{out}\n{text}"
    );
    assert!(
        text.contains("url_env = \"DATABASE_URL\"") && out.contains("password"),
        "{out}"
    );

    // Without a database: no tables, said so, and the file still loads.
    let (ok, out, err) = cli(&path, &["init", "--force"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("no tables are listed"), "{out}");
    let text = std::fs::read_to_string(&path).unwrap();
    load_with(&text, &db.url, &printed_secret(&out));
}

/// A config for `db` with endpoint `crm` at `recv` and, with `admin`, the
/// admin API on `admin` behind [`TOKEN`].
fn items_config(db: &TestDb, recv: &Receiver, admin: Option<u16>) -> String {
    let admin = match admin {
        Some(port) => format!("[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n"),
        None => "[admin]\nlisten = \"\"\n".to_string(),
    };
    app::config_text(
        db,
        ITEMS_OBJECTS,
        &format!(
            "[[endpoints]]\nid = \"crm\"\nurl = \"{}\"\nsecret = \"s\"\ntimeout = \"5s\"\n\n{admin}",
            recv.url()
        ),
    )
}

async fn list(path: &Path) -> Vec<Value> {
    let (ok, out, err) = cli(path, &["backfill", "list", "--json"]).await;
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

async fn wait_state(path: &Path, id: i64, state: &str) -> Value {
    wait_until(
        Duration::from_secs(90),
        &format!("backfill {id} {state}"),
        || async {
            list(path)
                .await
                .into_iter()
                .find(|b| b["id"] == id && b["state"] == state)
        },
    )
    .await
}

fn backfilled(recv: &Receiver, event: &str) -> Vec<i64> {
    recv.requests()
        .iter()
        .filter(|r| r.header("x-superleap-event") == Some(event))
        .map(|r| r.json()["after"]["id"].as_i64().unwrap())
        .collect()
}

/// The id in "backfill N queued".
fn queued_id(out: &str) -> i64 {
    out.strip_prefix("backfill ")
        .and_then(|r| r.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no backfill id in: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_through_the_cli_arrive_show_progress_and_cancel() {
    let recv = Receiver::start(Behaviour::AlwaysOk).await;
    let db = fresh_db("backfill_cli").await;
    db.psql(ITEMS).await;
    let text = items_config(&db, &recv, None);
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let (_dir, path) = app::write_config(&text);

    // Mistakes fail at once, with what to fix.
    let (ok, _, err) = cli(&path, &["backfill", "item", "--where", "nope > 1"]).await;
    assert!(!ok);
    assert!(
        err.contains("--where") && err.contains("column \"nope\" does not exist"),
        "{err}"
    );
    let (ok, _, err) = cli(&path, &["backfill", "deal"]).await;
    assert!(!ok && err.contains("unknown object `deal`"), "{err}");
    let (ok, _, err) = cli(&path, &["backfill", "item", "--endpoint", "nope"]).await;
    assert!(!ok && err.contains("unknown endpoint `nope`"), "{err}");

    // Queued before any process reads the slot: it says so, and waits.
    let (ok, out, err) = cli(&path, &["backfill", "item", "--where", "id <= 200"]).await;
    assert!(ok, "{err}");
    assert!(
        err.contains("no process is reading the replication slot"),
        "{err}"
    );
    let first = queued_id(&out);
    assert!(out.contains("as item.backfill"), "{out}");
    let run = InProcess::run(cfg);
    let done = wait_state(&path, first, "done").await;
    assert_eq!(done["rows_sent"], 200);
    assert!(
        done["started_at"].is_string() && done["finished_at"].is_string(),
        "{done}"
    );
    let mut ids = backfilled(&recv, "item.backfill");
    ids.sort();
    assert_eq!(ids, (1..=200).collect::<Vec<i64>>());
    let (ok, out, _) = cli(&path, &["status"]).await;
    assert!(
        ok && out.contains("BACKFILL") && out.contains("item.backfill"),
        "{out}"
    );
    let (_, out, _) = cli(&path, &["status", "--json"]).await;
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["backfills"][0]["state"], "done", "{out}");

    // A slow one (2 rows/s) is cancelled after its first chunk.
    let (ok, out, err) = cli(&path, &["backfill", "item", "--rate", "2"]).await;
    assert!(ok, "{err}");
    let slow = queued_id(&out);
    wait_until(
        Duration::from_secs(60),
        "the slow backfill's first rows",
        || async {
            let b = list(&path).await.into_iter().find(|b| b["id"] == slow)?;
            (b["rows_sent"].as_i64()? >= 2).then_some(())
        },
    )
    .await;
    let (ok, out, err) = cli(&path, &["backfill", "cancel", &slow.to_string()]).await;
    assert!(ok && out.contains("cancelled"), "{out}{err}");
    let (ok, _, err) = cli(&path, &["backfill", "cancel", &slow.to_string()]).await;
    assert!(!ok && err.contains("already ended (cancelled)"), "{err}");
    // Backfills run one after another: once the next one is done, the
    // cancelled one has stopped.
    let (ok, out, err) = cli(
        &path,
        &[
            "backfill",
            "item",
            "--where",
            "id = 300",
            "--as",
            "create",
            "--endpoint",
            "crm",
        ],
    )
    .await;
    assert!(ok, "{err}");
    wait_state(&path, queued_id(&out), "done").await;
    let cancelled = list(&path)
        .await
        .into_iter()
        .find(|b| b["id"] == slow)
        .unwrap();
    assert_eq!(cancelled["state"], "cancelled");
    let slow_rows = backfilled(&recv, "item.backfill").len() - 200;
    assert!(
        (2..100).contains(&slow_rows),
        "{slow_rows} rows of the cancelled backfill"
    );
    assert_eq!(backfilled(&recv, "item.create"), vec![300]);
    let (ok, out, _) = cli(&path, &["backfill", "list"]).await;
    assert!(
        ok && out.contains("cancelled") && out.contains("item.create"),
        "{out}"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_asks_for_lists_and_cancels_backfills() {
    let recv = Receiver::start(Behaviour::AlwaysOk).await;
    let db = fresh_db("backfill_api").await;
    db.psql(ITEMS).await;
    let port = free_port();
    let text = items_config(&db, &recv, Some(port));
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let run = InProcess::start(
        cfg,
        walhook::Roles {
            capture: true,
            dispatch: true,
            admin: true,
        },
    );
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    wait_until(Duration::from_secs(30), "the admin API", || async {
        http.get(url("/healthz")).send().await.ok().map(|_| ())
    })
    .await;
    let post = |p: &str, body: Value| {
        http.post(url(p))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };

    let r = http.get(url("/api/backfills")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = post(
        "/api/backfills",
        serde_json::json!({"slug": "item", "where": "nope > 1"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("column \"nope\" does not exist"),
        "{body}"
    );
    let r = post(
        "/api/backfills",
        serde_json::json!({"slug": "item", "rate": 1}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let queued: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(queued["event"], "item.backfill");
    let id = queued["backfill"]["id"].as_i64().unwrap();
    let listed: Value = http
        .get(url("/api/backfills"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(listed[0]["id"], id, "{listed}");
    let cancel = format!("/api/backfills/{id}/cancel");
    let r = post(&cancel, Value::Null).await.unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(b["state"], "cancelled");
    assert_eq!(post(&cancel, Value::Null).await.unwrap().status(), 409);
    let r = post("/api/backfills/999/cancel", Value::Null)
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    run.stop().await;
}
