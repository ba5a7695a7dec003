//! Schema drift while walhook runs (issue 8, "loss and leaks"): renamed
//! tables and columns, publications changed by hand, a dropped primary key
//! or key column, keys that are not plain ASCII. Each test runs the real
//! binary and judges what a user sees: deliveries at a real receiver, the
//! log, `check`, `status`, `/readyz`, `/metrics` and the ledger.

use serde_json::{Value, json};

use crate::common::daemon::Daemon;
use crate::common::drift::{
    Drift, TIMEOUT, assert_not_sent, names, of_record, record_key, refused,
};

const ITEMS: &str = "CREATE TABLE items (id text PRIMARY KEY, name text, note text)";
const ITEMS_OBJECTS: &str = "[[objects]]\ntable = \"items\"\nslug = \"item\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_table_keeps_its_slug_while_streaming_and_after_a_restart() {
    let d = Drift::start("drift_rename", ITEMS, ITEMS_OBJECTS).await;
    let mut run = d.daemon();
    d.exec("INSERT INTO items (id, name) VALUES ('i1', 'a')")
        .await;
    d.delivered(1).await;
    d.exec("ALTER TABLE items RENAME TO items_renamed").await;
    d.exec(
        "INSERT INTO items_renamed (id, name) VALUES ('i2', 'b');
         UPDATE items_renamed SET name = 'a2' WHERE id = 'i1';",
    )
    .await;
    let got = d.delivered(3).await;
    assert_eq!(
        names(&of_record(&got, "i1")),
        ["item.create", "item.update"]
    );
    let i2 = of_record(&got, "i2");
    assert_eq!(names(&i2), ["item.create"]);
    assert!(
        i2[0]
            .header("x-superleap-event-id")
            .unwrap()
            .starts_with("app:item:")
    );
    let renamed = "renamed to public.items_renamed";
    run.wait_log(TIMEOUT, "warning about the rename", |l| {
        l.contains("WARN") && l.contains(renamed)
    });
    d.assert_notice("warning", renamed);
    let check: Value = serde_json::from_str(&d.check_passes()).unwrap();
    assert!(
        check["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "tables"
                && c["state"] == "warn"
                && c["detail"].as_str().unwrap().contains(renamed)),
        "{check}"
    );

    // A restart still follows the table, by the identity the ledger keeps.
    let _run = d.restart(run);
    d.exec("INSERT INTO items_renamed (id, name) VALUES ('i3', 'c')")
        .await;
    let got = d.delivered(4).await;
    assert_eq!(names(&of_record(&got, "i3")), ["item.create"]);
    assert_eq!(got.len(), 4, "nothing twice");
    // `setup` knows the table by its identity too: nothing to change.
    let (ok, out, err) = d.cli(&["setup"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("nothing to change"), "{out}");
}

const TWO_TABLES: &str = "CREATE TABLE items (id text PRIMARY KEY, name text, note text);
     CREATE TABLE others (id int PRIMARY KEY, v text);";
const TWO_OBJECTS: &str = "[[objects]]\ntable = \"items\"\nslug = \"item\"\n\n\
     [[objects]]\ntable = \"others\"\nslug = \"other\"\n";

