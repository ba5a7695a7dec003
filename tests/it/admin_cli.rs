//! The operator commands end to end: the real `walhook` binary against a real
//! PostgreSQL with real deliveries (`status`, `deliveries`, `endpoints`,
//! `check`), their error paths, and that no secret reaches their output.

use std::time::Duration;

use crate::common::admin::{BAD_BODY, ENDPOINT_SECRET, Options, Scenario, assert_no_secret, cli};
use crate::common::app;
use crate::common::wait_until;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Runs the command, asserts success and no secret in its output; returns stdout.
async fn ok(s: &Scenario, args: &[&str]) -> String {
    let (success, out, err) = cli(&s.config, args).await;
    assert!(success, "walhook {args:?} failed:\n{err}\n{out}");
    assert_no_secret(&format!("stdout of {args:?}"), &out);
    assert_no_secret(&format!("stderr of {args:?}"), &err);
    out
}

async fn ok_json(s: &Scenario, args: &[&str]) -> Value {
    let out = ok(s, args).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{out}"))
}

/// Runs the command, asserts it fails with `needle` in its final message;
/// returns stderr.
async fn fails(config: &std::path::Path, args: &[&str], needle: &str) -> String {
    let (success, out, err) = cli(config, args).await;
    assert!(!success, "walhook {args:?} should fail:\n{out}");
    assert!(
        err.contains(needle),
        "walhook {args:?}: stderr lacks {needle:?}:\n{err}"
    );
    assert_no_secret(&format!("stderr of {args:?}"), &err);
    assert_no_secret(&format!("stdout of {args:?}"), &out);
    err
}

