//! Content filters against a real database and receivers: `when_changed`
//! (also across a column rename while running), an endpoint `filter` with a
//! transition expression and its counter, and configuration errors that
//! `check` and `run` report.

use std::time::Duration;

use super::{ADMIN_TOKEN, admin_get, endpoint};
use crate::common::app::{self, InProcess};
use crate::common::{Behaviour, Receiver, TestDb, free_port, fresh_db, wait_until};

const DEALS: &str = "CREATE TABLE deals (id int PRIMARY KEY, stage text, score int, note text)";

/// `deals` as object `deal` with `extra` keys.
fn deals(extra: &str) -> String {
    format!("[[objects]]\ntable = \"deals\"\nslug = \"deal\"\n{extra}\n")
}

/// (event name, body) of each request, in arrival order.
fn events(recv: &Receiver) -> Vec<(String, serde_json::Value)> {
    recv.requests()
        .iter()
        .map(|r| (r.header("x-superleap-event").unwrap().to_string(), r.json()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_changed_sends_only_updates_of_those_columns_also_after_a_rename() {
    let db = fresh_db("policy_when_changed").await;
    db.psql(DEALS).await;
    let recv = Receiver::start(Behaviour::AlwaysOk).await;
    let text = app::config_text(
        &db,
        &deals(r#"when_changed = ["stage"]"#),
        &format!(
            "{}[admin]\nlisten = \"\"\n",
            endpoint("crm", recv.url(), "")
        ),
    );
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let run = InProcess::start(cfg, walhook::Roles::default());
    let client = db.connect().await;
    client
        .batch_execute("INSERT INTO deals VALUES (1, 'open', 1, 'x')")
        .await
        .unwrap();
    // The session resolved `stage` to its attribute number before the
    // rename below (names are resolved when a session starts).
    recv.wait_for_requests(1, Duration::from_secs(30)).await;
    for sql in [
        "UPDATE deals SET score = 2 WHERE id = 1",
        "UPDATE deals SET stage = 'won', note = 'y' WHERE id = 1",
        "ALTER TABLE deals RENAME COLUMN stage TO phase",
        "UPDATE deals SET phase = 'lost' WHERE id = 1",
        "UPDATE deals SET note = 'z', score = 3 WHERE id = 1",
        "DELETE FROM deals WHERE id = 1",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    recv.wait_for_requests(4, Duration::from_secs(30)).await;
    wait_until(Duration::from_secs(10), "the delete delivered", || async {
        events(&recv)
            .iter()
            .any(|(name, _)| name == "deal.delete")
            .then_some(())
    })
    .await;
    let got = events(&recv);
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["deal.create", "deal.update", "deal.update", "deal.delete"],
        "{got:?}"
    );
    assert_eq!(
        got[1].1["diff"],
        serde_json::json!({"stage": "won", "note": "y"})
    );
    assert_eq!(got[2].1["diff"], serde_json::json!({"phase": "lost"}));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_when_changed_column_fails_check_and_run() {
    let db = fresh_db("policy_when_changed_bad").await;
    db.psql(DEALS).await;
    let good = app::config_text(&db, &deals(""), "[admin]\nlisten = \"\"\n");
    app::setup(&app::parse(&good)).await;
    let text = app::config_text(
        &db,
        &deals(r#"when_changed = ["stgae"]"#),
        "[admin]\nlisten = \"\"\n",
    );
    let (_dir, path) = app::write_config(&text);
    for args in [&["check"][..], &["run", "--no-admin"][..]] {
        let (ok, out, err) = crate::common::admin::cli(&path, args).await;
        assert!(!ok, "{args:?} should fail: {out}{err}");
        assert!(
            format!("{out}{err}").contains("when_changed of object deal names `stgae`"),
            "{args:?}: {out}{err}"
        );
    }
}

/// The `/metrics` sample `walhook_events_filtered_total{endpoint=...}`.
async fn filtered_metric(admin: &str, endpoint: &str) -> Option<u64> {
    let text = admin_get(admin, "/metrics").await;
    let sample = format!("walhook_events_filtered_total{{endpoint=\"{endpoint}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&sample))
        .and_then(|n| n.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_filter_delivers_the_transition_only_and_counts_the_rest() {
    let db = fresh_db("policy_filter").await;
    db.psql(DEALS).await;
    let won = Receiver::start(Behaviour::AlwaysOk).await;
    let all = Receiver::start(Behaviour::AlwaysOk).await;
    let admin = format!("127.0.0.1:{}", free_port());
    let filter = r#"filter = 'after.stage == "won" && before.stage != "won"'"#;
    let text = app::config_text(
        &db,
        &deals(""),
        &format!(
            "{}{}[admin]\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n",
            endpoint("won", won.url(), filter),
            endpoint("all", all.url(), "")
        ),
    );
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let run = InProcess::start(cfg, walhook::Roles::default());
    let client = db.connect().await;
    for sql in [
        // false: not won
        "INSERT INTO deals VALUES (1, 'open', 1, 'x')",
        // true: the transition
        "UPDATE deals SET stage = 'won' WHERE id = 1",
        // false: won before already
        "UPDATE deals SET score = 2 WHERE id = 1",
        // undecided: a create has no `before.stage` (logged, not delivered)
        "INSERT INTO deals VALUES (2, 'won', 1, 'x')",
        // false: not won
        "UPDATE deals SET stage = 'lost' WHERE id = 2",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    all.wait_for_requests(5, Duration::from_secs(30)).await;
    wait_until(Duration::from_secs(10), "the filtered counter", || async {
        (filtered_metric(&admin, "won").await == Some(4)).then_some(())
    })
    .await;
    let got = events(&won);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "deal.update");
    assert_eq!(got[0].1["before"]["stage"], "open");
    assert_eq!(got[0].1["after"]["stage"], "won");
    assert_eq!(filtered_metric(&admin, "all").await, None);
    // Filtered-out events are not held in the ledger for the endpoint.
    let held: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE endpoint_id = 'won'",
                app::ALL_DELIVERIES
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 1);
    run.stop().await;
}

#[tokio::test]
async fn a_bad_filter_fails_check_and_run_with_its_position() {
    let db = TestDb::elsewhere("nowhere", "postgres://u@127.0.0.1:9/nowhere".into());
    let text = app::config_text(
        &db,
        &deals(""),
        &endpoint(
            "crm",
            "http://127.0.0.1:9/",
            r#"filter = 'after.stage == "won" &&'"#,
        ),
    );
    let (_dir, path) = app::write_config(&text);
    for args in [&["check"][..], &["run"][..]] {
        let (ok, out, err) = crate::common::admin::cli(&path, args).await;
        assert!(!ok, "{args:?} should fail");
        let said = format!("{out}{err}");
        assert!(
            said.contains("`endpoints[0].filter` (endpoint \"crm\")")
                && said.contains("line 1, column 24 of the expression"),
            "{args:?}: {said}"
        );
    }
}
