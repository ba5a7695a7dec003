//! Crash safety and standby take-over with the real binary: `kill -9` at
//! random moments loses nothing and duplicates nothing, judged against an
//! independent wal2json slot on the same database.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::app::{self, LEADS, LEADS_OBJECTS};
use crate::common::{TestDb, fresh_db, wait_until};
use rand::{Rng, SeedableRng};

pub(crate) async fn current_lsn(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// An independent witness of the changes: a second logical slot on the same
/// database, with wal2json where it is installed (PostgreSQL 15 from the
/// distribution) and test_decoding, which every server build ships, elsewhere.
pub(crate) async fn oracle_slot(client: &tokio_postgres::Client, slot: &str) {
    let wal2json = client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'wal2json')",
            &[&slot],
        )
        .await;
    if wal2json.is_err() {
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
                &[&slot],
            )
            .await
            .expect("test_decoding ships with every PostgreSQL server build");
    }
}

/// (verb, key) -> count of the `leads` changes, from the oracle slot.
pub(crate) async fn oracle_changes(
    client: &tokio_postgres::Client,
    slot: &str,
) -> BTreeMap<(String, String), u32> {
    let plugin: String = client
        .query_one(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    let mut out = BTreeMap::new();
    let changes = if plugin == "wal2json" {
        wal2json_changes(client, slot).await
    } else {
        test_decoding_changes(client, slot).await
    };
    for change in changes {
        *out.entry(change).or_insert(0) += 1;
    }
    out
}

async fn wal2json_changes(client: &tokio_postgres::Client, slot: &str) -> Vec<(String, String)> {
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL, 'format-version', '2', 'add-tables', 'public.leads')",
            &[&slot],
        )
        .await
        .expect("read the wal2json slot");
    let mut out = Vec::new();
    for r in rows {
        let data: String = r.get(0);
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        let (verb, cols) = match v["action"].as_str().unwrap() {
            "I" => ("create", &v["columns"]),
            "U" => ("update", &v["columns"]),
            "D" => ("delete", &v["identity"]),
            _ => continue,
        };
        let key = cols
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "id")
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .to_string();
        out.push((verb.to_string(), key));
    }
    out
}

/// test_decoding's lines: `table public.leads: UPDATE: old-key: ... new-tuple: id[text]:'l1' ...`.
async fn test_decoding_changes(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Vec<(String, String)> {
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL)",
            &[&slot],
        )
        .await
        .expect("read the test_decoding slot");
    let mut out = Vec::new();
    for r in rows {
        let data: String = r.get(0);
        let Some(rest) = data.strip_prefix("table public.leads: ") else {
            continue;
        };
        let (action, tuple) = rest.split_once(": ").unwrap();
        let verb = match action {
            "INSERT" => "create",
            "UPDATE" => "update",
            "DELETE" => "delete",
            _ => continue,
        };
        let tuple = tuple.rsplit_once("new-tuple: ").map_or(tuple, |(_, t)| t);
        let key = tuple
            .strip_prefix("id[text]:'")
            .and_then(|t| t.split_once('\''))
            .map(|(k, _)| k.to_string())
            .unwrap_or_else(|| panic!("no id in {data}"));
        out.push((verb.to_string(), key));
    }
    out
}

async fn ledger_changes(client: &tokio_postgres::Client) -> BTreeMap<(String, String), u32> {
    let mut out = BTreeMap::new();
    for (name, key, _) in app::events(client).await {
        let verb = name.split_once('.').unwrap().1.to_string();
        *out.entry((verb, key)).or_insert(0) += 1;
    }
    out
}

