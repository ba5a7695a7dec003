//! Backfill: the rows a table already holds, sent as events while the table
//! keeps changing, never older after newer, resumable after `kill -9`.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::app::{self, InProcess};
use crate::common::{Behaviour, Receiver, RecordedRequest, TestDb, fresh_db, wait_until};
use crate::crash::current_lsn;
use rand::{Rng, SeedableRng};
use walhook::ledger::Ledger;
use walhook::ledger::backfills::BackfillRequest;

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0, note text);
INSERT INTO items SELECT g, 0, 'n' || g FROM generate_series(1, 3000) g;";
const ITEMS_OBJECTS: &str = "[[objects]]\ntable = \"items\"\nslug = \"item\"\n";

fn endpoint(url: &str) -> String {
    format!("[[endpoints]]\nid = \"crm\"\nurl = \"{url}\"\nsecret = \"s\"\ntimeout = \"5s\"\n")
}

/// Updates random rows (v + 1) as fast as it can until `stop`.
async fn churn(db: TestDb, stop: tokio_util::sync::CancellationToken) -> u64 {
    let client = db.connect().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut n = 0;
    while !stop.is_cancelled() {
        let id: i32 = rng.gen_range(1..=3000);
        client
            .execute("UPDATE items SET v = v + 1 WHERE id = $1", &[&id])
            .await
            .unwrap();
        n += 1;
    }
    n
}

async fn request(db: &TestDb, as_create: bool) -> i64 {
    let client = db.connect().await;
    Ledger::new("walhook")
        .request_backfill(
            &client,
            &BackfillRequest {
                slug: "item".into(),
                endpoint: None,
                where_sql: None,
                as_create,
                rate: None,
            },
        )
        .await
        .unwrap()
        .id
}

async fn wait_done(db: &TestDb, id: i64, timeout: Duration) {
    let client = db.connect().await;
    wait_until(timeout, "the backfill to finish", || async {
        let row = client
            .query_one(
                "SELECT state, error FROM walhook.backfills WHERE id = $1",
                &[&id],
            )
            .await
            .ok()?;
        let state: String = row.get(0);
        assert_ne!(state, "failed", "{:?}", row.get::<_, Option<String>>(1));
        (state == "done").then_some(())
    })
    .await;
}

/// Per id, the `v` of each delivery in arrival order.
fn versions(requests: &[RecordedRequest]) -> HashMap<i64, Vec<(String, i64)>> {
    let mut out: HashMap<i64, Vec<(String, i64)>> = HashMap::new();
    for r in requests {
        let body = r.json();
        let name = r.header("x-superleap-event").unwrap().to_string();
        let row = &body["after"];
        out.entry(row["id"].as_i64().unwrap())
            .or_default()
            .push((name, row["v"].as_i64().unwrap()));
    }
    out
}

/// The receiver's last view of each row equals the table, and no row was
/// delivered older after newer (once what waits in the retry ledger is sent).
async fn assert_consistent(db: &TestDb, recv: &Receiver) {
    let client = db.connect().await;
    wait_until(
        Duration::from_secs(60),
        "the retry ledger to drain",
        || async {
            let open: i64 = client
            .query_one(
                "SELECT count(*) FROM walhook.deliveries WHERE status IN ('pending', 'retrying')",
                &[],
            )
            .await
            .ok()?
            .get(0);
            (open == 0).then_some(())
        },
    )
    .await;
    let table: HashMap<i64, i64> = client
        .query("SELECT id, v FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (i64::from(r.get::<_, i32>(0)), i64::from(r.get::<_, i32>(1))))
        .collect();
    let seen = versions(&recv.requests());
    let mut missing: Vec<i64> = table
        .keys()
        .filter(|id| !seen.contains_key(id))
        .copied()
        .collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} rows never delivered: {:?}",
        missing.len(),
        &missing[..missing.len().min(40)]
    );
    for (id, v) in &table {
        let history = seen
            .get(id)
            .unwrap_or_else(|| panic!("row {id} was never delivered"));
        assert_eq!(history.last().unwrap().1, *v, "row {id}: {history:?}");
        for pair in history.windows(2) {
            assert!(
                pair[1].1 >= pair[0].1,
                "row {id} older after newer: {history:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_under_full_speed_updates_is_consistent_with_the_stream() {
    let recv = Receiver::start(Behaviour::AlwaysOk).await;
    let db = fresh_db("backfill").await;
    db.psql(ITEMS).await;
    let text = app::config_text(&db, ITEMS_OBJECTS, &endpoint(recv.url()));
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let run = InProcess::run(cfg);
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn(churn(db.clone(), stop.clone()));
    let id = request(&db, false).await;
    wait_done(&db, id, Duration::from_secs(120)).await;
    stop.cancel();
    let updates = writer.await.unwrap();
    assert!(
        updates > 200,
        "only {updates} updates ran during the backfill"
    );
    let client = db.connect().await;
    let end = current_lsn(&client).await;
    app::wait_slot_confirmed(&client, &db.name, &end, Duration::from_secs(60)).await;
    let requests = recv.requests();
    let backfilled = requests
        .iter()
        .filter(|r| r.header("x-superleap-event") == Some("item.backfill"))
        .count();
    assert!(backfilled > 2000, "{backfilled} backfill events");
    assert_consistent(&db, &recv).await;
    let row = client
        .query_one(
            "SELECT rows_sent FROM walhook.backfills WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert!(row.get::<_, i64>(0) >= 3000);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_resumes_after_kill_9_without_sending_finished_chunks_again() {
    // Slow answers keep the backfill going long enough to be killed into.
    let recv = Receiver::start(Behaviour::script(|_, _| {
        crate::common::Reply::Hang(Duration::from_millis(2))
    }))
    .await;
    let db = fresh_db("backfill_kill").await;
    db.psql(ITEMS).await;
    let text = app::config_text(
        &db,
        ITEMS_OBJECTS,
        &format!(
            "{}\n[admin]\nlisten = \"\"\n[delivery]\nmax_in_flight = 4\n",
            endpoint(recv.url())
        ),
    );
    app::setup(&app::parse(&text)).await;
    let (_dir, path) = app::write_config(&text);
    let mut child = app::spawn_run(&path, &[]);
    let id = request(&db, true).await;
    let client = db.connect().await;
    wait_until(Duration::from_secs(60), "a few chunks done", || async {
        let n: i64 = client
            .query_one(
                "SELECT rows_sent FROM walhook.backfills WHERE id = $1",
                &[&id],
            )
            .await
            .ok()?
            .get(0);
        (n >= 1000).then_some(())
    })
    .await;
    app::kill9(&mut child);
    child = app::spawn_run(&path, &[]);
    wait_done(&db, id, Duration::from_secs(120)).await;
    let end = current_lsn(&client).await;
    app::wait_slot_confirmed(&client, &db.name, &end, Duration::from_secs(60)).await;
    assert_consistent(&db, &recv).await;
    app::kill9(&mut child);
    let requests = recv.requests();
    let mut per_row: HashMap<i64, u32> = HashMap::new();
    for r in &requests {
        assert_eq!(r.header("x-superleap-event"), Some("item.create"));
        *per_row
            .entry(r.json()["after"]["id"].as_i64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(per_row.len(), 3000, "every row was sent");
    let again = per_row.values().filter(|n| **n > 1).count();
    // Only the chunk in progress (and what was in flight) is sent again.
    assert!(again <= 600, "{again} rows were sent more than once");
}
