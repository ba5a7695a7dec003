//! `ingest`: how fast capture takes a committed backlog of changes. With
//! `walhook run --no-dispatch` nothing is attempted, so every delivery
//! spills to the retry ledger (the ingest path); without an endpoint
//! capture only decodes and maps (nothing to write). Against
//! `pg_recvlogical` draining the same changes from its own slot.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::figures::{grouped, mb, median, pct, verdict};
use crate::harness::{Ctx, Instance, Opts, Placement, Target, backends_text, count, recvlogical};
use crate::workload::{Committed, Op, commit_all, describe, workload};

/// Nothing listens there: with `--no-dispatch` nothing is sent.
const NOWHERE: &str = "http://127.0.0.1:9/hook";

#[derive(Clone, Copy, PartialEq)]
enum Consumer {
    Recvlogical,
    /// No endpoint: decode and map only.
    Plain,
    Spill(Placement),
}

impl Consumer {
    fn label(self) -> String {
        match self {
            Consumer::Recvlogical => "pg_recvlogical".into(),
            Consumer::Plain => "walhook, no endpoint (decode + map only)".into(),
            Consumer::Spill(p) => format!("walhook --no-dispatch, {}", p.label()),
        }
    }
}

pub async fn run(ctx: &Ctx<'_>, reps: usize, changes: u64, t: u64) -> Result<()> {
    let ops = workload(changes, t)?;
    println!(
        "ingest: {} row changes ({}) in {} transactions of {t} rows, REPLICA IDENTITY FULL, committed before any consumer runs; {reps} repetitions",
        grouped(changes as f64),
        describe(&ops),
        grouped(ops.len() as f64),
    );
    println!(
        "  pg_recvlogical: its own pgoutput slot (proto 1) drained to /dev/null up to the last change (--endpos), spawn to exit"
    );
    println!(
        "  walhook: `run --no-dispatch --no-admin` (with one endpoint every delivery is written to the ledger), spawn until its slot is confirmed past the last change (status_interval = 20ms)"
    );
    let mut consumers = vec![Consumer::Recvlogical, Consumer::Plain];
    consumers.extend(ctx.placements.iter().map(|p| Consumer::Spill(*p)));
    // secs[i][rep]: consumer i's time in each repetition.
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); consumers.len()];
    for rep in 1..=reps {
        for (i, s) in one_rep(ctx, rep, &consumers, &ops, changes)
            .await?
            .into_iter()
            .enumerate()
        {
            secs[i].push(s);
        }
    }
    print_medians(&consumers, &secs, changes);
    Ok(())
}

/// One repetition: a fresh database, the workload, then each consumer in
/// turn (rotated); returns each consumer's time, in `consumers`' order.
async fn one_rep(
    ctx: &Ctx<'_>,
    rep: usize,
    consumers: &[Consumer],
    ops: &[Op],
    changes: u64,
) -> Result<Vec<f64>> {
    let name = format!("i{rep}");
    let separate = ctx.placements.contains(&Placement::Separate);
    let mut target = ctx.target(&name, separate).await?;
    let mut insts = Vec::new();
    for c in consumers {
        insts.push(instance(ctx, &target, &name, *c).await?);
    }
    let recv_slot = format!("{name}_recv");
    ctx.baseline_slot(&target, &recv_slot).await?;
    let committed = commit_all(&mut target.db, ops).await?;
    println!(
        "rep {rep}: the workload committed in {:.2} s",
        committed.secs
    );
    let n = consumers.len();
    let mut secs = vec![f64::NAN; n];
    // Rotate the order so no consumer always runs first.
    for k in 0..n {
        let i = (k + rep - 1) % n;
        secs[i] = match &insts[i] {
            None => {
                let (end, before_end) = (&committed.end, &committed.before_end);
                let s = recvlogical(ctx, &target, &recv_slot, end, before_end).await?;
                let rate = grouped(changes as f64 / s);
                println!("  {}: {s:.2} s = {rate}/s", consumers[i].label());
                s
            }
            Some(inst) => spill(ctx, consumers[i], inst, &committed, changes).await?,
        };
    }
    ctx.print_statements().await?;
    ctx.drop_target(target).await?;
    Ok(secs)
}

fn print_medians(consumers: &[Consumer], secs: &[Vec<f64>], changes: u64) {
    let base = &secs[0];
    let mut line = format!(
        "median: pg_recvlogical {}/s",
        grouped(changes as f64 / median(base))
    );
    for (c, s) in consumers.iter().zip(secs).skip(1) {
        let ratio = median(&base.iter().zip(s).map(|(b, x)| b / x).collect::<Vec<_>>());
        line.push_str(&format!(
            " | {} {}/s = {}",
            c.label(),
            grouped(changes as f64 / median(s)),
            pct(ratio, 1.0)
        ));
        if *c == Consumer::Plain {
            line.push_str(&format!(
                " (issue 2 target >= 50%: {})",
                verdict(ratio >= 0.5)
            ));
        }
    }
    println!("{line}");
    println!("  (percentages: walhook / pg_recvlogical, medians of per-repetition ratios)");
}

async fn instance(ctx: &Ctx<'_>, t: &Target, name: &str, c: Consumer) -> Result<Option<Instance>> {
    let (slot, placement, endpoint) = match c {
        Consumer::Recvlogical => return Ok(None),
        Consumer::Plain => (format!("{name}_plain"), Placement::Source, None),
        Consumer::Spill(p) => (format!("{name}_{}", p.short()), p, Some(NOWHERE)),
    };
    let opts = Opts {
        endpoint,
        status_interval: Some("20ms"),
        ..Opts::default()
    };
    Ok(Some(ctx.instance(t, &slot, placement, opts).await?))
}

/// One walhook run from spawn until its slot is confirmed past the workload.
async fn spill(
    ctx: &Ctx<'_>,
    c: Consumer,
    inst: &Instance,
    committed: &Committed,
    changes: u64,
) -> Result<f64> {
    let before = ctx.backends().await?;
    let started = Instant::now();
    let mut proc = ctx
        .spawn(inst, &["--no-dispatch", "--no-admin"], "ingest")
        .await?;
    let done = ctx
        .wait_confirmed(
            &inst.slot,
            &committed.end,
            &mut proc,
            Duration::from_secs(1800),
        )
        .await?;
    let secs = (done - started).as_secs_f64();
    let cpu = proc.cpu_seconds();
    let parts = ctx.backends().await?.since(&before);
    let peak = proc.status_bytes("VmHWM").unwrap_or(0);
    proc.stop().await?;
    let ledger = inst.ledger().await?;
    let s = &inst.slot;
    let events = count(&ledger, &format!("SELECT count(*) FROM {s}.events")).await?;
    let deliveries = count(&ledger, &format!("SELECT count(*) FROM {s}.deliveries")).await?;
    let want = if matches!(c, Consumer::Plain) {
        0
    } else {
        changes as i64
    };
    if events != want || deliveries != want {
        bail!(
            "{s}: the ledger holds {events} events and {deliveries} deliveries, expected {want} of each"
        );
    }
    println!(
        "  {}: {secs:.2} s = {}/s | cpu s: walhook {cpu:.1}, postgres ({}) | peak RSS {:.1} MB",
        c.label(),
        grouped(changes as f64 / secs),
        backends_text(&parts),
        mb(peak)
    );
    Ok(secs)
}
