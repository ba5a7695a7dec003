//! The stream's state machine: one task owns every in-memory delivery and
//! moves it on from the events it is told about (an item from capture, an
//! attempt that ended, a ledger write that committed, a deadline, a look at
//! the ledger). Nothing here waits on the network: attempts and ledger
//! writes run on their own tasks.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_postgres::Client;

use super::order::{Order, RecordKey};
use super::refresh::{self, Ask, Seen};
use super::txns::Txns;
use super::writer::{self, DeliveredItem, HistoryJob, SpillDone, SpillItem, SpillJob};
use super::{Ev, StreamDeps, StreamError};
use crate::config::{Config, EndpointConfig, KeepBodies, Ordering};
use crate::dispatch::http::AttemptRecord;
use crate::dispatch::outcome::BatchOutcomes;
use crate::dispatch::runtime::RuntimeWatch;
use crate::event::stream::{Captured, StreamItem};
use crate::ledger::queue::AttemptRow;
use crate::ledger::spill::SpillState;
use crate::ledger::{Ledger, LedgerError};
use crate::pg::{self, Lsn};

mod attempts;
mod ledgered;
mod subscribers;

/// Rows a ledger write takes at most; while one is in flight the next batch
/// fills up.
const MAX_BATCH: usize = 2_000;
/// How long rows may wait for more to join their batch.
const SPILL_LINGER: Duration = Duration::from_millis(5);
const HISTORY_LINGER: Duration = Duration::from_millis(10);
/// Stop taking items while this much waits to be written: a few batches
/// keep the writer busy; more only holds bodies in memory (a capture
/// spilling everything peaked at 105 MB with 20,000).
const MAX_BACKLOG: usize = 3 * MAX_BATCH;
/// Consecutive failures (or spills for no answer) of an endpoint's first
/// attempts after which all its deliveries go to the ledger, until the
/// ledger has none left for it.
const PARK_AFTER: u32 = 5;
/// Records of one endpoint remembered as waiting in the ledger at most;
/// beyond, the endpoint is parked as a whole.
const MAX_RECORDS_IN_LEDGER: usize = 10_000;
/// Why a `rate_limit` or `max_in_flight` endpoint is parked for good: its
/// limits hold in the ledger dispatcher only.
const LEDGER_ONLY: &str = "it has rate_limit or max_in_flight, which hold in the retry ledger";
/// How often the ledger is looked at (records cleared, endpoints disabled).
const REFRESH: Duration = Duration::from_secs(1);
/// On a stop, how long attempts that went on after their delivery spilled
/// may still end and be recorded; after it they are dropped and their
/// leases given back, so the next process attempts them at once.
const LEASED_GRACE: Duration = Duration::from_millis(2_500);

pub(super) struct Connections {
    pub spill: Client,
    pub history: Client,
    pub refresh: Client,
}

/// An endpoint as the stream sees it.
struct Ep {
    cfg: EndpointConfig,
    id: Arc<str>,
    /// Its fair share of `max_in_flight`.
    limit: usize,
    in_flight: usize,
    /// Deliveries whose record's turn has come, waiting for a free slot.
    ready: VecDeque<u64>,
    /// Why every delivery of it goes to the ledger for now.
    parked: Option<&'static str>,
    /// Parked for good ([`EndpointConfig::ledger_only`]).
    ledger_only: bool,
    /// First attempts in a row that failed or went unanswered.
    trouble: u32,
    /// Its spills being written, and when the last one committed: a parked
    /// endpoint goes back to the fast path only when the ledger, looked at
    /// after that, holds none of its deliveries.
    spilling: u32,
    spilled_at: Instant,
    /// Made at runtime (the subscriptions API), not in the config.
    runtime: bool,
    /// A runtime endpoint since removed: no new deliveries.
    removed: bool,
}

enum State {
    /// Waiting for its record's turn or a free slot.
    Queued,
    /// Its first attempt runs.
    InFlight,
    /// Answered 2xx; its history row is being written.
    Recording,
    /// Being written to the ledger.
    Spilling,
    /// Spilled while its attempt goes on, leased to this process: the
    /// ledger's id once the spill committed, the result once it ended.
    Leased {
        ledger_id: Option<i64>,
        result: Option<Box<Attempted>>,
    },
}

