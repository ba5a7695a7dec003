//! Delivery end to end: real Postgres, walhook, and real HTTP receivers on
//! 127.0.0.1. Signatures are checked with an independent HMAC computation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::common::app::{self, InProcess, LEADS, LEADS_OBJECTS};
use crate::common::{
    Behaviour, Receiver, RecordedRequest, Reply, TestDb, fresh_db, send_signal, wait_until,
};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

fn endpoint(id: &str, url: &str, extra: &str) -> String {
    format!(
        "[[endpoints]]\nid = \"{id}\"\nurl = \"{url}\"\nsecret = \"secret-{id}\"\ntimeout = \"1s\"\n{extra}\n"
    )
}

/// A fast retry policy (the three-day rule scaled down to seconds).
const FAST_RETRY: &str = r#"
[delivery]
lease = "10s"

[delivery.retry]
initial = "100ms"
multiplier = 2.0
max_interval = "400ms"
backoff_window = "30s"
then_every = "10s"
disable_after = "60s"
"#;

async fn start(
    hint: &str,
    endpoints: &str,
    delivery: &str,
) -> (TestDb, tokio_postgres::Client, InProcess) {
    let db = fresh_db(hint).await;
    db.psql(LEADS).await;
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!("{endpoints}\n{delivery}\n[admin]\nlisten = \"\"\n"),
    );
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let run = InProcess::run(cfg);
    let client = db.connect().await;
    (db, client, run)
}

/// Delivery states by endpoint: endpoint -> status -> count.
async fn states(client: &tokio_postgres::Client) -> HashMap<String, HashMap<String, i64>> {
    let mut out: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for r in client
        .query(
            &format!(
                "SELECT endpoint_id, status, count(*) FROM {} GROUP BY 1, 2",
                app::ALL_DELIVERIES
            ),
            &[],
        )
        .await
        .unwrap()
    {
        out.entry(r.get(0)).or_default().insert(r.get(1), r.get(2));
    }
    out
}

