//! Retention: old succeeded history (fast-path `delivered` rows and ledger
//! deliveries with their attempts) and unreferenced events go; recent
//! history, open deliveries and disabled ones younger than
//! `retention_failed` stay. By hand (`walhook prune`, `--dry-run`,
//! `--older-than`) and inside `walhook run`, one process at a time.

use std::time::Duration;

use walhook::ledger::Ledger;

use crate::common::admin::FAST_RETRY;
use crate::common::app::{self, InProcess, LEADS, LEADS_OBJECTS};
use crate::common::{Behaviour, Receiver, fresh_db, wait_until};

fn endpoint(id: &str, url: &str, events: &str) -> String {
    format!(
        "[[endpoints]]\nid = \"{id}\"\nurl = \"{url}hooks\"\nsecret = \"secret-{id}\"\ntimeout = \"2s\"\nevents = {events}\n"
    )
}

async fn scalar(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Rows of every table retention touches, in a fixed order.
async fn table_counts(client: &tokio_postgres::Client) -> Vec<i64> {
    let mut out = Vec::new();
    for t in ["delivered", "deliveries", "attempts", "events"] {
        out.push(scalar(client, &format!("SELECT count(*) FROM walhook.{t}")).await);
    }
    out
}

async fn wait_count(client: &tokio_postgres::Client, sql: &str, n: i64, timeout: Duration) {
    wait_until(timeout, &format!("{sql} = {n}"), || async {
        (scalar(client, sql).await == n).then_some(())
    })
    .await;
}

fn cli_json(path: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = app::run_cli(path, args);
    assert!(ok, "walhook {args:?} failed:\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Resolved deliveries (ledger or fast path) of `ep` in state `st`.
fn by(ep: &str, st: &str) -> String {
    format!(
        "SELECT count(*) FROM {} WHERE endpoint_id = '{ep}' AND status = '{st}'",
        app::ALL_DELIVERIES
    )
}

/// A set-up database, its config file, and the receivers it delivers to.
struct Scenario {
    client: tokio_postgres::Client,
    cfg: walhook::config::Config,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _receivers: Vec<Receiver>,
}

/// Four endpoints: `ok` (creates, answers 200: the fast path), `flaky`
/// (updates, fails once: a ledger delivery that succeeds), `bad` (creates,
/// always 500: disabled after 2 s) and `down` (creates, disabled by hand:
/// its deliveries stay pending). `ledger` goes into `[ledger]`.
async fn scenario(hint: &str, ledger: &str) -> Scenario {
    let db = fresh_db(hint).await;
    db.psql(LEADS).await;
    let ok = Receiver::start(Behaviour::AlwaysOk).await;
    let flaky = Receiver::start(Behaviour::FailThenOk {
        failures: 1,
        status: 500,
    })
    .await;
    let bad = Receiver::start(Behaviour::FailThenOk {
        failures: usize::MAX,
        status: 500,
    })
    .await;
    let rest = format!(
        "{}{}{}{}{FAST_RETRY}\n[ledger]\n{ledger}\n\n[admin]\nlisten = \"\"\n",
        endpoint("ok", ok.url(), "[\"lead.create\"]"),
        endpoint("flaky", flaky.url(), "[\"lead.update\"]"),
        endpoint("bad", bad.url(), "[\"lead.create\"]"),
        endpoint("down", "http://127.0.0.1:9/", "[\"lead.create\"]"),
    );
    let text = app::config_text(&db, LEADS_OBJECTS, &rest);
    let (dir, path) = app::write_config(&text);
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let (done, _, err) = app::run_cli(&path, &["endpoints", "disable", "down"]);
    assert!(done, "{err}");
    Scenario {
        client: db.connect().await,
        cfg,
        path,
        _dir: dir,
        _receivers: vec![ok, flaky, bad],
    }
}

async fn insert_leads(client: &tokio_postgres::Client, keys: &[&str]) {
    for key in keys {
        client
            .execute("INSERT INTO leads VALUES ($1, 'Ada', 1)", &[key])
            .await
            .unwrap();
    }
}

/// Ages the history: two of `ok`'s fast-path rows and `flaky`'s ledger
/// delivery past the retention (7d), one of `bad`'s disabled deliveries past
/// `retention_failed` (30d) and one not, and the pending deliveries older
/// than both (open: they stay whatever their age). Returns the attempts of
/// the deliveries that are now prunable.
async fn age_history(client: &tokio_postgres::Client) -> i64 {
    client
        .batch_execute(
            "UPDATE walhook.delivered SET started_at = now() - interval '8 days'
               WHERE delivery_id IN (SELECT delivery_id FROM walhook.delivered
                                     WHERE endpoint_id = 'ok' ORDER BY delivery_id LIMIT 2);
             UPDATE walhook.deliveries SET updated_at = now() - interval '8 days'
               WHERE endpoint_id = 'flaky';
             UPDATE walhook.deliveries SET updated_at = now() - interval '31 days'
               WHERE id = (SELECT min(id) FROM walhook.deliveries WHERE endpoint_id = 'bad');
             UPDATE walhook.deliveries SET updated_at = now() - interval '10 days'
               WHERE id = (SELECT max(id) FROM walhook.deliveries WHERE endpoint_id = 'bad');
             UPDATE walhook.deliveries SET updated_at = now() - interval '40 days'
               WHERE endpoint_id = 'down';
             UPDATE walhook.events SET captured_at = now() - interval '8 days';",
        )
        .await
        .unwrap();
    scalar(
        client,
        "SELECT count(*) FROM walhook.attempts a JOIN walhook.deliveries d ON d.id = a.delivery_id
         WHERE d.endpoint_id = 'flaky'
            OR d.id = (SELECT min(id) FROM walhook.deliveries WHERE endpoint_id = 'bad')",
    )
    .await
}

/// A disabled delivery retried by hand is open again: pruning keeps it.
async fn retried_is_kept(client: &tokio_postgres::Client, path: &std::path::Path) {
    let all_old = "UPDATE walhook.deliveries SET updated_at = now() - interval '31 days'
                   WHERE endpoint_id = 'bad'";
    client.batch_execute(all_old).await.unwrap();
    let first = "SELECT min(id) FROM walhook.deliveries WHERE endpoint_id = 'bad'";
    let id = scalar(client, first).await.to_string();
    let (ok, _, err) = app::run_cli(path, &["deliveries", "retry", &id]);
    assert!(ok, "{err}");
    let pruned = cli_json(path, &["prune", "--json"]);
    assert_eq!(pruned["rows"]["deliveries_disabled"], 1, "{pruned}");
    assert_eq!(scalar(client, &by("bad", "retrying")).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_by_hand_removes_only_what_is_old_and_finished() {
    let sc = scenario("retention_hand", "").await;
    let (client, path) = (&sc.client, sc.path.as_path());
    let run = InProcess::start(sc.cfg.clone(), walhook::Roles::default());
    insert_leads(client, &["l1", "l2", "l3"]).await;
    client
        .execute("UPDATE leads SET score = 2 WHERE id = 'l1'", &[])
        .await
        .unwrap();
    let t = Duration::from_secs(30);
    wait_count(client, &by("ok", "succeeded"), 3, t).await;
    wait_count(client, &by("flaky", "succeeded"), 1, t).await;
    wait_count(client, &by("bad", "disabled"), 3, t).await;
    wait_count(client, &by("down", "pending"), 3, t).await;
    run.stop().await;

    let old_attempts = age_history(client).await;
    assert!(old_attempts >= 3, "flaky's two and bad's: {old_attempts}");
    let want = serde_json::json!({
        "delivered": 2,
        "deliveries_succeeded": 1,
        "deliveries_disabled": 1,
        "attempts": old_attempts,
        // The update's event: only `flaky` referred to it.
        "events": 1,
    });
    let before = table_counts(client).await;
    let dry = cli_json(path, &["prune", "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["rows"], want, "{dry}");
    assert_eq!(
        table_counts(client).await,
        before,
        "--dry-run changes nothing"
    );

    let done = cli_json(path, &["prune", "--json"]);
    assert_eq!(done["dry_run"], false);
    assert_eq!(done["rows"], want, "{done}");
    assert_eq!(scalar(client, &by("ok", "succeeded")).await, 1);
    assert_eq!(scalar(client, &by("flaky", "succeeded")).await, 0);
    assert_eq!(scalar(client, &by("bad", "disabled")).await, 2);
    assert_eq!(scalar(client, &by("down", "pending")).await, 3);
    let orphans = "SELECT count(*) FROM walhook.attempts a
                   WHERE NOT EXISTS (SELECT 1 FROM walhook.deliveries d WHERE d.id = a.delivery_id)";
    assert_eq!(scalar(client, orphans).await, 0);
    assert_eq!(
        scalar(client, "SELECT count(*) FROM walhook.events").await,
        3
    );

    // --older-than overrides the retention of succeeded history only: the
    // recent fast-path row goes, the 10-day-old disabled delivery stays.
    let recent = cli_json(path, &["prune", "--older-than", "1ms", "--json"]);
    assert_eq!(recent["rows"]["delivered"], 1, "{recent}");
    assert_eq!(recent["rows"]["deliveries_disabled"], 0, "{recent}");
    assert_eq!(recent["rows"]["events"], 0, "{recent}");
    assert_eq!(scalar(client, &by("bad", "disabled")).await, 2);
    let (ok, human, _) = app::run_cli(path, &["prune", "--dry-run"]);
    assert!(ok && human.contains("nothing changed"), "{human}");
    retried_is_kept(client, path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_prunes_old_history_one_process_at_a_time() {
    let retention = "retention = \"2s\"\nretention_failed = \"1h\"";
    let sc = scenario("retention_run", retention).await;
    let (client, path) = (&sc.client, sc.path.as_path());
    // Another process's pruner, as far as the lock tells.
    let other = walhook::admin::dbs::connect_ledger(&sc.cfg, "test")
        .await
        .unwrap();
    let ledger = Ledger::new("walhook");
    assert!(ledger.try_lock_pruner(&other).await.unwrap());

    let run = InProcess::start(sc.cfg.clone(), walhook::Roles::default());
    insert_leads(client, &["l1", "l2"]).await;
    let t = Duration::from_secs(30);
    let delivered = "SELECT count(*) FROM walhook.delivered WHERE endpoint_id = 'ok'";
    wait_count(client, delivered, 2, t).await;
    wait_count(client, &by("bad", "disabled"), 2, t).await;
    // Past the retention plus two pruning intervals (1 s each): with the
    // lock held elsewhere, this process has pruned nothing.
    let aged = "SELECT count(*) FROM walhook.delivered WHERE started_at < now() - interval '4 s'";
    wait_count(client, aged, 2, t).await;
    assert_eq!(scalar(client, delivered).await, 2);

    ledger.unlock_pruner(&other).await.unwrap();
    wait_count(client, delivered, 0, t).await;
    // Open and disabled-but-recent deliveries stay, with their events.
    assert_eq!(scalar(client, &by("down", "pending")).await, 2);
    assert_eq!(scalar(client, &by("bad", "disabled")).await, 2);
    assert_eq!(
        scalar(client, "SELECT count(*) FROM walhook.events").await,
        2
    );

    // A recent success is there until it is old.
    insert_leads(client, &["l3"]).await;
    wait_count(client, delivered, 1, t).await;
    let status = cli_json(path, &["status", "--json"]);
    let size = &status["ledger_size"];
    assert!(size["total_bytes"].as_i64().unwrap() > 0, "{status}");
    let tables: Vec<&str> = size["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    for t in ["events", "deliveries", "attempts", "delivered"] {
        assert!(tables.contains(&t), "{status}");
    }
    // Counts of succeeded deliveries survive pruning (they are counters).
    assert_eq!(status["deliveries"]["succeeded"], 3, "{status}");
    wait_count(client, delivered, 0, t).await;
    run.stop().await;
}
