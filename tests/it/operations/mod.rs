//! Operations on real deliveries: `deliveries retry` chosen by a filter
//! (`retry`), `deliveries resend` to another endpoint (`resend`), and here
//! the `Location` and `Retry-After` headers kept with an attempt, deliveries
//! of a disabled endpoint shown as held, and the upgrade of an older ledger;
//! each also through the admin API. `Ops` is the shared scenario: walhook
//! running over endpoints on loopback receivers.

mod resend;
mod retry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::admin::cli;
use crate::common::app::{self, InProcess, LEADS, LEADS_OBJECTS};
use crate::common::{Behaviour, Receiver, Reply, TestDb, free_port, fresh_db, wait_until};

pub(super) const TOKEN: &str = "ops-admin-token";
pub(super) const OLD_SECRET: &str = "old-endpoint-secret";
pub(super) const NEW_SECRET: &str = "new-endpoint-secret";
pub(super) const WAIT: Duration = Duration::from_secs(30);
/// Attempts recorded (none in flight) of endpoint a, of b.
pub(super) const ATTEMPTS_A: &str =
    "SELECT coalesce(sum(attempts), 0)::int8 FROM walhook.deliveries
     WHERE endpoint_id = 'a' AND lease_owner IS NULL";
pub(super) const ATTEMPTS_B: &str =
    "SELECT coalesce(sum(attempts), 0)::int8 FROM walhook.deliveries
     WHERE endpoint_id = 'b' AND lease_owner IS NULL";

/// A receiver answering 500 to everything.
pub(super) async fn failing() -> Receiver {
    Receiver::start(Behaviour::script(|_, _| Reply::status(500))).await
}

/// walhook running (capture, dispatch, admin) over `endpoints`: ordering
/// off, one retry an hour (so a failed delivery stays `retrying`), `extra`
/// appended.
pub(super) struct Ops {
    _db: TestDb,
    pub(super) client: tokio_postgres::Client,
    config: PathBuf,
    _dir: tempfile::TempDir,
    pub(super) admin: SocketAddr,
    run: Option<InProcess>,
}