/// 20,000 row changes in transactions of 1 to 60 changes: inserts, updates
/// that always change something, deletes.
pub(crate) async fn workload(db: TestDb, total: usize) {
    let mut client = db.connect().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut next_id = 0u64;
    let mut live: Vec<u64> = Vec::new();
    let mut done = 0usize;
    while done < total {
        let size = rng.gen_range(1..=60).min(total - done);
        let tx = client.transaction().await.unwrap();
        for _ in 0..size {
            let roll = rng.gen_range(0..10);
            if live.is_empty() || roll < 5 {
                next_id += 1;
                tx.execute(
                    "INSERT INTO leads (id, name, score) VALUES ($1, 'n', 0)",
                    &[&format!("l{next_id}")],
                )
                .await
                .unwrap();
                live.push(next_id);
            } else if roll < 9 {
                let id = live[rng.gen_range(0..live.len())];
                tx.execute(
                    "UPDATE leads SET score = score + 1 WHERE id = $1",
                    &[&format!("l{id}")],
                )
                .await
                .unwrap();
            } else {
                let id = live.swap_remove(rng.gen_range(0..live.len()));
                tx.execute("DELETE FROM leads WHERE id = $1", &[&format!("l{id}")])
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
        done += size;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let db = fresh_db("crash").await;
    db.psql(LEADS).await;
    let text = app::config_text(&db, LEADS_OBJECTS, "[admin]\nlisten = \"\"\n");
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let oracle = format!("{}_oracle", db.name);
    let client = db.connect().await;
    oracle_slot(&client, &oracle).await;
    let (_dir, path) = app::write_config(&text);
    let mut child = app::spawn_run(&path, &["--no-dispatch", "--no-admin"]);

    let work = tokio::spawn(workload(db.clone(), 20_000));
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut kills = 0;
    let mut kills_mid_workload = 0;
    while kills < 5 {
        // A random moment: this sleep picks when to crash, it does not wait
        // for anything.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..900))).await;
        if !work.is_finished() {
            kills_mid_workload += 1;
        }
        app::kill9(&mut child);
        kills += 1;
        child = app::spawn_run(&path, &["--no-dispatch", "--no-admin"]);
        if work.is_finished() {
            break;
        }
    }
    work.await.unwrap();
    assert!(
        kills_mid_workload >= 2,
        "the workload finished too fast to be crashed into ({kills_mid_workload} kills)"
    );
    // If the workload outran the kills, crash a few more times on the backlog.
    while kills < 5 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
        app::kill9(&mut child);
        kills += 1;
        child = app::spawn_run(&path, &["--no-dispatch", "--no-admin"]);
    }
    let end = current_lsn(&client).await;
    app::wait_slot_confirmed(&client, &db.name, &end, Duration::from_secs(120)).await;
    app::kill9(&mut child);

    let expected = oracle_changes(&client, &oracle).await;
    let got = ledger_changes(&client).await;
    let expected_total: u32 = expected.values().sum();
    assert_eq!(expected_total, 20_000, "the oracle saw the whole workload");
    let got_total: u32 = got.values().sum();
    assert_eq!(got_total, expected_total, "ledger event count");
    assert_eq!(got, expected, "the same changes, none twice");
    let dup: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT commit_lsn, change_index FROM walhook.events GROUP BY 1, 2 HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dup, 0);
}

async fn active_pid(client: &tokio_postgres::Client, slot: &str) -> Option<i32> {
    client
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ok()
        .and_then(|r| r.get::<_, Option<i32>>(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_within_ten_seconds() {
    let db = fresh_db("standby").await;
    db.psql(LEADS).await;
    let text = app::config_text(&db, LEADS_OBJECTS, "[admin]\nlisten = \"\"\n");
    app::setup(&app::parse(&text)).await;
    let (_dir, path) = app::write_config(&text);
    let client = db.connect().await;

    let mut first = app::spawn_run(&path, &["--no-dispatch", "--no-admin"]);
    client
        .execute("INSERT INTO leads (id) VALUES ('before')", &[])
        .await
        .unwrap();
    app::wait_events(&client, 1).await;
    // The first process streams; now the standby starts and must wait.
    let mut second = app::spawn_run(&path, &["--no-dispatch", "--no-admin"]);
    let walsender_before = active_pid(&client, &db.name).await.expect("slot active");
    app::kill9(&mut first);
    let killed_at = Instant::now();
    client
        .execute("INSERT INTO leads (id) VALUES ('after')", &[])
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the standby to capture the new row",
        || async { (app::event_count(&client).await >= 2).then_some(()) },
    )
    .await;
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(10), "take-over took {took:?}");
    let walsender_after = active_pid(&client, &db.name)
        .await
        .expect("slot active again");
    assert_ne!(walsender_before, walsender_after);
    assert!(
        second.try_wait().unwrap().is_none(),
        "the standby is still running"
    );
    app::kill9(&mut second);
}
