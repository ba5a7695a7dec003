//! `deliveries resend` to a second endpoint, signed with its secret; what
//! cannot be resent; `POST /api/events/{id}/resend`.

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use sha2::Sha256;

use super::{NEW_SECRET, OLD_SECRET, Ops, WAIT, endpoint};
use crate::common::{Behaviour, Receiver};

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
