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

/// Endpoint `old` got two events: `kept` (its first attempt failed, so the
/// ledger has its body) and `fast` (delivered at once from the stream, body
/// not kept). Endpoint `new`, with its own secret, got nothing.
struct Case {
    s: Ops,
    old: Receiver,
    new: Receiver,
    kept: String,
    fast: String,
}

impl Case {
    async fn start() -> Case {
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
        let s = Ops::start("ops_resend", &endpoints, "").await;
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
        let kept = s
            .text("SELECT event_id FROM walhook.events WHERE record_key = 'kept'")
            .await;
        let fast = s
            .text("SELECT event_id FROM walhook.delivered WHERE record = 'lead:fast'")
            .await;
        assert!(new.requests().is_empty());
        Case {
            s,
            old,
            new,
            kept,
            fast,
        }
    }

    async fn wait_succeeded(&self, delivery: i64) {
        let sql = format!(
            "SELECT count(*) FROM walhook.deliveries WHERE id = {delivery} AND status = 'succeeded'"
        );
        self.s.wait_num(&sql, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_sends_a_kept_event_to_another_endpoint() {
    let mut c = Case::start().await;
    let delivery = first_resend(&c).await;
    again_and_refused(&c, delivery).await;
    through_the_api(&c, delivery).await;
    c.s.halt().await;
}

/// A new delivery for `new`: the same body, signed with `new`'s secret.
async fn first_resend(c: &Case) -> i64 {
    let args = [
        "deliveries",
        "resend",
        &c.kept,
        "--endpoint",
        "new",
        "--json",
    ];
    let r = c.s.ok_json(&args).await;
    assert_eq!(
        (r["endpoint"].as_str(), r["reopened"].as_bool()),
        (Some("new"), Some(false)),
        "{r}"
    );
    let delivery = r["delivery_id"].as_i64().unwrap();
    let got = c.new.wait_for_requests(1, WAIT).await;
    let before = c
        .old
        .requests()
        .into_iter()
        .find(|q| q.header("x-superleap-event-id") == Some(c.kept.as_str()))
        .expect("old got the event");
    assert_eq!(got[0].body, before.body, "the same body, byte for byte");
    assert_eq!(got[0].header("x-superleap-event-id"), Some(c.kept.as_str()));
    assert_eq!(
        got[0].header("x-superleap-signature"),
        Some(signature(NEW_SECRET, &got[0].body).as_str()),
        "signed with the new endpoint's secret"
    );
    assert_ne!(
        got[0].header("x-superleap-signature"),
        before.header("x-superleap-signature")
    );
    c.wait_succeeded(delivery).await;
    let shown =
        c.s.ok_json(&["deliveries", "show", &c.kept, "--json"])
            .await;
    let mut eps: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["endpoint"].as_str().unwrap())
        .collect();
    eps.sort();
    assert_eq!(eps, ["new", "old"]);
    delivery
}

async fn again_and_refused(c: &Case, delivery: i64) {
    // Again: its succeeded delivery is opened again.
    let out =
        c.s.ok(&["deliveries", "resend", &c.kept, "--endpoint", "new"])
            .await;
    assert!(out.contains(&format!("as delivery {delivery}")), "{out}");
    c.new.wait_for_requests(2, WAIT).await;
    c.s.fails(
        &["deliveries", "resend", &c.fast, "--endpoint", "new"],
        "keep_bodies",
    )
    .await;
    let unknown = "app:lead:1:nope:lead.create:abcdefgh";
    c.s.fails(
        &["deliveries", "resend", unknown, "--endpoint", "new"],
        "no event with id",
    )
    .await;
    let args = ["deliveries", "resend", &c.kept, "--endpoint", "nope"];
    c.s.fails(&args, "unknown endpoint `nope`").await;
    c.wait_succeeded(delivery).await;
}

async fn through_the_api(c: &Case, delivery: i64) {
    let path = format!("/api/events/{}/resend", c.kept);
    let (code, r) = c.s.api("POST", &path, Some(r#"{"endpoint": "new"}"#)).await;
    assert_eq!(code, StatusCode::OK, "{r}");
    assert_eq!(
        (r["delivery_id"].as_i64(), r["reopened"].as_bool()),
        (Some(delivery), Some(true))
    );
    c.new.wait_for_requests(3, WAIT).await;
    let (code, r) = c.s.api("POST", &path, Some("{}")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{r}");
    let (code, r) =
        c.s.api("POST", &path, Some(r#"{"endpoint": "nope"}"#))
            .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{r}");
    let fast = format!("/api/events/{}/resend", c.fast);
    let (code, r) = c.s.api("POST", &fast, Some(r#"{"endpoint": "new"}"#)).await;
    assert_eq!(code, StatusCode::CONFLICT, "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("keep_bodies"),
        "{r}"
    );
}