/// The detail of the failed `publication` check.
fn failed_publication_check(check: &Value) -> String {
    let c = check["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "publication")
        .unwrap_or_else(|| panic!("a publication check: {check}"));
    assert_eq!(c["state"], "fail", "{check}");
    c["detail"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_publication_walhook_did_not_ask_for_and_setup_repairs_it() {
    let d = Drift::start("drift_pub_start", TWO_TABLES, TWO_OBJECTS).await;
    let cases = [
        (
            "ALTER PUBLICATION walhook DROP TABLE others",
            "mapped table public.others is not in the publication",
        ),
        (
            "ALTER PUBLICATION walhook SET TABLE items WHERE (id <> 'x'), others",
            "has a row filter on public.items",
        ),
        (
            "ALTER PUBLICATION walhook SET TABLE items (id, name), others",
            "has a column list on public.items",
        ),
        (
            "ALTER PUBLICATION walhook SET (publish = 'insert, delete')",
            "does not publish UPDATEs",
        ),
    ];
    let version: i32 = d
        .client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    for (drift, says) in cases {
        // Row filters and column lists came with PostgreSQL 15.
        if version < 150_000 && (drift.contains("WHERE") || drift.contains("(id, name)")) {
            continue;
        }
        d.exec(drift).await;
        let (ok, check) = d.cli_json(&["check"]);
        assert!(!ok, "{drift}: check fails");
        let detail = failed_publication_check(&check);
        assert!(detail.contains(says), "{drift}: {detail}");
        // The same sentence as check's, and where to look.
        let log = refused(&d.path);
        assert!(
            log.contains(&detail),
            "{drift}: run says\n{log}\ncheck says\n{detail}"
        );
        assert!(log.contains("walhook check"), "{log}");
        let (ok, out, err) = d.cli(&["setup"]);
        assert!(ok, "{out}\n{err}");
        assert!(
            out.contains("+ publication walhook set to the mapped tables"),
            "{out}"
        );
        d.check_passes();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_drift_while_running_stops_capture_and_says_so_until_setup() {
    let d = Drift::start("drift_pub_run", TWO_TABLES, TWO_OBJECTS).await;
    let mut run = d.daemon();
    d.exec("INSERT INTO items (id) VALUES ('i1')").await;
    d.delivered(1).await;
    d.wait_readyz(200).await;
    assert_eq!(
        d.metric("walhook_capture_blocked").await.as_deref(),
        Some("0")
    );

    d.exec("ALTER PUBLICATION walhook DROP TABLE others").await;
    let says = "public.others is not in the publication";
    let line = run.wait_log(TIMEOUT, "saying capture stopped", |l| {
        l.contains("ERROR") && l.contains("capture stopped")
    });
    assert!(
        line.contains(says) && line.contains("walhook setup"),
        "{line}"
    );
    let ready = d.wait_readyz(503).await;
    assert!(
        ready["blocked"].as_str().is_some_and(|b| b.contains(says)),
        "{ready}"
    );
    assert_eq!(
        d.metric("walhook_capture_blocked").await.as_deref(),
        Some("1")
    );
    d.assert_notice("error", says);
    // Written while capture is stopped: captured once it is repaired.
    d.exec("INSERT INTO items (id) VALUES ('i2')").await;

    let (ok, out, err) = d.cli(&["setup"]);
    assert!(ok, "{out}\n{err}");
    d.wait_readyz(200).await;
    d.exec("INSERT INTO others (id) VALUES (1)").await;
    d.delivered_record("i2").await;
    let got = d.delivered_record("1").await;
    assert_eq!(names(&of_record(&got, "i2")), ["item.create"]);
    assert_eq!(names(&of_record(&got, "1")), ["other.create"]);
    assert_eq!(
        d.metric("walhook_capture_blocked").await.as_deref(),
        Some("0")
    );
    d.assert_no_error_notice();
    run.wait_log(TIMEOUT, "saying capture is no longer blocked", |l| {
        l.contains("no longer blocked")
    });
}

const NOTE_EXCLUDED: &str =
    "[[objects]]\ntable = \"items\"\nslug = \"item\"\nexclude_columns = [\"note\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_excluded_column_never_leaves_walhook() {
    let d = Drift::start("drift_column", ITEMS, NOTE_EXCLUDED).await;
    let mut run = d.daemon();
    d.exec("INSERT INTO items VALUES ('i1', 'a', 'SECRET-1')")
        .await;
    d.delivered(1).await;
    // Renamed while streaming, with changes on both sides of the rename in
    // one transaction.
    d.exec(
        "BEGIN;
         UPDATE items SET name = 'a1', note = 'SECRET-2' WHERE id = 'i1';
         ALTER TABLE items RENAME COLUMN note TO note_secret;
         INSERT INTO items VALUES ('i2', 'b', 'SECRET-3');
         COMMIT;
         UPDATE items SET name = 'a2', note_secret = 'SECRET-4' WHERE id = 'i1';",
    )
    .await;
    let got = d.delivered(4).await;
    let i1 = of_record(&got, "i1");
    assert_eq!(i1.len(), 3);
    assert_eq!(i1[2].json()["diff"], json!({"name": "a2"}));
    // Renamed again while walhook is stopped, and again after the restart:
    // the config still says `note`.
    let (status, _) = run.signal_and_wait("TERM", TIMEOUT);
    assert!(status.success(), "{status:?}");
    d.exec("ALTER TABLE items RENAME COLUMN note_secret TO note_hidden")
        .await;
    let renamed = "excluded column note of object item was renamed to note_hidden";
    assert!(d.check_passes().contains(renamed));
    let run = d.daemon();
    d.exec("INSERT INTO items VALUES ('i3', 'c', 'SECRET-5')")
        .await;
    d.exec("ALTER TABLE items RENAME COLUMN note_hidden TO note_x")
        .await;
    d.exec("UPDATE items SET name = 'c1', note_x = 'SECRET-6' WHERE id = 'i3'")
        .await;
    d.delivered(6).await;
    // Told while streaming too, with the name it has now.
    d.assert_notice(
        "warning",
        "excluded column note of object item was renamed to note_x",
    );
    // Once more: the ledger knows the column by the config's name, however
    // often it was renamed.
    let _run = d.restart(run);
    d.exec("UPDATE items SET name = 'c2', note_x = 'SECRET-7' WHERE id = 'i3'")
        .await;
    let got = d.delivered(7).await;
    assert_eq!(got.len(), 7);
    assert_eq!(got[6].json()["diff"], json!({"name": "c2"}));
    assert_not_sent(&got, "SECRET");
    assert_not_sent(&got, "note");
    d.assert_not_in_ledger("SECRET").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_excluded_column_is_a_warning_and_one_that_never_was_an_error() {
    let d = Drift::start("drift_exclusions", ITEMS, NOTE_EXCLUDED).await;
    // Dropped: nothing of it can leave any more; a warning, not a refusal.
    d.exec("ALTER TABLE items DROP COLUMN note").await;
    assert!(
        d.check_passes()
            .contains("excluded column note of object item was dropped")
    );
    let _run = d.daemon();
    d.exec("INSERT INTO items VALUES ('i1', 'a')").await;
    d.delivered(1).await;
    d.assert_notice("warning", "was dropped");

    // An exclusion that names no column: run and check refuse (a typo would
    // send the column meant to be hidden).
    let (_dir, typo) = d.config_with(
        "exclude_columns = [\"note\"]",
        "exclude_columns = [\"nmae\"]",
    );
    let log = refused(&typo);
    assert!(
        log.contains("names `nmae`, which is not a column of public.items"),
        "{log}"
    );
    let (ok, out, _) =
        tokio::task::block_in_place(|| crate::common::app::run_cli(&typo, &["check"]));
    assert!(
        !ok,
        "check fails on an exclusion that names no column:\n{out}"
    );
    assert!(out.contains("names `nmae`"), "{out}");
}

const ACCOUNTS: &str =
    "CREATE TABLE accounts (id text PRIMARY KEY, email text, secret text, score int)";
const ACCOUNTS_OBJECTS: &str = "[[objects]]\ntable = \"accounts\"\nslug = \"account\"\n\
     exclude_columns = [\"secret\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_primary_key_no_excluded_value_is_in_ids_headers_or_the_ledger() {
    let d = Drift::start("drift_nokey", ACCOUNTS, ACCOUNTS_OBJECTS).await;
    // Dropped after setup: REPLICA IDENTITY FULL sends every column as the
    // old row's identity, the excluded one too.
    d.exec("ALTER TABLE accounts DROP CONSTRAINT accounts_pkey")
        .await;
    assert!(d.check_passes().contains("has no primary key any more"));
    let _run = d.daemon();
    d.exec(
        "INSERT INTO accounts VALUES ('a1', 'e@x', 'LEAK-1', 1);
         UPDATE accounts SET score = 2, secret = 'LEAK-2' WHERE id = 'a1';
         DELETE FROM accounts WHERE id = 'a1';",
    )
    .await;
    let got = d.delivered(3).await;
    let all: Vec<_> = got.iter().collect();
    assert_eq!(
        names(&all),
        ["account.create", "account.update", "account.delete"]
    );
    for r in &got {
        let id = r.header("x-superleap-event-id").unwrap();
        assert_eq!(record_key(id), "a1", "{id}");
        assert_eq!(r.header("webhook-id"), Some(id));
    }
    assert_not_sent(&got, "LEAK");
    d.assert_not_in_ledger("LEAK").await;
}

/// Drops `accounts`' primary key while `run` streams: the table keeps its
/// former key columns, the others go on, and walhook warns.
async fn drop_the_primary_key(d: &Drift, run: &mut Daemon) {
    d.exec("ALTER TABLE accounts DROP CONSTRAINT accounts_pkey")
        .await;
    d.exec(
        "INSERT INTO accounts VALUES ('a2', 'e', 'LEAK-1', 1);
         UPDATE accounts SET score = 5 WHERE id = 'a1';
         INSERT INTO others VALUES (2, 'y');",
    )
    .await;
    let got = d.delivered(5).await;
    assert_eq!(
        names(&of_record(&got, "a1")),
        ["account.create", "account.update"]
    );
    assert_eq!(names(&of_record(&got, "a2")), ["account.create"]);
    assert_eq!(names(&of_record(&got, "2")), ["other.create"]);
    run.wait_log(TIMEOUT, "warning about the dropped key", |l| {
        l.contains("WARN") && l.contains("has no primary key any more")
    });
    d.assert_notice(
        "warning",
        "public.accounts (object account) has no primary key any more",
    );
    d.wait_readyz(200).await;
}

/// Drops `accounts`' key column while `run` streams: capture cannot key the
/// table's changes and stops before the first one, for every table (nothing
/// is lost), and says so everywhere an operator looks.
async fn drop_the_key_column(d: &Drift, run: &mut Daemon) {
    d.exec(
        "ALTER TABLE accounts DROP COLUMN id;
         INSERT INTO accounts (email) VALUES ('keyless');
         INSERT INTO others VALUES (3, 'after');",
    )
    .await;
    let line = run.wait_log(TIMEOUT, "an error saying capture stopped", |l| {
        l.contains("ERROR") && l.contains("capture stopped")
    });
    assert!(line.contains("record key"), "{line}");
    let ready = d.wait_readyz(503).await;
    assert!(
        ready["blocked"]
            .as_str()
            .is_some_and(|b| b.contains("object account")),
        "{ready}"
    );
    assert_eq!(
        d.metric("walhook_capture_blocked").await.as_deref(),
        Some("1")
    );
    let notice = d.assert_notice("error", "object account");
    assert!(
        notice.contains("remove object account from the config"),
        "{notice}"
    );
    assert_eq!(d.recv.requests().len(), 5, "nothing after the stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_key_keeps_the_others_going_and_a_dropped_key_column_stalls_and_says_so() {
    let tables = format!("{ACCOUNTS}; CREATE TABLE others (id int PRIMARY KEY, v text);");
    let objects =
        format!("{ACCOUNTS_OBJECTS}\n[[objects]]\ntable = \"others\"\nslug = \"other\"\n");
    let d = Drift::start("drift_dropkey", &tables, &objects).await;
    let mut run = d.daemon();
    d.exec("INSERT INTO accounts VALUES ('a1', 'e', 's', 1); INSERT INTO others VALUES (1, 'x');")
        .await;
    d.delivered(2).await;
    drop_the_primary_key(&d, &mut run).await;
    drop_the_key_column(&d, &mut run).await;

    // The operator unmaps the table: capture resumes where it stopped, and
    // another process clears what the first one reported.
    let (status, _) = run.signal_and_wait("TERM", TIMEOUT);
    assert!(status.success(), "{status:?}");
    let (_dir, unmapped) = d.config_with(ACCOUNTS_OBJECTS, "");
    let _run = Daemon::spawn(&unmapped, &[], None);
    let got = d.delivered_record("3").await;
    assert_eq!(names(&of_record(&got, "3")), ["other.create"]);
    d.wait_readyz(200).await;
    assert_eq!(
        d.metric("walhook_capture_blocked").await.as_deref(),
        Some("0")
    );
    d.assert_no_error_notice();
    assert_not_sent(&d.recv.requests(), "LEAK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_line_breaks_and_non_ascii_make_valid_headers() {
    use crate::common::app::{LEADS, LEADS_OBJECTS};
    let d = Drift::start("drift_keys", LEADS, LEADS_OBJECTS).await;
    let _run = d.daemon();
    d.exec(
        "INSERT INTO leads (id, name) VALUES
           (E'line1\\r\\nline2 ü€:%,', 'odd'), ('lead_987654321', 'plain')",
    )
    .await;
    let got = d.delivered(2).await;
    let by_name = |name: &str| {
        got.iter()
            .find(|r| r.json()["after"]["name"] == name)
            .unwrap()
    };
    let odd = by_name("odd");
    let id = odd
        .header("x-superleap-event-id")
        .expect("a valid header value");
    assert_eq!(
        record_key(id),
        "line1%0D%0Aline2%20%C3%BC%E2%82%AC%3A%25%2C",
        "{id}"
    );
    assert_eq!(odd.header("webhook-id"), Some(id));
    assert_eq!(odd.json()["after"]["id"], "line1\r\nline2 ü€:%,");
    // A plain key is in the id as it is, as before.
    let plain = by_name("plain").header("x-superleap-event-id").unwrap();
    let parts: Vec<&str> = plain.split(':').collect();
    assert_eq!(parts.len(), 6, "{plain}");
    assert_eq!(
        (parts[0], parts[1], parts[3], parts[4]),
        ("app", "lead", "lead_987654321", "lead.create")
    );
    assert_eq!(parts[5].len(), 8);
}