struct Delivery {
    ev: Arc<Ev>,
    ep: usize,
    state: State,
    /// Its spill pins its record in [`Order`] until committed.
    pinned: bool,
}

struct Attempted {
    id: u64,
    record: AttemptRecord,
    headers: HeaderMap,
}

/// A ledger writer's end: a batch filling, and whether one is in flight.
struct Pipe<T> {
    buf: Vec<T>,
    since: Option<Instant>,
    busy: bool,
}

impl<T> Default for Pipe<T> {
    fn default() -> Self {
        Pipe {
            buf: Vec::new(),
            since: None,
            busy: false,
        }
    }
}

impl<T> Pipe<T> {
    fn push(&mut self, item: T) {
        if self.buf.is_empty() {
            self.since = Some(Instant::now());
        }
        self.buf.push(item);
    }

    /// The batch to write now, if any: when nothing is in flight and it is
    /// full, has waited `linger`, or everything is to be written at once.
    fn take(&mut self, linger: Duration, now: Instant, all: bool) -> Option<Vec<T>> {
        let due =
            self.buf.len() >= MAX_BATCH || all || self.since.is_some_and(|s| now >= s + linger);
        if self.busy || self.buf.is_empty() || !due {
            return None;
        }
        self.busy = true;
        self.since = None;
        let n = self.buf.len().min(MAX_BATCH);
        let rest = self.buf.split_off(n);
        let batch = std::mem::replace(&mut self.buf, rest);
        if !self.buf.is_empty() {
            self.since = Some(now);
        }
        Some(batch)
    }

    fn wake_at(&self, linger: Duration) -> Option<Instant> {
        if self.busy {
            return None;
        }
        self.since.map(|s| s + linger)
    }
}

pub(super) struct Engine {
    deps: StreamDeps,
    ledger: Ledger,
    eps: Vec<Ep>,
    /// Which endpoints each event goes to.
    subs: subscribers::Subscriptions,
    /// The runtime endpoints, watched for changes.
    runtime: RuntimeWatch,
    per_record: bool,
    live: HashMap<u64, Delivery>,
    next_id: u64,
    txns: Txns,
    order: Order<u64>,
    window_len: usize,
    window_bytes: usize,
    attempts: JoinSet<Attempted>,
    /// First attempts in flight by when they spill if still unanswered.
    deadlines: VecDeque<(Instant, u64)>,
    spill: Pipe<SpillItem>,
    /// Results of leased attempts, to record under the lease.
    leased_rows: Vec<AttemptRow>,
    history: Pipe<DeliveredItem>,
    /// Events captured since the last history write, per name.
    captured: HashMap<String, i64>,
    outcomes: BatchOutcomes,
    health_sent: Instant,
    /// When captured counts were last handed to the history writer.
    counted_at: Instant,
    spill_jobs: mpsc::Sender<SpillJob>,
    spill_done: mpsc::UnboundedReceiver<Result<SpillDone, LedgerError>>,
    history_jobs: mpsc::Sender<HistoryJob>,
    history_done: mpsc::UnboundedReceiver<Result<Vec<u64>, LedgerError>>,
    asks: mpsc::Sender<Ask>,
    seen: mpsc::UnboundedReceiver<Result<Seen, LedgerError>>,
    looking: bool,
    resolved: watch::Sender<Lsn>,
    /// No more items: finish what was taken; attempts that went on after
    /// their delivery spilled may end until then.
    draining_until: Option<Instant>,
}

