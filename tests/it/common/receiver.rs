//! A scriptable HTTP receiver: a real server on a loopback port that records
//! every request and answers as the test says (a status, a hang, a closed
//! connection).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// One request as the [`Receiver`] got it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// 0-based arrival order across the receiver's lifetime.
    pub index: usize,
    pub method: Method,
    /// Path and query, e.g. `/hooks?x=1`.
    pub path: String,
    pub headers: HeaderMap,
    /// The body exactly as received.
    pub body: Bytes,
    pub received_at: SystemTime,
}

impl RecordedRequest {
    /// The header's value as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// How the [`Receiver`] answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status, extra headers and body.
    Status(u16, Vec<(String, String)>, Bytes),
    /// Wait this long, then answer 200 (if the client is still there).
    Hang(Duration),
    /// Close the connection without answering.
    CloseConnection,
}

impl Reply {
    /// A bare status with an empty body.
    pub fn status(code: u16) -> Self {
        Reply::Status(code, Vec::new(), Bytes::new())
    }
}

type Script = dyn Fn(&RecordedRequest, usize) -> Reply + Send + Sync;

/// The receiver's answering rule. `n` counts the requests this behaviour has
/// answered before the current one (0 for its first).
#[derive(Clone)]
pub enum Behaviour {
    /// 200 to everything.
    AlwaysOk,
    /// `status` to the first `failures` requests, then 200.
    FailThenOk { failures: usize, status: u16 },
    /// Whatever the closure says.
    Script(Arc<Script>),
}

impl Behaviour {
    /// Wraps a closure as [`Behaviour::Script`].
    pub fn script(f: impl Fn(&RecordedRequest, usize) -> Reply + Send + Sync + 'static) -> Self {
        Behaviour::Script(Arc::new(f))
    }

    fn reply(&self, request: &RecordedRequest, n: usize) -> Reply {
        match self {
            Behaviour::AlwaysOk => Reply::status(200),
            Behaviour::FailThenOk { failures, status } if n < *failures => Reply::status(*status),
            Behaviour::FailThenOk { .. } => Reply::status(200),
            Behaviour::Script(f) => f(request, n),
        }
    }
}

struct ReceiverState {
    requests: Mutex<Vec<RecordedRequest>>,
    /// The behaviour and how many requests it has answered.
    behaviour: Mutex<(Behaviour, usize)>,
    arrived: Notify,
}

/// A real HTTP server on `127.0.0.1:0` that records every request (any
/// method, any path) and answers according to its [`Behaviour`]. The server
/// stops when the `Receiver` is dropped.
pub struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start(behaviour: Behaviour) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!(
            "http://{}/",
            listener.local_addr().expect("receiver address")
        );
        let state = Arc::new(ReceiverState {
            requests: Mutex::new(Vec::new()),
            behaviour: Mutex::new((behaviour, 0)),
            arrived: Notify::new(),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(state.clone())
            .into_make_service_with_connect_info::<ConnectionKill>();
        let server = tokio::spawn(async move {
            axum::serve(KillableListener(listener), app)
                .await
                .expect("receiver server");
        });
        Receiver { url, state, server }
    }

    /// The base URL, `http://127.0.0.1:PORT/`; every path under it is served.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Replaces the behaviour; its `n` starts again at 0.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = (behaviour, 0);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have arrived and returns all of
    /// them; panics after `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before looking, so an arrival in between is
            // not missed.
            let arrived = self.state.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "receiver got {} of {n} requests within {timeout:?}: {:?}",
                    requests.len(),
                    requests
                        .iter()
                        .map(|r| (&r.method, &r.path))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    State(state): State<Arc<ReceiverState>>,
    ConnectInfo(kill): ConnectInfo<ConnectionKill>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        // The client went away mid-body; nothing to record.
        return StatusCode::BAD_REQUEST.into_response();
    };
    let recorded = {
        let mut requests = state.requests.lock().unwrap();
        let recorded = RecordedRequest {
            index: requests.len(),
            method: parts.method,
            path: parts
                .uri
                .path_and_query()
                .map_or("/".into(), |p| p.to_string()),
            headers: parts.headers,
            body,
            received_at: SystemTime::now(),
        };
        requests.push(recorded.clone());
        recorded
    };
    state.arrived.notify_waiters();
    let (behaviour, n) = {
        let mut guard = state.behaviour.lock().unwrap();
        guard.1 += 1;
        (guard.0.clone(), guard.1 - 1)
    };
    match behaviour.reply(&recorded, n) {
        Reply::Status(code, headers, body) => {
            let status = StatusCode::from_u16(code).expect("valid status code");
            let mut response = (status, body).into_response();
            for (name, value) in headers {
                response.headers_mut().append(
                    HeaderName::try_from(name).expect("header name"),
                    HeaderValue::try_from(value).expect("header value"),
                );
            }
            response
        }
        Reply::Hang(duration) => {
            tokio::time::sleep(duration).await;
            StatusCode::OK.into_response()
        }
        Reply::CloseConnection => {
            // The response below is never written: the connection's next
            // write fails, and hyper drops the connection.
            kill.0.store(true, Ordering::SeqCst);
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Lets a handler kill the connection it is serving: axum hands it to the
/// handler as connection info, and the connection's I/O fails once it is set.
#[derive(Clone, Debug)]
struct ConnectionKill(Arc<AtomicBool>);

impl Connected<IncomingStream<'_, KillableListener>> for ConnectionKill {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.remote_addr().clone()
    }
}

struct KillableListener(TcpListener);

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = ConnectionKill;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, _)) => {
                    let kill = ConnectionKill(Arc::new(AtomicBool::new(false)));
                    return (
                        KillableStream {
                            stream,
                            kill: kill.0.clone(),
                        },
                        kill,
                    );
                }
                // E.g. too many open files: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Err(std::io::Error::other(
            "a KillableListener has no address value",
        ))
    }
}

struct KillableStream {
    stream: TcpStream,
    kill: Arc<AtomicBool>,
}

impl KillableStream {
    fn killed(&self) -> Option<std::io::Error> {
        self.kill.load(Ordering::SeqCst).then(|| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "killed by the test receiver",
            )
        })
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.killed() {
            Some(e) => Poll::Ready(Err(e)),
            None => Pin::new(&mut self.stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.killed() {
            Some(e) => Poll::Ready(Err(e)),
            None => Pin::new(&mut self.stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.killed() {
            Some(e) => Poll::Ready(Err(e)),
            None => Pin::new(&mut self.stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
