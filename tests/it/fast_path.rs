//! The fast path: first attempts straight from the stream, the retry ledger
//! only for what must wait, and the acknowledgement rule that keeps a crash
//! from losing anything (SPEC §6).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::app::{self, InProcess, LEADS, LEADS_OBJECTS};
use crate::common::{Behaviour, Receiver, Reply, fresh_db, wait_until};
use crate::crash::{current_lsn, oracle_changes, workload};
use rand::{Rng, SeedableRng};

fn endpoint(id: &str, url: &str, extra: &str) -> String {
    format!(
        "[[endpoints]]\nid = \"{id}\"\nurl = \"{url}\"\nsecret = \"secret-{id}\"\ntimeout = \"2s\"\n{extra}\n"
    )
}

/// Retries within a second, for tests.
const QUICK_RETRY: &str = r#"
[delivery.retry]
initial = "100ms"
multiplier = 1.5
max_interval = "300ms"
jitter = 0.3
"#;

/// Whether the receiver fails the first attempt of event `id`.
fn fails_first(id: &str) -> bool {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish().is_multiple_of(5)
}

/// (verb, record key) of an event id.
fn parse_id(id: &str) -> (String, String) {
    let parts: Vec<&str> = id.split(':').collect();
    let verb = parts[4].split_once('.').unwrap().1.to_string();
    (verb, parts[3].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_with_failures_loses_nothing_and_keeps_order() {
    let db = fresh_db("fast_crash").await;
    db.psql(LEADS).await;
    // The first attempt of one event in five fails (which ones: a hash of
    // the event id, so the test knows afterwards which attempts succeeded).
    let seen: Arc<Mutex<HashMap<String, u32>>> = Default::default();
    let recv = Receiver::start(Behaviour::script(move |req, _| {
        let id = req
            .header("x-superleap-event-id")
            .unwrap_or_default()
            .to_string();
        let mut seen = seen.lock().unwrap();
        let n = seen.entry(id.clone()).or_insert(0);
        *n += 1;
        Reply::status(if fails_first(&id) && *n == 1 {
            500
        } else {
            200
        })
    }))
    .await;
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!(
            "{}\n[admin]\nlisten = \"\"\n[delivery]\nspill_after = \"500ms\"\n{QUICK_RETRY}",
            endpoint("crm", recv.url(), "")
        ),
    );
    app::setup(&app::parse(&text)).await;
    let oracle = format!("{}_oracle", db.name);
    let client = db.connect().await;
    crate::crash::oracle_slot(&client, &oracle).await;
    let (_dir, path) = app::write_config(&text);
    let mut child = app::spawn_run(&path, &["--no-admin"]);
    let work = tokio::spawn(workload(db.clone(), 6_000));
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut kills_mid_workload = 0;
    for _ in 0..4 {
        // A random moment: this sleep picks when to crash, it waits for nothing.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..900))).await;
        if !work.is_finished() {
            kills_mid_workload += 1;
        }
        app::kill9(&mut child);
        child = app::spawn_run(&path, &["--no-admin"]);
    }
    work.await.unwrap();
    assert!(
        kills_mid_workload >= 2,
        "{kills_mid_workload} kills during the workload"
    );
    let end = current_lsn(&client).await;
    app::wait_slot_confirmed(&client, &db.name, &end, Duration::from_secs(120)).await;
    let expected = oracle_changes(&client, &oracle).await;
    // Everything before the confirmed position is delivered or waiting in
    // the ledger; wait until the ledger has nothing open.
    wait_until(
        Duration::from_secs(120),
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
    app::kill9(&mut child);

    let requests = recv.requests();
    let mut bodies: HashMap<String, bytes::Bytes> = HashMap::new();
    let mut delivered: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut seen_ok: std::collections::HashSet<String> = Default::default();
    for r in &requests {
        let id = r.header("x-superleap-event-id").unwrap().to_string();
        let body = bodies.entry(id.clone()).or_insert_with(|| r.body.clone());
        assert_eq!(*body, r.body, "one body per event id: {id}");
    }
    // Which attempts succeeded follows from the receiver's rule.
    let mut first_attempt: HashMap<String, usize> = HashMap::new();
    let mut first_success: HashMap<String, usize> = HashMap::new();
    let mut failures = 0;
    for r in &requests {
        let id = r.header("x-superleap-event-id").unwrap().to_string();
        let first = !first_attempt.contains_key(&id);
        first_attempt.entry(id.clone()).or_insert(r.index);
        let ok = !(first && fails_first(&id));
        failures += usize::from(!ok);
        if ok {
            first_success.entry(id.clone()).or_insert(r.index);
            if seen_ok.insert(id.clone()) {
                *delivered.entry(parse_id(&id)).or_insert(0) += 1;
            }
        }
    }
    assert!(failures > 500, "only {failures} failed attempts");
    // Every change the oracle saw was delivered (at least once).
    for (change, n) in &expected {
        assert!(
            delivered.get(change).copied().unwrap_or(0) >= 1,
            "{change:?} (x{n}) was never delivered"
        );
    }
    // Per-record order: an event's first attempt comes after the previous
    // event of its record first succeeded.
    let mut by_record: BTreeMap<String, Vec<(String, u64, u32)>> = BTreeMap::new();
    for id in first_attempt.keys() {
        let parts: Vec<&str> = id.split(':').collect();
        let commit_ms: u64 = parts[2].parse().unwrap();
        by_record.entry(parts[3].to_string()).or_default().push((
            id.clone(),
            commit_ms,
            first_attempt[id] as u32,
        ));
    }
    let mut checked = 0;
    for events in by_record.values_mut() {
        // A record's events in commit order (events of one millisecond are
        // not compared).
        events.sort_by_key(|(_, ms, first)| (*ms, *first));
        for pair in events.windows(2) {
            let (prev, next) = (&pair[0], &pair[1]);
            if prev.1 == next.1 {
                continue; // same millisecond: commit order unknown here
            }
            let prev_ok = first_success.get(&prev.0).copied().unwrap_or(usize::MAX);
            assert!(
                first_attempt[&next.0] > prev_ok,
                "{} was attempted (request {}) before {} first succeeded (request {})",
                next.0,
                first_attempt[&next.0],
                prev.0,
                prev_ok
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} ordered pairs checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_spills_and_holds_back_neither_the_slot_nor_the_others() {
    let hang = Receiver::start(Behaviour::script(|_, _| {
        Reply::Hang(Duration::from_secs(8))
    }))
    .await;
    let ok = Receiver::start(Behaviour::AlwaysOk).await;
    let db = fresh_db("fast_hang").await;
    db.psql(LEADS).await;
    let eps = format!(
        "{}{}",
        endpoint("slow", hang.url(), "timeout = \"10s\"").replace("timeout = \"2s\"\n", ""),
        endpoint("quick", ok.url(), "")
    );
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!("{eps}\n[delivery]\nspill_after = \"300ms\"\n"),
    );
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let run = InProcess::run(cfg);
    let client = db.connect().await;
    let mut latencies = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        client
            .execute(
                "INSERT INTO leads (id, name, score) VALUES ($1, 'n', 0)",
                &[&format!("h{i}")],
            )
            .await
            .unwrap();
        ok.wait_for_requests(i + 1, Duration::from_secs(10)).await;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    assert!(
        latencies[latencies.len() - 1] < Duration::from_secs(1),
        "the quick endpoint waited for the hanging one: {latencies:?}"
    );
    // The slot advances past everything while `slow` still hangs: its
    // deliveries are in the ledger.
    let end = current_lsn(&client).await;
    app::wait_slot_confirmed(&client, &db.name, &end, Duration::from_secs(5)).await;
    let spilled: i64 = client
        .query_one(
            "SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = 'slow' AND status IN ('pending', 'retrying')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        spilled, 20,
        "every delivery to the hanging endpoint waits in the ledger"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_events_of_a_failing_record_never_overtake_it() {
    // The first request of record r1 fails; its next two events arrive while
    // it waits for its retry.
    let recv = Receiver::start(Behaviour::script(|req, _| {
        let first_of_r1 = req.body.windows(4).any(|w| w == b"\"r1\"")
            && req.header("x-superleap-event").unwrap() == "lead.create"
            && req.index == 0;
        Reply::status(if first_of_r1 { 500 } else { 200 })
    }))
    .await;
    let db = fresh_db("fast_order").await;
    db.psql(LEADS).await;
    let retry = QUICK_RETRY
        .replace("initial = \"100ms\"", "initial = \"700ms\"")
        .replace("max_interval = \"300ms\"", "max_interval = \"1s\"");
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!("{}\n{retry}", endpoint("crm", recv.url(), "")),
    );
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let run = InProcess::run(cfg);
    let client = db.connect().await;
    client
        .execute("INSERT INTO leads VALUES ('r1', 'a', 0)", &[])
        .await
        .unwrap();
    recv.wait_for_requests(1, Duration::from_secs(10)).await;
    for score in [1, 2] {
        client
            .execute("UPDATE leads SET score = $1 WHERE id = 'r1'", &[&score])
            .await
            .unwrap();
    }
    // Another record is not held back meanwhile.
    client
        .execute("INSERT INTO leads VALUES ('r2', 'b', 0)", &[])
        .await
        .unwrap();
    let got = recv.wait_for_requests(5, Duration::from_secs(15)).await;
    let seq: Vec<(String, Option<i64>)> = got
        .iter()
        .map(|r| {
            let body = r.json();
            let id = body["after"]["id"]
                .as_str()
                .or(body["before"]["id"].as_str())
                .unwrap()
                .to_string();
            (id, body["after"]["score"].as_i64())
        })
        .collect();
    let r1: Vec<Option<i64>> = seq
        .iter()
        .filter(|(id, _)| id == "r1")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(r1, [Some(0), Some(0), Some(1), Some(2)], "{seq:?}");
    let r2_at = seq.iter().position(|(id, _)| id == "r2").unwrap();
    let r1_retry_at = seq.iter().skip(1).position(|(id, _)| id == "r1").unwrap() + 1;
    assert!(r2_at < r1_retry_at, "r2 waited for r1's retry: {seq:?}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_shows_first_attempts_and_ledger_retries_alike() {
    let recv = Receiver::start(Behaviour::script(|req, _| {
        let is_b = req.body.windows(4).any(|w| w == b"\"hb\"");
        Reply::status(if is_b && req.index < 2 { 503 } else { 204 })
    }))
    .await;
    let db = fresh_db("fast_history").await;
    db.psql(LEADS).await;
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!("{}\n{QUICK_RETRY}", endpoint("crm", recv.url(), "")),
    );
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let run = InProcess::run(cfg);
    let client = db.connect().await;
    client
        .execute("INSERT INTO leads VALUES ('hb', 'b', 0)", &[])
        .await
        .unwrap();
    recv.wait_for_requests(1, Duration::from_secs(10)).await;
    client
        .execute("INSERT INTO leads VALUES ('ha', 'a', 0)", &[])
        .await
        .unwrap();
    recv.wait_for_requests(3, Duration::from_secs(15)).await;
    let (_dir, path) = app::write_config(&text);
    let list = wait_until(Duration::from_secs(10), "both deliveries listed", || {
        let path = path.clone();
        async move {
            let (ok, out, err) = app::run_cli(&path, &["deliveries", "list", "--json"]);
            assert!(ok, "{err}");
            let list: serde_json::Value = serde_json::from_str(&out).unwrap();
            let succeeded = list
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["status"] == "succeeded")
                .count();
            (succeeded == 2).then_some(list)
        }
    })
    .await;
    let by_record = |r: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["record"] == format!("lead:{r}"))
            .cloned()
            .unwrap()
    };
    let (fast, retried) = (by_record("ha"), by_record("hb"));
    assert_eq!(fast["attempts"], 1);
    assert_eq!(retried["attempts"], 2);
    for (d, attempts) in [(&fast, 1), (&retried, 2)] {
        let id = d["id"].as_i64().unwrap().to_string();
        let (ok, out, err) = app::run_cli(&path, &["deliveries", "show", &id, "--json"]);
        assert!(ok, "{err}");
        let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
        let tried = shown["attempts"].as_array().unwrap();
        assert_eq!(tried.len(), attempts, "{shown}");
        assert_eq!(tried.last().unwrap()["status_code"], 204, "{shown}");
        assert!(tried.iter().all(|a| a["duration_ms"].as_i64().is_some()));
    }
    // A first attempt that succeeded cannot be retried.
    let fast_id = fast["id"].as_i64().unwrap().to_string();
    let (ok, _, err) = app::run_cli(&path, &["deliveries", "retry", &fast_id]);
    assert!(!ok && err.contains("already succeeded"), "{err}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_larger_than_the_byte_window_goes_from_memory() {
    // Through the ledger, a big body is copied into the INSERT, stored and
    // read back: several times its size in walhook's memory (issue 8).
    let ok = Receiver::start(Behaviour::AlwaysOk).await;
    let db = fresh_db("fast_bigrow").await;
    db.psql(LEADS).await;
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        // A debug build signs 24 MiB slowly: keep spill_after out of it.
        &format!(
            "{}\n[delivery]\nspill_after = \"25s\"\n",
            endpoint("crm", ok.url(), "timeout = \"30s\"").replace("timeout = \"2s\"\n", "")
        ),
    );
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let run = InProcess::run(cfg);
    let client = db.connect().await;
    // 12 MiB of text: `after` and `diff` make a 24 MiB body, over the 16 MiB window.
    client
        .batch_execute(
            "INSERT INTO leads (id, name, score) VALUES ('big', repeat('x', 12 * 1024 * 1024), 0)",
        )
        .await
        .unwrap();
    let got = ok.wait_for_requests(1, Duration::from_secs(60)).await;
    assert!(
        got[0].body.len() > walhook::dispatch::stream::WINDOW_BYTES,
        "body of {} bytes",
        got[0].body.len()
    );
    let end = current_lsn(&client).await;
    app::wait_slot_confirmed(&client, &db.name, &end, Duration::from_secs(30)).await;
    let ledgered: i64 = client
        .query_one("SELECT count(*) FROM walhook.deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        ledgered, 0,
        "the big delivery went through the retry ledger"
    );
    run.stop().await;
}