impl Engine {
    /// Starts the writers and the refresher, and learns from the ledger
    /// which records and endpoints have deliveries waiting.
    pub(super) async fn start(
        deps: StreamDeps,
        ledger: Ledger,
        dbs: Connections,
        resolved: watch::Sender<Lsn>,
    ) -> Result<Engine, StreamError> {
        let cfg = deps.cfg.clone();
        let mut eps = config_eps(&cfg);
        let ids: Vec<String> = cfg.endpoints.iter().map(|e| e.id.clone()).collect();
        ledger.register_endpoints(&dbs.spill, &ids).await?;
        let order = initial_order(&ledger, &dbs.refresh, &mut eps).await?;
        let (spill_jobs, jobs) = mpsc::channel(2);
        let (done_tx, spill_done) = mpsc::unbounded_channel();
        tokio::spawn(writer::spill_writer(
            dbs.spill,
            ledger.clone(),
            deps.clone(),
            jobs,
            done_tx,
        ));
        let (history_jobs, jobs) = mpsc::channel(2);
        let (done_tx, history_done) = mpsc::unbounded_channel();
        let keep_bodies = cfg.ledger.keep_bodies == KeepBodies::All;
        tokio::spawn(writer::history_writer(
            dbs.history,
            ledger.clone(),
            keep_bodies,
            jobs,
            done_tx,
        ));
        let (asks, asks_rx) = mpsc::channel(1);
        let (seen_tx, seen) = mpsc::unbounded_channel();
        tokio::spawn(refresh::refresher(
            dbs.refresh,
            ledger.clone(),
            asks_rx,
            seen_tx,
        ));
        let mut engine = Engine {
            per_record: cfg.delivery.ordering == Ordering::PerRecord,
            runtime: deps.runtime.clone(),
            deps,
            ledger,
            eps,
            subs: Default::default(),
            live: HashMap::new(),
            next_id: 0,
            txns: Txns::default(),
            order,
            window_len: 0,
            window_bytes: 0,
            attempts: JoinSet::new(),
            deadlines: VecDeque::new(),
            spill: Pipe::default(),
            leased_rows: Vec::new(),
            history: Pipe::default(),
            captured: HashMap::new(),
            outcomes: BatchOutcomes::default(),
            health_sent: Instant::now(),
            counted_at: Instant::now(),
            spill_jobs,
            spill_done,
            history_jobs,
            history_done,
            asks,
            seen,
            looking: false,
            resolved,
            draining_until: None,
        };
        engine.on_runtime();
        Ok(engine)
    }

    /// Runs until `items` closes and everything taken is resolved (or an
    /// error stops it: what was not resolved is replayed after a restart).
    pub(super) async fn run(
        mut self,
        mut items: mpsc::Receiver<StreamItem>,
    ) -> Result<(), StreamError> {
        let mut refresh = tokio::time::interval(REFRESH);
        loop {
            self.flush().await?;
            if let Some(grace) = self.draining_until
                && self.settled()
                && (self.leased_running() == 0 || Instant::now() >= grace)
            {
                self.finish_leased();
                return Ok(());
            }
            let wake = self.wake_at();
            let take = self.draining_until.is_none() && self.can_take();
            tokio::select! {
                Some(done) = self.attempts.join_next() => {
                    if let Ok(done) = done {
                        self.on_attempt(done);
                    }
                }
                Some(done) = self.spill_done.recv() => self.on_spill_done(done?),
                Some(done) = self.history_done.recv() => self.on_recorded(done?),
                Some(seen) = self.seen.recv() => self.on_seen(seen?),
                Ok(()) = self.runtime.changed() => self.on_runtime(),
                _ = refresh.tick() => self.look(),
                _ = sleep_until(wake) => self.on_deadlines(),
                item = items.recv(), if take => match item {
                    Some(item) => self.on_item(item),
                    None => self.drain(),
                },
            }
        }
    }

    fn can_take(&self) -> bool {
        self.spill.buf.len() < MAX_BACKLOG && self.history.buf.len() < MAX_BACKLOG
    }

    /// Everything taken is resolved; only leased attempts may still run. (A
    /// transaction cut off by the stop never ends: it is replayed.)
    fn settled(&self) -> bool {
        !self.spill.busy
            && !self.history.busy
            && self.spill.buf.is_empty()
            && self.history.buf.is_empty()
            && self.captured.is_empty()
            && self.live.values().all(|d| {
                matches!(
                    d.state,
                    State::Leased {
                        ledger_id: Some(_),
                        ..
                    }
                )
            })
    }

