//! `walhook listen` as a real child process: requests signed by walhook's own
//! signing code verify, wrongly signed or unsigned ones do not, and no secret
//! ever appears in what it prints.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::lines::Lines;
use crate::common::send_signal;

use reqwest::header::HeaderMap;
use walhook::config::{EndpointConfig, EndpointSecrets, HeaderPrefix, Secret, SigningScheme};
use walhook::dispatch::sign;

const SUPERLEAP_SECRET: &str = "s3cret-for-listen-test-9f2c";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TIMEOUT: Duration = Duration::from_secs(20);

/// A running `walhook listen` and everything it printed so far.
struct Listen {
    child: Child,
    lines: Lines,
    port: u16,
}

impl Listen {
    fn spawn(args: &[&str], env_secret: Option<&str>) -> Listen {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_walhook"));
        cmd.arg("listen")
            .args(["--port", "0"])
            .args(args)
            .env_remove("WALHOOK_LISTEN_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(s) = env_secret {
            cmd.env("WALHOOK_LISTEN_SECRET", s);
        }
        let mut child = cmd.spawn().expect("spawn walhook listen");
        let lines = Lines::from_readers(vec![
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ]);
        let mut l = Listen {
            child,
            lines,
            port: 0,
        };
        let banner = l.read_until("the banner", |line| {
            line.starts_with("walhook listen: http://")
        });
        l.port = banner
            .strip_prefix("walhook listen: http://127.0.0.1:")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(port, _)| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in the banner: {banner}"));
        l
    }

