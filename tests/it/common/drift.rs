//! A database with mapped tables, a receiver, `walhook setup` done and the
//! admin API on a port of its own, for the schema drift tests: what a user
//! sees (deliveries, `check`, `status`, `/readyz`, `/metrics`, the ledger).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio_postgres::Client;

use super::app;
use super::daemon::Daemon;
use super::{Behaviour, Receiver, RecordedRequest, free_port, fresh_db, wait_until};

/// A Standard Webhooks secret, so both id headers are sent.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A database with tables, a receiver endpoint, the admin API on a port of
/// its own, and `walhook setup` done.
pub struct Drift {
    pub client: Client,
    pub recv: Receiver,
    admin: SocketAddr,
    text: String,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drift {
    pub async fn start(hint: &str, tables: &str, objects: &str) -> Drift {
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
    pub fn config_with(&self, from: &str, to: &str) -> (tempfile::TempDir, PathBuf) {
        assert!(self.text.contains(from), "config has {from}");
        app::write_config(&self.text.replace(from, to))
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {}", walhook::pg::describe(&e)));
    }

    pub fn daemon(&self) -> Daemon {
        Daemon::spawn(&self.path, &[], None)
    }

    /// Stops `run` with SIGTERM (it must exit 0) and starts it again.
    pub fn restart(&self, mut run: Daemon) -> Daemon {
        let (status, _) = run.signal_and_wait("TERM", Duration::from_secs(10));
        assert!(status.success(), "graceful stop: {status:?}");
        self.daemon()
    }

    /// `walhook <args>` with this config: (exit ok, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        tokio::task::block_in_place(|| app::run_cli(&self.path, args))
    }

    pub async fn delivered(&self, n: usize) -> Vec<RecordedRequest> {
        self.recv.wait_for_requests(n, TIMEOUT).await
    }

    /// Waits until an event of record `key` was delivered; every request so
    /// far. (After a stop that could not acknowledge the slot, events before
    /// may come again: delivery is at-least-once.)
    pub async fn delivered_record(&self, key: &str) -> Vec<RecordedRequest> {
        let what = format!("an event of record {key} delivered");
        wait_until(TIMEOUT, &what, || async {
            let all = self.recv.requests();
            (!of_record(&all, key).is_empty()).then_some(all)
        })
        .await
    }

    /// `walhook <args> --json` with this config: (exit ok, the JSON).
    pub fn cli_json(&self, args: &[&str]) -> (bool, Value) {
        let mut args = args.to_vec();
        args.push("--json");
        let (ok, out, err) = self.cli(&args);
        let json = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`walhook {}`: {e}\n{out}\n{err}", args.join(" ")));
        (ok, json)
    }

    /// The notices `walhook status` shows: (level, message).
    pub fn status_notices(&self) -> Vec<(String, String)> {
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

    /// Panics unless `walhook status` shows a notice of `level` that says
    /// `text`; its message.
    pub fn assert_notice(&self, level: &str, text: &str) -> String {
        let notices = self.status_notices();
        notices
            .iter()
            .find(|(l, m)| l == level && m.contains(text))
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("no {level} notice saying {text}: {notices:?}"))
    }

    /// Panics when `walhook status` shows an error notice.
    pub fn assert_no_error_notice(&self) {
        let notices = self.status_notices();
        assert!(notices.iter().all(|(l, _)| l != "error"), "{notices:?}");
    }

    /// `walhook check` passes (warnings allowed); its JSON as text.
    pub fn check_passes(&self) -> String {
        let (ok, check) = self.cli_json(&["check"]);
        assert!(ok, "check passes: {check}");
        check.to_string()
    }

    /// Waits until `/readyz` answers `code`; its body.
    pub async fn wait_readyz(&self, code: u16) -> Value {
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
    pub async fn metric(&self, name: &str) -> Option<String> {
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
    pub async fn assert_not_in_ledger(&self, needle: &str) {
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
pub fn assert_not_sent(requests: &[RecordedRequest], needle: &str) {
    for r in requests {
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains(needle), "{needle} sent in a body: {body}");
        for (name, value) in &r.headers {
            let v = String::from_utf8_lossy(value.as_bytes());
            assert!(!v.contains(needle), "{needle} sent in header {name}: {v}");
        }
    }
}

/// The requests for record `key`, in arrival order (one record's events
/// arrive in order; different records' in any order).
pub fn of_record<'r>(requests: &'r [RecordedRequest], key: &str) -> Vec<&'r RecordedRequest> {
    requests
        .iter()
        .filter(|r| record_key(r.header("x-superleap-event-id").unwrap_or("")) == key)
        .collect()
}

/// The event names of `requests`.
pub fn names(requests: &[&RecordedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| r.header("x-superleap-event").unwrap_or("").to_string())
        .collect()
}

/// The record key inside an event id `source:slug:ms:key:name:suffix`.
pub fn record_key(event_id: &str) -> &str {
    event_id.split(':').nth(3).unwrap_or("")
}

/// `walhook run` with `config`, which must refuse to start: its log.
pub fn refused(config: &Path) -> String {
    let mut run = Daemon::spawn(config, &[], None);
    let Some((status, took)) = run.wait_exit(Duration::from_secs(20)) else {
        panic!("run refuses to start; it runs:\n{}", run.lines.output());
    };
    assert!(!status.success(), "{status:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    run.lines.drain(Duration::from_millis(500));
    run.lines.output()
}
