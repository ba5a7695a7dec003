//! Per-endpoint policy against a real database and receivers: an endpoint's
//! retry schedule over the global one, extra headers that reach the receiver
//! and nothing else (logs, ledger, API), `rate_limit` spacing requests, and
//! `max_in_flight = 1` holding across two processes. Content filters
//! (`when_changed`, `filter`) are in [`content`].

mod content;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::common::app::{self, InProcess, LEADS, LEADS_OBJECTS};
use crate::common::{
    Behaviour, Receiver, RecordedRequest, Reply, free_port, fresh_db, send_signal, wait_until,
};

/// An endpoint on `url` with `extra` keys.
fn endpoint(id: &str, url: &str, extra: &str) -> String {
    format!(
        "[[endpoints]]\nid = \"{id}\"\nurl = \"{url}\"\nsecret = \"secret-{id}\"\ntimeout = \"5s\"\n{extra}\n"
    )
}

/// Retries within a second, for tests.
const QUICK_RETRY: &str = "[delivery.retry]\ninitial = \"100ms\"\nmax_interval = \"300ms\"\n";

/// Time between consecutive arrivals, in arrival order.
fn gaps(requests: &[RecordedRequest]) -> Vec<Duration> {
    let mut at: Vec<SystemTime> = requests.iter().map(|r| r.received_at).collect();
    at.sort();
    at.windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap_or_default())
        .collect()
}

