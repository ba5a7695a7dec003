//! Operations on real deliveries: `deliveries retry` chosen by a filter
//! (`--since`/`--until`, `--event`, `--status`, `--endpoint`, `--dry-run`),
//! `deliveries resend` to another endpoint, deliveries of a disabled
//! endpoint shown as held, and the `Location` and `Retry-After` headers kept
//! with an attempt; the same through the admin API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::admin::cli;
use crate::common::app::{self, InProcess, LEADS, LEADS_OBJECTS};
use crate::common::{Behaviour, Receiver, Reply, TestDb, free_port, fresh_db, wait_until};

const TOKEN: &str = "ops-admin-token";
const OLD_SECRET: &str = "old-endpoint-secret";
const NEW_SECRET: &str = "new-endpoint-secret";
const WAIT: Duration = Duration::from_secs(30);
/// Attempts recorded (none in flight) of endpoint a, of b.
const ATTEMPTS_A: &str = "SELECT coalesce(sum(attempts), 0)::int8 FROM walhook.deliveries
     WHERE endpoint_id = 'a' AND lease_owner IS NULL";
const ATTEMPTS_B: &str = "SELECT coalesce(sum(attempts), 0)::int8 FROM walhook.deliveries
     WHERE endpoint_id = 'b' AND lease_owner IS NULL";

/// A receiver answering 500 to everything.
async fn failing() -> Receiver {
    Receiver::start(Behaviour::script(|_, _| Reply::status(500))).await
}

/// walhook running (capture, dispatch, admin) over `endpoints`: ordering
/// off, one retry an hour (so a failed delivery stays `retrying`), `extra`
/// appended.
struct Ops {
    _db: TestDb,
    client: tokio_postgres::Client,
    config: PathBuf,
    _dir: tempfile::TempDir,
    admin: SocketAddr,
    run: Option<InProcess>,
}

impl Ops {
    async fn start(hint: &str, endpoints: &str, extra: &str) -> Ops {
        let db = fresh_db(hint).await;
        db.psql(LEADS).await;
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let text = app::config_text(
            &db,
            LEADS_OBJECTS,
            &format!(
                "{endpoints}\n[delivery]\nordering = \"none\"\n\n[delivery.retry]\nschedule = [\"1h\"]\n\n\
                 [admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\n{extra}\n"
            ),
        );
        let (dir, config) = app::write_config(&text);
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
        let client = db.connect().await;
        Ops {
            _db: db,
            client,
            config,
            _dir: dir,
            admin,
            run: Some(run),
        }
    }

    async fn exec(&self, sql: &str) {
        self.client.batch_execute(sql).await.expect(sql);
    }

