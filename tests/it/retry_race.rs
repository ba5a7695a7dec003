//! A manual retry (`walhook deliveries retry`, the admin API) racing a
//! dispatcher's claim must never give one delivery two attempts at once: the
//! retry refuses a delivery whose lease is live, and never clears a lease a
//! dispatcher holds, so a second dispatcher cannot lease it meanwhile.

use std::time::Duration;

use tokio_postgres::Client;
use walhook::admin::AdminError;
use walhook::admin::reports::{Reports, RetryAllOutcome, RetryOutcome};
use walhook::config::Config;
use walhook::event::{Event, Verb};
use walhook::ledger::queue::{AttemptRow, ClaimRequest, NextState};
use walhook::ledger::{Ledger, NewEvent, schema};
use walhook::pg::now_unix_ms;

use crate::common::{app, fresh_db};

const ROUNDS: usize = 300;
const ENDPOINT: &str = "crm";

/// A ledger holding one delivery to `crm`, and its id.
async fn one_delivery(client: &mut Client, ledger: &Ledger) -> i64 {
    for stmt in schema::ddl(ledger.schema()) {
        client.batch_execute(&stmt).await.expect("ledger DDL");
    }
    let event = Event {
        id: "app:lead:1:k1:lead.create:race0001".into(),
        name: "lead.create".into(),
        slug: "lead".into(),
        verb: Verb::Create,
        record_key: "k1".into(),
        body: r#"{"before":{},"after":{"id":"k1"},"diff":{}}"#.into(),
    };
    let new = NewEvent {
        event,
        commit_lsn: walhook::pg::Lsn(1),
        change_index: 0,
        commit_time_unix_micros: now_unix_ms() * 1000,
        endpoints: vec![ENDPOINT.into()],
    };
    let written = ledger.append(client, &[new], None).await.expect("append");
    assert_eq!(written.deliveries, 1);
    let row = client
        .query_one(&format!("SELECT id FROM {}.deliveries", ledger.q()), &[])
        .await
        .expect("delivery id");
    row.get(0)
}

struct Dispatcher<'a> {
    ledger: &'a Ledger,
    client: Client,
    owner: &'static str,
}

impl Dispatcher<'_> {
    /// Lease the delivery if it is due and free; whether we got it.
    async fn claim(&self, id: i64) -> bool {
        let endpoints = [ENDPOINT.to_string()];
        let req = ClaimRequest {
            endpoints: &endpoints,
            limits: &[10],
            caps: &[0],
            total: 10,
            lease: Duration::from_secs(60),
            per_record: false,
        };
        let got = self
            .ledger
            .claim(&self.client, self.owner, &req)
            .await
            .expect("claim");
        assert!(got.iter().all(|c| c.delivery_id == id));
        !got.is_empty()
    }

    /// Record a failed attempt that is due again at once; whether our lease
    /// was still ours (the attempt was recorded).
    async fn fail(&self, id: i64) -> bool {
        let now = now_unix_ms();
        let row = AttemptRow {
            delivery_id: id,
            endpoint_id: ENDPOINT.into(),
            started_unix_ms: now,
            duration_ms: 1,
            status_code: Some(500),
            error_kind: Some("status".into()),
            error: Some("HTTP 500".into()),
            response_excerpt: None,
            request_headers: "{}".into(),
            next: NextState::RetryAt(now - 1000),
        };
        let kept = self
            .ledger
            .record(&self.client, self.owner, &[row])
            .await
            .expect("record");
        kept == 1
    }
}

/// What the operator's action did: queued the delivery again, or refused
/// because an attempt is under way.
fn queued(r: Result<RetryOutcome, AdminError>) -> bool {
    match r {
        Ok(o) => o.queued,
        Err(AdminError::InFlight(_)) => false,
        Err(e) => panic!("manual retry: {e}"),
    }
}

fn requeued(r: Result<RetryAllOutcome, AdminError>) -> bool {
    r.expect("retry --all-failed").requeued == 1
}

fn config(db: &crate::common::TestDb) -> Config {
    let rest = format!(
        "[[endpoints]]\nid = \"{ENDPOINT}\"\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"race-secret\"\n\n[admin]\nlisten = \"\"\n"
    );
    app::parse(&app::config_text(
        db,
        "[[objects]]\ntable = \"leads\"\nslug = \"lead\"\n",
        &rest,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_retry_never_clears_a_live_lease() {
    let db = fresh_db("retry_race").await;
    let cfg = config(&db);
    let ledger = Ledger::new(&cfg.ledger.schema);
    let reports = Reports::new(&cfg);
    let mut setup_client = db.connect().await;
    let id = one_delivery(&mut setup_client, &ledger).await;
    let operator = db.connect().await;
    let first = Dispatcher {
        ledger: &ledger,
        client: db.connect().await,
        owner: "dispatcher-1",
    };
    let second = Dispatcher {
        ledger: &ledger,
        client: db.connect().await,
        owner: "dispatcher-2",
    };

    // In order first: a leased delivery is refused by both kinds of retry.
    assert!(first.claim(id).await);
    assert!(!queued(reports.retry(&operator, id).await));
    assert!(!requeued(reports.retry_all_failed(&operator, None).await));
    assert!(!second.claim(id).await, "the lease survived the retries");
    assert!(first.fail(id).await);

    let (mut refused, mut skipped) = (0, 0);
    for round in 0..ROUNDS {
        // The delivery is retrying, due, and not leased. Race the first
        // dispatcher's claim against the operator, alternating who starts
        // and which kind of retry the operator runs.
        let (holds, manual) = match round % 4 {
            0 => tokio::join!(first.claim(id), async {
                queued(reports.retry(&operator, id).await)
            }),
            1 => {
                let (m, h) = tokio::join!(
                    async { queued(reports.retry(&operator, id).await) },
                    first.claim(id)
                );
                (h, m)
            }
            2 => tokio::join!(first.claim(id), async {
                requeued(reports.retry_all_failed(&operator, None).await)
            }),
            _ => {
                let (m, h) = tokio::join!(
                    async { requeued(reports.retry_all_failed(&operator, None).await) },
                    first.claim(id)
                );
                (h, m)
            }
        };
        assert!(
            holds || manual,
            "round {round}: the retry was refused but no dispatcher holds the delivery"
        );
        refused += usize::from(!manual);
        skipped += usize::from(!holds);
        // While the first dispatcher holds the lease nobody else may take
        // the delivery, and its result must still be recorded.
        let taken = second.claim(id).await;
        assert!(
            !(holds && taken),
            "round {round}: two dispatchers hold delivery {id} at once (retry queued: {manual})"
        );
        let owner = if holds { &first } else { &second };
        assert!(
            holds || taken,
            "round {round}: the delivery was neither leased nor due"
        );
        assert!(
            owner.fail(id).await,
            "round {round}: {}'s lease was cleared before its attempt was recorded",
            owner.owner
        );
    }
    let attempts: i32 = setup_client
        .query_one(
            &format!(
                "SELECT attempts FROM {}.deliveries WHERE id = $1",
                ledger.q()
            ),
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts as usize, ROUNDS + 1, "one attempt per round");
    eprintln!(
        "{ROUNDS} rounds: manual retry refused {refused}x, claim lost to the retry {skipped}x"
    );
}