/// Open deliveries (pending or retrying) in the ledger.
async fn open_deliveries(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM walhook.deliveries WHERE status IN ('pending', 'retrying')",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// `walhook run --config PATH` as a child with `RUST_LOG=debug`, its
/// stderr written to `log`, and `env` set.
fn spawn_logged(config: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let stderr = std::fs::File::create(log).expect("log file");
    Command::new(app::bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn walhook run")
}

/// SIGTERM, then wait for the exit (a graceful stop flushes the logs).
async fn stop_child(mut child: Child) {
    send_signal(child.id(), "TERM");
    tokio::task::spawn_blocking(move || child.wait().expect("wait for walhook"))
        .await
        .expect("wait task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_retry_schedule_overrides_the_global_policy() {
    let db = fresh_db("policy_retry").await;
    db.psql(LEADS).await;
    let quick = Receiver::start(Behaviour::script(|_, _| Reply::status(500))).await;
    let slow = Receiver::start(Behaviour::script(|_, _| Reply::status(500))).await;
    // Globally the first retry is an hour away; `quick` retries after
    // 300 ms, then 600 ms, and gives up after 3 attempts (schedule + 1).
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!(
            "{}{}[admin]\nlisten = \"\"\n[delivery.retry]\ninitial = \"1h\"\nmax_interval = \"2h\"\n",
            endpoint(
                "quick",
                quick.url(),
                r#"retry = { schedule = ["300ms", "600ms"], jitter = 0 }"#
            ),
            endpoint("slow", slow.url(), ""),
        ),
    );
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let run = InProcess::start(cfg, walhook::Roles::default());
    let client = db.connect().await;
    client
        .execute("INSERT INTO leads VALUES ('r1', 'Ada', 1)", &[])
        .await
        .unwrap();
    let requests = quick.wait_for_requests(3, Duration::from_secs(30)).await;
    let status = |id: &'static str| {
        let client = &client;
        async move {
            let r = client
                .query_one(
                    "SELECT status, attempts, next_attempt_at > now() + interval '40 minutes'
                     FROM walhook.deliveries WHERE endpoint_id = $1",
                    &[&id],
                )
                .await
                .ok()?;
            Some((
                r.get::<_, String>(0),
                r.get::<_, i32>(1),
                r.get::<_, bool>(2),
            ))
        }
    };
    wait_until(
        Duration::from_secs(20),
        "quick's delivery disabled",
        || async {
            status("quick")
                .await
                .filter(|(s, _, _)| s == "disabled")
                .map(|_| ())
        },
    )
    .await;
    let g = gaps(&requests);
    assert!(g[0] >= Duration::from_millis(300), "{g:?}");
    assert!(g[1] >= Duration::from_millis(600), "{g:?}");
    assert!(g.iter().all(|d| *d < Duration::from_secs(10)), "{g:?}");
    assert_eq!(status("quick").await.unwrap().1, 3);
    // The other endpoint keeps the global policy: one attempt, the next in an hour.
    let (state, attempts, far) = status("slow").await.unwrap();
    assert_eq!((state.as_str(), attempts, far), ("retrying", 1, true));
    assert_eq!(slow.requests().len(), 1);
    assert_eq!(quick.requests().len(), 3, "no attempt after disabled");
    run.stop().await;
}

const API_KEY: &str = "HDRKEY-5e8a1c3f9b";
const TENANT: &str = "HDRTENANT-2d7f";
const ADMIN_TOKEN: &str = "policy-admin-token";

fn assert_no_header_value(what: &str, text: &str) {
    for s in [API_KEY, TENANT] {
        assert!(!text.contains(s), "{what} contains {s}:\n{text}");
    }
}

/// GET `path` of the admin API with the token; the body.
async fn admin_get(addr: &str, path: &str) -> String {
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin HTTP answers");
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_headers_reach_the_receiver_and_nothing_else() {
    let db = fresh_db("policy_headers").await;
    db.psql(LEADS).await;
    // The first attempt fails, so both attempts are in the ledger.
    let recv = Receiver::start(Behaviour::FailThenOk {
        failures: 1,
        status: 500,
    })
    .await;
    let admin = format!("127.0.0.1:{}", free_port());
    let headers = format!(
        r#"headers = {{ x-api-key = {{ env = "POLICY_API_KEY" }}, X-Tenant = "{TENANT}" }}"#
    );
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!(
            "{}[admin]\nlisten = \"{admin}\"\ntoken = \"{ADMIN_TOKEN}\"\n{QUICK_RETRY}",
            endpoint("crm", recv.url(), &headers)
        ),
    );
    let env = |name: &str| (name == "POLICY_API_KEY").then(|| API_KEY.to_string());
    let cfg = walhook::config::Config::from_toml_str_with_env(&text, "test.toml", &env).unwrap();
    app::setup(&cfg).await;
    let (dir, path) = app::write_config(&text);
    let log = dir.path().join("walhook.log");
    let child = spawn_logged(&path, &log, &[("POLICY_API_KEY", API_KEY)]);
    let client = db.connect().await;
    client
        .execute("INSERT INTO leads VALUES ('h1', 'Ada', 1)", &[])
        .await
        .unwrap();
    let requests = recv.wait_for_requests(2, Duration::from_secs(30)).await;
    for r in &requests {
        assert_eq!(r.header("x-api-key"), Some(API_KEY));
        assert_eq!(r.header("x-tenant"), Some(TENANT));
    }
    let id: i64 = wait_until(Duration::from_secs(20), "the retry recorded", || async {
        let r = client
            .query_one(
                "SELECT id FROM walhook.deliveries WHERE status = 'succeeded'",
                &[],
            )
            .await
            .ok()?;
        Some(r.get(0))
    })
    .await;
    // The attempts show the names with the values masked.
    let recorded = client
        .query("SELECT request_headers FROM walhook.attempts", &[])
        .await
        .unwrap();
    assert_eq!(recorded.len(), 2);
    for row in &recorded {
        let h: serde_json::Value = row.get(0);
        assert_eq!(h["x-api-key"], "***", "{h}");
        assert_eq!(h["x-tenant"], "***", "{h}");
        assert_eq!(h["x-superleap-event"], "lead.create", "{h}");
    }
    // Nowhere in the ledger...
    for table in walhook::ledger::schema::TABLES {
        let rows = client
            .query(&format!("SELECT t::text FROM walhook.{table} t"), &[])
            .await
            .unwrap();
        let all: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_no_header_value(&format!("walhook.{table}"), &all.join("\n"));
    }
    // ...nor in the API or the page...
    let shown = admin_get(&admin, &format!("/api/deliveries/{id}")).await;
    assert!(
        shown.contains("x-api-key") && shown.contains("***"),
        "{shown}"
    );
    for path in [
        format!("/api/deliveries/{id}"),
        "/api/deliveries".into(),
        "/api/endpoints".into(),
        "/api/status".into(),
        format!("/?token={ADMIN_TOKEN}"),
    ] {
        assert_no_header_value(&path, &admin_get(&admin, &path).await);
    }
    // ...nor in the debug log.
    stop_child(child).await;
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("attempt finished"), "debug log: {logged}");
    assert_no_header_value("the debug log", &logged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spaces_requests() {
    let db = fresh_db("policy_rate").await;
    db.psql(LEADS).await;
    let recv = Receiver::start(Behaviour::AlwaysOk).await;
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!(
            "{}[admin]\nlisten = \"\"\n",
            endpoint("crm", recv.url(), "rate_limit = 5")
        ),
    );
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let run = InProcess::start(cfg, walhook::Roles::default());
    let client = db.connect().await;
    client
        .execute(
            "INSERT INTO leads SELECT 'r' || i, 'Ada', i FROM generate_series(1, 6) i",
            &[],
        )
        .await
        .unwrap();
    let requests = recv.wait_for_requests(6, Duration::from_secs(30)).await;
    // One request per 200 ms: arrivals may jitter a little, the whole run
    // cannot be shorter than five intervals.
    let g = gaps(&requests);
    assert!(g.iter().all(|d| *d >= Duration::from_millis(120)), "{g:?}");
    let total: Duration = g.iter().sum();
    assert!(total >= Duration::from_millis(950), "{g:?}");
    wait_until(Duration::from_secs(10), "nothing open", || async {
        (open_deliveries(&client).await == 0).then_some(())
    })
    .await;
    assert_eq!(recv.requests().len(), 6);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_1_holds_across_two_processes() {
    let db = fresh_db("policy_inflight").await;
    db.psql(LEADS).await;
    // Each request is held 100 ms before its answer: two open at once would
    // arrive less than 100 ms apart.
    let hold = Duration::from_millis(100);
    let recv = Receiver::start(Behaviour::script(move |_, _| Reply::Hang(hold))).await;
    let text = app::config_text(
        &db,
        LEADS_OBJECTS,
        &format!(
            "{}[admin]\nlisten = \"\"\n",
            endpoint("crm", recv.url(), "max_in_flight = 1")
        ),
    );
    app::setup(&app::parse(&text)).await;
    let (_dir, path) = app::write_config(&text);
    let mut first = app::spawn_run(&path, &["--no-admin"]);
    let mut second = app::spawn_run(&path, &["--no-admin"]);
    let client = db.connect().await;
    client
        .execute(
            "INSERT INTO leads SELECT 'm' || i, 'Ada', i FROM generate_series(1, 12) i",
            &[],
        )
        .await
        .unwrap();
    let requests = recv.wait_for_requests(12, Duration::from_secs(60)).await;
    let g = gaps(&requests);
    assert!(
        g.iter().all(|d| *d >= hold),
        "two requests open at once: {g:?}"
    );
    let ids: std::collections::HashSet<&str> = requests
        .iter()
        .map(|r| r.header("x-superleap-event-id").unwrap())
        .collect();
    assert_eq!(ids.len(), 12);
    wait_until(Duration::from_secs(20), "nothing open", || async {
        (open_deliveries(&client).await == 0).then_some(())
    })
    .await;
    assert_eq!(recv.requests().len(), 12);
    app::kill9(&mut first);
    app::kill9(&mut second);
}