async fn wait_status(
    client: &tokio_postgres::Client,
    endpoint: &str,
    status: &str,
    n: i64,
    timeout: Duration,
) {
    wait_until(
        timeout,
        &format!("{n} {status} deliveries to {endpoint}"),
        || async {
            let s = states(client).await;
            (s.get(endpoint)
                .and_then(|m| m.get(status))
                .copied()
                .unwrap_or(0)
                >= n)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_bytes_and_id_on_every_attempt_and_signatures_verify() {
    let recv = Receiver::start(Behaviour::FailThenOk {
        failures: 3,
        status: 500,
    })
    .await;
    let k1 = [7u8; 24];
    let k2 = [9u8; 32];
    let b64 = base64::engine::general_purpose::STANDARD;
    let s1 = format!("whsec_{}", b64.encode(k1));
    let s2 = format!("whsec_{}", b64.encode(k2));
    let ep = format!(
        "[[endpoints]]\nid = \"crm\"\nurl = \"{}hooks\"\nsecrets = [\"{s1}\", \"{s2}\"]\nsigning = [\"superleap\", \"standard-webhooks\"]\ntimeout = \"2s\"\n",
        recv.url()
    );
    let (_db, client, run) = start("same_bytes", &ep, FAST_RETRY).await;
    client
        .execute("INSERT INTO leads VALUES ('l1', 'Ada', 1)", &[])
        .await
        .unwrap();
    let reqs = recv.wait_for_requests(4, Duration::from_secs(20)).await;
    wait_status(&client, "crm", "succeeded", 1, Duration::from_secs(10)).await;
    let first = &reqs[0];
    let id = first.header("x-superleap-event-id").unwrap().to_string();
    assert!(
        id.starts_with("app:lead:") && id.contains(":l1:lead.create:"),
        "{id}"
    );
    for r in &reqs {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hooks");
        assert_eq!(r.body, first.body, "byte-identical body on every attempt");
        assert_eq!(r.header("x-superleap-event-id"), Some(id.as_str()));
        assert_eq!(r.header("x-superleap-event"), Some("lead.create"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("user-agent").unwrap().starts_with("walhook/"));
        // superleap: HMAC of the raw body keyed with the first secret's UTF-8 bytes
        let want = format!(
            "sha256={}",
            hex::encode(hmac_sha256(s1.as_bytes(), &r.body))
        );
        assert_eq!(r.header("x-superleap-signature"), Some(want.as_str()));
        // Standard Webhooks: one signature per secret over id.timestamp.body
        assert_eq!(r.header("webhook-id"), Some(id.as_str()));
        let ts = r.header("webhook-timestamp").unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((ts.parse::<i64>().unwrap() - now).abs() < 60);
        let mut signed = format!("{id}.{ts}.").into_bytes();
        signed.extend_from_slice(&r.body);
        let want: Vec<String> = [&k1[..], &k2[..]]
            .iter()
            .map(|k| format!("v1,{}", b64.encode(hmac_sha256(k, &signed))))
            .collect();
        assert_eq!(r.header("webhook-signature"), Some(want.join(" ").as_str()));
    }
    assert_eq!(reqs.len(), 4, "no attempt after the success");
    let attempts: i32 = client
        .query_one("SELECT attempts FROM walhook.deliveries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 4);
    // The attempts are recorded with status codes and request headers.
    let rows = client
        .query(
            "SELECT status_code, request_headers FROM walhook.attempts ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let codes: Vec<Option<i32>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(codes, [Some(500), Some(500), Some(500), Some(200)]);
    let headers: serde_json::Value = rows[0].get(1);
    assert_eq!(headers["x-superleap-event"], "lead.create");
    let all = serde_json::to_string(&headers).unwrap();
    assert!(
        !all.contains(&s1) && !all.contains(&s2),
        "no secret in recorded headers"
    );
    run.stop().await;
}

/// Per path: the first answer is the failure under test, then 200.
fn fail_once_per_path(fail: HashMap<&'static str, Reply>) -> Behaviour {
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    Behaviour::script(move |r: &RecordedRequest, _| {
        let mut seen = seen.lock().unwrap();
        let n = seen.entry(r.path.clone()).or_default();
        *n += 1;
        match fail.get(r.path.as_str()) {
            Some(reply) if *n == 1 => reply.clone(),
            _ => Reply::status(200),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_of_every_kind_are_retried() {
    let mut fail = HashMap::new();
    fail.insert("/hang", Reply::Hang(Duration::from_secs(5)));
    fail.insert(
        "/redirect",
        Reply::Status(
            302,
            vec![("location".into(), "/elsewhere".into())],
            Default::default(),
        ),
    );
    fail.insert("/missing", Reply::status(404));
    fail.insert("/close", Reply::CloseConnection);
    fail.insert(
        "/limited",
        Reply::Status(
            429,
            vec![("retry-after".into(), "2".into())],
            Default::default(),
        ),
    );
    let recv = Receiver::start(fail_once_per_path(fail)).await;
    let u = recv.url();
    let eps = [
        endpoint("hang", &format!("{u}hang"), ""),
        endpoint("redirect", &format!("{u}redirect"), ""),
        endpoint("missing", &format!("{u}missing"), ""),
        endpoint("close", &format!("{u}close"), ""),
        endpoint("limited", &format!("{u}limited"), ""),
    ]
    .concat();
    let (_db, client, run) = start("fail_kinds", &eps, FAST_RETRY).await;
    client
        .execute("INSERT INTO leads VALUES ('l1', 'Ada', 1)", &[])
        .await
        .unwrap();
    for ep in ["hang", "redirect", "missing", "close", "limited"] {
        wait_status(&client, ep, "succeeded", 1, Duration::from_secs(20)).await;
    }
    let reqs = recv.requests();
    assert!(
        reqs.iter().all(|r| r.path != "/elsewhere"),
        "redirects are not followed"
    );
    let attempts = client
        .query(
            "SELECT d.endpoint_id, a.status_code, a.error_kind, a.started_at, a.duration_ms
             FROM walhook.attempts a JOIN walhook.deliveries d ON d.id = a.delivery_id
             ORDER BY a.id",
            &[],
        )
        .await
        .unwrap();
    type Attempt = (Option<i32>, Option<String>, SystemTime, i32);
    let mut by_ep: HashMap<String, Vec<Attempt>> = HashMap::new();
    for r in &attempts {
        by_ep
            .entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2), r.get(3), r.get(4)));
    }
    for (ep, list) in &by_ep {
        assert_eq!(list.len(), 2, "{ep}: one failure, one success: {list:?}");
        assert_eq!(list[1].0, Some(200), "{ep}");
    }
    assert_eq!(by_ep["hang"][0].1.as_deref(), Some("timeout"));
    assert!(
        by_ep["hang"][0].3 >= 1000 && by_ep["hang"][0].3 < 3000,
        "timeout after ~1s"
    );
    assert_eq!(by_ep["redirect"][0].0, Some(302));
    assert_eq!(by_ep["missing"][0].0, Some(404));
    assert_eq!(by_ep["close"][0].0, None);
    assert!(by_ep["close"][0].1.is_some());
    assert_eq!(by_ep["limited"][0].0, Some(429));
    let gap = by_ep["limited"][1]
        .2
        .duration_since(by_ep["limited"][0].2)
        .unwrap();
    assert!(
        gap >= Duration::from_secs(2),
        "Retry-After: 2 honoured, waited {gap:?}"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint() {
    let recv = Receiver::start(Behaviour::script(|_, _| Reply::status(410))).await;
    let ok = Receiver::start(Behaviour::AlwaysOk).await;
    let eps = [
        endpoint("gone", &format!("{}x", recv.url()), ""),
        endpoint(
            "ops",
            &format!("{}ops", ok.url()),
            "events = [\"endpoint.*\"]",
        ),
    ]
    .concat();
    let delivery = format!("{FAST_RETRY}\n")
        .replace("[delivery]\n", "[delivery]\nnotify_endpoint = \"ops\"\n");
    let (_db, client, run) = start("gone", &eps, &delivery).await;
    client
        .batch_execute(
            "INSERT INTO leads VALUES ('l1', 'Ada', 1); INSERT INTO leads VALUES ('l2', 'B', 1);",
        )
        .await
        .unwrap();
    let enabled = wait_until(
        Duration::from_secs(10),
        "the endpoint to be disabled",
        || async {
            let r = client
                .query_one(
                    "SELECT enabled, disabled_reason FROM walhook.endpoints WHERE id = 'gone'",
                    &[],
                )
                .await
                .ok()?;
            (!r.get::<_, bool>(0)).then(|| r.get::<_, Option<String>>(1))
        },
    )
    .await;
    assert!(enabled.unwrap().contains("410"));
    // The notification endpoint hears about it.
    let notes = ok.wait_for_requests(1, Duration::from_secs(10)).await;
    assert_eq!(
        notes[0].header("x-superleap-event"),
        Some("endpoint.disabled")
    );
    assert_eq!(notes[0].json()["after"]["endpoint"], "gone");
    // No further attempts go to a disabled endpoint; its deliveries wait.
    let before = recv.requests().len();
    client
        .execute("INSERT INTO leads VALUES ('l3', 'C', 1)", &[])
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the new event's delivery row",
        || async {
            (states(&client)
                .await
                .get("gone")
                .map(|m| m.values().sum::<i64>())
                .unwrap_or(0)
                >= 3)
                .then_some(())
        },
    )
    .await;
    let s = states(&client).await;
    assert_eq!(s["gone"].get("succeeded"), None);
    assert!(
        recv.requests().len() <= before + 1,
        "at most the in-flight one after disabling"
    );
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_day_rule_scaled_to_seconds_then_manual_retry() {
    let recv = Receiver::start(Behaviour::script(|_, _| Reply::status(503))).await;
    let eps = endpoint("crm", &format!("{}h", recv.url()), "");
    let policy = r#"
[delivery]
lease = "10s"

[delivery.retry]
initial = "200ms"
multiplier = 2.0
max_interval = "1s"
backoff_window = "2s"
then_every = "1s"
disable_after = "4s"
"#;
    let (db, client, run) = start("three_day", &eps, policy).await;
    client
        .execute("INSERT INTO leads VALUES ('l1', 'Ada', 1)", &[])
        .await
        .unwrap();
    wait_status(&client, "crm", "disabled", 1, Duration::from_secs(20)).await;
    let row = client
        .query_one(
            "SELECT e.commit_time, d.attempts, (SELECT max(started_at) FROM walhook.attempts a WHERE a.delivery_id = d.id), d.id
             FROM walhook.deliveries d JOIN walhook.events e ON e.seq = d.event_seq",
            &[],
        )
        .await
        .unwrap();
    let commit: SystemTime = row.get(0);
    let attempts: i32 = row.get(1);
    let last: SystemTime = row.get(2);
    let id: i64 = row.get(3);
    let age = last.duration_since(commit).unwrap();
    // 0, ~0.2, ~0.6, ~1.4 s (exponential while younger than 2 s), then every
    // 1 s, the last one exactly at 4 s: disabled after it.
    assert!((5..=9).contains(&attempts), "attempts: {attempts}");
    assert!(
        age >= Duration::from_millis(3900) && age < Duration::from_millis(5500),
        "last attempt at {age:?}"
    );
    // Disabled means no more attempts.
    let n = recv.requests().len();
    assert_eq!(n as i32, attempts);

    // A manual retry starts a fresh cycle; the receiver has recovered.
    recv.set_behaviour(Behaviour::AlwaysOk);
    let (_d, path) = app::write_config(&app::config_text(&db, LEADS_OBJECTS, &eps));
    let (ok, out, err) = app::run_cli(&path, &["deliveries", "retry", &id.to_string()]);
    assert!(ok, "{out}\n{err}");
    wait_status(&client, "crm", "succeeded", 1, Duration::from_secs(10)).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_record_order_holds_with_random_failures() {
    use rand::{Rng, SeedableRng};
    // (record, version, answered ok) in the order the receiver answered.
    let log: Arc<Mutex<Vec<(String, i64, bool)>>> = Arc::default();
    let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(42)));
    let log2 = log.clone();
    let recv = Receiver::start(Behaviour::script(move |r: &RecordedRequest, _| {
        let body = r.json();
        let row = if body["after"].as_object().unwrap().is_empty() {
            &body["before"]
        } else {
            &body["after"]
        };
        let ok = rng.lock().unwrap().gen_range(0..100) >= 30;
        log2.lock().unwrap().push((
            row["id"].as_str().unwrap().to_string(),
            row["score"].as_i64().unwrap(),
            ok,
        ));
        Reply::status(if ok { 200 } else { 500 })
    }))
    .await;
    let eps = endpoint("crm", &format!("{}h", recv.url()), "");
    let policy = r#"
[delivery]
lease = "10s"
max_in_flight = 64

[delivery.retry]
initial = "20ms"
multiplier = 1.5
max_interval = "100ms"
jitter = 0.5
"#;
    let (_db, client, run) = start("order", &eps, policy).await;
    client
        .execute(
            "INSERT INTO leads SELECT 'r' || g, 'n', 0 FROM generate_series(1, 50) g",
            &[],
        )
        .await
        .unwrap();
    for v in 1..=20 {
        client
            .execute("UPDATE leads SET score = $1", &[&v])
            .await
            .unwrap();
    }
    wait_status(
        &client,
        "crm",
        "succeeded",
        50 * 21,
        Duration::from_secs(120),
    )
    .await;
    let log = log.lock().unwrap().clone();
    assert!(log.iter().any(|l| !l.2), "some attempts failed");
    let mut delivered: HashMap<String, i64> = HashMap::new(); // last version answered 200
    let mut parallel_records = std::collections::HashSet::new();
    for (record, version, ok) in &log {
        let last = delivered.get(record).copied().unwrap_or(-1);
        assert_eq!(
            *version,
            last + 1,
            "record {record}: version {version} attempted while version {} was not yet delivered",
            last + 1
        );
        if *ok {
            delivered.insert(record.clone(), *version);
        }
        parallel_records.insert(record.clone());
    }
    assert_eq!(delivered.len(), 50);
    assert!(delivered.values().all(|v| *v == 20));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_does_not_hold_back_the_others() {
    let slow = Receiver::start(Behaviour::script(|_, _| {
        Reply::Hang(Duration::from_secs(30))
    }))
    .await;
    let fast = Receiver::start(Behaviour::AlwaysOk).await;
    let eps = [
        endpoint("slow", &format!("{}s", slow.url()), "")
            .replace("timeout = \"1s\"", "timeout = \"20s\""),
        endpoint("fast", &format!("{}f", fast.url()), ""),
    ]
    .concat();
    let policy = "[delivery]\nlease = \"60s\"\nmax_in_flight = 8\n";
    let (_db, client, run) = start("slow_fast", &eps, policy).await;
    client
        .execute(
            "INSERT INTO leads SELECT 'r' || g, 'n', 0 FROM generate_series(1, 60) g",
            &[],
        )
        .await
        .unwrap();
    fast.wait_for_requests(60, Duration::from_secs(15)).await;
    wait_status(&client, "fast", "succeeded", 60, Duration::from_secs(10)).await;
    // Every fast delivery is done while the slow endpoint's first attempts
    // are still hanging.
    let slow_attempts: i64 = client
        .query_one(
            "SELECT count(*) FROM walhook.attempts a JOIN walhook.deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = 'slow'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slow_attempts, 0);
    assert!(!slow.requests().is_empty(), "the slow endpoint was tried");
    run.shutdown.cancel();
    // Graceful stop waits for in-flight attempts up to their timeout; do not
    // wait for that here.
    drop(run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_the_queue_and_survive_kill_9() {
    // The receiver always answers 200, so any second request for one event
    // (while no process died) is a double send.
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let doubled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (seen2, doubled2) = (seen.clone(), doubled.clone());
    let recv = Receiver::start(Behaviour::script(move |r: &RecordedRequest, _| {
        let id = r.header("x-superleap-event-id").unwrap().to_string();
        let mut seen = seen2.lock().unwrap();
        let n = seen.entry(id).or_default();
        *n += 1;
        if *n > 1 {
            doubled2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        // Slow answers keep many deliveries in flight in both processes.
        Reply::Hang(Duration::from_millis(30))
    }))
    .await;
    let db = fresh_db("two_procs").await;
    db.psql(LEADS).await;
    let eps = endpoint("crm", &format!("{}h", recv.url()), "");
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!("{eps}\n[delivery]\nlease = \"5s\"\nmax_in_flight = 16\n[admin]\nlisten = \"\"\n"),
    );
    app::setup(&app::parse(&text)).await;
    let (_dir, path) = app::write_config(&text);
    let client = db.connect().await;
    let mut a = app::spawn_run(&path, &["--no-admin"]);
    let mut b = app::spawn_run(&path, &["--no-admin"]);
    client
        .execute(
            "INSERT INTO leads SELECT 'a' || g, 'n', 0 FROM generate_series(1, 300) g",
            &[],
        )
        .await
        .unwrap();
    wait_status(&client, "crm", "succeeded", 300, Duration::from_secs(60)).await;
    let reqs = recv.requests();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in &reqs {
        *per_id
            .entry(r.header("x-superleap-event-id").unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_id.len(), 300);
    assert!(per_id.values().all(|n| *n == 1), "each delivery sent once");
    assert_eq!(doubled.load(std::sync::atomic::Ordering::SeqCst), 0);

    // kill -9 one process while more work arrives: nothing is lost.
    client
        .execute(
            "INSERT INTO leads SELECT 'b' || g, 'n', 0 FROM generate_series(1, 300) g",
            &[],
        )
        .await
        .unwrap();
    recv.wait_for_requests(320, Duration::from_secs(30)).await;
    app::kill9(&mut a);
    wait_status(&client, "crm", "succeeded", 600, Duration::from_secs(60)).await;
    let ids: std::collections::HashSet<String> = recv
        .requests()
        .iter()
        .map(|r| r.header("x-superleap-event-id").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 600, "every event delivered at least once");
    app::kill9(&mut b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_failing_continuously_is_disabled_and_notified() {
    let down = Receiver::start(Behaviour::script(|_, _| Reply::status(500))).await;
    let ops = Receiver::start(Behaviour::AlwaysOk).await;
    let eps = [
        endpoint(
            "flaky",
            &format!("{}x", down.url()),
            "events = [\"lead.*\"]",
        ),
        endpoint(
            "ops",
            &format!("{}ops", ops.url()),
            "events = [\"endpoint.disabled\"]",
        ),
    ]
    .concat();
    let delivery = FAST_RETRY.replace(
        "[delivery]\n",
        "[delivery]\nendpoint_disable_after = \"1500ms\"\nnotify_endpoint = \"ops\"\n",
    );
    let (_db, client, run) = start("ep_disable", &eps, &delivery).await;
    client
        .execute("INSERT INTO leads VALUES ('l1', 'Ada', 1)", &[])
        .await
        .unwrap();
    let notes = ops.wait_for_requests(1, Duration::from_secs(20)).await;
    assert_eq!(
        notes[0].header("x-superleap-event"),
        Some("endpoint.disabled")
    );
    assert_eq!(notes[0].json()["after"]["endpoint"], "flaky");
    let row = client
        .query_one(
            "SELECT enabled, disabled_reason, disabled_at - failing_since FROM walhook.endpoints WHERE id = 'flaky'",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert!(row.get::<_, String>(1).contains("failing continuously"));
    // The delivery itself is kept, waiting for the endpoint to come back.
    let s = states(&client).await;
    assert_eq!(s["flaky"].get("retrying"), Some(&1));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_attempts_and_exits_zero() {
    let recv = Receiver::start(Behaviour::script(|_, _| {
        Reply::Hang(Duration::from_millis(1500))
    }))
    .await;
    let db = fresh_db("sigterm").await;
    db.psql(LEADS).await;
    let eps = endpoint("crm", &format!("{}h", recv.url()), "")
        .replace("timeout = \"1s\"", "timeout = \"5s\"");
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!("{eps}\n[admin]\nlisten = \"\"\n"),
    );
    app::setup(&app::parse(&text)).await;
    let (_dir, path) = app::write_config(&text);
    let client = db.connect().await;
    let mut child = app::spawn_run(&path, &[]);
    client
        .execute("INSERT INTO leads VALUES ('l1', 'Ada', 1)", &[])
        .await
        .unwrap();
    let committed: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    recv.wait_for_requests(1, Duration::from_secs(20)).await;
    // The first attempt is in flight (the receiver answers after 1.5 s):
    // stop now. It goes to the retry ledger after spill_after (1 s), goes
    // on, and its answer is recorded there before the process exits.
    let stopped_at = std::time::Instant::now();
    send_signal(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "graceful stop exits 0: {status:?}");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped_at.elapsed()
    );
    let row = client
        .query_one(
            "SELECT status, attempts, lease_owner FROM walhook.deliveries",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "succeeded",
        "the in-flight attempt finished and was recorded"
    );
    assert_eq!(row.get::<_, i32>(1), 1);
    assert_eq!(row.get::<_, Option<String>>(2), None);
    assert_eq!(recv.requests().len(), 1, "sent once");
    // The slot was acknowledged before the stream closed: nothing to replay.
    let confirmed: bool = client
        .query_one(
            "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name, &committed],
        )
        .await
        .unwrap()
        .get(0);
    assert!(confirmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_none_sends_a_records_events_in_parallel() {
    // Each answer takes 400 ms. With per-record order, the five events of one
    // row would arrive at least 400 ms apart; with "none" they all go out
    // while the first is still unanswered.
    let recv = Receiver::start(Behaviour::script(|_, _| {
        Reply::Hang(Duration::from_millis(400))
    }))
    .await;
    let eps = endpoint("crm", &format!("{}h", recv.url()), "")
        .replace("timeout = \"1s\"", "timeout = \"5s\"");
    let policy = "[delivery]\nordering = \"none\"\nlease = \"30s\"\n";
    let (_db, client, run) = start("ordering_none", &eps, policy).await;
    client
        .batch_execute(
            "BEGIN; INSERT INTO leads VALUES ('l1', 'a', 0); UPDATE leads SET score = 1; UPDATE leads SET score = 2;
             UPDATE leads SET score = 3; UPDATE leads SET score = 4; COMMIT;",
        )
        .await
        .unwrap();
    let reqs = recv.wait_for_requests(5, Duration::from_secs(10)).await;
    let first = reqs[0].received_at;
    let last = reqs[4].received_at;
    let spread = last.duration_since(first).unwrap();
    assert!(
        spread < Duration::from_millis(400),
        "all five in flight together, spread {spread:?}"
    );
    wait_status(&client, "crm", "succeeded", 5, Duration::from_secs(10)).await;
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_session_lost_mid_attempt_gives_its_leases_up() {
    // The first five requests are answered after 2 s; by then the
    // dispatcher's connection is gone, so their results cannot be recorded.
    // The deliveries must be claimed and sent again once their leases run
    // out, not stay leased (and renewed) for as long as the process lives.
    let recv = Receiver::start(Behaviour::script(|_, n| {
        if n < 5 {
            Reply::Hang(Duration::from_secs(2))
        } else {
            Reply::status(200)
        }
    }))
    .await;
    let db = fresh_db("lost_session").await;
    db.psql(LEADS).await;
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!(
            "{}\n[delivery]\nlease = \"3s\"\n[admin]\nlisten = \"\"\n",
            endpoint("crm", recv.url(), "timeout = \"2500ms\"").replace("timeout = \"1s\"\n", "")
        ),
    );
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let client = db.connect().await;
    // Captured without dispatch: every delivery waits in the ledger.
    let capture = InProcess::capture_only(cfg.clone());
    for i in 0..5 {
        client
            .execute(
                "INSERT INTO leads (id, name, score) VALUES ($1, 'n', 0)",
                &[&format!("l{i}")],
            )
            .await
            .unwrap();
    }
    let count = |status: &'static str| {
        let db = db.clone();
        async move {
            let c = db.connect().await;
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM walhook.deliveries WHERE status = $1",
                    &[&status],
                )
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    wait_until(
        Duration::from_secs(20),
        "five deliveries in the ledger",
        || async { (count("pending").await == 5).then_some(()) },
    )
    .await;
    capture.stop().await;
    let dispatch = InProcess::start(
        cfg,
        walhook::Roles {
            capture: false,
            dispatch: true,
            admin: false,
        },
    );
    recv.wait_for_requests(5, Duration::from_secs(20)).await;
    let killed: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE application_name = 'walhook dispatch' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "the dispatcher's session was found");
    wait_until(
        Duration::from_secs(30),
        "every delivery recorded as succeeded",
        || async { (count("succeeded").await == 5).then_some(()) },
    )
    .await;
    assert!(
        recv.requests().len() >= 10,
        "each was sent again after its lease ran out"
    );
    dispatch.stop().await;
}
