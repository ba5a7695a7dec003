//! The delivery history page in real headless Chromium, driven over the W3C
//! WebDriver protocol (chromedriver) with plain HTTP: rows of real
//! deliveries, filtering, a delivery's attempts, the Retry button, escaping
//! of untrusted response bodies. Saves a screenshot to
//! `target/history-page.png`.
//!
//! Needs `chromium` and `chromedriver` (`scripts/install-deps.sh --browser`).
//! Without them the test fails, unless `WALHOOK_SKIP_BROWSER=1` is set.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::admin::{ADMIN_TOKEN, BAD_BODY, Options, Scenario, assert_no_secret};
use crate::common::free_port;
use crate::common::wait_until;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path).chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ]) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// chromedriver as a child process, killed on drop.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
    session: Option<String>,
    profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(chromedriver: &std::path::Path, chromium: &std::path::Path) -> Driver {
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut d = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            session: None,
            profile,
        };
        let (http, base) = (d.http.clone(), d.base.clone());
        wait_until(Duration::from_secs(30), "chromedriver is ready", || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let r = http.get(format!("{base}/status")).send().await.ok()?;
                let v: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
                (v["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium.display().to_string(),
                        "args": [
                            "--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-dev-shm-usage", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync", "--no-first-run",
                            format!("--user-data-dir={}", d.profile.path().display()),
                            "--window-size=1400,2200",
                        ]
                    }
                }
            }
        });
        let v = d.call("POST", "/session", Some(caps)).await;
        d.session = Some(
            v["sessionId"]
                .as_str()
                .unwrap_or_else(|| panic!("new session: {v}"))
                .to_string(),
        );
        d
    }

    /// One WebDriver command; panics on a WebDriver error. Returns `value`.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = match &self.session {
            Some(s) if path != "/session" => format!("/session/{s}{path}"),
            _ => path.to_string(),
        };
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.unwrap_or(json!({})).to_string()),
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {status}: not JSON ({e}): {text}"));
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn elements(&self, css: &str) -> Vec<String> {
        self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .unwrap_or_else(|| panic!("find {css}: not a list"))
        .iter()
        .map(|e| {
            e[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("element {e}"))
                .to_string()
        })
        .collect()
    }

    async fn text(&self, el: &str) -> String {
        self.call("GET", &format!("/element/{el}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn attr(&self, el: &str, name: &str) -> Option<String> {
        self.call("GET", &format!("/element/{el}/attribute/{name}"), None)
            .await
            .as_str()
            .map(str::to_string)
    }

    async fn click(&self, el: &str) {
        self.call("POST", &format!("/element/{el}/click"), Some(json!({})))
            .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits until `script` returns a truthy value, which it returns.
    async fn wait_for(&self, what: &str, script: &str) -> Value {
        wait_until(Duration::from_secs(30), what, || async {
            let v = self.script(script).await;
            let truthy = !(v.is_null() || v == false || v == 0 || v == "");
            truthy.then_some(v)
        })
        .await
    }

    async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine as _;
        let v = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).expect("write screenshot");
    }

    async fn quit(mut self) {
        if self.session.is_some() {
            self.call("DELETE", "", None).await;
            self.session = None;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_page_lists_filters_and_retries() {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let chromedriver = find_program(&["chromedriver"]);
    let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
        if std::env::var("WALHOOK_SKIP_BROWSER").as_deref() == Ok("1") {
            eprintln!("SKIPPED: chromium/chromedriver not found and WALHOOK_SKIP_BROWSER=1");
            return;
        }
        panic!(
            "the browser test needs chromium and chromedriver: run `scripts/install-deps.sh --browser` (or set WALHOOK_SKIP_BROWSER=1 to skip it explicitly)"
        );
    };

    let s = Scenario::start(
        "browser_history",
        Options {
            admin: true,
            ..Options::default()
        },
    )
    .await;
    s.insert(&["b1"]).await;
    s.wait_settled(1).await;
    let disabled_id = s.delivery_id("bad", "disabled").await;

    let d = Driver::start(&chromedriver, &chromium).await;
    d.goto(&s.admin_url(&format!("/?token={ADMIN_TOKEN}")))
        .await;
    d.wait_for(
        "the page loaded its deliveries",
        "return document.body.getAttribute('data-loaded') === '1' && document.querySelectorAll('tr.delivery').length === 2",
    )
    .await;
    // The token left the address bar (it stays in the tab's sessionStorage).
    let url = d.call("GET", "/url", None).await;
    assert!(!url.as_str().unwrap().contains("token"), "{url}");

    // One row per delivery: one succeeded to `ok`, one disabled to `bad`.
    let mut rows = Vec::new();
    for el in d.elements("tr.delivery").await {
        rows.push((d.attr(&el, "data-status").await.unwrap(), d.text(&el).await));
    }
    rows.sort();
    assert_eq!(rows[0].0, "disabled");
    assert!(
        rows[0].1.contains("lead.create") && rows[0].1.contains("bad"),
        "{rows:?}"
    );
    assert!(rows[0].1.contains("HTTP 500"), "{rows:?}");
    assert_eq!(rows[1].0, "succeeded");
    assert!(rows[1].1.contains("ok"), "{rows:?}");
    let cards = d.text(&d.elements("#cards").await[0]).await;
    assert!(
        cards.contains("EVENTS CAPTURED") || cards.contains("Events captured"),
        "{cards}"
    );

    // Filter by status.
    let status = d.elements("#f-status").await;
    d.script("document.getElementById('f-status').value = 'disabled';")
        .await;
    assert_eq!(status.len(), 1);
    d.click(&d.elements("#filters button[type=submit]").await[0])
        .await;
    d.wait_for(
        "only the disabled delivery is listed",
        "const r = document.querySelectorAll('tr.delivery'); return r.length === 1 && r[0].getAttribute('data-status') === 'disabled'",
    )
    .await;

    // Open it: its attempts, with request headers and the (escaped) response.
    let row = d
        .elements(&format!("tr.delivery[data-id='{disabled_id}']"))
        .await;
    d.click(&row[0]).await;
    let before = d
        .wait_for(
            "the delivery's attempts are shown",
            &format!("const b = document.getElementById('detail'); return b.getAttribute('data-id') === '{disabled_id}' && Number(b.getAttribute('data-attempts'))"),
        )
        .await
        .as_i64()
        .unwrap();
    assert!(before >= 1);
    let detail = d.text(&d.elements("#detail").await[0]).await;
    assert!(detail.contains("x-superleap-signature"), "{detail}");
    assert!(detail.contains("sha256="), "{detail}");
    assert!(detail.contains("Attempt 1"), "{detail}");
    let excerpt = d
        .script("return document.querySelector('#detail .attempt pre.excerpt').textContent")
        .await;
    assert_eq!(excerpt, BAD_BODY, "the response excerpt is shown as text");
    let injected = d
        .script("return document.querySelectorAll('#detail img, #detail b').length")
        .await;
    assert_eq!(
        injected, 0,
        "markup from the response must not become elements"
    );

    // Retry from the row: a new attempt appears without reloading.
    let retry = d
        .elements(&format!(
            "tr.delivery[data-id='{disabled_id}'] button.retry"
        ))
        .await;
    assert_eq!(retry.len(), 1, "a disabled delivery has a Retry button");
    d.click(&retry[0]).await;
    d.wait_for(
        "the new attempt appears on the page",
        &format!("return Number(document.getElementById('detail').getAttribute('data-attempts')) > {before}"),
    )
    .await;
    assert!(s.attempts(disabled_id).await > before);
    let notice = d.text(&d.elements("#notice").await[0]).await;
    assert!(notice.contains("queued again"), "{notice}");

    // Back to every delivery for the screenshot, with the detail open.
    d.script("document.getElementById('f-status').value = '';")
        .await;
    d.click(&d.elements("#filters button[type=submit]").await[0])
        .await;
    d.wait_for(
        "both deliveries are listed again",
        "return document.querySelectorAll('tr.delivery').length === 2",
    )
    .await;
    let source = d.call("GET", "/source", None).await;
    assert_no_secret("the page source", source.as_str().unwrap());
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/history-page.png");
    d.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    d.quit().await;
    s.stop().await;
}
