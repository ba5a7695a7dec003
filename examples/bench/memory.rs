//! `memory`: walhook's resident memory where it could grow.
//!
//! - `backlog`: a large backlog waits in the ledger (filled by `run
//!   --no-dispatch`, which spills every delivery) and the endpoint hangs:
//!   every attempt waits for walhook's timeout.
//! - `bigrow`: one row with a very large text value, inserted and then
//!   updated, delivered to a receiver answering 204: peak RSS against the
//!   body's size (issue 8: at most ~3x).
//! - `bigtx`: one UPDATE of N rows in one transaction, delivered.
//!
//! Peaks are `VmHWM` after a reset (`/proc/PID/clear_refs` = 5) once
//! walhook is idle, and the highest of the 50 ms `VmRSS` samples.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::ValueEnum;

use crate::figures::{grouped, mb, median, verdict};
use crate::harness::{Ctx, Instance, Opts, Placement, Target, count};
use crate::procfs::{Proc, RssSampler};
use crate::receiver::{self, Mode, Receiver};
use crate::workload::insert_rows;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Case {
    Backlog,
    Bigrow,
    Bigtx,
}

/// Peak RSS since the last reset: VmHWM when the reset worked, and never
/// below what the sampler saw.
fn peak(proc: &Proc, reset: bool, sampled: u64) -> u64 {
    if reset {
        proc.status_bytes("VmHWM").unwrap_or(0).max(sampled)
    } else {
        sampled
    }
}

pub async fn backlog(ctx: &Ctx<'_>, reps: usize, rows: u64, seconds: u64) -> Result<()> {
    let (recv, url) = receiver::start().await?;
    println!(
        "memory backlog: {} events waiting in the ledger (captured by `run --no-dispatch`), then `walhook run --no-admin` (capture + dispatch) against an endpoint that never answers (timeout 10s); VmRSS every 50 ms for {seconds} s; {reps} repetitions on the same backlog (reset to pending in between)",
        grouped(rows as f64)
    );
    for &p in &ctx.placements {
        let name = format!("mb_{}", p.short());
        let mut t = ctx.target(&name, p == Placement::Separate).await?;
        let opts = Opts {
            endpoint: Some(&url),
            status_interval: Some("20ms"),
            ..Opts::default()
        };
        let inst = ctx.instance(&t, &name, p, opts).await?;
        fill(ctx, &mut t, &inst, p, rows).await?;
        let ledger = inst.ledger().await?;
        let mut peaks = Vec::new();
        for rep in 1..=reps {
            if rep > 1 {
                reset_backlog(&ledger, &inst.slot).await?;
            }
            peaks.push(hang(ctx, &inst, &recv, rep, seconds).await?);
        }
        println!(
            "median, {}: peak RSS {:.1} MB with {} deliveries waiting and the endpoint hanging (issue 3 target < 100 MB: {})",
            p.label(),
            median(&peaks),
            grouped(rows as f64),
            verdict(median(&peaks) < 100.0)
        );
        ctx.print_statements().await?;
        drop(ledger);
        ctx.drop_target(t).await?;
    }
    Ok(())
}

/// Inserts `rows` rows while `run --no-dispatch` spills a delivery for
/// each to the ledger; checks they are all pending there.
async fn fill(
    ctx: &Ctx<'_>,
    t: &mut Target,
    inst: &Instance,
    p: Placement,
    rows: u64,
) -> Result<()> {
    let mut proc = ctx
        .spawn(inst, &["--no-dispatch", "--no-admin"], "fill")
        .await?;
    let started = Instant::now();
    let end = insert_rows(&mut t.db, rows, 10_000).await?;
    let committed = started.elapsed().as_secs_f64();
    let done = ctx
        .wait_confirmed(&inst.slot, &end, &mut proc, Duration::from_secs(7200))
        .await?;
    let fill_peak = proc.status_bytes("VmHWM").unwrap_or(0);
    proc.stop().await?;
    let ledger = inst.ledger().await?;
    let s = &inst.slot;
    let pending = count(
        &ledger,
        &format!("SELECT count(*) FROM {s}.deliveries WHERE status = 'pending'"),
    )
    .await?;
    if pending != rows as i64 {
        bail!("backlog: {pending} pending deliveries, expected {rows}");
    }
    let size: String = ledger
        .query_one(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid)))
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind = 'r'",
            &[&s],
        )
        .await?
        .get(0);
    let secs = (done - started).as_secs_f64();
    println!(
        "{}: fill: {} rows committed in {committed:.1} s, in the ledger after {secs:.1} s ({}/s), capture peak RSS {:.1} MB; ledger tables {size}",
        p.label(),
        grouped(rows as f64),
        grouped(rows as f64 / secs),
        mb(fill_peak)
    );
    Ok(())
}

/// Every delivery pending again, as after the fill.
async fn reset_backlog(ledger: &tokio_postgres::Client, s: &str) -> Result<()> {
    ledger
        .batch_execute(&format!(
            "UPDATE {s}.deliveries
                SET status = 'pending', attempts = 0, cycle_attempts = 0,
                    next_attempt_at = now(), cycle_started_at = now(),
                    lease_owner = NULL, lease_until = NULL,
                    last_status_code = NULL, last_error = NULL
              WHERE status <> 'pending' OR lease_owner IS NOT NULL"
        ))
        .await?;
    Ok(())
}

