//! The admin HTTP API over real HTTP: the token guard, the JSON API that
//! mirrors the CLI, `/metrics` moving as deliveries happen, `/readyz`, and
//! that no secret is in any response.

use std::sync::Arc;
use std::time::Duration;

use crate::common::admin::{ADMIN_TOKEN, BAD_BODY, Options, Scenario, assert_no_secret};
use crate::common::app;
use crate::common::wait_until;
use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use walhook::admin::api::AdminServer;
use walhook::metrics::Metrics;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Sends `req`, checks no secret is in the answer; returns (status, body).
async fn send(req: reqwest::RequestBuilder) -> (StatusCode, String) {
    let resp = req.send().await.expect("admin HTTP answers");
    let status = resp.status();
    let headers = format!("{:?}", resp.headers());
    let body = resp.text().await.unwrap();
    assert_no_secret("response headers", &headers);
    assert_no_secret("response body", &body);
    (status, body)
}

async fn get_json(s: &Scenario, path: &str) -> Value {
    let (status, body) = send(http().get(s.admin_url(path)).bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

async fn post_json(s: &Scenario, path: &str) -> (StatusCode, Value) {
    let (status, body) = send(http().post(s.admin_url(path)).bearer_auth(ADMIN_TOKEN)).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn wait_ready(s: &Scenario) {
    wait_until(Duration::from_secs(30), "/readyz says ready", || async {
        let r = http().get(s.admin_url("/readyz")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_everything_but_health() {
    let s = Scenario::start(
        "admin_api_token",
        Options {
            admin: true,
            ..Options::default()
        },
    )
    .await;
    wait_ready(&s).await;
    s.insert(&["t1"]).await;
    wait_until(
        Duration::from_secs(20),
        "one succeeded delivery",
        || async { (s.count("ok", "succeeded").await == 1).then_some(()) },
    )
    .await;
    let id = s.delivery_id("ok", "succeeded").await;

    let (status, body) = send(http().get(s.admin_url("/healthz"))).await;
    assert_eq!((status, body.trim()), (StatusCode::OK, "ok"));
    let (status, body) = send(http().get(s.admin_url("/readyz"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["streaming"], true);

    let paths = [
        "/metrics".to_string(),
        "/api/status".into(),
        "/api/deliveries".into(),
        format!("/api/deliveries/{id}"),
        "/api/endpoints".into(),
    ];
    for p in &paths {
        let resp = http().get(s.admin_url(p)).send().await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::UNAUTHORIZED,
            "GET {p} without token"
        );
        assert!(resp.headers().contains_key("www-authenticate"));
        let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], 401);
        let (status, _) = send(http().get(s.admin_url(p)).bearer_auth("wrong-token")).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "GET {p} with a wrong token"
        );
        let (status, body) = send(http().get(s.admin_url(p)).bearer_auth(ADMIN_TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "GET {p} with the token: {body}");
    }
    for p in [
        format!("/api/deliveries/{id}/retry"),
        "/api/deliveries/retry-failed".into(),
        "/api/endpoints/ok/disable".into(),
        "/api/endpoints/ok/ping".into(),
    ] {
        let (status, _) = send(http().post(s.admin_url(&p))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "POST {p} without token");
    }
    // The endpoint was not disabled by the refused request.
    let eps = get_json(&s, "/api/endpoints").await;
    assert_eq!(eps[0]["enabled"], true);

    // The page: token from the query (once) or the header.
    let (status, body) = send(http().get(s.admin_url("/"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("?token="), "{body}");
    let (status, _) = send(http().get(s.admin_url("/?token=nope"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let resp = http()
        .get(s.admin_url(&format!("/?token={ADMIN_TOKEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let page = resp.text().await.unwrap();
    assert!(page.contains("<title>walhook"), "{page}");
    assert_no_secret("the page", &page);
    let (status, _) = send(http().get(s.admin_url("/")).bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::OK);

    // Cross-origin writes are refused even with the token.
    let (status, _) = send(
        http()
            .post(s.admin_url("/api/deliveries/retry-failed"))
            .bearer_auth(ADMIN_TOKEN)
            .header("origin", "http://evil.example"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = send(http().get(s.admin_url("/nope")).bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_mirrors_the_cli() {
    let s = Scenario::start(
        "admin_api_json",
        Options {
            admin: true,
            ..Options::default()
        },
    )
    .await;
    s.insert(&["j1", "j2"]).await;
    s.wait_settled(2).await;

    let st = get_json(&s, "/api/status").await;
    assert_eq!(st["events"]["total"], 2);
    assert_eq!(st["deliveries"]["succeeded"], 2);
    assert_eq!(st["deliveries"]["disabled"], 2);

    let all = get_json(&s, "/api/deliveries").await;
    assert_eq!(all.as_array().unwrap().len(), 4);
    let disabled = get_json(
        &s,
        "/api/deliveries?status=disabled&endpoint=bad&event=lead.create&since=1h",
    )
    .await;
    assert_eq!(disabled.as_array().unwrap().len(), 2);
    let any = get_json(&s, "/api/deliveries?status=&event=&endpoint=&since=").await;
    assert_eq!(any, all);
    let first_page = get_json(&s, "/api/deliveries?limit=3").await;
    let last_id = first_page[2]["id"].as_i64().unwrap();
    let next_page = get_json(&s, &format!("/api/deliveries?limit=3&before={last_id}")).await;
    assert_eq!(next_page.as_array().unwrap().len(), 1);

    let id = disabled[0]["id"].as_i64().unwrap();
    let d = get_json(&s, &format!("/api/deliveries/{id}")).await;
    assert_eq!(d["status"], "disabled");
    assert_eq!(d["attempts"][0]["response_excerpt"], BAD_BODY);
    let event_id = d["event_id"].as_str().unwrap();
    let by_event = get_json(&s, &format!("/api/deliveries/{}", urlencode(event_id))).await;
    assert_eq!(by_event.as_array().unwrap().len(), 2);

    let (status, body) = send(
        http()
            .get(s.admin_url("/api/deliveries/999999"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no delivery with id 999999"), "{body}");
    let (status, body) = send(
        http()
            .get(s.admin_url("/api/deliveries?status=lost"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("not a delivery state"), "{body}");
    let (status, _) = post_json(&s, "/api/deliveries/abc/retry").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post_json(&s, "/api/deliveries/999999/retry").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let ok_id = s.delivery_id("ok", "succeeded").await;
    let (status, body) = post_json(&s, &format!("/api/deliveries/{ok_id}/retry")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already succeeded")
    );

    // Retry one: a new attempt is made.
    let before = s.attempts(id).await;
    let (status, r) = post_json(&s, &format!("/api/deliveries/{id}/retry")).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["previous_status"], "disabled");
    wait_until(
        Duration::from_secs(20),
        "a new attempt after the API retry",
        || async { (s.attempts(id).await > before).then_some(()) },
    )
    .await;
    let (status, r) = post_json(&s, "/api/deliveries/retry-failed?endpoint=bad").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert!(r["requeued"].as_u64().unwrap() >= 1, "{r}");
    let (status, _) = post_json(&s, "/api/deliveries/retry-failed?endpoint=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Endpoints: disable, enable, ping.
    let (status, t) = post_json(&s, "/api/endpoints/ok/disable").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(t["enabled"], false);
    let eps = get_json(&s, "/api/endpoints").await;
    assert_eq!(eps[0]["enabled"], false);
    assert_eq!(eps[0]["disabled_reason"], "disabled through the admin API");
    let (_, t) = post_json(&s, "/api/endpoints/ok/enable").await;
    assert_eq!(
        (t["enabled"].clone(), t["changed"].clone()),
        (true.into(), true.into())
    );
    let (status, _) = post_json(&s, "/api/endpoints/nope/enable").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, p) = post_json(&s, "/api/endpoints/ok/ping").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(p["ok"], true);
    let (_, p) = post_json(&s, "/api/endpoints/bad/ping").await;
    assert_eq!(
        (p["ok"].clone(), p["status_code"].clone()),
        (false.into(), 500.into())
    );

    s.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the sample `series` (name with labels, exactly as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_deliveries_happen() {
    let s = Scenario::start(
        "admin_api_metrics",
        Options {
            admin: true,
            ..Options::default()
        },
    )
    .await;
    wait_ready(&s).await;
    let scrape = || async {
        let (status, text) =
            send(http().get(s.admin_url("/metrics")).bearer_auth(ADMIN_TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        text
    };
    let before = scrape().await;
    assert_eq!(
        sample(
            &before,
            "walhook_events_captured_total{event=\"lead.create\"}"
        ),
        None
    );
    assert_eq!(
        sample(&before, "walhook_attempt_duration_seconds_count"),
        Some(0.0)
    );
    assert_eq!(sample(&before, "walhook_streaming"), Some(1.0));
    assert_eq!(sample(&before, "walhook_ledger_up"), Some(1.0));
    assert!(
        sample(&before, "walhook_replication_lag_bytes").is_some(),
        "{before}"
    );
    assert!(
        sample(&before, "walhook_replication_lag_seconds").is_some(),
        "{before}"
    );
    assert_eq!(
        sample(&before, "walhook_endpoint_enabled{endpoint=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &before,
            "walhook_deliveries_queued{endpoint=\"bad\",state=\"disabled\"}"
        ),
        Some(0.0)
    );

    s.insert(&["m1", "m2"]).await;
    let text = wait_until(
        Duration::from_secs(30),
        "metrics after two deliveries",
        || async {
            let t = scrape().await;
            (sample(&t, "walhook_events_captured_total{event=\"lead.create\"}") == Some(2.0)
                && sample(
                    &t,
                    "walhook_deliveries_total{endpoint=\"ok\",outcome=\"success\"}",
                ) == Some(2.0)
                && sample(
                    &t,
                    "walhook_deliveries_total{endpoint=\"bad\",outcome=\"failure\"}",
                )
                .is_some_and(|n| n >= 2.0))
            .then_some(t)
        },
    )
    .await;
    let count = sample(&text, "walhook_attempt_duration_seconds_count").unwrap();
    assert!(count >= 4.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "walhook_attempt_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        Some(count)
    );

    // Once `bad` gives up, the disabled gauge and outcome counter show it.
    s.wait_settled(2).await;
    let text = scrape().await;
    assert_eq!(
        sample(
            &text,
            "walhook_deliveries_queued{endpoint=\"bad\",state=\"disabled\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "walhook_deliveries_total{endpoint=\"bad\",outcome=\"disabled\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "walhook_deliveries_queued{endpoint=\"ok\",state=\"pending\"}"
        ),
        Some(0.0)
    );

    s.stop().await;
}

/// The router served on 127.0.0.1:0 outside `walhook run`, for the readiness rules.
async fn serve(text: &str, capture: bool) -> (String, CancellationToken) {
    let cfg = Arc::new(app::parse(text));
    let server = AdminServer::bind(cfg, Arc::new(Metrics::new()), capture)
        .await
        .expect("bind")
        .expect("admin HTTP is on");
    let base = format!("http://{}", server.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(stop.clone()));
    (base, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_ledger_and_stream() {
    let s = Scenario::start(
        "admin_api_ready",
        Options {
            no_run: true,
            ..Options::default()
        },
    )
    .await;
    app::setup(&app::parse(&s.text)).await;
    let admin = format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n");
    let text = s.text.replace("[admin]\nlisten = \"\"\n", &admin);
    assert_ne!(text, s.text);

    // Dispatch-only process with a reachable ledger: ready.
    let (base, stop) = serve(&text, false).await;
    let (status, body) = send(http().get(format!("{base}/readyz"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    stop.cancel();

    // A capturing process that is not streaming: not ready.
    let (base, stop) = serve(&text, true).await;
    let (status, body) = send(http().get(format!("{base}/readyz"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["ledger"].clone(), v["streaming"].clone()),
        (true.into(), false.into())
    );
    stop.cancel();

    // The database is gone: not ready, API answers 503 without internals, health still 200.
    let port = crate::common::free_port();
    let gone = text.replace(
        &format!("127.0.0.1:{}", s.db.cluster().port()),
        &format!("127.0.0.1:{port}"),
    );
    let (base, stop) = serve(&gone, false).await;
    let (status, _) = send(http().get(format!("{base}/healthz"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(http().get(format!("{base}/readyz"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = send(
        http()
            .get(format!("{base}/api/status"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        !body.contains("127.0.0.1") && !body.contains("postgres"),
        "{body}"
    );
    let (status, body) = send(
        http()
            .get(format!("{base}/metrics"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("walhook_ledger_up 0\n"), "{body}");
    stop.cancel();
}
