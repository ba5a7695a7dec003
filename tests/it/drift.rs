//! Schema drift while walhook runs (issue 8, "loss and leaks"): renamed
//! tables and columns, publications changed by hand, a dropped primary key
//! or key column, keys that are not plain ASCII. Each test runs the real
//! binary and judges what a user sees: deliveries at a real receiver, the
//! log, `check`, `status`, `/readyz`, `/metrics` and the ledger.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::Client;

use crate::common::app;
use crate::common::daemon::Daemon;
use crate::common::{Behaviour, Receiver, RecordedRequest, free_port, fresh_db, wait_until};

/// A Standard Webhooks secret, so both id headers are sent.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const TIMEOUT: Duration = Duration::from_secs(30);

/// A database with tables, a receiver endpoint, the admin API on a port of
/// its own, and `walhook setup` done.
struct Drift {
    client: Client,
    recv: Receiver,
    admin: SocketAddr,
    text: String,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drift {
    async fn start(hint: &str, tables: &str, objects: &str) -> Drift {
        let db = fresh_db(hint).await;
        db.psql(tables).await;
        let recv = Receiver::start(Behaviour::AlwaysOk).await;
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let rest = format!(
            "[[endpoints]]\nid = \"hook\"\nurl = \"{}hook\"\nsecret = \"{SECRET}\"\n\
             signing = [\"superleap\", \"standard-webhooks\"]\ntimeout = \"5s\"\n\n\
             [admin]\nlisten = \"{admin}\"\n",
            recv.url()
        );
        let text = app::config_text(&db, objects, &rest);
        app::setup(&app::parse(&text)).await;
        let (dir, path) = app::write_config(&text);
        let client = db.connect().await;
        Drift {
            client,
            recv,
            admin,
            text,
            path,
            _dir: dir,
        }
    }

    /// The config with `objects` instead of the mapped tables it had.
    fn config_with(&self, from: &str, to: &str) -> (tempfile::TempDir, PathBuf) {
        assert!(self.text.contains(from), "config has {from}");
        app::write_config(&self.text.replace(from, to))
    }

    async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", walhook::pg::describe(&e)));
    }

    fn daemon(&self) -> Daemon {
        Daemon::spawn(&self.path, &[], None)
    }

    async fn delivered(&self, n: usize) -> Vec<RecordedRequest> {
        self.recv.wait_for_requests(n, TIMEOUT).await
    }

    /// `walhook <args> --json` with this config: (exit ok, the JSON).
    fn cli_json(&self, args: &[&str]) -> (bool, Value) {
        let mut args = args.to_vec();
        args.push("--json");
        let (ok, out, err) = tokio::task::block_in_place(|| app::run_cli(&self.path, &args));
        let json = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`walhook {}`: {e}\n{out}\n{err}", args.join(" ")));
        (ok, json)
    }