/// One repetition of the backlog case; returns the peak in MB.
async fn hang(
    ctx: &Ctx<'_>,
    inst: &Instance,
    recv: &Receiver,
    rep: usize,
    seconds: u64,
) -> Result<f64> {
    recv.reset(Mode::Hang, u64::MAX);
    let mut proc = ctx
        .spawn(inst, &["--no-admin"], &format!("hang-{rep}"))
        .await?;
    let sampler = RssSampler::start(proc.pid);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    proc.check_alive()?;
    let samples = sampler.finish().await;
    let hwm = proc.status_bytes("VmHWM").unwrap_or(0);
    let cpu = proc.cpu_seconds();
    let attempts = recv.count();
    proc.stop().await?;
    let window = Duration::from_secs(seconds);
    println!(
        "  rep {rep}: peak VmRSS {:.1} MB (VmHWM {:.1} MB), steady {:.1} MB; VmRSS at {}s/{}s/{}s: {:.1}/{:.1}/{:.1} MB; {} attempts started in {seconds} s; cpu {cpu:.1} s",
        mb(samples.max()),
        mb(hwm),
        mb(samples.median()),
        seconds / 4,
        seconds / 2,
        seconds,
        mb(samples.at(window / 4)),
        mb(samples.at(window / 2)),
        mb(samples.at(window)),
        grouped(attempts as f64),
    );
    Ok(mb(hwm.max(samples.max())))
}

/// `n` hex characters, different for each `seed`, computed by the server.
fn big_text_sql(seed: i32) -> String {
    format!(
        "(SELECT left(string_agg(md5((g + {seed} * 1000000000)::text), ''), $1::int)
            FROM generate_series(1, $1::int / 32 + 1) AS g)"
    )
}

pub async fn bigrow(ctx: &Ctx<'_>, reps: usize, value_mb: u64) -> Result<()> {
    let (recv, url) = receiver::start().await?;
    println!(
        "memory bigrow: one row whose `name` is {value_mb} MiB of text, inserted, then updated to another {value_mb} MiB value; `walhook run --no-admin` delivers each to a receiver answering 204 (timeout 60s); peak RSS (VmHWM reset before each change) / the body's size; {reps} repetitions"
    );
    // (placement, change) -> peak / body of each repetition.
    let mut ratios: Vec<(Placement, &str, Vec<f64>)> = Vec::new();
    for rep in 1..=reps {
        for &p in &ctx.placements {
            for (what, ratio) in bigrow_one(ctx, rep, p, value_mb, &recv, &url).await? {
                match ratios.iter_mut().find(|(q, w, _)| *q == p && *w == what) {
                    Some((_, _, v)) => v.push(ratio),
                    None => ratios.push((p, what, vec![ratio])),
                }
            }
        }
    }
    for (p, what, v) in &ratios {
        let r = median(v);
        println!(
            "median, {}, {what}: peak RSS / body size {r:.2} (issue 8 target <= ~3: {})",
            p.label(),
            verdict(r <= 3.0)
        );
    }
    Ok(())
}

/// One repetition of `bigrow` for one placement: returns peak / body for
/// the insert and for the update.
async fn bigrow_one(
    ctx: &Ctx<'_>,
    rep: usize,
    p: Placement,
    value_mb: u64,
    recv: &Receiver,
    url: &str,
) -> Result<Vec<(&'static str, f64)>> {
    let size = (value_mb * 1024 * 1024) as i32;
    let name = format!("mr{rep}_{}", p.short());
    let t = ctx.target(&name, p == Placement::Separate).await?;
    let opts = Opts {
        endpoint: Some(url),
        timeout: Some("60s"),
        ..Opts::default()
    };
    let inst = ctx.instance(&t, &name, p, opts).await?;
    let mut proc = ctx.spawn(&inst, &["--no-admin"], "run").await?;
    ctx.wait_ready(&inst, true, &mut proc).await?;
    let idle = proc.status_bytes("VmRSS").unwrap_or(0);
    let insert = format!(
        "INSERT INTO public.leads (id, name, email, stage, score, updated_at)
         VALUES ('lead_000000001', {}, 'big@example.com', 'new', 1, clock_timestamp())",
        big_text_sql(1)
    );
    let update = format!(
        "UPDATE public.leads SET name = {}, score = score + 1 WHERE id = 'lead_000000001'",
        big_text_sql(2)
    );
    let (mut parts, mut out) = (Vec::new(), Vec::new());
    for (what, sql) in [("insert", insert), ("update", update)] {
        let (body, peak) = big_change(&t.db, &sql, size, recv, &mut proc).await?;
        let ratio = peak as f64 / body as f64;
        parts.push(format!(
            "{what}: body {:.1} MB, peak RSS {:.1} MB = {ratio:.2}x the body ((peak - idle) / body {:.2}x)",
            mb(body),
            mb(peak),
            (peak.saturating_sub(idle)) as f64 / body as f64
        ));
        out.push((what, ratio));
    }
    proc.stop().await?;
    let spilled = count(
        &inst.ledger().await?,
        &format!("SELECT count(*) FROM {}.deliveries", inst.slot),
    )
    .await?;
    println!(
        "rep {rep}, {}: idle RSS {:.1} MB | {} | {spilled} of 2 via the retry ledger, {} bad signatures",
        p.label(),
        mb(idle),
        parts.join(" | "),
        recv.bad_signatures()
    );
    ctx.drop_target(t).await?;
    Ok(out)
}