impl Ops {
    pub(super) async fn start(hint: &str, endpoints: &str, extra: &str) -> Ops {
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

    pub(super) async fn exec(&self, sql: &str) {
        self.client.batch_execute(sql).await.expect(sql);
    }

    /// One number from the ledger.
    pub(super) async fn num(&self, sql: &str) -> i64 {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// One text value from the ledger.
    pub(super) async fn text(&self, sql: &str) -> String {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// Waits until `sql` (one bigint) gives `want`.
    pub(super) async fn wait_num(&self, sql: &str, want: i64) {
        wait_until(WAIT, &format!("{sql} = {want}"), || async {
            (self.num(sql).await == want).then_some(())
        })
        .await;
    }

    /// The ledger's `status` = `status` deliveries of `endpoint` with at
    /// least one attempt, once there are `n` of them.
    pub(super) async fn wait_attempted(&self, endpoint: &str, status: &str, n: i64) {
        self.wait_num(
            &format!(
                "SELECT count(*) FROM walhook.deliveries WHERE endpoint_id = '{endpoint}'
                 AND status = '{status}' AND attempts >= 1 AND lease_owner IS NULL"
            ),
            n,
        )
        .await;
    }

    pub(super) async fn ok(&self, args: &[&str]) -> String {
        let (success, out, err) = cli(&self.config, args).await;
        assert!(success, "walhook {args:?} failed:\n{err}\n{out}");
        out
    }

    pub(super) async fn ok_json(&self, args: &[&str]) -> Value {
        let out = self.ok(args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}:\n{out}"))
    }

    pub(super) async fn fails(&self, args: &[&str], needle: &str) -> String {
        let (success, out, err) = cli(&self.config, args).await;
        assert!(!success, "walhook {args:?} should fail:\n{out}");
        assert!(err.contains(needle), "{args:?}: no {needle:?} in:\n{err}");
        err
    }

    /// An admin API call with the token: (status, JSON body).
    pub(super) async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
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
    pub(super) async fn halt(&mut self) {
        if let Some(run) = self.run.take() {
            run.stop().await;
        }
    }
}

pub(super) fn endpoint(id: &str, rx: &Receiver, secret: &str, more: &str) -> String {
    format!(
        "[[endpoints]]\nid = \"{id}\"\nurl = \"{}hooks/{id}\"\nsecret = \"{secret}\"\ntimeout = \"5s\"\n{more}\n",
        rx.url()
    )
}

/// The record key (`lead:l1` → `l1`) of each request, in arrival order.
pub(super) fn keys(requests: &[crate::common::RecordedRequest]) -> Vec<String> {
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

const MOVED_TO: &str = "https://elsewhere.example/new-hook";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_keep_location_and_retry_after_and_held_shows_the_reason() {
    // Lead `moved` is answered with a redirect, any other with 503 + Retry-After.
    let rx = Receiver::start(Behaviour::script(|req, _| {
        if req.json()["after"]["id"] == "moved" {
            Reply::Status(
                302,
                vec![("location".into(), MOVED_TO.into())],
                Bytes::new(),
            )
        } else {
            let retry_after = vec![("retry-after".into(), "120".into())];
            Reply::Status(503, retry_after, Bytes::from_static(b"busy"))
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
    headers_are_kept(&s, &moved, &busy).await;
    s.ok(&[
        "endpoints",
        "disable",
        "a",
        "--reason",
        "maintenance window",
    ])
    .await;
    held_with_the_reason(&s, &busy).await;
    // Enabled again: retrying as before, with its next attempt.
    s.ok(&["endpoints", "enable", "a"]).await;
    let list = s.ok_json(&["deliveries", "list", "--json"]).await;
    for d in list.as_array().unwrap() {
        assert_eq!(d["status"], "retrying", "{d:#}");
        assert!(d["next_attempt_at"].is_string());
    }
    s.halt().await;
}

async fn headers_are_kept(s: &Ops, moved: &str, busy: &str) {
    let shown = s.ok_json(&["deliveries", "show", moved, "--json"]).await;
    let attempt = &shown["attempts"][0];
    assert_eq!(attempt["status_code"], 302, "{shown:#}");
    assert_eq!(attempt["location"], MOVED_TO);
    assert_eq!(attempt["retry_after"], Value::Null);
    let text = s.ok(&["deliveries", "show", moved]).await;
    assert!(text.contains(&format!("< location: {MOVED_TO}")), "{text}");
    let text = s.ok(&["deliveries", "show", busy]).await;
    assert!(text.contains("< retry-after: 120"), "{text}");
    let (_, api) = s.api("GET", &format!("/api/deliveries/{busy}"), None).await;
    assert_eq!(api["attempts"][0]["retry_after"], "120", "{api:#}");
    assert_eq!(api["attempts"][0]["status_code"], 503, "{api:#}");
}

/// Endpoint `a` is disabled: its two deliveries show as held everywhere.
async fn held_with_the_reason(s: &Ops, busy: &str) {
    let list = s.ok_json(&["deliveries", "list", "--json"]).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    for d in list.as_array().unwrap() {
        assert_eq!(d["status"], "held", "{d:#}");
        assert_eq!(d["held_reason"], "maintenance window");
        assert_eq!(d["next_attempt_at"], Value::Null);
    }
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
    let text = s.ok(&["deliveries", "show", busy]).await;
    assert!(
        text.contains("status     held") && text.contains("maintenance window"),
        "{text}"
    );
    let st = s.ok_json(&["status", "--json"]).await;
    let counts = &st["deliveries"];
    assert_eq!(
        (counts["held"].as_i64(), counts["retrying"].as_i64()),
        (Some(2), Some(0)),
        "{st:#}"
    );
    assert_eq!(st["endpoints"][0]["deliveries"]["held"], 2);
    let text = s.ok(&["status"]).await;
    assert!(text.contains("2 held"), "{text}");
    let (_, api) = s.api("GET", "/api/deliveries?status=held", None).await;
    assert_eq!(api.as_array().map(Vec::len), Some(2), "{api}");
    assert_eq!(api[0]["held_reason"], "maintenance window");
    let (_, st) = s.api("GET", "/api/status", None).await;
    assert_eq!(st["deliveries"]["held"], 2, "{st:#}");
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