    fn on_item(&mut self, item: StreamItem) {
        match item {
            StreamItem::Events(events) => {
                for c in events {
                    self.on_event(c);
                }
            }
            StreamItem::Commit { end_lsn } | StreamItem::Idle { wal_end: end_lsn } => {
                if self.txns.end(end_lsn) {
                    self.publish();
                }
            }
        }
    }

    fn on_event(&mut self, mut c: Captured) {
        self.deps.metrics.event_captured(&c.event.name);
        match self.captured.get_mut(&c.event.name) {
            Some(n) => *n += 1,
            None => {
                self.captured.insert(c.event.name.clone(), 1);
            }
        }
        let mut subs = self.subs.of(
            &self.eps,
            &self.deps.metrics,
            &c.event.name,
            c.event.body.as_bytes(),
        );
        if let Some(only) = &c.only {
            subs = subs
                .iter()
                .copied()
                .filter(|&i| *self.eps[i].id == **only)
                .collect();
        }
        if subs.is_empty() {
            return;
        }
        let txn = self.txns.current();
        self.txns.add(txn, subs.len() as u32);
        let body = Bytes::from(std::mem::take(&mut c.event.body));
        let record = format!("{}:{}", c.event.slug, c.event.record_key);
        let ev = Arc::new(Ev {
            captured: c,
            body,
            txn,
            record,
        });
        for &ep in subs.iter() {
            let id = self.next_id;
            self.next_id += 1;
            self.window_len += 1;
            self.window_bytes += ev.body.len();
            let state = State::Queued;
            let ev = ev.clone();
            let pinned = false;
            self.live.insert(
                id,
                Delivery {
                    ev,
                    ep,
                    state,
                    pinned,
                },
            );
            self.route(id);
        }
    }

    /// A delivery is resolved (recorded, or committed to the ledger).
    fn resolve(&mut self, id: u64) {
        let Some(d) = self.live.get(&id) else {
            return;
        };
        self.window_len = self.window_len.saturating_sub(1);
        self.window_bytes = self.window_bytes.saturating_sub(d.ev.body.len());
        if self.txns.resolve(d.ev.txn) {
            self.publish();
        }
    }

    fn publish(&self) {
        self.resolved.send_replace(self.txns.resolved());
    }

    /// Leased attempts still running (their result not in yet).
    fn leased_running(&self) -> usize {
        self.live
            .values()
            .filter(|d| matches!(d.state, State::Leased { result: None, .. }))
            .count()
    }

    /// The next moment something is due: a first attempt's spill deadline,
    /// a batch's linger, the end of a stop's grace.
    fn wake_at(&self) -> Option<Instant> {
        let now = Instant::now();
        [
            self.draining_until.filter(|at| *at > now),
            self.deadlines.front().map(|(at, _)| *at),
            self.spill.wake_at(SPILL_LINGER),
            self.history.wake_at(HISTORY_LINGER),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Hands due batches to the writers.
    async fn flush(&mut self) -> Result<(), StreamError> {
        let now = Instant::now();
        let all = self.draining_until.is_some();
        if !self.spill.busy {
            let job = if let Some(items) = self.spill.take(SPILL_LINGER, now, all) {
                Some(SpillJob::Spill(items))
            } else if !self.leased_rows.is_empty() {
                self.spill.busy = true;
                Some(SpillJob::Record(std::mem::take(&mut self.leased_rows)))
            } else if !self.outcomes.is_empty() && now >= self.health_sent + REFRESH {
                self.spill.busy = true;
                self.health_sent = now;
                Some(SpillJob::Health(std::mem::take(&mut self.outcomes)))
            } else {
                None
            };
            if let Some(job) = job {
                self.spill_jobs
                    .send(job)
                    .await
                    .map_err(|_| StreamError::Gone)?;
            }
        }
        let rows = self.history.take(HISTORY_LINGER, now, all);
        // Counts of events nobody had to be sent to go along every second.
        let counts_due = !self.captured.is_empty()
            && !self.history.busy
            && (all || now >= self.counted_at + REFRESH);
        if rows.is_some() || counts_due {
            self.history.busy = true;
            self.counted_at = now;
            let captured = self.captured.drain().collect();
            let job = HistoryJob {
                rows: rows.unwrap_or_default(),
                captured,
            };
            self.history_jobs
                .send(job)
                .await
                .map_err(|_| StreamError::Gone)?;
        }
        Ok(())
    }

    /// No more items: what waits in memory goes to the ledger now, and
    /// first attempts in flight spill at their deadlines.
    fn drain(&mut self) {
        self.draining_until = Some(Instant::now() + LEASED_GRACE);
        let waiting: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, d)| matches!(d.state, State::Queued))
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            if let Some(d) = self.live.get(&id)
                && matches!(d.state, State::Queued)
            {
                let key = (d.ep, d.ev.record.clone());
                if self.per_record {
                    self.spill_record(&key, None);
                } else {
                    self.spill_one(id, SpillState::Pending);
                }
            }
        }
    }

    /// On the way out: attempts still running belong to spilled, leased
    /// deliveries. They are dropped and their leases let go, so another
    /// process (or the next start) attempts them at once.
    fn finish_leased(&mut self) {
        self.attempts.abort_all();
        let ids: Vec<i64> = self
            .live
            .values()
            .filter_map(|d| match d.state {
                State::Leased { ledger_id, .. } => ledger_id,
                _ => None,
            })
            .collect();
        for id in &ids {
            self.deps.leases.release(*id);
        }
        if !ids.is_empty() {
            let (ledger, url, owner) = (
                self.ledger.clone(),
                self.deps.cfg.ledger_url().clone(),
                self.deps.owner.clone(),
            );
            tokio::spawn(async move {
                if let Ok(db) =
                    pg::connect(&url, "walhook release", pg::DEFAULT_LOGIN_TIMEOUT).await
                {
                    let _ = ledger.release(&db, &owner, &ids).await;
                }
            });
        }
    }
}

