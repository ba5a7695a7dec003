//! The ledger in a database of its own (`[ledger] url`): setup, check, the
//! whole capture -> delivery path with real receivers, status, the delivery
//! history, the admin API and teardown all follow it, and the source
//! database holds no walhook table at all.

use std::time::Duration;

use crate::common::app::{self, InProcess, LEADS, LEADS_OBJECTS};
use crate::common::{Behaviour, Receiver, TestDb, free_port, fresh_db, wait_until};

/// Retries within a second, so the failing endpoint recovers quickly.
const FAST_RETRY: &str = r#"
[delivery]
lease = "10s"

[delivery.retry]
initial = "100ms"
multiplier = 2.0
max_interval = "300ms"
backoff_window = "30s"
then_every = "10s"
disable_after = "60s"
"#;

fn endpoint(id: &str, url: &str) -> String {
    format!(
        "[[endpoints]]\nid = \"{id}\"\nurl = \"{url}hooks\"\nsecret = \"secret-{id}\"\ntimeout = \"2s\"\n"
    )
}

/// A config whose source is `src` and whose ledger is in `ledger`.
fn config(src: &TestDb, ledger: &str, rest: &str) -> String {
    app::config_text(
        src,
        LEADS_OBJECTS,
        &format!("[ledger]\nurl = \"{ledger}\"\n\n{rest}"),
    )
}

async fn schema_exists(client: &tokio_postgres::Client, schema: &str) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0)
}

/// Resolved deliveries of `endpoint` (ledger or fast path) by status.
async fn count(ledger: &tokio_postgres::Client, endpoint: &str, status: &str) -> i64 {
    ledger
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE endpoint_id = $1 AND status = $2",
                app::ALL_DELIVERIES
            ),
            &[&endpoint, &status],
        )
        .await
        .unwrap()
        .get(0)
}