fn ids(list: &Value) -> Vec<i64> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_and_actions() {
    let s = Scenario::start("admin_cli_reports", Options::default()).await;
    s.insert(&["l1", "l2"]).await;
    s.client
        .execute("UPDATE leads SET score = 2 WHERE id = 'l1'", &[])
        .await
        .unwrap();
    s.wait_settled(3).await;

    // status
    let st = ok_json(&s, &["status", "--json"]).await;
    assert_eq!(st["events"]["total"], 3, "{st:#}");
    assert_eq!(st["events"]["by_name"]["lead.create"], 2);
    assert_eq!(st["events"]["by_name"]["lead.update"], 1);
    assert_eq!(st["deliveries"]["succeeded"], 3);
    assert_eq!(st["deliveries"]["disabled"], 3);
    assert_eq!(st["deliveries"]["total"], 6);
    assert_eq!(st["slot"]["exists"], true);
    assert!(st["slot"]["lag_bytes"].as_i64().is_some(), "{st:#}");
    assert!(
        st["database"]
            .as_str()
            .unwrap()
            .starts_with("postgres@127.0.0.1:")
    );
    let eps: Vec<&str> = st["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(eps, ["ok", "bad"]);
    assert_eq!(st["endpoints"][0]["deliveries"]["succeeded"], 3);
    assert_eq!(st["endpoints"][1]["deliveries"]["disabled"], 3);
    let human = ok(&s, &["status"]).await;
    assert!(human.contains("3 captured"), "{human}");
    assert!(
        human.contains("0 pending, 0 retrying, 3 succeeded, 3 disabled"),
        "{human}"
    );
    assert!(human.contains("lead.update"), "{human}");

    // deliveries list and its filters
    let all = ok_json(&s, &["deliveries", "list", "--json"]).await;
    let all_ids = ids(&all);
    assert_eq!(all_ids.len(), 6);
    assert!(
        all_ids.windows(2).all(|w| w[0] > w[1]),
        "newest first: {all_ids:?}"
    );
    let succeeded = ok_json(
        &s,
        &["deliveries", "list", "--status", "succeeded", "--json"],
    )
    .await;
    assert_eq!(ids(&succeeded).len(), 3);
    assert!(
        succeeded
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["endpoint"] == "ok")
    );
    let bad = ok_json(&s, &["deliveries", "list", "--endpoint", "bad", "--json"]).await;
    assert_eq!(ids(&bad).len(), 3);
    assert!(
        bad.as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "disabled")
    );
    assert_eq!(bad[0]["last_status_code"], 500);
    let updates = ok_json(
        &s,
        &["deliveries", "list", "--event", "lead.update", "--json"],
    )
    .await;
    assert_eq!(ids(&updates).len(), 2);
    let wildcard = ok_json(&s, &["deliveries", "list", "--event", "lead.*", "--json"]).await;
    assert_eq!(ids(&wildcard).len(), 6);
    let recent = ok_json(&s, &["deliveries", "list", "--since", "1h", "--json"]).await;
    assert_eq!(ids(&recent).len(), 6);
    let future = ok_json(
        &s,
        &["deliveries", "list", "--since", "2999-01-01", "--json"],
    )
    .await;
    assert_eq!(ids(&future).len(), 0);
    let two = ok_json(&s, &["deliveries", "list", "--limit", "2", "--json"]).await;
    assert_eq!(ids(&two), all_ids[..2]);
    let table = ok(&s, &["deliveries", "list", "--endpoint", "bad"]).await;
    assert!(table.starts_with("ID "), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.contains("disabled"), "{table}");

    // deliveries show: by delivery id, then by event id
    let bad_id = s.delivery_id("bad", "disabled").await;
    let d = ok_json(&s, &["deliveries", "show", &bad_id.to_string(), "--json"]).await;
    assert_eq!(d["id"], bad_id);
    assert_eq!(d["status"], "disabled");
    let attempts = d["attempts"].as_array().unwrap();
    assert!(!attempts.is_empty(), "{d:#}");
    let a = &attempts[0];
    assert_eq!(a["status_code"], 500);
    assert_eq!(a["error_kind"], "status");
    assert_eq!(a["response_excerpt"], BAD_BODY);
    assert!(a["duration_ms"].as_i64().is_some());
    assert!(a["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(
        a["request_headers"]["x-superleap-signature"]
            .as_str()
            .unwrap()
            .starts_with("sha256=")
    );
    assert_eq!(a["request_headers"]["x-superleap-event-id"], d["event_id"]);
    assert_eq!(
        d["body"]["after"]["id"],
        d["record"].as_str().unwrap().trim_start_matches("lead:")
    );
    let human = ok(&s, &["deliveries", "show", &bad_id.to_string()]).await;
    assert!(human.contains("attempt 1"), "{human}");
    assert!(human.contains("HTTP 500"), "{human}");
    assert!(
        human.contains("> x-superleap-signature: sha256="),
        "{human}"
    );
    let event_id = d["event_id"].as_str().unwrap().to_string();
    let by_event = ok_json(&s, &["deliveries", "show", &event_id, "--json"]).await;
    let mut endpoints: Vec<&str> = by_event
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["endpoint"].as_str().unwrap())
        .collect();
    endpoints.sort();
    assert_eq!(endpoints, ["bad", "ok"]);

    // retry one: it is attempted again
    let before = s.attempts(bad_id).await;
    let out = ok(&s, &["deliveries", "retry", &bad_id.to_string()]).await;
    assert!(out.contains("queued again"), "{out}");
    wait_until(
        Duration::from_secs(20),
        "a new attempt of the retried delivery",
        || async { (s.attempts(bad_id).await > before).then_some(()) },
    )
    .await;

    let ok_id = s.delivery_id("ok", "succeeded").await;
    fails(
        &s.config,
        &["deliveries", "retry", &ok_id.to_string()],
        "already succeeded",
    )
    .await;

    // retry --all-failed for one endpoint
    let r = ok_json(
        &s,
        &[
            "deliveries",
            "retry",
            "--all-failed",
            "--endpoint",
            "bad",
            "--json",
        ],
    )
    .await;
    assert!(r["requeued"].as_u64().unwrap() >= 2, "{r}");
    assert_eq!(r["endpoint"], "bad");
    let none_ok = ok_json(
        &s,
        &[
            "deliveries",
            "retry",
            "--all-failed",
            "--endpoint",
            "ok",
            "--json",
        ],
    )
    .await;
    assert_eq!(none_ok["requeued"], 0);

    // endpoints list / disable / enable
    let eps = ok_json(&s, &["endpoints", "list", "--json"]).await;
    assert_eq!(eps[0]["id"], "ok");
    assert_eq!(eps[0]["enabled"], true);
    let target = eps[0]["target"].as_str().unwrap();
    assert!(
        target.starts_with("http://127.0.0.1:") && !target.contains("hooks"),
        "{target}"
    );
    assert_eq!(eps[0]["signing"][0], "superleap");
    let t = ok_json(&s, &["endpoints", "disable", "ok", "--json"]).await;
    assert_eq!(
        (t["enabled"].clone(), t["changed"].clone()),
        (false.into(), true.into())
    );
    let again = ok(&s, &["endpoints", "disable", "ok"]).await;
    assert!(again.contains("already disabled"), "{again}");
    let eps = ok_json(&s, &["endpoints", "list", "--json"]).await;
    assert_eq!(eps[0]["enabled"], false);
    assert!(
        eps[0]["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("by hand")
    );
    let list = ok(&s, &["endpoints", "list"]).await;
    assert!(list.contains("DISABLED"), "{list}");
    let out = ok(&s, &["endpoints", "enable", "ok"]).await;
    assert_eq!(out.trim(), "endpoint ok enabled");

    // ping: signed, straight to the receiver, not in the ledger
    let events_before = app::event_count(&s.client).await;
    let seen = s.ok.requests().len();
    let out = ok(&s, &["endpoints", "ping", "ok"]).await;
    assert!(out.starts_with("✓ ping to ok"), "{out}");
    let reqs =
        s.ok.wait_for_requests(seen + 1, Duration::from_secs(5))
            .await;
    let ping = reqs
        .iter()
        .rev()
        .find(|r| r.header("x-superleap-event") == Some("walhook.ping"))
        .expect("the ping reached the receiver");
    assert_eq!(
        ping.json(),
        serde_json::json!({"before": {}, "after": {"ping": true}, "diff": {}})
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(ENDPOINT_SECRET.as_bytes()).unwrap();
    mac.update(&ping.body);
    assert_eq!(
        ping.header("x-superleap-signature").unwrap(),
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );
    assert!(
        ping.header("x-superleap-event-id")
            .unwrap()
            .contains(":walhook.ping:")
    );
    assert_eq!(app::event_count(&s.client).await, events_before);
    let p = ok_json(&s, &["endpoints", "ping", "ok", "--json"]).await;
    assert_eq!(
        (p["ok"].clone(), p["status_code"].clone()),
        (true.into(), 200.into())
    );
    let err = fails(
        &s.config,
        &["endpoints", "ping", "bad"],
        "did not accept the ping",
    )
    .await;
    assert!(err.contains("HTTP 500"), "{err}");

    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_paths_are_actionable() {
    let s = Scenario::start(
        "admin_cli_errors",
        Options {
            no_run: true,
            ..Options::default()
        },
    )
    .await;
    // Before setup: the ledger is missing.
    let err = fails(&s.config, &["status"], "walhook setup").await;
    assert!(
        err.contains("ledger schema walhook does not exist"),
        "{err}"
    );
    fails(&s.config, &["deliveries", "list"], "walhook setup").await;

    app::setup(&app::parse(&s.text)).await;
    let c = &s.config;
    fails(
        c,
        &["deliveries", "show", "424242"],
        "no delivery with id 424242",
    )
    .await;
    fails(
        c,
        &["deliveries", "show", "app:lead:1:x:lead.create:zzzzzzzz"],
        "no event with id",
    )
    .await;
    fails(
        c,
        &["deliveries", "retry", "424242"],
        "no delivery with id 424242",
    )
    .await;
    fails(
        c,
        &["deliveries", "list", "--status", "lost"],
        "not a delivery state",
    )
    .await;
    fails(
        c,
        &["deliveries", "list", "--since", "yesterday"],
        "RFC 3339",
    )
    .await;
    fails(c, &["deliveries", "list", "--limit", "0"], "out of range").await;
    fails(c, &["deliveries", "retry"], "--all-failed").await;
    fails(
        c,
        &["deliveries", "retry", "--all-failed", "--endpoint", "nope"],
        "unknown endpoint `nope`",
    )
    .await;
    let err = fails(
        c,
        &["endpoints", "enable", "nope"],
        "unknown endpoint `nope`",
    )
    .await;
    assert!(err.contains("`ok`, `bad`"), "{err}");
    fails(c, &["endpoints", "disable", "nope"], "unknown endpoint").await;
    fails(c, &["endpoints", "ping", "nope"], "unknown endpoint").await;

    // An unreachable database: a clear message, quickly, without the password.
    let port = crate::common::free_port();
    let text = s
        .text
        .replace(
            &format!("127.0.0.1:{}", s.db.cluster().port()),
            &format!("127.0.0.1:{port}"),
        )
        .replace("connect_timeout = \"5s\"", "connect_timeout = \"1s\"");
    assert_ne!(text, s.text);
    let (_dir, unreachable) = app::write_config(&text);
    let err = fails(&unreachable, &["status"], "cannot reach the database").await;
    assert!(err.contains("walhook check"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_explains_what_to_do() {
    let s = Scenario::start(
        "admin_cli_check",
        Options {
            no_run: true,
            ..Options::default()
        },
    )
    .await;
    let c = &s.config;

    // Nothing set up yet.
    let (success, out, err) = cli(c, &["check"]).await;
    assert!(!success, "check passes before setup:\n{out}");
    assert_no_secret("check output", &out);
    assert_no_secret("check stderr", &err);
    for line in [
        "✓ config:",
        "✓ database: reachable: postgres@127.0.0.1:",
        "✓ wal_level: logical",
        "✓ privileges: role postgres is a superuser",
        "✓ tables: 1 mapped table(s) exist",
        "✗ publication: walhook does not exist",
        "✗ ledger: schema walhook is not set up",
        "✗ slot ",
        "✓ endpoint ok: http://127.0.0.1:",
    ] {
        assert!(out.contains(line), "check output lacks {line:?}:\n{out}");
    }
    // Each failure says what to do on the next line.
    let lines: Vec<&str> = out.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with('✗') {
            assert!(
                lines[i + 1].trim_start().starts_with("→ "),
                "no hint after {l:?}:\n{out}"
            );
        }
    }
    let (success, json, _) = cli(c, &["check", "--json"]).await;
    assert!(!success);
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["ok"], false);
    assert!(
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "publication" && c["state"] == "fail" && c["hint"].is_string())
    );

    // After setup everything passes.
    let (success, out, err) = cli(c, &["setup"]).await;
    assert!(success, "{out}{err}");
    let out = ok(&s, &["check"]).await;
    for line in [
        "✓ publication: walhook covers exactly the 1 mapped table(s)",
        "✓ replica identity public.leads: FULL",
        "✓ ledger: schema walhook is set up",
        "✓ slot ",
        "all checks passed",
    ] {
        assert!(out.contains(line), "check output lacks {line:?}:\n{out}");
    }
    assert!(out.contains("lag "), "{out}");

    // DEFAULT replica identity is a warning; an extra table in the publication a failure.
    s.db.psql(
        "ALTER TABLE leads REPLICA IDENTITY DEFAULT;
         CREATE TABLE audit (id int PRIMARY KEY);
         ALTER PUBLICATION walhook ADD TABLE audit;",
    )
    .await;
    let (success, out, _) = cli(c, &["check"]).await;
    assert!(!success, "{out}");
    assert!(
        out.contains("! replica identity public.leads: DEFAULT: `before` of update and delete events holds only the primary key columns"),
        "{out}"
    );
    assert!(out.contains("also covers unmapped public.audit"), "{out}");

    // A role without REPLICATION nor CREATE is told how to fix it.
    let role = format!("{}_limited", s.db.name);
    s.db.psql(&format!("CREATE ROLE {role} LOGIN")).await;
    let limited = s.text.replacen("://postgres:", &format!("://{role}:"), 1);
    let (_d1, limited) = app::write_config(&limited);
    let (success, out, _) = cli(&limited, &["check"]).await;
    assert!(!success);
    assert!(
        out.contains(&format!(
            "✗ privileges: role {role} lacks the REPLICATION attribute"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("ALTER ROLE \"{role}\" REPLICATION;")),
        "{out}"
    );

    // An endpoint whose host does not resolve.
    let unresolvable = s
        .text
        .replacen(s.bad.url(), "https://walhook-check.invalid/", 1);
    let (_d2, unresolvable) = app::write_config(&unresolvable);
    let (_, out, _) = cli(&unresolvable, &["check"]).await;
    assert!(
        out.contains("✗ endpoint bad: walhook-check.invalid does not resolve"),
        "{out}"
    );

    // A config the loader rejects: one failed check, no database contact.
    let (_d3, broken) = app::write_config(&format!("{}\n[surprise]\nkey = 1\n", s.text));
    let (success, out, _) = cli(&broken, &["check"]).await;
    assert!(!success);
    assert!(out.starts_with("✗ config: "), "{out}");
    assert!(out.contains("surprise"), "{out}");
    assert_no_secret("check of a broken config", &out);
}
