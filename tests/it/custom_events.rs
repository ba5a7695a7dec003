//! Custom events from SQL: `pg_logical_emit_message(true, 'walhook', ...)`
//! inside a transaction is delivered as its event, in commit order with the
//! transaction's row changes, only if it commits.

use std::time::Duration;

use crate::common::app::{self, InProcess, LEADS, LEADS_OBJECTS};
use crate::common::{Behaviour, Receiver, fresh_db};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_message_is_delivered_in_order_and_a_rolled_back_one_never() {
    let recv = Receiver::start(Behaviour::AlwaysOk).await;
    let db = fresh_db("custom_events").await;
    db.psql(LEADS).await;
    let eps = format!(
        "[[endpoints]]\nid = \"crm\"\nurl = \"{}\"\nsecret = \"s\"\nevents = [\"lead.*\", \"invoice.*\"]\n",
        recv.url()
    );
    let text = app::config_text(&db, LEADS_OBJECTS, &eps);
    let cfg = app::parse(&text);
    app::setup(&cfg).await;
    let run = InProcess::run(cfg);
    let client = db.connect().await;
    client
        .batch_execute(
            "BEGIN;
             SELECT pg_logical_emit_message(true, 'walhook', '{\"event\":\"invoice.paid\",\"key\":\"inv_1\",\"data\":{\"amount\":120.50}}');
             INSERT INTO leads VALUES ('l1', 'Ada', 1);
             SELECT pg_logical_emit_message(true, 'walhook', '{\"event\":\"lead.qualified\",\"key\":\"l1\"}');
             COMMIT;
             BEGIN;
             SELECT pg_logical_emit_message(true, 'walhook', '{\"event\":\"invoice.paid\",\"key\":\"inv_2\"}');
             ROLLBACK;
             SELECT pg_logical_emit_message(true, 'walhook', 'not json');
             SELECT pg_logical_emit_message(true, 'other-app', '{\"event\":\"invoice.void\"}');
             SELECT pg_logical_emit_message(true, 'walhook', '{\"event\":\"invoice.sent\",\"key\":3}');",
        )
        .await
        .unwrap();
    let got = recv.wait_for_requests(4, Duration::from_secs(15)).await;
    let names: Vec<&str> = got
        .iter()
        .map(|r| r.header("x-superleap-event").unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "invoice.paid",
            "invoice.sent",
            "lead.create",
            "lead.qualified"
        ]
    );
    // A custom event of a row's record is in that record's order.
    let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(at("lead.create") < at("lead.qualified"), "{names:?}");
    let paid = got
        .iter()
        .find(|r| r.header("x-superleap-event") == Some("invoice.paid"))
        .unwrap();
    assert_eq!(
        std::str::from_utf8(&paid.body).unwrap(),
        r#"{"before":{},"after":{"amount":120.50},"diff":{"amount":120.50}}"#
    );
    let id = paid.header("x-superleap-event-id").unwrap();
    let parts: Vec<&str> = id.split(':').collect();
    assert_eq!(
        (parts[1], parts[3], parts[4]),
        ("invoice", "inv_1", "invoice.paid")
    );
    // The signature covers the body like any event's.
    assert!(
        paid.header("x-superleap-signature")
            .unwrap()
            .starts_with("sha256=")
    );
    // Nothing else arrives: the rolled-back, malformed and foreign messages
    // were not delivered.
    client
        .execute("INSERT INTO leads VALUES ('l2', 'Bo', 1)", &[])
        .await
        .unwrap();
    let got = recv.wait_for_requests(5, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 5);
    assert_eq!(got[4].header("x-superleap-event"), Some("lead.create"));
    run.stop().await;
}
