//! `deliveries retry` by `--since`/`--until`, `--event`, `--status` and
//! `--endpoint` (AND), `--dry-run`, the lease guard, and `POST
//! /api/deliveries/retry`.

use reqwest::StatusCode;

use super::{ATTEMPTS_A, ATTEMPTS_B, NEW_SECRET, OLD_SECRET, Ops, WAIT, endpoint, failing, keys};
use crate::common::Receiver;

/// Endpoints `a` (retrying after a failure) and `b` (disabled at its first
/// failure), both failing; leads l1 and l2 created before `mid`, l3 created
/// and l1 updated after: four deliveries each, one attempt each.
struct Case {
    s: Ops,
    a: Receiver,
    b: Receiver,
    /// RFC 3339, by the database's clock.
    mid: String,
}

impl Case {
    async fn start() -> Case {
        let (a, b) = (failing().await, failing().await);
        let endpoints = format!(
            "{}{}",
            endpoint("a", &a, OLD_SECRET, ""),
            endpoint("b", &b, NEW_SECRET, "retry = { max_attempts = 1 }")
        );
        let s = Ops::start("ops_retry", &endpoints, "").await;
        s.exec("INSERT INTO leads VALUES ('l1', 'a', 1), ('l2', 'b', 1)")
            .await;
        s.wait_attempted("a", "retrying", 2).await;
        s.wait_attempted("b", "disabled", 2).await;
        let mid: String = s
            .client
            .query_one(
                "SELECT to_char(now() AT TIME ZONE 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        s.exec(
            "INSERT INTO leads VALUES ('l3', 'c', 1); UPDATE leads SET score = 2 WHERE id = 'l1'",
        )
        .await;
        s.wait_attempted("a", "retrying", 4).await;
        s.wait_attempted("b", "disabled", 4).await;
        assert_eq!(a.requests().len(), 4);
        Case { s, a, b, mid }
    }

    /// `deliveries retry ARGS --json`: how many it re-queued (or counted).
    async fn retry(&self, args: &[&str]) -> i64 {
        let mut all = vec!["deliveries", "retry"];
        all.extend_from_slice(args);
        all.push("--json");
        let r = self.s.ok_json(&all).await;
        assert_eq!(
            r["dry_run"].as_bool(),
            Some(args.contains(&"--dry-run")),
            "{r}"
        );
        r["requeued"].as_i64().unwrap_or_else(|| panic!("{r}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_selects_by_time_event_status_and_endpoint() {
    let mut c = Case::start().await;
    dry_run_changes_nothing(&c).await;
    until_and_endpoint(&c).await;
    since_and_event(&c).await;
    combined_and_leased(&c).await;
    refused(&c).await;
    through_the_api(&c).await;
    c.s.halt().await;
}

async fn dry_run_changes_nothing(c: &Case) {
    assert_eq!(c.retry(&["--status", "disabled", "--dry-run"]).await, 4);
    let out =
        c.s.ok(&["deliveries", "retry", "--status", "disabled", "--dry-run"])
            .await;
    assert!(
        out.contains("4 failed deliveries would be queued again"),
        "{out}"
    );
    c.s.wait_num(ATTEMPTS_B, 4).await;
    assert_eq!(c.b.requests().len(), 4);
}

/// a's deliveries created before `mid`: l1's and l2's creates.
async fn until_and_endpoint(c: &Case) {
    assert_eq!(c.retry(&["--until", &c.mid, "--endpoint", "a"]).await, 2);
    let got = c.a.wait_for_requests(6, WAIT).await;
    let mut again = keys(&got[4..]);
    again.sort();
    assert_eq!(again, ["l1", "l2"]);
    for r in &got[4..] {
        assert_eq!(r.header("x-superleap-event"), Some("lead.create"));
    }
}

/// The update since `mid`, to both endpoints.
async fn since_and_event(c: &Case) {
    assert_eq!(
        c.retry(&["--since", &c.mid, "--event", "lead.update"])
            .await,
        2
    );
    let got = c.b.wait_for_requests(5, WAIT).await;
    assert_eq!(got[4].header("x-superleap-event"), Some("lead.update"));
    assert_eq!(keys(&got[4..]), ["l1"]);
    // Every re-queued attempt recorded: a 4 + 2 + 1, b 4 + 1.
    c.s.wait_num(ATTEMPTS_A, 7).await;
    c.s.wait_num(ATTEMPTS_B, 5).await;
}

async fn combined_and_leased(c: &Case) {
    // a's retrying lead.* deliveries since `mid`: l3's create and l1's update.
    let args = [
        "--status",
        "retrying",
        "--event",
        "lead.*",
        "--since",
        &c.mid,
        "--dry-run",
    ];
    assert_eq!(c.retry(&args).await, 2);
    // A delivery whose lease another process holds is left alone.
    let leased =
        c.s.num("SELECT min(id) FROM walhook.deliveries WHERE endpoint_id = 'a'")
            .await;
    c.s.exec(&format!(
        "UPDATE walhook.deliveries SET lease_owner = 'elsewhere', lease_until = now() + interval '1 hour'
         WHERE id = {leased}"
    ))
    .await;
    assert_eq!(
        c.retry(&["--all-failed", "--endpoint", "a", "--dry-run"])
            .await,
        3
    );
    let r =
        c.s.ok_json(&[
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
    let still = format!(
        "SELECT count(*) FROM walhook.deliveries WHERE id = {leased} AND lease_owner = 'elsewhere'"
    );
    assert_eq!(c.s.num(&still).await, 1);
}

async fn refused(c: &Case) {
    let s = &c.s;
    s.fails(&["deliveries", "retry"], "--all-failed").await;
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
    // resend is for events delivered already: b's delivery of l3 is not.
    let l3: String = s
        .client
        .query_one(
            "SELECT event_id FROM walhook.events WHERE record_key = 'l3'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    s.fails(
        &["deliveries", "resend", &l3, "--endpoint", "b"],
        "`walhook deliveries retry",
    )
    .await;
}

/// The same filter as a JSON body.
async fn through_the_api(c: &Case) {
    let s = &c.s;
    let body = r#"{"status": "disabled", "event": "lead.create", "dry_run": true}"#;
    let (code, r) = s.api("POST", "/api/deliveries/retry", Some(body)).await;
    assert_eq!(
        (code, r["requeued"].as_i64()),
        (StatusCode::OK, Some(3)),
        "{r}"
    );
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
    let body = r#"{"endpoint": "b", "event": "lead.update"}"#;
    let (code, r) = s.api("POST", "/api/deliveries/retry", Some(body)).await;
    assert_eq!(
        (code, r["requeued"].as_i64()),
        (StatusCode::OK, Some(1)),
        "{r}"
    );
    let got = c.b.wait_for_requests(6, WAIT).await;
    assert_eq!(got[5].header("x-superleap-event"), Some("lead.update"));
}
