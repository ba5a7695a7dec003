//! `dispatch`: end-to-end signed deliveries per second, beside the HTTP-only
//! ceiling (same receiver, no database) and `pg_recvlogical` draining the
//! same WAL; the application's load time with walhook stopped and running;
//! walhook's RSS while it delivers. With the ledger in the source database
//! and in a separate one.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::figures::{grouped, mb, median, pct, verdict};
use crate::harness::{Ctx, Opts, Placement, backends_text, recvlogical};
use crate::procfs::{RssSampler, own_cpu};
use crate::receiver::{self, Mode, Receiver};
use crate::workload::{Op, commit_all, describe, workload};

/// One end-to-end run.
struct Run {
    placement: Placement,
    /// First commit to the last 2xx.
    secs: f64,
    /// The application's workload, committed while walhook ran.
    load_secs: f64,
    /// pg_recvlogical on the same WAL, afterwards.
    recv_secs: f64,
    steady_rss: u64,
    peak_rss: u64,
    notes: String,
    cpu: String,
}

/// What one repetition measured.
#[derive(Default)]
struct Rep {
    ceiling_secs: f64,
    stopped_secs: f64,
    runs: Vec<Run>,
}

enum Step {
    Ceiling,
    Stopped,
    Walhook(Placement),
}

pub async fn run(ctx: &Ctx<'_>, reps: usize, changes: u64, t: u64, conc: usize) -> Result<()> {
    let ops = workload(changes, t)?;
    let (recv, url) = receiver::start().await?;
    println!(
        "dispatch: {} row changes ({}) in {} transactions of {t} rows from one connection, committed while `walhook run --no-admin` runs (ordering = \"per-record\", max_in_flight = 256{}); one endpoint, a receiver on 127.0.0.1 that checks each signature and answers 204; end to end = first commit to the last 2xx; {reps} repetitions",
        grouped(changes as f64),
        describe(&ops),
        grouped(ops.len() as f64),
        extra(ctx),
    );
    println!(
        "  HTTP ceiling: as many POSTs, signed, from {conc} tasks with walhook's HTTP client settings, to the same receiver, no database"
    );
    println!(
        "  pg_recvlogical: its own pgoutput slot, created with walhook's, drained after the run to /dev/null (the same WAL, walhook's own ledger writes included)"
    );
    println!(
        "  app load: the workload's commit time with walhook running, against a fresh database where walhook is set up but stopped"
    );
    let mut all = Vec::new();
    for rep in 1..=reps {
        let mut steps = vec![Step::Ceiling, Step::Stopped];
        steps.extend(ctx.placements.iter().map(|p| Step::Walhook(*p)));
        let n = steps.len();
        steps.rotate_left((rep - 1) % n);
        let mut r = Rep::default();
        for step in steps {
            match step {
                Step::Ceiling => {
                    recv.reset(Mode::Ok, changes);
                    r.ceiling_secs = receiver::http_ceiling(&url, changes, conc)
                        .await?
                        .as_secs_f64();
                }
                Step::Stopped => r.stopped_secs = stopped(ctx, rep, &ops, &url).await?,
                Step::Walhook(p) => r
                    .runs
                    .push(walhook(ctx, rep, p, &ops, changes, &recv, &url).await?),
            }
        }
        print_rep(rep, &r, changes);
        all.push(r);
    }
    print_medians(ctx, &all, changes);
    Ok(())
}

fn extra(ctx: &Ctx<'_>) -> String {
    if ctx.delivery_extra.is_empty() {
        String::new()
    } else {
        format!(", then {}", ctx.delivery_extra.join(", "))
    }
}

/// The workload's commit time with walhook set up but not running.
async fn stopped(ctx: &Ctx<'_>, rep: usize, ops: &[Op], url: &str) -> Result<f64> {
    let name = format!("d{rep}_stopped");
    let mut t = ctx.target(&name, false).await?;
    let opts = Opts {
        endpoint: Some(url),
        ..Opts::default()
    };
    ctx.instance(&t, &name, Placement::Source, opts).await?;
    let committed = commit_all(&mut t.db, ops).await?;
    ctx.drop_target(t).await?;
    Ok(committed.secs)
}