    /// The notices `walhook status` shows: (level, message).
    fn status_notices(&self) -> Vec<(String, String)> {
        let (ok, status) = self.cli_json(&["status"]);
        assert!(ok, "{status}");
        status["notices"]
            .as_array()
            .unwrap_or_else(|| panic!("status has notices: {status}"))
            .iter()
            .map(|n| {
                (
                    n["level"].as_str().unwrap().to_string(),
                    n["message"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Waits until `/readyz` answers `code`; its body.
    async fn wait_readyz(&self, code: u16) -> Value {
        let addr = self.admin;
        wait_until(TIMEOUT, &format!("/readyz answers {code}"), || async move {
            let r = reqwest::get(format!("http://{addr}/readyz")).await.ok()?;
            if r.status().as_u16() != code {
                return None;
            }
            serde_json::from_str(&r.text().await.ok()?).ok()
        })
        .await
    }

    /// The value of an unlabelled sample of `/metrics`.
    async fn metric(&self, name: &str) -> Option<String> {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
    }

    /// Panics when `needle` is in any row of any ledger table.
    async fn assert_not_in_ledger(&self, needle: &str) {
        for table in walhook::ledger::schema::TABLES {
            let n: i64 = self
                .client
                .query_one(
                    &format!("SELECT count(*) FROM walhook.{table} t WHERE t::text LIKE $1"),
                    &[&format!("%{needle}%")],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 0, "{needle} is in {n} row(s) of walhook.{table}");
        }
    }
}

/// Panics when `needle` is in any request's body or header.
fn assert_not_sent(requests: &[RecordedRequest], needle: &str) {
    for r in requests {
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains(needle), "{needle} sent in a body: {body}");
        for (name, value) in &r.headers {
            let v = String::from_utf8_lossy(value.as_bytes());
            assert!(!v.contains(needle), "{needle} sent in header {name}: {v}");
        }
    }
}

/// (event name, event id) of each request.
fn events(requests: &[RecordedRequest]) -> Vec<(String, String)> {
    requests
        .iter()
        .map(|r| {
            (
                r.header("x-superleap-event").unwrap_or("").to_string(),
                r.header("x-superleap-event-id").unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The requests for record `key`, in arrival order (one record's events
/// arrive in order; different records' in any order).
fn of_record<'r>(requests: &'r [RecordedRequest], key: &str) -> Vec<&'r RecordedRequest> {
    requests
        .iter()
        .filter(|r| record_key(r.header("x-superleap-event-id").unwrap_or("")) == key)
        .collect()
}

/// The event names of `requests`.
fn names(requests: &[&RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| r.header("x-superleap-event").unwrap_or("").to_string())
        .collect()
}

/// The record key inside an event id `source:slug:ms:key:name:suffix`.
fn record_key(event_id: &str) -> &str {
    event_id.split(':').nth(3).unwrap_or("")
}

const ITEMS: &str = "CREATE TABLE items (id text PRIMARY KEY, name text, note text)";
const ITEMS_OBJECTS: &str = "[[objects]]\ntable = \"items\"\nslug = \"item\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_table_keeps_its_slug_while_streaming_and_after_a_restart() {
    let d = Drift::start("drift_rename", ITEMS, ITEMS_OBJECTS).await;
    let mut run = d.daemon();
    d.exec("INSERT INTO items (id, name) VALUES ('i1', 'a')")
        .await;
    d.delivered(1).await;
    d.exec(
        "ALTER TABLE items RENAME TO items_renamed;
         INSERT INTO items_renamed (id, name) VALUES ('i2', 'b');
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
    run.wait_log(TIMEOUT, "warning about the rename", |l| {
        l.contains("WARN") && l.contains("renamed to public.items_renamed")
    });
    let notices = d.status_notices();
    assert!(
        notices
            .iter()
            .any(|(level, m)| level == "warning" && m.contains("renamed to public.items_renamed")),
        "{notices:?}"
    );
    let (ok, check) = d.cli_json(&["check"]);
    assert!(ok, "a rename is a warning, not a failure: {check}");
    let tables: Vec<&Value> = check["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "tables" && c["state"] == "warn")
        .collect();
    assert!(
        tables.iter().any(|c| c["detail"]
            .as_str()
            .unwrap()
            .contains("renamed to public.items_renamed")),
        "{check}"
    );

    // A restart still follows the table, by the identity the ledger keeps.
    let (status, _) = run.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let _run = d.daemon();
    d.exec("INSERT INTO items_renamed (id, name) VALUES ('i3', 'c')")
        .await;
    let got = events(&d.delivered(4).await);
    assert_eq!(got[3].0, "item.create");
    assert_eq!(record_key(&got[3].1), "i3");
    assert_eq!(got.len(), 4, "nothing twice: {got:?}");
    // `setup` knows the table by its identity too: nothing to change.
    let (ok, out, err) = tokio::task::block_in_place(|| app::run_cli(&d.path, &["setup"]));
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
    for (drift, says) in cases {
        d.exec(drift).await;
        let (ok, check) = d.cli_json(&["check"]);
        assert!(!ok, "{drift}: check fails");
        let detail = failed_publication_check(&check);
        assert!(detail.contains(says), "{drift}: {detail}");
        let mut run = d.daemon();
        let (status, took) = run.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| {
            panic!(
                "{drift}: run refuses to start; it runs:\n{}",
                run.lines.output()
            )
        });
        assert!(!status.success(), "{drift}: {status:?}");
        assert!(took < Duration::from_secs(15), "{took:?}");
        run.lines.drain(Duration::from_millis(500));
        let log = run.lines.output();
        // The same sentence as check's, and where to look.
        assert!(
            log.contains(&detail),
            "{drift}: run says\n{log}\ncheck says\n{detail}"
        );
        assert!(log.contains("walhook check"), "{log}");
        let (ok, out, err) = tokio::task::block_in_place(|| app::run_cli(&d.path, &["setup"]));
        assert!(ok, "{out}\n{err}");
        assert!(
            out.contains("+ publication walhook set to the mapped tables"),
            "{out}"
        );
        let (ok, check) = d.cli_json(&["check"]);
        assert!(ok, "{drift}: setup repaired it: {check}");
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
    let line = run.wait_log(TIMEOUT, "saying capture stopped", |l| {
        l.contains("ERROR") && l.contains("capture stopped")
    });
    assert!(
        line.contains("public.others is not in the publication"),
        "{line}"
    );
    assert!(line.contains("walhook setup"), "{line}");
    let ready = d.wait_readyz(503).await;
    let blocked = ready["blocked"]
        .as_str()
        .unwrap_or_else(|| panic!("{ready}"));
    assert!(
        blocked.contains("public.others is not in the publication"),
        "{ready}"
    );
    assert_eq!(
        d.metric("walhook_capture_blocked").await.as_deref(),
        Some("1")
    );
    let notices = d.status_notices();
    assert!(
        notices
            .iter()
            .any(|(level, m)| level == "error"
                && m.contains("public.others is not in the publication")),
        "{notices:?}"
    );
    // Written while capture is stopped: captured once it is repaired.
    d.exec("INSERT INTO items (id) VALUES ('i2')").await;

    let (ok, out, err) = tokio::task::block_in_place(|| app::run_cli(&d.path, &["setup"]));
    assert!(ok, "{out}\n{err}");
    d.wait_readyz(200).await;
    d.exec("INSERT INTO others (id) VALUES (1)").await;
    let got = d.delivered(3).await;
    assert_eq!(names(&of_record(&got, "i2")), ["item.create"]);
    assert_eq!(names(&of_record(&got, "1")), ["other.create"]);
    assert_eq!(
        d.metric("walhook_capture_blocked").await.as_deref(),
        Some("0")
    );
    let notices = d.status_notices();
    assert!(
        notices.iter().all(|(level, _)| level != "error"),
        "{notices:?}"
    );
    run.wait_log(TIMEOUT, "saying capture is no longer blocked", |l| {
        l.contains("no longer blocked")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_excluded_column_never_leaves_walhook() {
    let objects = "[[objects]]\ntable = \"items\"\nslug = \"item\"\nexclude_columns = [\"note\"]\n";
    let d = Drift::start("drift_column", ITEMS, objects).await;
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
    assert_eq!(i1[2].json()["diff"], serde_json::json!({"name": "a2"}));
    // Renamed again while walhook is stopped, and again after the restart:
    // the config still says `note`.
    let (status, _) = run.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.success());
    d.exec("ALTER TABLE items RENAME COLUMN note_secret TO note_hidden")
        .await;
    let (ok, check) = d.cli_json(&["check"]);
    assert!(ok, "{check}");
    assert!(
        check
            .to_string()
            .contains("excluded column note of object item was renamed to note_hidden"),
        "{check}"
    );
    let mut run = d.daemon();
    d.exec(
        "INSERT INTO items VALUES ('i3', 'c', 'SECRET-5');
         ALTER TABLE items RENAME COLUMN note_hidden TO note_x;
         UPDATE items SET name = 'c1', note_x = 'SECRET-6' WHERE id = 'i3';",
    )
    .await;
    d.delivered(6).await;
    let notices = d.status_notices();
    assert!(
        notices.iter().any(|(l, m)| l == "warning"
            && m.contains("excluded column note of object item was renamed")),
        "{notices:?}"
    );
    // Once more: the ledger knows the column by the config's name, however
    // often it was renamed.
    let (status, _) = run.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.success());
    let mut run = d.daemon();
    d.exec("UPDATE items SET name = 'c2', note_x = 'SECRET-7' WHERE id = 'i3'")
        .await;
    let got = d.delivered(7).await;
    assert_eq!(got.len(), 7);
    assert_eq!(got[6].json()["diff"], serde_json::json!({"name": "c2"}));
    assert_not_sent(&got, "SECRET");
    assert_not_sent(&got, "note");
    d.assert_not_in_ledger("SECRET").await;
    let (status, _) = run.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.success());

    // Dropped: nothing of it can leave any more; a warning, not a refusal.
    d.exec("ALTER TABLE items DROP COLUMN note_x").await;
    let (ok, check) = d.cli_json(&["check"]);
    assert!(ok, "{check}");
    assert!(
        check
            .to_string()
            .contains("excluded column note of object item was dropped"),
        "{check}"
    );
    let _run = d.daemon();
    d.exec("UPDATE items SET name = 'c3' WHERE id = 'i3'").await;
    d.delivered(8).await;

    // An exclusion that names no column: run and check refuse.
    let (_dir, typo) = d.config_with(
        "exclude_columns = [\"note\"]",
        "exclude_columns = [\"nope\"]",
    );
    let mut run = Daemon::spawn(&typo, &[], None);
    let (status, _) = run
        .wait_exit(Duration::from_secs(20))
        .expect("run refuses an exclusion that names no column");
    assert!(!status.success());
    run.lines.drain(Duration::from_millis(500));
    assert!(
        run.lines
            .output()
            .contains("names `nope`, which is not a column of public.items"),
        "{}",
        run.lines.output()
    );
    let (ok, _, _) = tokio::task::block_in_place(|| app::run_cli(&typo, &["check"]));
    assert!(!ok, "check fails on an exclusion that names no column");
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
    let (ok, check) = d.cli_json(&["check"]);
    assert!(ok, "{check}");
    assert!(
        check.to_string().contains("has no primary key any more"),
        "{check}"
    );
    let _run = d.daemon();
    d.exec(
        "INSERT INTO accounts VALUES ('a1', 'e@x', 'LEAK-1', 1);
         UPDATE accounts SET score = 2, secret = 'LEAK-2' WHERE id = 'a1';
         DELETE FROM accounts WHERE id = 'a1';",
    )
    .await;
    let got = d.delivered(3).await;
    let names: Vec<String> = events(&got).into_iter().map(|e| e.0).collect();
    assert_eq!(
        names,
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

    // The primary key goes: the table keeps its former key columns, the
    // others go on.
    d.exec(
        "ALTER TABLE accounts DROP CONSTRAINT accounts_pkey;
         INSERT INTO accounts VALUES ('a2', 'e', 'LEAK-1', 1);
         UPDATE accounts SET score = 5 WHERE id = 'a1';
         INSERT INTO others VALUES (2, 'y');",
    )
    .await;
    let got = events(&d.delivered(5).await);
    // Different records are delivered in parallel: in any order.
    let mut last: Vec<(&str, &str)> = got[2..]
        .iter()
        .map(|e| (e.0.as_str(), record_key(&e.1)))
        .collect();
    last.sort();
    assert_eq!(
        last,
        [
            ("account.create", "a2"),
            ("account.update", "a1"),
            ("other.create", "2")
        ]
    );
    run.wait_log(TIMEOUT, "warning about the dropped key", |l| {
        l.contains("WARN") && l.contains("has no primary key any more")
    });
    let notices = d.status_notices();
    assert!(
        notices.iter().any(|(l, m)| l == "warning"
            && m.contains("public.accounts (object account) has no primary key any more")),
        "{notices:?}"
    );
    d.wait_readyz(200).await;

    // The key column itself goes: capture cannot key that table's changes
    // and stops before the first one, for every table (nothing is lost), and
    // says so everywhere an operator looks.
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
    let notices = d.status_notices();
    let blocked = notices
        .iter()
        .find(|(l, _)| l == "error")
        .unwrap_or_else(|| panic!("status shows the stop: {notices:?}"));
    assert!(blocked.1.contains("object account"), "{blocked:?}");
    assert!(
        blocked.1.contains("remove object account from the config"),
        "{blocked:?}"
    );
    assert_eq!(d.recv.requests().len(), 5, "nothing after the stop");

    // The operator unmaps the table: capture resumes where it stopped, and
    // another process clears what the first one reported.
    let (status, _) = run.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(status.success());
    let (_dir, unmapped) = d.config_with(ACCOUNTS_OBJECTS, "");
    let _run = Daemon::spawn(&unmapped, &[], None);
    let got = events(&d.delivered(6).await);
    assert_eq!(
        (got[5].0.as_str(), record_key(&got[5].1)),
        ("other.create", "3")
    );
    d.wait_readyz(200).await;
    assert_eq!(
        d.metric("walhook_capture_blocked").await.as_deref(),
        Some("0")
    );
    let notices = d.status_notices();
    assert!(notices.iter().all(|(l, _)| l != "error"), "{notices:?}");
    assert_not_sent(&d.recv.requests(), "LEAK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_line_breaks_and_non_ascii_make_valid_headers() {
    let d = Drift::start("drift_keys", app::LEADS, app::LEADS_OBJECTS).await;
    let _run = d.daemon();
    d.exec("INSERT INTO leads (id, name) VALUES (E'line1\\r\\nline2 ü€:%,', 'odd'), ('lead_987654321', 'plain')")
        .await;
    let got = d.delivered(2).await;
    let odd = got
        .iter()
        .find(|r| r.json()["after"]["name"] == "odd")
        .unwrap();
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
    let plain = got
        .iter()
        .find(|r| r.json()["after"]["name"] == "plain")
        .unwrap()
        .header("x-superleap-event-id")
        .unwrap();
    let parts: Vec<&str> = plain.split(':').collect();
    assert_eq!(parts.len(), 6, "{plain}");
    assert_eq!(
        (parts[0], parts[1], parts[3], parts[4]),
        ("app", "lead", "lead_987654321", "lead.create")
    );
    assert_eq!(parts[5].len(), 8);
}