/// Runs `sql` (one big change) and waits for its delivery; returns the
/// body's size and walhook's peak RSS meanwhile.
async fn big_change(
    db: &tokio_postgres::Client,
    sql: &str,
    size: i32,
    recv: &Receiver,
    proc: &mut Proc,
) -> Result<(u64, u64)> {
    recv.reset(Mode::Ok, 1);
    let reset = proc.reset_peak();
    let sampler = RssSampler::start(proc.pid);
    let n = db.execute(sql, &[&size]).await?;
    if n != 1 {
        bail!("bigrow: the statement changed {n} rows");
    }
    recv.wait_target(proc, Duration::from_secs(600)).await?;
    let samples = sampler.finish().await;
    Ok((recv.largest_body(), peak(proc, reset, samples.max())))
}

pub async fn bigtx(ctx: &Ctx<'_>, reps: usize, sizes: &[u64]) -> Result<()> {
    let (recv, url) = receiver::start().await?;
    println!(
        "memory bigtx: `walhook run --no-admin` (capture + dispatch) delivers ONE UPDATE transaction of N rows to a receiver answering 204; the table is filled before the slot exists, so walhook sees only the UPDATE; VmHWM is reset once walhook is streaming and idle; {reps} repetitions"
    );
    let mut summary = Vec::new();
    for &rows in sizes {
        for &p in &ctx.placements {
            let mut peaks = Vec::new();
            for rep in 1..=reps {
                peaks.push(bigtx_one(ctx, rep, p, rows, &recv, &url).await?);
            }
            summary.push((rows, p, median(&peaks)));
        }
    }
    for (rows, p, peak) in &summary {
        println!(
            "median rows {}, {}: peak RSS {peak:.1} MB (issue 2 target < 100 MB: {})",
            grouped(*rows as f64),
            p.label(),
            verdict(*peak < 100.0)
        );
    }
    for &p in &ctx.placements {
        let of: Vec<&(u64, Placement, f64)> = summary.iter().filter(|s| s.1 == p).collect();
        if let (Some(small), Some(large)) = (of.first(), of.last())
            && of.len() >= 2
        {
            println!(
                "{}: peak at {} rows / peak at {} rows = {:.2} ({}x the rows)",
                p.label(),
                grouped(large.0 as f64),
                grouped(small.0 as f64),
                large.2 / small.2,
                large.0 / small.0.max(1)
            );
        }
    }
    Ok(())
}

/// One repetition of `bigtx`: returns the peak RSS in MB.
async fn bigtx_one(
    ctx: &Ctx<'_>,
    rep: usize,
    p: Placement,
    rows: u64,
    recv: &Receiver,
    url: &str,
) -> Result<f64> {
    let name = format!("mt{rep}_{}", p.short());
    let mut t = ctx.target(&name, p == Placement::Separate).await?;
    insert_rows(&mut t.db, rows, 50_000).await?;
    let opts = Opts {
        endpoint: Some(url),
        ..Opts::default()
    };
    let inst = ctx.instance(&t, &name, p, opts).await?;
    recv.reset(Mode::Ok, rows);
    let mut proc = ctx.spawn(&inst, &["--no-admin"], "run").await?;
    ctx.wait_ready(&inst, true, &mut proc).await?;
    let idle = proc.status_bytes("VmRSS").unwrap_or(0);
    let reset = proc.reset_peak();
    let sampler = RssSampler::start(proc.pid);
    let started = Instant::now();
    let n = t
        .db
        .execute(
            "UPDATE public.leads SET score = score + 1, stage = 'updated', updated_at = clock_timestamp()",
            &[],
        )
        .await?;
    let committed = Instant::now();
    let done = recv
        .wait_target(&mut proc, Duration::from_secs(3600))
        .await?;
    let samples = sampler.finish().await;
    let peak = peak(&proc, reset, samples.max());
    let cpu = proc.cpu_seconds();
    proc.stop().await?;
    if n != rows {
        bail!("bigtx: updated {n} rows, expected {rows}");
    }
    println!(
        "rows {}, rep {rep}, {}: idle RSS {:.1} MB, peak {:.1} MB | UPDATE took {:.1} s, delivered {:.1} s after commit ({}/s), cpu {cpu:.1} s, {} bad signatures",
        grouped(rows as f64),
        p.label(),
        mb(idle),
        mb(peak),
        (committed - started).as_secs_f64(),
        (done - committed).as_secs_f64(),
        grouped(rows as f64 / (done - started).as_secs_f64()),
        recv.bad_signatures(),
    );
    ctx.drop_target(t).await?;
    Ok(mb(peak))
}
