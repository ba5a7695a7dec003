//! `deliveries retry` by `--since`/`--until`, `--event`, `--status` and
//! `--endpoint` (AND), `--dry-run`, the lease guard, and `POST
//! /api/deliveries/retry`.

use reqwest::StatusCode;

use super::{ATTEMPTS_A, ATTEMPTS_B, NEW_SECRET, OLD_SECRET, Ops, WAIT, endpoint, failing, keys};

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