async fn walhook(
    ctx: &Ctx<'_>,
    rep: usize,
    p: Placement,
    ops: &[Op],
    changes: u64,
    recv: &Receiver,
    url: &str,
) -> Result<Run> {
    let name = format!("d{rep}_{}", p.short());
    let mut t = ctx.target(&name, p == Placement::Separate).await?;
    let opts = Opts {
        endpoint: Some(url),
        ..Opts::default()
    };
    let inst = ctx.instance(&t, &name, p, opts).await?;
    let recv_slot = format!("{name}_recv");
    ctx.baseline_slot(&t, &recv_slot).await?;
    recv.reset(Mode::Ok, changes);
    let mut proc = ctx.spawn(&inst, &["--no-admin"], "run").await?;
    ctx.wait_ready(&inst, true, &mut proc).await?;
    ctx.reset_statements().await?;
    let sampler = RssSampler::start(proc.pid);
    let (cpu0, pg0, own0) = (proc.cpu_seconds(), ctx.cluster_cpu(), own_cpu(ctx.clk_tck));
    let backends0 = ctx.backends().await?;
    let started = Instant::now();
    let committed = commit_all(&mut t.db, ops).await?;
    let done = recv
        .wait_target(&mut proc, Duration::from_secs(1800))
        .await?;
    let samples = sampler.finish().await;
    let cpu = proc.cpu_seconds() - cpu0;
    let (pg, own) = (ctx.cluster_cpu() - pg0, own_cpu(ctx.clk_tck) - own0);
    let parts = ctx.backends().await?.since(&backends0);
    let recorded = inst.wait_recorded(changes).await?;
    proc.stop().await?;
    ctx.print_statements().await?;
    let spilled = crate::harness::count(
        &inst.ledger().await?,
        &format!("SELECT count(*) FROM {}.deliveries", inst.slot),
    )
    .await?;
    let recv_secs = recvlogical(ctx, &t, &recv_slot, &committed.end, &committed.before_end).await?;
    ctx.drop_target(t).await?;
    Ok(Run {
        placement: p,
        secs: (done - started).as_secs_f64(),
        load_secs: committed.secs,
        recv_secs,
        steady_rss: samples.median(),
        peak_rss: samples.max(),
        notes: format!(
            "{} bad signatures; {} recorded {:.2} s after the last 2xx, {} via the retry ledger",
            recv.bad_signatures(),
            grouped(recorded.0 as f64),
            (recorded.1 - done).as_secs_f64(),
            grouped(spilled as f64),
        ),
        cpu: format!(
            "cpu s: walhook {cpu:.1}, postgres {pg:.1} in all (walhook's connections: {}), bench process (receiver, workload) {own:.1}",
            backends_text(&parts)
        ),
    })
}

fn rate(changes: u64, secs: f64) -> f64 {
    changes as f64 / secs
}

fn print_rep(rep: usize, r: &Rep, changes: u64) {
    let ceiling = rate(changes, r.ceiling_secs);
    println!(
        "rep {rep}: HTTP ceiling {:.2} s = {}/s | app load with walhook stopped {:.2} s",
        r.ceiling_secs,
        grouped(ceiling),
        r.stopped_secs
    );
    for run in &r.runs {
        let (e2e, recv) = (rate(changes, run.secs), rate(changes, run.recv_secs));
        println!(
            "  {}: walhook {}/s end to end ({:.2} s) = {} of the HTTP ceiling, {} of pg_recvlogical | app load {:.2} s = {:.2}x stopped",
            run.placement.label(),
            grouped(e2e),
            run.secs,
            pct(e2e, ceiling),
            pct(e2e, recv),
            run.load_secs,
            run.load_secs / r.stopped_secs,
        );
        println!(
            "    pg_recvlogical {:.2} s = {}/s | RSS steady {:.1} MB, peak {:.1} MB | {}",
            run.recv_secs,
            grouped(recv),
            mb(run.steady_rss),
            mb(run.peak_rss),
            run.notes
        );
        println!("    {}", run.cpu);
    }
}

fn print_medians(ctx: &Ctx<'_>, all: &[Rep], changes: u64) {
    let ceilings: Vec<f64> = all.iter().map(|r| rate(changes, r.ceiling_secs)).collect();
    let stopped: Vec<f64> = all.iter().map(|r| r.stopped_secs).collect();
    println!(
        "median: HTTP ceiling {}/s, app load with walhook stopped {:.2} s",
        grouped(median(&ceilings)),
        median(&stopped)
    );
    let of = |p: Placement| -> Vec<(&Rep, &Run)> {
        all.iter()
            .flat_map(|r| r.runs.iter().map(move |run| (r, run)))
            .filter(|(_, run)| run.placement == p)
            .collect()
    };
    let mut e2e_by_placement = Vec::new();
    for &p in &ctx.placements {
        let runs = of(p);
        let figure = |f: &dyn Fn(&Rep, &Run) -> f64| -> f64 {
            median(&runs.iter().map(|(r, run)| f(r, run)).collect::<Vec<_>>())
        };
        let e2e = figure(&|_, run| rate(changes, run.secs));
        e2e_by_placement.push(runs.iter().map(|(_, run)| run.secs).collect::<Vec<_>>());
        println!(
            "median, {}: walhook {}/s end to end = {} of the HTTP ceiling, {} of pg_recvlogical ({}/s) | app load {:.2}x stopped | RSS steady {:.1} MB, peak {:.1} MB (issue 3 target >= 10,000/s: {})",
            p.label(),
            grouped(e2e),
            pct(figure(&|r, run| r.ceiling_secs / run.secs), 1.0),
            pct(figure(&|_, run| run.recv_secs / run.secs), 1.0),
            grouped(figure(&|_, run| rate(changes, run.recv_secs))),
            figure(&|r, run| run.load_secs / r.stopped_secs),
            figure(&|_, run| mb(run.steady_rss)),
            figure(&|_, run| mb(run.peak_rss)),
            verdict(e2e >= 10_000.0),
        );
    }
    if let [source, separate] = e2e_by_placement.as_slice() {
        let ratios: Vec<f64> = source.iter().zip(separate).map(|(a, b)| a / b).collect();
        println!(
            "separate ledger / ledger in the source db, end to end: {:.2}x (median of per-repetition ratios)",
            median(&ratios)
        );
    }
}
