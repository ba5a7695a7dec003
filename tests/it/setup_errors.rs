//! `walhook setup` and `walhook run` against real databases: idempotency and
//! a clear, non-zero exit for each thing an operator can get wrong.

use std::time::{Duration, Instant};

use crate::common::app::{self, CRM_OBJECTS, CRM_TABLES};
use crate::common::{self, fresh_db, wait_until};
use walhook::devtools::embedded::ClusterOptions;

/// Runs `walhook <args>`, which must fail; its stderr.
fn fails(config: &std::path::Path, args: &[&str]) -> String {
    let (ok, out, err) = app::run_cli(config, args);
    assert!(
        !ok,
        "`walhook {}` should fail:\n{out}\n{err}",
        args.join(" ")
    );
    err
}

/// Whether the slot is being read now (`None` if it does not exist).
async fn slot_active(client: &tokio_postgres::Client, slot: &str) -> Option<bool> {
    client
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_is_idempotent_and_prints_sql() {
    let db = fresh_db("setup_idem").await;
    db.psql(CRM_TABLES).await;
    let (_dir, path) = app::write_config(&app::config_text(&db, CRM_OBJECTS, ""));
    let (ok, out, err) = app::run_cli(&path, &["setup"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("publication walhook created"), "{out}");
    assert!(out.contains("created (pgoutput)"), "{out}");
    let (ok, out, err) = app::run_cli(&path, &["setup"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("nothing to change"), "{out}");
    assert!(!out.contains("\n+ "), "{out}");
    let client = db.connect().await;
    let ident: Vec<i8> = client
        .query(
            "SELECT relreplident::\"char\" FROM pg_class WHERE relname IN ('leads','users','opportunities','students')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ident, vec![b'f' as i8; 4]);
    // A table added to the mapping is added to the publication.
    db.psql("CREATE TABLE extra (id int PRIMARY KEY)").await;
    let more = format!("{CRM_OBJECTS}\n[[objects]]\ntable = \"extra\"\nslug = \"extra\"\n");
    let (_dir2, path2) = app::write_config(&app::config_text(&db, &more, ""));
    let (ok, out, _) = app::run_cli(&path2, &["setup"]);
    assert!(ok);
    assert!(out.contains("set to the mapped tables"), "{out}");
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'walhook'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);

    let (ok, out, _) = app::run_cli(&path, &["setup", "--print-sql"]);
    assert!(ok);
    assert!(
        out.contains("CREATE PUBLICATION \"walhook\" FOR TABLE \"public\".\"leads\""),
        "{out}"
    );
    assert!(out.contains("pg_create_logical_replication_slot"), "{out}");
    assert!(out.contains("REPLICA IDENTITY FULL"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_and_missing_primary_key() {
    let db = fresh_db("setup_tables").await;
    let objects = "[[objects]]\ntable = \"public.nope\"\nslug = \"nope\"";
    let (_d, path) = app::write_config(&app::config_text(&db, objects, ""));
    let err = fails(&path, &["setup"]);
    assert!(err.contains("public.nope does not exist"), "{err}");

    db.psql("CREATE TABLE nokey (id int, name text)").await;
    let objects = "[[objects]]\ntable = \"nokey\"\nslug = \"nokey\"";
    let (_d, path) = app::write_config(&app::config_text(&db, objects, ""));
    let err = fails(&path, &["setup"]);
    assert!(err.contains("has no primary key"), "{err}");
    assert!(err.contains("ADD PRIMARY KEY"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_privileges_are_explained() {
    let db = fresh_db("setup_priv").await;
    db.psql(CRM_TABLES).await;
    db.psql("CREATE ROLE weakling LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO weakling;")
        .await
        .to_string();
    let url = db.url.replace("postgres@", "weakling@");
    let text = app::config_text(&db, CRM_OBJECTS, "").replace(&db.url, &url);
    let (_d, path) = app::write_config(&text);
    let err = fails(&path, &["setup"]);
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("sql/00-role.sql"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_config_key_is_rejected_with_its_name() {
    let db = fresh_db("setup_key").await;
    let text = app::config_text(&db, CRM_OBJECTS, "").replace("slot =", "slott =");
    let (_d, path) = app::write_config(&text);
    for cmd in [&["setup"][..], &["run"][..]] {
        let err = fails(&path, cmd);
        assert!(err.contains("source.slott"), "{err}");
        assert!(err.contains("walhook.toml"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_fails_within_connect_timeout() {
    // A port nothing listens on.
    let port = common::free_port();
    let db = common::TestDb::elsewhere(
        "nowhere",
        format!("postgres://postgres@127.0.0.1:{port}/app"),
    );
    let text = app::config_text(&db, CRM_OBJECTS, "")
        .replace("connect_timeout = \"5s\"", "connect_timeout = \"2s\"");
    let (_d, path) = app::write_config(&text);
    let started = Instant::now();
    let err = fails(&path, &["run"]);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(err.contains("cannot reach the database"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_before_setup_says_to_run_setup() {
    let db = fresh_db("setup_first").await;
    db.psql(CRM_TABLES).await;
    let (_d, path) = app::write_config(&app::config_text(&db, CRM_OBJECTS, ""));
    let err = fails(&path, &["run"]);
    assert!(err.contains("walhook setup"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_not_logical() {
    let cluster = common::private_cluster(ClusterOptions::new().conf("wal_level = replica")).await;
    let db = common::fresh_db_on(&cluster, "wal_level").await;
    let client = db.connect().await;
    client.batch_execute(CRM_TABLES).await.unwrap();
    let (_d, path) = app::write_config(&app::config_text(&db, CRM_OBJECTS, ""));
    for cmd in [&["setup"][..], &["run"][..]] {
        let err = fails(&path, cmd);
        assert!(err.contains("wal_level is 'replica'"), "{err}");
        assert!(
            err.contains("ALTER SYSTEM SET wal_level = logical"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_of_the_same_name_in_another_database() {
    let first = fresh_db("slot_owner").await;
    let second = fresh_db("slot_other").await;
    for db in [&first, &second] {
        db.psql(CRM_TABLES).await;
    }
    // Both configs name the same slot: slots are cluster-wide.
    let cfg1 = app::config_text(&first, CRM_OBJECTS, "");
    let cfg2 = app::config_text(&second, CRM_OBJECTS, "").replace(
        &format!("slot = \"{}\"", second.name),
        &format!("slot = \"{}\"", first.name),
    );
    let (_d1, p1) = app::write_config(&cfg1);
    let (_d2, p2) = app::write_config(&cfg2);
    assert!(app::run_cli(&p1, &["setup"]).0);
    let err = fails(&p2, &["setup"]);
    assert!(err.contains("belongs to database"), "{err}");
    assert!(err.contains(&first.name), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_asks_for_yes_then_drops_slot_and_publication() {
    let db = fresh_db("teardown").await;
    db.psql(CRM_TABLES).await;
    let (_d, path) = app::write_config(&app::config_text(&db, CRM_OBJECTS, ""));
    assert!(app::run_cli(&path, &["setup"]).0);
    let client = db.connect().await;
    let count = |sql: &'static str| {
        let client = &client;
        async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()";
    let pubs = "SELECT count(*) FROM pg_publication WHERE pubname = 'walhook'";
    let ledger = "SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'";

    let err = fails(&path, &["teardown"]);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(count(slots).await, 1, "nothing dropped without --yes");

    // A running walhook holds the slot: teardown refuses.
    let mut running = app::spawn_run(&path, &["--no-dispatch", "--no-admin"]);
    let slot = db.name.clone();
    wait_until(Duration::from_secs(20), "walhook to stream", || async {
        (slot_active(&client, &slot).await == Some(true)).then_some(())
    })
    .await;
    let err = fails(&path, &["teardown", "--yes"]);
    assert!(err.contains("in use"), "{err}");
    app::kill9(&mut running);
    wait_until(
        Duration::from_secs(20),
        "the slot to be released",
        || async { (slot_active(&client, &slot).await == Some(false)).then_some(()) },
    )
    .await;

    let (ok, out, err) = app::run_cli(&path, &["teardown", "--yes"]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(count(slots).await, 0);
    assert_eq!(count(pubs).await, 0);
    assert_eq!(count(ledger).await, 1, "the ledger is kept");
    assert!(out.contains("kept"), "{out}");

    let (ok, _, _) = app::run_cli(&path, &["teardown", "--yes", "--drop-ledger"]);
    assert!(ok);
    assert_eq!(count(ledger).await, 0);
}
