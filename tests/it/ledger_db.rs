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

    let out = cli_ok(&path, &["setup"]);
    assert!(
        out.contains("ledger schema walhook in postgres@127.0.0.1:") && out.contains(&led.name),
        "{out}"
    );
    let sql = cli_ok(&path, &["setup", "--print-sql"]);
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
    let check = cli_ok(&path, &["check", "--json"]);
    let check = json(&check);
    let names: Vec<&str> = check["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"ledger database"), "{check}");
    assert!(check["ok"].as_bool().unwrap(), "{check}");

    let source = src.connect().await;
    let ledger = led.connect().await;
    assert!(!schema_exists(&source, "walhook").await);
    assert!(schema_exists(&ledger, "walhook").await);

    let run = InProcess::start(app::parse(&text), walhook::Roles::default());
    for i in 1..=3 {
        source
            .execute(
                "INSERT INTO leads VALUES ($1, 'Ada', $2)",
                &[&format!("l{i}"), &i],
            )
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
    let spilled: i64 = ledger
        .query_one(
            "SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = 'flaky' AND status = 'succeeded' AND attempts >= 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        spilled, 2,
        "two failed first attempts retried from the ledger"
    );
    let fast: i64 = ledger
        .query_one(
            "SELECT count(*) FROM walhook.delivered WHERE endpoint_id = 'ok'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(fast, 3);
    assert_eq!(ok.requests().len(), 3);
    assert!(
        !schema_exists(&source, "walhook").await,
        "the source holds no walhook schema"
    );
    let in_source: i64 = source
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'public')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        in_source, 0,
        "no relation of walhook's in the source database"
    );

    // The admin API reads the ledger database (and the slot from the source).
    let api = reqwest::get(format!("http://127.0.0.1:{admin_port}/api/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let api = json(&api);
    assert!(
        api["ledger_database"].as_str().unwrap().contains(&led.name),
        "{api}"
    );
    assert!(api["slot"]["exists"].as_bool().unwrap(), "{api}");
    assert_eq!(api["deliveries"]["succeeded"], 6, "{api}");
    run.stop().await;

    let status = json(&cli_ok(&path, &["status", "--json"]));
    assert!(
        status["ledger_database"]
            .as_str()
            .unwrap()
            .contains(&led.name),
        "{status}"
    );
    assert!(status["slot"]["exists"].as_bool().unwrap(), "{status}");
    assert_eq!(status["deliveries"]["succeeded"], 6, "{status}");
    assert!(
        status["ledger_size"]["total_bytes"].as_i64().unwrap() > 0,
        "{status}"
    );
    let human = cli_ok(&path, &["status"]);
    assert!(human.contains("ledger     schema walhook in "), "{human}");
    let list = json(&cli_ok(&path, &["deliveries", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 6, "{list}");
    let flaky_list = json(&cli_ok(
        &path,
        &["deliveries", "list", "--endpoint", "flaky", "--json"],
    ));
    assert_eq!(flaky_list.as_array().unwrap().len(), 3, "{flaky_list}");
    let endpoints = cli_ok(&path, &["endpoints", "list"]);
    assert!(
        endpoints.contains("flaky") && endpoints.contains("ok"),
        "{endpoints}"
    );

    let out = cli_ok(&path, &["teardown", "--yes", "--drop-ledger"]);
    assert!(
        out.contains("replication slot") && out.contains("ledger schema walhook dropped"),
        "{out}"
    );
    let slots: i64 = source
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&src.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
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