    /// One number from the ledger.
    async fn num(&self, sql: &str) -> i64 {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// Waits until `sql` (one bigint) gives `want`.
    async fn wait_num(&self, sql: &str, want: i64) {
        wait_until(WAIT, &format!("{sql} = {want}"), || async {
            (self.num(sql).await == want).then_some(())
        })
        .await;
    }

    /// The ledger's `status` = `status` deliveries of `endpoint` with at
    /// least one attempt, once there are `n` of them.
    async fn wait_attempted(&self, endpoint: &str, status: &str, n: i64) {
        self.wait_num(
            &format!(
                "SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = '{endpoint}'
                 AND status = '{status}' AND attempts >= 1 AND lease_owner IS NULL"
            ),
            n,
        )
        .await;
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (success, out, err) = cli(&self.config, args).await;
        assert!(success, "walhook {args:?} failed:\n{err}\n{out}");
        out
    }

    async fn ok_json(&self, args: &[&str]) -> Value {
        let out = self.ok(args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}:\n{out}"))
    }

    async fn fails(&self, args: &[&str], needle: &str) -> String {
        let (success, out, err) = cli(&self.config, args).await;
        assert!(!success, "walhook {args:?} should fail:\n{out}");
        assert!(err.contains(needle), "{args:?}: no {needle:?} in:\n{err}");
        err
    }

    /// An admin API call with the token: (status, JSON body).
    async fn api(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let url = format!("http://{}{path}", self.admin);
        let http = reqwest::Client::new();
        let mut req = match method {
            "GET" => http.get(url),
            _ => http.post(url),
        };
        req = req.bearer_auth(TOKEN).timeout(Duration::from_secs(20));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("admin API answers");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Stops walhook (the database and config stay).
    async fn halt(&mut self) {
        if let Some(run) = self.run.take() {
            run.stop().await;
        }
    }
}

fn endpoint(id: &str, rx: &Receiver, secret: &str, more: &str) -> String {
    format!(
        "[[endpoints]]\nid = \"{id}\"\nurl = \"{}hooks/{id}\"\nsecret = \"{secret}\"\ntimeout = \"5s\"\n{more}\n",
        rx.url()
    )
}

/// The record key (`lead:l1` → `l1`) of each request, in arrival order.
fn keys(requests: &[crate::common::RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            r.json()["after"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_selects_by_time_event_status_and_endpoint() {
    let (a, b) = (failing().await, failing().await);
    let endpoints = format!(
        "{}{}",
        endpoint("a", &a, OLD_SECRET, ""),
        // b gives up at its first failure: its deliveries end `disabled`.
        endpoint("b", &b, NEW_SECRET, "retry = { max_attempts = 1 }")
    );
    let mut s = Ops::start("ops_retry", &endpoints, "").await;
    s.exec("INSERT INTO leads VALUES ('l1', 'a', 1), ('l2', 'b', 1)")
        .await;
    s.wait_attempted("a", "retrying", 2).await;
    s.wait_attempted("b", "disabled", 2).await;
    let row = s
        .client
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .unwrap();
    let mid: String = row.get(0);
    s.exec("INSERT INTO leads VALUES ('l3', 'c', 1); UPDATE leads SET score = 2 WHERE id = 'l1'")
        .await;
    s.wait_attempted("a", "retrying", 4).await;
    s.wait_attempted("b", "disabled", 4).await;
    assert_eq!(a.requests().len(), 4);

    // --dry-run counts and changes nothing.
    let r = s
        .ok_json(&[
            "deliveries",
            "retry",
            "--status",
            "disabled",
            "--dry-run",
            "--json",
        ])
        .await;
    assert_eq!(
        (r["requeued"].as_i64(), r["dry_run"].as_bool()),
        (Some(4), Some(true)),
        "{r}"
    );
    let out = s
        .ok(&["deliveries", "retry", "--status", "disabled", "--dry-run"])
        .await;
    assert!(
        out.contains("4 failed deliveries would be queued again"),
        "{out}"
    );
    s.wait_attempted("b", "disabled", 4).await;

    // --until and --endpoint: a's deliveries created before `mid`.
    let r = s
        .ok_json(&[
            "deliveries",
            "retry",
            "--until",
            &mid,
            "--endpoint",
            "a",
            "--json",
        ])
        .await;
    assert_eq!(r["requeued"], 2, "{r}");
    let got = a.wait_for_requests(6, WAIT).await;
    let mut again = keys(&got[4..]);
    again.sort();
    assert_eq!(again, ["l1", "l2"]);
    for r in &got[4..] {
        assert_eq!(r.header("x-superleap-event"), Some("lead.create"));
    }

    // --since and --event: the update, to both endpoints.
    let r = s
        .ok_json(&[
            "deliveries",
            "retry",
            "--since",
            &mid,
            "--event",
            "lead.update",
            "--json",
        ])
        .await;
    assert_eq!(r["requeued"], 2, "{r}");
    let got = b.wait_for_requests(5, WAIT).await;
    assert_eq!(got[4].header("x-superleap-event"), Some("lead.update"));
    assert_eq!(keys(&got[4..]), ["l1"]);
    // Every re-queued attempt recorded: a 4 + 2 + 1, b 4 + 1.
    s.wait_num(ATTEMPTS_A, 7).await;
    s.wait_num(ATTEMPTS_B, 5).await;

    // Combined (AND): a's retrying lead.* deliveries since `mid`: l3's create and l1's update.
    let r = s
        .ok_json(&[
            "deliveries",
            "retry",
            "--status",
            "retrying",
            "--event",
            "lead.*",
            "--since",
            &mid,
            "--dry-run",
            "--json",
        ])
        .await;
    assert_eq!(r["requeued"], 2, "{r}");

    // A delivery whose lease another process holds is left alone.
    let leased = s
        .num("SELECT min(id) FROM walhook.deliveries WHERE endpoint_id = 'a'")
        .await;
    s.exec(&format!(
        "UPDATE walhook.deliveries SET lease_owner = 'elsewhere', lease_until = now() + interval '1 hour'
         WHERE id = {leased}"
    ))
    .await;
    let r = s
        .ok_json(&[
            "deliveries",
            "retry",
            "--all-failed",
            "--endpoint",
            "a",
            "--dry-run",
            "--json",
        ])
        .await;
    assert_eq!(r["requeued"], 3, "{r}");
    let r = s
        .ok_json(&[
            "deliveries",
            "retry",
            "--all-failed",
            "--endpoint",
            "a",
            "--json",
        ])
        .await;
    assert_eq!(
        (r["requeued"].as_i64(), r["endpoint"].as_str()),
        (Some(3), Some("a")),
        "{r}"
    );
    assert_eq!(
        s.num(&format!(
            "SELECT count(*) FROM walhook.deliveries WHERE id = {leased} AND lease_owner = 'elsewhere'"
        ))
        .await,
        1
    );

    // What retry refuses.
    s.fails(&["deliveries", "retry", "--status", "succeeded"], "resend")
        .await;
    s.fails(
        &["deliveries", "retry", "--status", "held"],
        "endpoints enable",
    )
    .await;
    s.fails(
        &["deliveries", "retry", "--until", "soonish"],
        "invalid until",
    )
    .await;
    s.fails(
        &["deliveries", "retry", "--endpoint", "zz"],
        "unknown endpoint `zz`",
    )
    .await;
    s.fails(
        &["deliveries", "retry", "7", "--event", "x"],
        "cannot be used with",
    )
    .await;

    // The admin API: the same filter as a JSON body.
    let (code, r) = s
        .api(
            "POST",
            "/api/deliveries/retry",
            Some(r#"{"status": "disabled", "event": "lead.create", "dry_run": true}"#),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(r["requeued"], 3, "{r}");
    let (code, r) = s
        .api(
            "POST",
            "/api/deliveries/retry",
            Some(r#"{"status": "succeeded"}"#),
        )
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{r}");
    assert!(r["message"].as_str().unwrap().contains("resend"), "{r}");
    let (code, r) = s
        .api("POST", "/api/deliveries/retry", Some(r#"{"evnt": "x"}"#))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{r}");
    let unauthorized = reqwest::Client::new()
        .post(format!("http://{}/api/deliveries/retry", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    let (code, r) = s
        .api(
            "POST",
            "/api/deliveries/retry",
            Some(r#"{"endpoint": "b", "event": "lead.update"}"#),
        )
        .await;
    assert_eq!(
        (code, r["requeued"].as_i64()),
        (StatusCode::OK, Some(1)),
        "{r}"
    );
    let got = b.wait_for_requests(6, WAIT).await;
    assert_eq!(got[5].header("x-superleap-event"), Some("lead.update"));
    s.halt().await;
}

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_sends_a_kept_event_to_another_endpoint() {
    // `old` fails its first request, so that event waits in the ledger with its body.
    let old = Receiver::start(Behaviour::FailThenOk {
        failures: 1,
        status: 500,
    })
    .await;
    let new = Receiver::start(Behaviour::AlwaysOk).await;
    let endpoints = format!(
        "{}{}",
        endpoint(
            "old",
            &old,
            OLD_SECRET,
            "retry = { schedule = [\"100ms\"] }"
        ),
        // Subscribed to nothing that happens: it gets only what is resent.
        endpoint("new", &new, NEW_SECRET, "events = [\"lead.delete\"]")
    );
    let mut s = Ops::start("ops_resend", &endpoints, "").await;
    s.exec("INSERT INTO leads VALUES ('kept', 'a', 1)").await;
    s.wait_num(
        "SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = 'old' AND status = 'succeeded'",
        1,
    )
    .await;
    s.exec("INSERT INTO leads VALUES ('fast', 'b', 1)").await;
    s.wait_num(
        "SELECT count(*) FROM walhook.delivered WHERE endpoint_id = 'old'",
        1,
    )
    .await;
    let kept_id: String = s
        .client
        .query_one(
            "SELECT event_id FROM walhook.events WHERE record_key = 'kept'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let fast_id: String = s
        .client
        .query_one(
            "SELECT event_id FROM walhook.delivered WHERE record = 'lead:fast'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(new.requests().is_empty());

    let r = s
        .ok_json(&[
            "deliveries",
            "resend",
            &kept_id,
            "--endpoint",
            "new",
            "--json",
        ])
        .await;
    assert_eq!(
        (r["endpoint"].as_str(), r["reopened"].as_bool()),
        (Some("new"), Some(false)),
        "{r}"
    );
    let delivery = r["delivery_id"].as_i64().unwrap();
    let got = new.wait_for_requests(1, WAIT).await;
    let sent_before = old
        .requests()
        .into_iter()
        .find(|q| q.header("x-superleap-event-id") == Some(kept_id.as_str()))
        .expect("old got the event");
    assert_eq!(
        got[0].body, sent_before.body,
        "the same body, byte for byte"
    );
    assert_eq!(
        got[0].header("x-superleap-event-id"),
        Some(kept_id.as_str())
    );
    assert_eq!(
        got[0].header("x-superleap-signature"),
        Some(signature(NEW_SECRET, &got[0].body).as_str()),
        "signed with the new endpoint's secret"
    );
    assert_ne!(
        got[0].header("x-superleap-signature"),
        sent_before.header("x-superleap-signature")
    );
    s.wait_num(
        &format!(
            "SELECT count(*) FROM walhook.deliveries WHERE id = {delivery} AND status = 'succeeded'"
        ),
        1,
    )
    .await;
    let shown = s.ok_json(&["deliveries", "show", &kept_id, "--json"]).await;
    let mut eps: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["endpoint"].as_str().unwrap())
        .collect();
    eps.sort();
    assert_eq!(eps, ["new", "old"]);

    // Again: its succeeded delivery is opened again.
    let out = s
        .ok(&["deliveries", "resend", &kept_id, "--endpoint", "new"])
        .await;
    assert!(out.contains(&format!("as delivery {delivery}")), "{out}");
    new.wait_for_requests(2, WAIT).await;

    // What cannot be resent.
    s.fails(
        &["deliveries", "resend", &fast_id, "--endpoint", "new"],
        "keep_bodies",
    )
    .await;
    s.fails(
        &[
            "deliveries",
            "resend",
            "app:lead:1:nope:lead.create:abcdefgh",
            "--endpoint",
            "new",
        ],
        "no event with id",
    )
    .await;
    s.fails(
        &["deliveries", "resend", &kept_id, "--endpoint", "nope"],
        "unknown endpoint `nope`",
    )
    .await;

    // The admin API.
    s.wait_num(
        &format!(
            "SELECT count(*) FROM walhook.deliveries WHERE id = {delivery} AND status = 'succeeded'"
        ),
        1,
    )
    .await;
    let path = format!("/api/events/{kept_id}/resend");
    let (code, r) = s.api("POST", &path, Some(r#"{"endpoint": "new"}"#)).await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(
        (r["delivery_id"].as_i64(), r["reopened"].as_bool()),
        (Some(delivery), Some(true))
    );
    new.wait_for_requests(3, WAIT).await;
    let (code, r) = s.api("POST", &path, Some("{}")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{r}");
    let (code, r) = s.api("POST", &path, Some(r#"{"endpoint": "nope"}"#)).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{r}");
    let (code, r) = s
        .api(
            "POST",
            &format!("/api/events/{fast_id}/resend"),
            Some(r#"{"endpoint": "new"}"#),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("keep_bodies"),
        "{r}"
    );
    s.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_keep_location_and_retry_after_and_held_shows_the_reason() {
    let rx = Receiver::start(Behaviour::script(|req, _| {
        if req.json()["after"]["id"] == "moved" {
            Reply::Status(
                302,
                vec![(
                    "location".into(),
                    "https://elsewhere.example/new-hook".into(),
                )],
                Bytes::new(),
            )
        } else {
            Reply::Status(
                503,
                vec![("retry-after".into(), "120".into())],
                Bytes::from_static(b"busy"),
            )
        }
    }))
    .await;
    let mut s = Ops::start("ops_held", &endpoint("a", &rx, OLD_SECRET, ""), "").await;
    s.exec("INSERT INTO leads VALUES ('moved', 'a', 1), ('busy', 'b', 1)")
        .await;
    s.wait_attempted("a", "retrying", 2).await;
    let id_of = |key: &str| {
        format!(
            "SELECT d.id FROM walhook.deliveries d JOIN walhook.events e ON e.seq = d.event_seq
             WHERE e.record_key = '{key}'"
        )
    };
    let moved = s.num(&id_of("moved")).await.to_string();
    let busy = s.num(&id_of("busy")).await.to_string();

    let shown = s.ok_json(&["deliveries", "show", &moved, "--json"]).await;
    let attempt = &shown["attempts"][0];
    assert_eq!(attempt["status_code"], 302, "{shown:#}");
    assert_eq!(attempt["location"], "https://elsewhere.example/new-hook");
    assert_eq!(attempt["retry_after"], Value::Null);
    let text = s.ok(&["deliveries", "show", &busy]).await;
    assert!(text.contains("< retry-after: 120"), "{text}");
    let (_, api) = s
        .api("GET", &format!("/api/deliveries/{moved}"), None)
        .await;
    assert_eq!(
        api["attempts"][0]["location"], "https://elsewhere.example/new-hook",
        "{api:#}"
    );

    // Disabled endpoint: its deliveries are held, with the reason.
    s.ok(&[
        "endpoints",
        "disable",
        "a",
        "--reason",
        "maintenance window",
    ])
    .await;
    let list = s.ok_json(&["deliveries", "list", "--json"]).await;
    for d in list.as_array().unwrap() {
        assert_eq!(d["status"], "held", "{d:#}");
        assert_eq!(d["held_reason"], "maintenance window");
        assert_eq!(d["next_attempt_at"], Value::Null);
    }
    assert_eq!(list.as_array().unwrap().len(), 2);
    let held = s
        .ok_json(&["deliveries", "list", "--status", "held", "--json"])
        .await;
    assert_eq!(held.as_array().unwrap().len(), 2);
    let retrying = s
        .ok_json(&["deliveries", "list", "--status", "retrying", "--json"])
        .await;
    assert_eq!(retrying, json!([]));
    let text = s.ok(&["deliveries", "list"]).await;
    assert!(text.contains("held: maintenance window"), "{text}");
    let text = s.ok(&["deliveries", "show", &busy]).await;
    assert!(
        text.contains("status     held") && text.contains("maintenance window"),
        "{text}"
    );
    let st = s.ok_json(&["status", "--json"]).await;
    assert_eq!(
        (
            st["deliveries"]["held"].as_i64(),
            st["deliveries"]["retrying"].as_i64()
        ),
        (Some(2), Some(0)),
        "{st:#}"
    );
    assert_eq!(st["endpoints"][0]["deliveries"]["held"], 2);
    let text = s.ok(&["status"]).await;
    assert!(text.contains("2 held"), "{text}");
    let (_, api) = s.api("GET", "/api/deliveries?status=held", None).await;
    assert_eq!(api.as_array().map(Vec::len), Some(2), "{api}");
    assert_eq!(api[0]["held_reason"], "maintenance window");

    // Enabled again: retrying as before, with its next attempt.
    s.ok(&["endpoints", "enable", "a"]).await;
    let list = s.ok_json(&["deliveries", "list", "--json"]).await;
    for d in list.as_array().unwrap() {
        assert_eq!(d["status"], "retrying", "{d:#}");
        assert!(d["next_attempt_at"].is_string());
    }
    s.halt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_without_the_attempt_header_columns_is_upgraded_by_setup() {
    let rx = failing().await;
    let mut s = Ops::start("ops_upgrade", &endpoint("a", &rx, OLD_SECRET, ""), "").await;
    s.exec("INSERT INTO leads VALUES ('l1', 'a', 1)").await;
    s.wait_attempted("a", "retrying", 1).await;
    let id = s
        .num("SELECT id FROM walhook.deliveries WHERE endpoint_id = 'a'")
        .await
        .to_string();
    s.halt().await;
    s.exec("ALTER TABLE walhook.attempts DROP COLUMN location, DROP COLUMN retry_after")
        .await;
    s.fails(&["deliveries", "list"], "run `walhook setup`")
        .await;
    s.ok(&["setup"]).await;
    let shown = s.ok_json(&["deliveries", "show", &id, "--json"]).await;
    assert_eq!(shown["attempts"][0]["status_code"], 500, "{shown:#}");
    assert_eq!(shown["attempts"][0]["retry_after"], Value::Null);
}
