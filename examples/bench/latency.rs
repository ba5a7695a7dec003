//! `latency`: commit -> delivery at a steady rate of single-row commits.
//! Commit k is due at k / rate seconds after the start; a few connections
//! share the schedule (with fsync on a commit waits for the disk, so one
//! connection alone may fall behind).
//!
//! Latency is the receiver's arrival time (wall clock) minus the commit
//! time Postgres wrote in the transaction's commit record (walhook records
//! it with each delivery; same machine, same clock). As a cross-check, the
//! arrival is also compared with the moment the application's COMMIT
//! returned (monotonic clock); Postgres sends a change once its commit is
//! flushed, so the receiver may have it before the application read
//! COMMIT's answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::figures::{grouped, median, percentile, verdict};
use crate::harness::{Ctx, Opts, Placement, connect};
use crate::receiver::{self, Arrival, Mode, Receiver};
use crate::workload::INSERT_SQL;

struct Figures {
    p50: f64,
    p99: f64,
    max: f64,
}

pub async fn run(
    ctx: &Ctx<'_>,
    reps: usize,
    rate: u64,
    seconds: u64,
    connections: usize,
) -> Result<()> {
    let total = rate * seconds;
    let sched = Schedule {
        rate,
        total,
        connections,
    };
    let (recv, url) = receiver::start().await?;
    println!(
        "latency: {} single-row inserts, each its own commit, at {rate}/s for {seconds} s from {connections} connections sharing the schedule, while `walhook run --no-admin` runs; latency = arrival at the receiver - the commit record's timestamp; {reps} repetitions",
        grouped(total as f64)
    );
    let mut by_placement: Vec<(Placement, Vec<Figures>)> =
        ctx.placements.iter().map(|p| (*p, Vec::new())).collect();
    for rep in 1..=reps {
        let n = by_placement.len();
        for i in 0..n {
            let (p, figures) = &mut by_placement[(i + rep - 1) % n];
            figures.push(one(ctx, rep, *p, sched, &recv, &url).await?);
        }
    }
    for (p, figures) in &by_placement {
        let m = |f: &dyn Fn(&Figures) -> f64| median(&figures.iter().map(f).collect::<Vec<_>>());
        let p99 = m(&|f| f.p99);
        println!(
            "median, {}: p50 {:.1} ms, p99 {p99:.1} ms, max {:.1} ms (issue 3 target p99 <= 50 ms: {})",
            p.label(),
            m(&|f| f.p50),
            m(&|f| f.max),
            verdict(p99 <= 50.0)
        );
    }
    Ok(())
}

/// The application's steady load.
#[derive(Clone, Copy)]
struct Schedule {
    /// Commits per second.
    rate: u64,
    total: u64,
    connections: usize,
}

async fn one(
    ctx: &Ctx<'_>,
    rep: usize,
    p: Placement,
    sched: Schedule,
    recv: &Receiver,
    url: &str,
) -> Result<Figures> {
    let total = sched.total;
    let name = format!("l{rep}_{}", p.short());
    let t = ctx.target(&name, p == Placement::Separate).await?;
    let opts = Opts {
        endpoint: Some(url),
        ..Opts::default()
    };
    let inst = ctx.instance(&t, &name, p, opts).await?;
    recv.reset(Mode::Latency, total);
    let mut proc = ctx.spawn(&inst, &["--no-admin"], "run").await?;
    ctx.wait_ready(&inst, true, &mut proc).await?;
    let load = steady_load(&t.url, sched).await?;
    recv.wait_target(&mut proc, Duration::from_secs(300))
        .await?;
    inst.wait_recorded(total).await?;
    proc.stop().await?;
    let commit_times = inst.commit_times().await?;
    let (lat, after_return) = {
        let arrivals = recv.arrivals.lock().unwrap();
        latencies(&arrivals, &commit_times, &load.commits, total)?
    };
    let early = after_return.iter().filter(|ms| **ms < 0.0).count();
    let f = Figures {
        p50: percentile(&lat, 50.0),
        p99: percentile(&lat, 99.0),
        max: lat[lat.len() - 1],
    };
    println!(
        "rep {rep}, {}: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms | from COMMIT's return: p50 {:.1} ms, p99 {:.1} ms, {early} before it",
        p.label(),
        f.p50,
        percentile(&lat, 90.0),
        f.p99,
        f.max,
        percentile(&after_return, 50.0),
        percentile(&after_return, 99.0),
    );
    println!(
        "    load: {}/s achieved, {} commits started > 1 ms late, COMMIT round trip p50 {:.2} ms, p99 {:.2} ms | {} bad signatures",
        grouped(total as f64 / load.secs),
        load.late,
        load.commit_ms.0,
        load.commit_ms.1,
        recv.bad_signatures(),
    );
    ctx.drop_target(t).await?;
    Ok(f)
}

/// Per arrival, sorted: ms after the commit record's time, and ms after
/// the application's COMMIT returned (negative when it arrived before).
fn latencies(
    arrivals: &[Arrival],
    commit_times: &HashMap<String, i64>,
    commits: &[(u64, Instant)],
    total: u64,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let returned: HashMap<u64, Instant> = commits.iter().copied().collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (mut lat, mut after_return) = (Vec::new(), Vec::new());
    for a in arrivals {
        if let Some(c) = commit_times.get(&a.event_id) {
            lat.push((a.unix_micros - c) as f64 / 1000.0);
        }
        if let Some(r) = returned.get(&a.lead) {
            after_return.push(
                ms(a.at.saturating_duration_since(*r)) - ms(r.saturating_duration_since(a.at)),
            );
        }
    }
    if lat.len() as u64 != total || after_return.len() as u64 != total {
        bail!(
            "latency: {} of {total} arrivals matched a recorded commit time, {} a commit of the load",
            lat.len(),
            after_return.len()
        );
    }
    lat.sort_by(f64::total_cmp);
    after_return.sort_by(f64::total_cmp);
    Ok((lat, after_return))
}

/// What the steady load did.
struct Load {
    /// (lead number, when its COMMIT returned).
    commits: Vec<(u64, Instant)>,
    secs: f64,
    late: u64,
    /// Median and p99 of the COMMIT round trip, in ms.
    commit_ms: (f64, f64),
}

/// Commits `total` single-row inserts, commit k due at k / rate s.
async fn steady_load(url: &str, sched: Schedule) -> Result<Load> {
    let Schedule {
        rate,
        total,
        connections,
    } = sched;
    let next = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let commits = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let took = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let db = connect(url).await?;
        let (next, late, commits, took) =
            (next.clone(), late.clone(), commits.clone(), took.clone());
        tasks.spawn(async move {
            let insert = db.prepare(INSERT_SQL).await?;
            loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                if k >= total {
                    return Ok::<(), anyhow::Error>(());
                }
                let due = start + Duration::from_secs_f64(k as f64 / rate as f64);
                tokio::time::sleep_until(due).await;
                if due.elapsed() > Duration::from_millis(1) {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                let n = (k + 1) as i64;
                let sent = Instant::now();
                db.execute(&insert, &[&n, &n]).await?;
                let at = Instant::now();
                commits.lock().unwrap().push((k + 1, at));
                took.lock()
                    .unwrap()
                    .push((at - sent).as_secs_f64() * 1000.0);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut took = std::mem::take(&mut *took.lock().unwrap());
    took.sort_by(f64::total_cmp);
    let commits = std::mem::take(&mut *commits.lock().unwrap());
    Ok(Load {
        commits,
        secs,
        late: late.load(Ordering::Relaxed),
        commit_ms: (percentile(&took, 50.0), percentile(&took, 99.0)),
    })
}