/// What the ledger holds at start: records with open deliveries (their next
/// events wait behind them) and, past `MAX_RECORDS_IN_LEDGER`, endpoints to
/// park as a whole.
async fn initial_order(
    ledger: &Ledger,
    db: &Client,
    eps: &mut [Ep],
) -> Result<Order<u64>, StreamError> {
    let index: HashMap<&str, usize> = eps
        .iter()
        .enumerate()
        .map(|(i, e)| (e.cfg.id.as_str(), i))
        .collect();
    let (open, more) = ledger
        .open_records(db, MAX_RECORDS_IN_LEDGER as i64)
        .await?;
    let keys: Vec<RecordKey> = open
        .into_iter()
        .filter_map(|(e, r)| index.get(e.as_str()).map(|i| (*i, r)))
        .collect();
    let mut order = Order::with_in_ledger(keys, Instant::now());
    let ids: Vec<String> = eps.iter().map(|e| e.cfg.id.clone()).collect();
    let disabled = ledger.disabled_endpoints(db).await?;
    let busy = if more {
        ledger.endpoints_with_open(db, &ids).await?
    } else {
        Vec::new()
    };
    for (i, ep) in eps.iter_mut().enumerate() {
        if ep.ledger_only {
            tracing::info!(endpoint = %ep.id, "rate_limit or max_in_flight: every delivery goes through the retry ledger");
        } else if disabled.contains(&ep.cfg.id) {
            ep.parked = Some("it is disabled");
        } else if busy.contains(&ep.cfg.id) {
            ep.parked = Some("the retry ledger holds many of its deliveries");
        }
        if ep.parked.is_some() {
            order.forget_endpoint(i);
        }
    }
    Ok(order)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The config's endpoints, each with its fair share of
/// `[delivery] max_in_flight`.
fn config_eps(cfg: &Config) -> Vec<Ep> {
    let n = cfg.endpoints.len().max(1);
    cfg.endpoints
        .iter()
        .map(|e| Ep {
            cfg: e.clone(),
            id: e.id.as_str().into(),
            limit: (cfg.delivery.max_in_flight / n).max(1),
            in_flight: 0,
            ready: VecDeque::new(),
            parked: e.ledger_only().then_some(LEDGER_ONLY),
            ledger_only: e.ledger_only(),
            trouble: 0,
            spilling: 0,
            spilled_at: Instant::now(),
            runtime: false,
            removed: false,
        })
        .collect()
}