    fn read_until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        match self.lines.read_until(TIMEOUT, pred) {
            Ok(line) => line,
            Err(_) => {
                let _ = self.child.kill();
                panic!("no {what} within {TIMEOUT:?}:\n{}", self.lines.output());
            }
        }
    }

    /// The block printed for request number `n` (from `#n` to its answer line).
    fn block(&mut self, n: usize) -> String {
        let head = format!("#{n} ");
        self.read_until(&format!("request #{n}"), |l| l.starts_with(&head));
        let start = self.lines.seen.len() - 1;
        self.read_until(&format!("the answer to request #{n}"), |l| {
            l.starts_with("  → answered")
        });
        self.lines.seen[start..].join("\n")
    }

    /// SIGINT, then the exit status and the whole output.
    fn stop(mut self) -> (ExitStatus, String) {
        send_signal(self.child.id(), "INT");
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("walhook listen did not stop on SIGINT");
            }
            // Wait for output or a short while, then look again.
            let _ = self.lines.read_until(Duration::from_millis(50), |_| true);
        };
        self.lines.drain(Duration::from_secs(5));
        (status, self.lines.output())
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn headers_for(secrets: &[&str], signing: &[SigningScheme], body: &[u8]) -> HeaderMap {
    let endpoint = EndpointConfig {
        id: "dev".into(),
        url: "http://127.0.0.1:9/".parse().unwrap(),
        secrets: EndpointSecrets::new(secrets.iter().map(|s| Secret::new(*s)).collect()).unwrap(),
        events: vec!["*".into()],
        signing: signing.to_vec(),
        timeout: Duration::from_secs(5),
        allow_insecure_http: false,
        retry: Default::default(),
        headers: Vec::new(),
        rate_limit: None,
        max_in_flight: None,
        filter: None,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    sign::signed_headers(
        &endpoint,
        &HeaderPrefix::default(),
        "app:lead:1741686315971:L-1:lead.create:9qRSOzKs",
        "lead.create",
        body,
        now,
    )
}

async fn post(url: &str, headers: &HeaderMap, body: &'static [u8]) -> u16 {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client
        .post(url)
        .body(body)
        .headers(headers.clone())
        .send()
        .await
        .expect("POST to walhook listen")
        .status()
        .as_u16()
}

const BODY: &[u8] = br#"{"before":{},"after":{"id":"L-1","amount":12.500000},"diff":{"id":"L-1","amount":12.500000}}"#;

#[tokio::test]
async fn prints_requests_with_signature_verdicts_and_never_the_secret() {
    let mut l = Listen::spawn(&["--secret", SUPERLEAP_SECRET, "--secret", WHSEC], None);
    let superleap = [SigningScheme::Superleap];
    let standard = [SigningScheme::StandardWebhooks];

    // 1. superleap, right secret.
    let h = headers_for(&[SUPERLEAP_SECRET], &superleap, BODY);
    assert_eq!(post(&l.url("/hooks/walhook"), &h, BODY).await, 200);
    let b = l.block(1);
    assert!(b.contains("POST /hooks/walhook"), "{b}");
    assert!(b.contains("x-superleap-event: lead.create"), "{b}");
    assert!(
        b.contains("x-superleap-event-id: app:lead:1741686315971:L-1:lead.create:9qRSOzKs"),
        "{b}"
    );
    assert!(b.contains("  signature ✓"), "{b}");
    assert!(
        b.contains("✓ superleap          verified (secret 1)"),
        "{b}"
    );
    // Pretty-printed, digits as sent.
    assert!(b.contains("\"amount\": 12.500000"), "{b}");

    // 2. superleap, wrong secret.
    let h = headers_for(&["not-the-secret"], &superleap, BODY);
    assert_eq!(post(&l.url("/x"), &h, BODY).await, 200);
    let b = l.block(2);
    assert!(b.contains("  signature ✗"), "{b}");
    assert!(b.contains("✗ superleap          INVALID"), "{b}");

    // 3. Standard Webhooks (and superleap keyed with the whsec secret's text).
    let h = headers_for(
        &[WHSEC],
        &[SigningScheme::Superleap, SigningScheme::StandardWebhooks],
        BODY,
    );
    assert_eq!(post(&l.url("/"), &h, BODY).await, 200);
    let b = l.block(3);
    assert!(b.contains("  signature ✓"), "{b}");
    assert!(
        b.contains("✓ standard-webhooks  verified (secret 2)"),
        "{b}"
    );
    assert!(
        b.contains("✓ superleap          verified (secret 2)"),
        "{b}"
    );
    assert!(b.contains("webhook-id: app:lead:"), "{b}");

    // 4. Standard Webhooks over another body than the one sent.
    let h = headers_for(&[WHSEC], &standard, b"{}");
    assert_eq!(post(&l.url("/"), &h, BODY).await, 200);
    let b = l.block(4);
    assert!(b.contains("  signature ✗"), "{b}");
    assert!(b.contains("✗ standard-webhooks  INVALID"), "{b}");

    // 5. Unsigned.
    assert_eq!(
        post(&l.url("/"), &HeaderMap::new(), b"plain text").await,
        200
    );
    let b = l.block(5);
    assert!(b.contains("✗ unsigned"), "{b}");
    assert!(b.contains("plain text"), "{b}");

    let (status, out) = l.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    for secret in [SUPERLEAP_SECRET, WHSEC, WHSEC.trim_start_matches("whsec_")] {
        assert!(!out.contains(secret), "the output shows a secret:\n{out}");
    }
}

#[tokio::test]
async fn secret_from_env_status_override_and_required_standard_webhooks() {
    let mut l = Listen::spawn(&["--status", "503", "--standard-webhooks"], Some(WHSEC));
    // Signed with superleap only: Standard Webhooks is required, so ✗.
    let h = headers_for(&[WHSEC], &[SigningScheme::Superleap], BODY);
    assert_eq!(post(&l.url("/"), &h, BODY).await, 503);
    let b = l.block(1);
    assert!(
        b.contains("✓ superleap          verified (secret 1)"),
        "{b}"
    );
    assert!(b.contains("✗ standard-webhooks  MISSING"), "{b}");
    assert!(b.contains("  signature ✗"), "{b}");
    assert!(b.contains("→ answered 503"), "{b}");
    let (status, out) = l.stop();
    assert!(status.success(), "exit {status}:\n{out}");
    assert!(!out.contains(WHSEC.trim_start_matches("whsec_")), "{out}");
}

#[test]
fn help_hides_the_secret_from_the_environment_and_no_secret_is_an_error() {
    let help = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .args(["listen", "--help"])
        .env("WALHOOK_LISTEN_SECRET", SUPERLEAP_SECRET)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("WALHOOK_LISTEN_SECRET"), "{text}");
    assert!(!text.contains(SUPERLEAP_SECRET), "{text}");

    let none = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .args(["listen", "--port", "0"])
        .env_remove("WALHOOK_LISTEN_SECRET")
        .output()
        .unwrap();
    assert!(!none.status.success());
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(err.contains("--secret"), "{err}");

    let bad = Command::new(env!("CARGO_BIN_EXE_walhook"))
        .args(["listen", "--port", "0", "--secret", "whsec_not*base64"])
        .env_remove("WALHOOK_LISTEN_SECRET")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("secret #1"), "{err}");
    assert!(!err.contains("not*base64"), "{err}");
}
