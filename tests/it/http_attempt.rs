//! `dispatch::http::attempt` against real servers on 127.0.0.1: tiny raw-TCP
//! HTTP/1.1 servers written here, so every misbehaviour (hanging, closing
//! mid-request, huge bodies, redirects) is under the test's control.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::free_port;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use walhook::dispatch::http::{AttemptRecord, Outcome, attempt, build_client};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does with a request.
enum Reply {
    /// Write these bytes; close the connection afterwards when `close`.
    Bytes { bytes: Vec<u8>, close: bool },
    /// Never answer, keep the connection open.
    Hang,
}

fn reply(status_line: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut bytes = format!(
        "HTTP/1.1 {status_line}\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        bytes.push_str(&format!("{name}: {value}\r\n"));
    }
    bytes.push_str("\r\n");
    let mut bytes = bytes.into_bytes();
    bytes.extend_from_slice(body);
    Reply::Bytes {
        bytes,
        close: false,
    }
}

/// A server that records connections and requests and answers with `handler`.
struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    async fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let (conns, reqs) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (handler, reqs) = (handler.clone(), reqs.clone());
                tokio::spawn(serve_connection(stream, handler, reqs));
            }
        });
        Server {
            addr,
            connections,
            requests,
        }
    }

    fn url(&self, path: &str) -> url::Url {
        format!("http://{}{path}", self.addr).parse().unwrap()
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    handler: Arc<impl Fn(&Request) -> Reply>,
    requests: Arc<Mutex<Vec<Request>>>,
) {
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        let answer = handler(&request);
        requests.lock().unwrap().push(request);
        match answer {
            Reply::Bytes { bytes, close } => {
                // The client may hang up before a large body is written.
                if stream.write_all(&bytes).await.is_err() || close {
                    return;
                }
            }
            Reply::Hang => {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Read one HTTP/1.1 request with a `content-length` body; `None` at EOF.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).ok()?;
            let mut lines = head.split("\r\n");
            let mut start = lines.next()?.split(' ');
            let (method, path) = (start.next()?.to_owned(), start.next()?.to_owned());
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            while buf.len() < end + 4 + length {
                read_more(stream, buf).await?;
            }
            let body = buf[end + 4..end + 4 + length].to_vec();
            buf.drain(..end + 4 + length);
            return Some(Request {
                method,
                path,
                headers,
                body,
            });
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
const TIMEOUT: Duration = Duration::from_secs(5);

fn headers() -> HeaderMap {
    [
        ("content-type", "application/json"),
        ("user-agent", "walhook/test"),
        ("x-superleap-event-id", "app:lead:1:42:lead.create:abcdefgh"),
        ("x-superleap-event", "lead.create"),
        ("x-superleap-signature", "sha256=00ff"),
    ]
    .into_iter()
    .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
    .collect()
}

const BODY: &[u8] = br#"{"before":{},"after":{"id":42},"diff":{"id":42}}"#;

async fn post(url: &url::Url, timeout: Duration) -> AttemptRecord {
    let client = build_client().unwrap();
    attempt(&client, url, &headers(), Bytes::from_static(BODY), timeout).await
}

#[tokio::test]
async fn ok_200_is_success_and_sends_headers_and_body() {
    let server = Server::start(|_| reply("200 OK", &[], b"thanks")).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let rec = post(&server.url("/hooks/walhook"), TIMEOUT).await;
    assert_eq!(rec.outcome, Outcome::Success(200));
    assert!(rec.outcome.is_success());
    assert_eq!(rec.response_excerpt.as_deref(), Some("thanks"));
    assert_eq!(rec.retry_after, None);
    assert!(rec.started_at_unix_ms >= before && rec.started_at_unix_ms < before + 5000);
    assert!(rec.duration < TIMEOUT);

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hooks/walhook");
    assert_eq!(req.body, BODY);
    for (name, value) in &headers() {
        assert_eq!(req.header(name.as_str()), value.to_str().ok(), "{name}");
    }
}

#[tokio::test]
async fn other_2xx_is_success_without_excerpt_when_empty() {
    let server = Server::start(|_| reply("204 No Content", &[], b"")).await;
    let rec = post(&server.url("/"), TIMEOUT).await;
    assert_eq!(rec.outcome, Outcome::Success(204));
    assert_eq!(rec.response_excerpt, None);
}

#[tokio::test]
async fn keep_alive_reuses_the_connection() {
    let server = Server::start(|_| reply("200 OK", &[], b"ok")).await;
    let client = build_client().unwrap();
    let url = server.url("/");
    for _ in 0..3 {
        let rec = attempt(&client, &url, &headers(), Bytes::from_static(BODY), TIMEOUT).await;
        assert_eq!(rec.outcome, Outcome::Success(200));
    }
    assert_eq!(server.requests().len(), 3);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn redirect_is_a_failure_and_not_followed() {
    let target = Server::start(|_| reply("200 OK", &[], b"followed")).await;
    let location = target.url("/elsewhere").to_string();
    let server =
        Server::start(move |_| reply("302 Found", &[("location", location.as_str())], b"moved"))
            .await;
    let rec = post(&server.url("/"), TIMEOUT).await;
    assert_eq!(rec.outcome, Outcome::Status(302));
    assert!(!rec.outcome.is_success());
    assert_eq!(rec.outcome.error_kind(), "status");
    assert_eq!(rec.response_excerpt.as_deref(), Some("moved"));
    assert_eq!(server.requests().len(), 1);
    // Following it would have completed before `attempt` returned.
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn not_found_and_gone_are_status_failures() {
    for (line, code) in [("404 Not Found", 404), ("410 Gone", 410)] {
        let server = Server::start(move |_| reply(line, &[], b"nope")).await;
        let rec = post(&server.url("/"), TIMEOUT).await;
        assert_eq!(rec.outcome, Outcome::Status(code));
        assert_eq!(rec.outcome.message(), format!("HTTP {line}"));
        assert_eq!(
            rec.failure().unwrap().kind,
            walhook::dispatch::retry::FailureKind::Status(code)
        );
    }
}

#[tokio::test]
async fn too_many_requests_with_retry_after_seconds() {
    let server = Server::start(|_| {
        reply(
            "429 Too Many Requests",
            &[("retry-after", "7")],
            b"slow down",
        )
    })
    .await;
    let rec = post(&server.url("/"), TIMEOUT).await;
    assert_eq!(rec.outcome, Outcome::Status(429));
    assert_eq!(rec.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(
        rec.failure().unwrap().retry_after,
        Some(Duration::from_secs(7))
    );
}

#[tokio::test]
async fn unavailable_with_retry_after_http_date() {
    let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(120);
    let date = at
        .format(time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        ))
        .unwrap();
    let server = Server::start(move |_| {
        reply(
            "503 Service Unavailable",
            &[("retry-after", date.as_str())],
            b"",
        )
    })
    .await;
    let rec = post(&server.url("/"), TIMEOUT).await;
    assert_eq!(rec.outcome, Outcome::Status(503));
    let retry_after = rec.retry_after.expect("Retry-After parsed");
    assert!(
        (Duration::from_secs(115)..=Duration::from_secs(120)).contains(&retry_after),
        "{retry_after:?}"
    );
}

#[tokio::test]
async fn hanging_server_times_out_on_time() {
    let server = Server::start(|_| Reply::Hang).await;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let rec = post(&server.url("/"), timeout).await;
    let elapsed = started.elapsed();
    assert_eq!(rec.outcome, Outcome::Timeout);
    assert_eq!(rec.outcome.error_kind(), "timeout");
    assert!(rec.duration >= timeout, "{:?}", rec.duration);
    assert!(elapsed < timeout + Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(rec.response_excerpt, None);
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn slow_body_counts_against_the_timeout() {
    // The head arrives at once, the announced body never does.
    let server = Server::start(|_| Reply::Bytes {
        bytes: b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial".to_vec(),
        close: false,
    })
    .await;
    let timeout = Duration::from_millis(300);
    let rec = post(&server.url("/"), timeout).await;
    assert_eq!(rec.outcome, Outcome::Timeout);
    assert!(rec.duration >= timeout && rec.duration < timeout + Duration::from_secs(1));
    assert_eq!(rec.response_excerpt.as_deref(), Some("partial"));
}

#[tokio::test]
async fn connection_closed_mid_request_is_a_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rude = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut some = [0u8; 64];
        let n = stream.read(&mut some).await.unwrap();
        assert!(n > 0);
        // Dropping with unread request bytes resets the connection.
    });
    let url: url::Url = format!("http://user:s3cr3t-pass@{addr}/hook?token=qq")
        .parse()
        .unwrap();
    let client = build_client().unwrap();
    let big = Bytes::from(vec![b'x'; 256 * 1024]);
    let rec = attempt(&client, &url, &headers(), big, TIMEOUT).await;
    rude.await.unwrap();
    assert!(
        matches!(rec.outcome, Outcome::Connect(_) | Outcome::Other(_)),
        "{:?}",
        rec.outcome
    );
    assert!(["connect", "other"].contains(&rec.outcome.error_kind()));
    let message = rec.outcome.message();
    assert!(!message.is_empty());
    assert!(
        !message.contains("s3cr3t-pass") && !message.contains("token=qq"),
        "{message}"
    );
    assert_eq!(rec.response_excerpt, None);
}

#[tokio::test]
async fn refused_port_is_a_connect_failure_without_credentials() {
    let url: url::Url = format!(
        "http://user:s3cr3t-pass@127.0.0.1:{}/hook?token=qq",
        free_port()
    )
    .parse()
    .unwrap();
    let client = build_client().unwrap();
    let rec = attempt(&client, &url, &headers(), Bytes::from_static(BODY), TIMEOUT).await;
    let Outcome::Connect(message) = &rec.outcome else {
        panic!("expected Connect, got {:?}", rec.outcome);
    };
    assert_eq!(rec.outcome.error_kind(), "connect");
    assert!(!message.contains("s3cr3t-pass"), "{message}");
    assert!(!message.contains("token=qq"), "{message}");
    assert!(!format!("{rec:?}").contains("s3cr3t-pass"));
    assert!(rec.duration < TIMEOUT);
}

#[tokio::test]
async fn one_megabyte_body_gives_a_4096_byte_excerpt() {
    let server = Server::start(|_| {
        let mut body = vec![b'a'; 1024 * 1024];
        body[4095] = b'z';
        body[4096] = b'!';
        reply("500 Internal Server Error", &[], &body)
    })
    .await;
    let rec = post(&server.url("/"), TIMEOUT).await;
    assert_eq!(rec.outcome, Outcome::Status(500));
    let excerpt = rec.response_excerpt.unwrap();
    assert_eq!(excerpt.len(), 4096);
    assert!(excerpt.ends_with("az"));
    assert!(!excerpt.contains('!'));
}