fn cli_ok(path: &std::path::Path, args: &[&str]) -> String {
    let (ok, out, err) = app::run_cli(path, args);
    assert!(ok, "walhook {args:?} failed:\n{out}\n{err}");
    out
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn scalar(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// `setup` makes the ledger in `led`, `--print-sql` says which statements
/// go where, and `check` passes.
fn set_up(path: &std::path::Path, led: &TestDb) {
    let out = cli_ok(path, &["setup"]);
    assert!(
        out.contains("ledger schema walhook in postgres@127.0.0.1:") && out.contains(&led.name),
        "{out}"
    );
    let sql = cli_ok(path, &["setup", "--print-sql"]);
    let (ledger_part, source_part) = sql
        .split_once("-- In the source database")
        .unwrap_or_else(|| panic!("no source section:\n{sql}"));
    assert!(ledger_part.contains("-- In the ledger database") && ledger_part.contains(&led.name));
    assert!(
        ledger_part.contains("CREATE TABLE IF NOT EXISTS \"walhook\".events"),
        "{sql}"
    );
    assert!(!source_part.contains("\"walhook\"."), "{sql}");
    assert!(source_part.contains("CREATE PUBLICATION"), "{sql}");
    let check = json(&cli_ok(path, &["check", "--json"]));
    let names: Vec<&str> = check["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"ledger database"), "{check}");
    assert!(check["ok"].as_bool().unwrap(), "{check}");
}

/// The source database holds no schema and no relation of walhook's.
async fn assert_source_untouched(source: &tokio_postgres::Client) {
    assert!(!schema_exists(source, "walhook").await);
    let relations = scalar(
        source,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'public')",
    )
    .await;
    assert_eq!(relations, 0, "no relation of walhook's in the source");
}

/// `status` (JSON and human), `deliveries list` and `endpoints list` read
/// the ledger database, the slot from the source.
fn reports_follow_the_ledger(path: &std::path::Path, led: &TestDb) {
    let status = json(&cli_ok(path, &["status", "--json"]));
    let ledger_db = status["ledger_database"].as_str().unwrap();
    assert!(ledger_db.contains(&led.name), "{status}");
    assert!(status["slot"]["exists"].as_bool().unwrap(), "{status}");
    assert_eq!(status["deliveries"]["succeeded"], 6, "{status}");
    let bytes = status["ledger_size"]["total_bytes"].as_i64().unwrap();
    assert!(bytes > 0, "{status}");
    let human = cli_ok(path, &["status"]);
    assert!(human.contains("ledger     schema walhook in "), "{human}");
    let list = json(&cli_ok(path, &["deliveries", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 6, "{list}");
    let args = ["deliveries", "list", "--endpoint", "flaky", "--json"];
    let flaky = json(&cli_ok(path, &args));
    assert_eq!(flaky.as_array().unwrap().len(), 3, "{flaky}");
    let endpoints = cli_ok(path, &["endpoints", "list"]);
    assert!(endpoints.contains("flaky"), "{endpoints}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_and_delivery_with_the_ledger_in_another_database() {
    let src = fresh_db("ldb_src").await;
    let led = fresh_db("ldb_ledger").await;
    src.psql(LEADS).await;
    let ok = Receiver::start(Behaviour::AlwaysOk).await;
    let flaky = Receiver::start(Behaviour::FailThenOk {
        failures: 2,
        status: 500,
    })
    .await;
    let admin_port = free_port();
    let rest = format!(
        "{}{}{FAST_RETRY}\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n",
        endpoint("ok", ok.url()),
        endpoint("flaky", flaky.url())
    );
    let text = config(&src, &led.url, &rest);
    let (_dir, path) = app::write_config(&text);
    set_up(&path, &led);
    let source = src.connect().await;
    let ledger = led.connect().await;
    assert!(schema_exists(&ledger, "walhook").await);
    assert_source_untouched(&source).await;

    let run = InProcess::start(app::parse(&text), walhook::Roles::default());
    for i in 1..=3 {
        let key = format!("l{i}");
        source
            .execute("INSERT INTO leads VALUES ($1, 'Ada', $2)", &[&key, &i])
            .await
            .unwrap();
    }
    wait_until(
        Duration::from_secs(30),
        "every delivery succeeded",
        || async {
            let done = count(&ledger, "ok", "succeeded").await == 3
                && count(&ledger, "flaky", "succeeded").await == 3;
            done.then_some(())
        },
    )
    .await;
    // `ok` took the fast path (a narrow `delivered` row each); `flaky`'s
    // failed first attempts went to the retry ledger and recovered there.
    let retried = "SELECT count(*) FROM walhook.deliveries
                   WHERE endpoint_id = 'flaky' AND status = 'succeeded' AND attempts >= 2";
    assert_eq!(scalar(&ledger, retried).await, 2);
    let fast = "SELECT count(*) FROM walhook.delivered WHERE endpoint_id = 'ok'";
    assert_eq!(scalar(&ledger, fast).await, 3);
    assert_eq!(ok.requests().len(), 3);
    assert_source_untouched(&source).await;

    // The admin API reads the ledger database (and the slot from the source).
    let api = reqwest::get(format!("http://127.0.0.1:{admin_port}/api/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let api = json(&api);
    let ledger_db = api["ledger_database"].as_str().unwrap();
    assert!(ledger_db.contains(&led.name), "{api}");
    assert!(api["slot"]["exists"].as_bool().unwrap(), "{api}");
    assert_eq!(api["deliveries"]["succeeded"], 6, "{api}");
    run.stop().await;
    reports_follow_the_ledger(&path, &led);
    // Pruning works on the ledger database, with the slot's position read
    // from the source (the spilled events are behind it, so they go too).
    let pruned = json(&cli_ok(&path, &["prune", "--older-than", "1ms", "--json"]));
    assert_eq!(pruned["events_considered"], true, "{pruned}");
    let want = serde_json::json!({
        "delivered": 4,
        "deliveries_succeeded": 2,
        "deliveries_disabled": 0,
        "attempts": 4,
        "events": 2,
    });
    assert_eq!(pruned["rows"], want, "{pruned}");

    let out = cli_ok(&path, &["teardown", "--yes", "--drop-ledger"]);
    assert!(out.contains("ledger schema walhook dropped"), "{out}");
    let slot = format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
        src.name
    );
    assert_eq!(scalar(&source, &slot).await, 0);
    assert!(!schema_exists(&ledger, "walhook").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_looks_at_the_ledger_database() {
    let src = fresh_db("ldb_check_src").await;
    let led = fresh_db("ldb_check_ledger").await;
    src.psql(LEADS).await;

    // Not set up: the ledger database answers but holds no ledger.
    let (_d, path) = app::write_config(&config(&src, &led.url, ""));
    let (ok, out, _) = app::run_cli(&path, &["check"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("ledger database") && out.contains(&led.name),
        "{out}"
    );
    assert!(out.contains("schema walhook is not set up"), "{out}");

    // Set up: every check passes, and a ledger schema left in the source
    // (from before the ledger moved) is pointed out.
    cli_ok(&path, &["setup"]);
    let out = cli_ok(&path, &["check"]);
    assert!(out.contains("holds no walhook schema"), "{out}");
    src.psql("CREATE SCHEMA walhook").await;
    let out = cli_ok(&path, &["check"]);
    assert!(out.contains("also has a schema walhook"), "{out}");

    // The ledger database cannot be reached: named as such, with its keys.
    let nowhere = format!("postgres://postgres@127.0.0.1:{}/nope", free_port());
    let (_d, path) = app::write_config(&config(&src, &nowhere, ""));
    let (ok, out, _) = app::run_cli(&path, &["check"]);
    assert!(!ok, "{out}");
    assert!(out.contains("ledger.url"), "{out}");
    let (ok, _, err) = app::run_cli(&path, &["deliveries", "list"]);
    assert!(!ok);
    assert!(err.contains("cannot reach the ledger database"), "{err}");
}
