//! Capture end to end against a real PostgreSQL: row changes on mapped tables
//! become events in the ledger with the bodies of SPEC §4.

use std::time::Duration;

use crate::common::app::{self, CRM_OBJECTS, CRM_TABLES, InProcess};
use crate::common::{self, fresh_db, wait_until};
use serde_json::json;
use walhook::devtools::embedded::ClusterOptions;

async fn crm_db(hint: &str) -> (common::TestDb, walhook::config::Config) {
    let db = fresh_db(hint).await;
    db.psql(CRM_TABLES).await;
    let cfg = app::parse(&app::config_text(&db, CRM_OBJECTS, ""));
    app::setup(&cfg).await;
    (db, cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_objects_create_update_delete_bodies() {
    let (db, cfg) = crm_db("crm_bodies").await;
    let run = InProcess::capture_only(cfg);
    let client = db.connect().await;
    client
        .batch_execute(
            "INSERT INTO leads (id, name, email, score, amount, tags) VALUES ('lead_987654321', 'Ada', 'ada@example.com', 10, 12.50, '{a,NULL,\"b c\"}');
             UPDATE leads SET score = 11, email = 'ada@lovelace.dev' WHERE id = 'lead_987654321';
             INSERT INTO users (id, email, password_hash) VALUES (9007199254740993, 'u@example.com', 'secret-hash');
             UPDATE users SET active = false WHERE id = 9007199254740993;
             INSERT INTO opportunities (id, lead_id, stage, value, meta) VALUES (1, 'lead_987654321', 'new', 1000.000, '{\"n\": 1.50, \"tags\": [\"x\"]}');
             INSERT INTO crm.students VALUES ('north:high', 7, 'Grace');
             DELETE FROM crm.students WHERE school = 'north:high';
             DELETE FROM leads WHERE id = 'lead_987654321';",
        )
        .await
        .unwrap();
    let ev = app::wait_events(&client, 8).await;
    let names: Vec<&str> = ev.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "lead.create",
            "lead.update",
            "user.create",
            "user.update",
            "opportunity.create",
            "student.create",
            "student.delete",
            "lead.delete"
        ]
    );
    // Parsed from text: numbers keep their digits (arbitrary_precision).
    let lead_after: serde_json::Value = serde_json::from_str(
        r#"{"id": "lead_987654321", "name": "Ada", "email": "ada@example.com", "score": 10,
            "amount": 12.50, "tags": ["a", null, "b c"], "created_at": "2025-02-21T08:33:28.148Z"}"#,
    )
    .unwrap();
    assert_eq!(
        ev[0].2,
        json!({"before": {}, "after": lead_after, "diff": lead_after})
    );
    // numeric keeps Postgres' digits: 12.50, not 12.5
    let raw: String = client
        .query_one(
            "SELECT body FROM walhook.events WHERE name = 'lead.create'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(raw.contains("\"amount\":12.50"), "{raw}");
    assert!(raw.starts_with("{\"before\":{},\"after\":{\"id\""), "{raw}");
    // update: diff has only the changed columns, with their new values
    assert_eq!(
        ev[1].2["diff"],
        json!({"email": "ada@lovelace.dev", "score": 11})
    );
    assert_eq!(ev[1].2["before"]["score"], json!(10));
    assert_eq!(ev[1].2["after"]["score"], json!(11));
    assert_eq!(ev[1].1, "lead_987654321");
    // excluded column never appears; bigint above 2^53 stays exact
    let user_raw: Vec<String> = client
        .query("SELECT body FROM walhook.events WHERE slug = 'user'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for b in &user_raw {
        assert!(
            !b.contains("password_hash") && !b.contains("secret-hash"),
            "{b}"
        );
        assert!(b.contains("9007199254740993"), "{b}");
    }
    assert_eq!(ev[3].2["diff"], json!({"active": false}));
    // jsonb nested, digits kept
    let opp: String = client
        .query_one(
            "SELECT body FROM walhook.events WHERE slug = 'opportunity'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        opp.contains("\"meta\":{\"n\":1.50,\"tags\":[\"x\"]}"),
        "{opp}"
    );
    assert!(opp.contains("\"value\":1000.000"), "{opp}");
    // composite key of a custom object in another schema, ':' escaped
    assert_eq!(ev[5].1, "north%3Ahigh,7");
    assert_eq!(
        ev[6].2,
        json!({"before": {"school": "north:high", "student_no": 7, "name": "Grace"}, "after": {}, "diff": {}})
    );
    assert_eq!(ev[7].2["after"], json!({}));
    // event ids have the SPEC shape
    let ids: Vec<String> = client
        .query("SELECT event_id FROM walhook.events ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let parts: Vec<&str> = ids[0].split(':').collect();
    assert_eq!(parts.len(), 6, "{}", ids[0]);
    assert_eq!(parts[0], "app");
    assert_eq!(parts[1], "lead");
    assert!(parts[2].parse::<i64>().unwrap() > 1_700_000_000_000);
    assert_eq!(parts[3], "lead_987654321");
    assert_eq!(parts[4], "lead.create");
    assert_eq!(parts[5].len(), 8);
    assert!(parts[5].chars().all(|c| c.is_ascii_alphanumeric()));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_table_of_the_spec() {
    let db = fresh_db("values").await;
    db.psql(
        "CREATE TYPE mood AS ENUM ('ok', 'happy');
         CREATE DOMAIN positive AS bigint CHECK (VALUE > 0);
         CREATE DOMAIN money2 AS numeric(10,2);
         CREATE TABLE v (
           id int PRIMARY KEY, n_null text, b boolean, i2 smallint, i4 int, i8 bigint,
           f4 real, f8 double precision, f_nan double precision, f_inf double precision,
           num numeric, num_nan numeric, num_scale numeric(20,6), j json, jb jsonb,
           ta text[], ia int[], tstz timestamptz, ts timestamp, d date, t time, ttz timetz,
           iv interval, u uuid, vc varchar(10), ch char(3), e mood, ip inet, by bytea,
           uni text, dom positive, dom_num money2)",
    )
    .await;
    let cfg = app::parse(&app::config_text(
        &db,
        "[[objects]]\ntable = \"v\"\nslug = \"value\"",
        "",
    ));
    app::setup(&cfg).await;
    // The database's own settings must not change the mapping.
    db.psql(&format!(
        "ALTER DATABASE {} SET DateStyle = 'SQL, DMY'; ALTER DATABASE {} SET TimeZone = 'Asia/Kolkata'; ALTER DATABASE {} SET extra_float_digits = 0; ALTER DATABASE {} SET bytea_output = 'escape'; ALTER DATABASE {} SET IntervalStyle = 'postgres_verbose';",
        db.name, db.name, db.name, db.name, db.name
    ))
    .await;
    let run = InProcess::capture_only(cfg);
    let client = db.connect().await;
    client
        .batch_execute(
            "INSERT INTO v VALUES (
               1, NULL, true, -32768, 2147483647, 9223372036854775807,
               1.5, 0.1, 'NaN', '-Infinity',
               123456789012345678901234567890.123, 'NaN', 12.5, '{\"a\": [1, 2.50, {\"b\": null}]}', '{\"z\": 1, \"a\": 10.0}',
               ARRAY['x', NULL, 'y,z', 'q\"uote'], ARRAY[[1,2],[3,NULL]], '2025-02-21 14:03:28.148+05:30', '2025-02-21 08:33:28.100',
               '2025-02-21', '08:33:28', '08:33:28+02', '1 day 2 hours', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
               'héllo', 'ab', 'happy', '192.168.0.1/32', '\\x48656c6c6f00ff', 'Grüße 👋 \"q\" \\ back', 9007199254740993, 3.10)",
        )
        .await
        .unwrap();
    let ev = app::wait_events(&client, 1).await;
    let after = &ev[0].2["after"];
    let raw: String = client
        .query_one("SELECT body FROM walhook.events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after["n_null"], json!(null));
    assert_eq!(after["b"], json!(true));
    assert_eq!(after["i2"], json!(-32768));
    assert_eq!(after["i4"], json!(2147483647));
    assert!(raw.contains("\"i8\":9223372036854775807"), "{raw}");
    assert_eq!(after["f4"], json!(1.5));
    assert!(raw.contains("\"f8\":0.1,"), "{raw}");
    assert_eq!(after["f_nan"], json!("NaN"));
    assert_eq!(after["f_inf"], json!("-Infinity"));
    assert!(
        raw.contains("\"num\":123456789012345678901234567890.123"),
        "{raw}"
    );
    assert_eq!(after["num_nan"], json!("NaN"));
    assert!(raw.contains("\"num_scale\":12.500000"), "{raw}");
    assert!(raw.contains("\"j\":{\"a\":[1,2.50,{\"b\":null}]}"), "{raw}");
    assert!(raw.contains("\"jb\":{\"a\":10.0,\"z\":1}"), "{raw}");
    assert_eq!(after["ta"], json!(["x", null, "y,z", "q\"uote"]));
    assert_eq!(after["ia"], json!([[1, 2], [3, null]]));
    assert_eq!(after["tstz"], json!("2025-02-21T08:33:28.148Z"));
    assert_eq!(after["ts"], json!("2025-02-21T08:33:28.1"));
    assert_eq!(after["d"], json!("2025-02-21"));
    assert_eq!(after["t"], json!("08:33:28"));
    assert_eq!(after["ttz"], json!("08:33:28+02"));
    assert_eq!(after["iv"], json!("P1DT2H"));
    assert_eq!(after["u"], json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
    assert_eq!(after["vc"], json!("héllo"));
    assert_eq!(after["ch"], json!("ab "));
    assert_eq!(after["e"], json!("happy"));
    assert_eq!(after["ip"], json!("192.168.0.1"));
    assert_eq!(after["by"], json!("SGVsbG8A/w=="));
    assert_eq!(after["uni"], json!("Grüße 👋 \"q\" \\ back"));
    // Domains map as their base type.
    assert!(raw.contains("\"dom\":9007199254740993,"), "{raw}");
    assert!(raw.contains("\"dom_num\":3.10}"), "{raw}");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_value_is_in_after() {
    let (db, cfg) = crm_db("toast").await;
    let run = InProcess::capture_only(cfg);
    let client = db.connect().await;
    // 100 kB of poorly compressible text, so it is really TOASTed out of line.
    let big: String = (0..100_000u32)
        .map(|i| char::from(b'a' + ((i.wrapping_mul(2654435761) >> 13) % 26) as u8))
        .collect();
    client
        .execute(
            "INSERT INTO leads (id, name, email) VALUES ('big', $1, 'e')",
            &[&big],
        )
        .await
        .unwrap();
    client
        .execute("UPDATE leads SET score = 5 WHERE id = 'big'", &[])
        .await
        .unwrap();
    let ev = app::wait_events(&client, 2).await;
    assert_eq!(ev[1].0, "lead.update");
    assert_eq!(ev[1].2["after"]["name"].as_str().unwrap(), big);
    assert_eq!(ev[1].2["before"]["name"].as_str().unwrap(), big);
    assert_eq!(ev[1].2["diff"], json!({"score": 5}));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_apply_without_restart() {
    let (db, cfg) = crm_db("ddl").await;
    let run = InProcess::capture_only(cfg);
    let client = db.connect().await;
    client
        .batch_execute(
            "INSERT INTO leads (id, name) VALUES ('l1', 'A');
             ALTER TABLE leads ADD COLUMN phone text;
             INSERT INTO leads (id, name, phone) VALUES ('l2', 'B', '+1');
             ALTER TABLE leads DROP COLUMN email;
             INSERT INTO leads (id, name) VALUES ('l3', 'C');
             ALTER TABLE leads RENAME COLUMN name TO full_name;
             INSERT INTO leads (id, full_name) VALUES ('l4', 'D');
             ALTER TABLE leads ALTER COLUMN score TYPE bigint;
             UPDATE leads SET score = 9007199254740993 WHERE id = 'l4';",
        )
        .await
        .unwrap();
    let ev = app::wait_events(&client, 5).await;
    assert!(ev[0].2["after"].get("phone").is_none());
    assert!(ev[0].2["after"].get("email").is_some());
    assert_eq!(ev[1].2["after"]["phone"], json!("+1"));
    assert!(ev[2].2["after"].get("email").is_none());
    assert_eq!(ev[3].2["after"]["full_name"], json!("D"));
    assert!(ev[3].2["after"].get("name").is_none());
    assert_eq!(ev[4].2["diff"], json!({"score": 9007199254740993u64}));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_for_excluded_only_or_no_op_updates() {
    let (db, cfg) = crm_db("noop").await;
    let run = InProcess::capture_only(cfg);
    let client = db.connect().await;
    client
        .batch_execute(
            "INSERT INTO users (id, email, password_hash) VALUES (1, 'a@b', 'h1');
             UPDATE users SET password_hash = 'h2' WHERE id = 1;
             UPDATE users SET email = email WHERE id = 1;
             UPDATE users SET email = 'c@d' WHERE id = 1;",
        )
        .await
        .unwrap();
    let ev = app::wait_events(&client, 2).await;
    // Wait for the ledger to have caught up with everything written so far,
    // then check nothing else arrived.
    let lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    app::wait_slot_confirmed(&client, &db.name, &lsn, Duration::from_secs(20)).await;
    let ev2 = app::events(&client).await;
    assert_eq!(ev2.len(), 2, "{ev:?}");
    assert_eq!(ev2[1].0, "user.update");
    assert_eq!(ev2[1].2["diff"], json!({"email": "c@d"}));
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_emits_no_events_and_is_counted() {
    let (db, cfg) = crm_db("truncate").await;
    let run = InProcess::capture_only(cfg);
    let client = db.connect().await;
    client
        .batch_execute(
            "INSERT INTO leads (id) VALUES ('a'), ('b'); TRUNCATE leads; INSERT INTO leads (id) VALUES ('c');",
        )
        .await
        .unwrap();
    let ev = app::wait_events(&client, 3).await;
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[2].1, "c");
    let n: i64 = wait_until(Duration::from_secs(10), "truncate counted", || async {
        client
            .query_opt(
                "SELECT value FROM walhook.counters WHERE name = 'truncates'",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, i64>(0))
    })
    .await;
    assert_eq!(n, 1);
    run.stop().await;
}

/// The slot's confirmed position, as a number.
async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> u64 {
    let r = client
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    r.get::<_, i64>(0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_advances_while_only_unmapped_tables_change() {
    let (db, cfg) = crm_db("unmapped").await;
    db.psql("CREATE TABLE audit_log (id serial PRIMARY KEY, msg text)")
        .await;
    let run = InProcess::capture_only(cfg);
    let client = db.connect().await;
    // Let capture start streaming before measuring.
    client
        .execute("INSERT INTO leads (id) VALUES ('warm')", &[])
        .await
        .unwrap();
    app::wait_events(&client, 1).await;
    let start = confirmed_flush(&client, &db.name).await;
    for i in 0..50 {
        client
            .execute(
                "INSERT INTO audit_log (msg) SELECT repeat('x', 1000) FROM generate_series(1, 100)",
                &[],
            )
            .await
            .unwrap();
        if i % 10 == 0 {
            client.execute("CHECKPOINT", &[]).await.ok();
        }
    }
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let end_num: i64 = client
        .query_one("SELECT ($1::text::pg_lsn - '0/0'::pg_lsn)::bigint", &[&end])
        .await
        .unwrap()
        .get(0);
    let slot = db.name.clone();
    wait_until(
        Duration::from_secs(30),
        "the slot's confirmed position to pass the unmapped writes",
        || {
            let client = &client;
            let slot = slot.clone();
            async move { (confirmed_flush(client, &slot).await >= end_num as u64).then_some(()) }
        },
    )
    .await;
    assert!(confirmed_flush(&client, &db.name).await > start);
    assert_eq!(app::event_count(&client).await, 1);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_is_written_in_chunks() {
    let (db, cfg) = crm_db("bigtx").await;
    let run = InProcess::capture_only(cfg);
    let client = db.connect().await;
    client
        .execute(
            "INSERT INTO leads (id, score) SELECT 'l' || g, g FROM generate_series(1, 12000) g",
            &[],
        )
        .await
        .unwrap();
    let ev = app::wait_events(&client, 12000).await;
    assert_eq!(ev.len(), 12000);
    assert_eq!(ev[11999].1, "l12000");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_stream_loses_nothing() {
    // Shown with the test's output when it fails: what capture went through.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,tokio_postgres=warn")
        .with_test_writer()
        .try_init();
    // A cluster of its own: restarting the shared one would disturb other tests.
    let cluster = common::private_cluster(ClusterOptions::new()).await;
    let db = common::fresh_db_on(&cluster, "restart").await;
    let client = db.connect().await;
    client.batch_execute(CRM_TABLES).await.unwrap();
    let cfg = app::parse(&app::config_text(&db, CRM_OBJECTS, ""));
    app::setup(&cfg).await;
    let run = InProcess::capture_only(cfg);
    for i in 0..200 {
        client
            .execute("INSERT INTO leads (id) VALUES ($1)", &[&format!("a{i}")])
            .await
            .unwrap();
    }
    let c3 = cluster.clone();
    tokio::task::spawn_blocking(move || c3.restart().unwrap())
        .await
        .unwrap();
    let client = db.connect().await;
    for i in 0..200 {
        client
            .execute("INSERT INTO leads (id) VALUES ($1)", &[&format!("b{i}")])
            .await
            .unwrap();
    }
    // Reconnecting may take several backoff rounds while a loaded machine
    // restarts the server: wait longer than wait_events does.
    common::wait_until(
        Duration::from_secs(90),
        "400 events in the ledger",
        || async { (app::event_count(&client).await >= 400).then_some(()) },
    )
    .await;
    let ev = app::events(&client).await;
    let keys: std::collections::BTreeSet<&str> = ev.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(keys.len(), 400, "every insert once");
    assert_eq!(ev.len(), 400, "none twice");
    run.stop().await;
}
