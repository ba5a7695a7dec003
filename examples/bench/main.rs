//! walhook benchmarks (issues 2, 3, 8 and 9). Each subcommand starts a
//! throwaway PostgreSQL cluster with `fsync = on` and `synchronous_commit =
//! on`, runs the release `walhook` binary as a child process (so its memory
//! can be read from `/proc/PID/status`), repeats the measurement `--reps`
//! times with the ledger in the source database and in a separate one, and
//! prints every repetition, the medians, and ratios against baselines
//! measured in the same run.
//!
//! Run it through `bench/dispatch.sh`, `bench/ingest.sh` and
//! `bench/memory.sh`, or
//! `cargo build --release --bin walhook && cargo run --release --example bench -- <sub>`.
//! What each subcommand measures is described in `bench/README.md`.

mod dispatch;
mod figures;
mod harness;
mod ingest;
mod latency;
mod memory;
mod procfs;
mod receiver;
mod workload;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use walhook::devtools::embedded::{ClusterOptions, TempCluster};

use crate::harness::{Ctx, Placement, connect};

/// The server settings every benchmark runs with: what users run. Later
/// lines override the throwaway cluster's own settings.
const DURABLE: [&str; 3] = [
    "fsync = on",
    "synchronous_commit = on",
    "full_page_writes = on",
];

#[derive(Parser, Debug)]
#[command(about = "walhook benchmarks: dispatch, latency, ingest, memory")]
struct Cli {
    /// Repetitions of each measurement (medians are printed).
    #[arg(long, global = true, default_value_t = 3)]
    reps: usize,
    /// Where the ledger lives: `source` (a schema in the source database),
    /// `separate` (`[ledger] url` = another database of the cluster), or
    /// `both`, measured in turn in each repetition.
    #[arg(long, global = true, value_enum, default_value_t = LedgerArg::Both)]
    ledger: LedgerArg,
    /// The walhook binary (default: target/release/walhook next to this example).
    #[arg(long, global = true, env = "WALHOOK_BIN")]
    walhook: Option<PathBuf>,
    /// Keep the work directory (configs, walhook logs, server log) after the run.
    #[arg(long, global = true)]
    keep: bool,
    /// Extra TOML lines for the `[delivery]` table of every walhook config,
    /// e.g. --delivery 'max_in_flight = 512' (replaces the benchmark's 256).
    #[arg(long, global = true)]
    delivery: Vec<String>,
    /// Extra postgresql.conf lines for the throwaway cluster (for
    /// investigation, e.g. --pg-conf "shared_preload_libraries = 'pg_stat_statements'").
    #[arg(long, global = true)]
    pg_conf: Vec<String>,
    /// Print the top statements of pg_stat_statements after each measurement
    /// (needs --pg-conf "shared_preload_libraries = 'pg_stat_statements'").
    #[arg(long, global = true)]
    statements: bool,
    /// SQL run on the ledger's database after each `walhook setup` (for
    /// experiments with the ledger schema); `{schema}` stands for the ledger schema.
    #[arg(long, global = true)]
    after_setup: Option<String>,
    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LedgerArg {
    Source,
    Separate,
    Both,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// End-to-end signed deliveries/s beside the HTTP-only ceiling and
    /// pg_recvlogical on the same WAL; the application's load time with
    /// walhook stopped and running; walhook's RSS meanwhile.
    Dispatch {
        /// Row changes in the workload (inserts, updates, deletes).
        #[arg(long, default_value_t = 200_200)]
        changes: u64,
        /// Row changes per source transaction.
        #[arg(long, default_value_t = 100)]
        txn_rows: u64,
        /// Concurrency of the HTTP-only ceiling (walhook's max_in_flight).
        #[arg(long, default_value_t = 256)]
        ceiling_concurrency: usize,
    },
    /// Commit-to-delivery latency at a steady rate of single-row commits.
    Latency {
        /// Single-row commits per second.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        /// How long the steady load lasts.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Application connections sharing the schedule (a commit with
        /// fsync on takes a while; one connection may not keep up).
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
    /// Capture into the ledger (`run --no-dispatch`: every delivery spills)
    /// against pg_recvlogical draining the same changes.
    Ingest {
        /// Row changes in the workload (inserts, updates, deletes).
        #[arg(long, default_value_t = 200_200)]
        changes: u64,
        /// Row changes per source transaction.
        #[arg(long, default_value_t = 100)]
        txn_rows: u64,
    },
    /// Memory: a dispatcher with a large ledger backlog and a hanging
    /// endpoint; one very large row; one very large transaction.
    Memory {
        /// Which cases to run.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "backlog,bigrow,bigtx"
        )]
        cases: Vec<memory::Case>,
        /// backlog: events waiting in the ledger.
        #[arg(long, default_value_t = 1_000_000)]
        backlog_rows: u64,
        /// backlog: how long each repetition samples RSS.
        #[arg(long, default_value_t = 30)]
        backlog_seconds: u64,
        /// bigrow: size of the text value in MiB.
        #[arg(long, default_value_t = 29)]
        value_mb: u64,
        /// bigtx: rows of the one UPDATE; one measurement per size.
        #[arg(long, value_delimiter = ',', default_value = "100000,500000")]
        bigtx_rows: Vec<u64>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let bin = walhook_binary(cli.walhook.as_deref())?;
    eprintln!("[bench] walhook binary: {}", bin.display());
    eprintln!("[bench] starting a throwaway PostgreSQL cluster");
    let opts = DURABLE
        .iter()
        .map(|l| l.to_string())
        .chain(cli.pg_conf.iter().cloned())
        .fold(ClusterOptions::new(), |o, line| o.conf(line));
    let cluster = TempCluster::start_with(opts).context("starting the throwaway cluster")?;
    let dir = tempfile::Builder::new()
        .prefix("walhook-bench-")
        .tempdir()
        .context("creating the work directory")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let ctx = context(&cluster, bin, dir.path().to_path_buf(), &cli).await?;
        run(&cli, &ctx).await
    });
    drop(rt);
    if cli.keep || result.is_err() {
        let _ = std::fs::copy(cluster.log_path(), dir.path().join("postgres.log"));
        let kept = dir.keep();
        eprintln!("[bench] work directory kept: {}", kept.display());
    }
    result
}

async fn context<'a>(
    cluster: &'a TempCluster,
    bin: PathBuf,
    dir: PathBuf,
    cli: &Cli,
) -> Result<Ctx<'a>> {
    let admin = connect(&cluster.url("postgres")).await?;
    if cli.statements {
        admin
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .context(
                "--statements needs --pg-conf \"shared_preload_libraries = 'pg_stat_statements'\"",
            )?;
    }
    let placements = match cli.ledger {
        LedgerArg::Source => vec![Placement::Source],
        LedgerArg::Separate => vec![Placement::Separate],
        LedgerArg::Both => vec![Placement::Source, Placement::Separate],
    };
    Ok(Ctx {
        cluster,
        bin,
        dir,
        admin,
        delivery_extra: cli.delivery.clone(),
        statements: cli.statements,
        after_setup: cli.after_setup.clone(),
        clk_tck: procfs::clk_tck(),
        placements,
    })
}

async fn run(cli: &Cli, ctx: &Ctx<'_>) -> Result<()> {
    println!("{}", machine_line());
    println!("{}", server_line(ctx).await?);
    match &cli.command {
        Sub::Dispatch {
            changes,
            txn_rows,
            ceiling_concurrency,
        } => dispatch::run(ctx, cli.reps, *changes, *txn_rows, *ceiling_concurrency).await,
        Sub::Latency {
            rate,
            seconds,
            connections,
        } => latency::run(ctx, cli.reps, *rate, *seconds, *connections).await,
        Sub::Ingest { changes, txn_rows } => ingest::run(ctx, cli.reps, *changes, *txn_rows).await,
        Sub::Memory {
            cases,
            backlog_rows,
            backlog_seconds,
            value_mb,
            bigtx_rows,
        } => {
            for case in cases {
                match case {
                    memory::Case::Backlog => {
                        memory::backlog(ctx, cli.reps, *backlog_rows, *backlog_seconds).await?
                    }
                    memory::Case::Bigrow => memory::bigrow(ctx, cli.reps, *value_mb).await?,
                    memory::Case::Bigtx => memory::bigtx(ctx, cli.reps, bigtx_rows).await?,
                }
            }
            Ok(())
        }
    }
}

fn walhook_binary(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => {
            let exe = std::env::current_exe()?;
            // target/release/examples/bench -> target/release/walhook
            exe.parent()
                .and_then(Path::parent)
                .map(|d| d.join("walhook"))
                .context("cannot locate target/release")?
        }
    };
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release --bin walhook` (bench/*.sh do) or pass --walhook",
            path.display()
        );
    }
    Ok(path)
}

/// Cores and load, so a reader can judge how noisy the figures are.
pub fn machine_line() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "machine: {cores} cores, load average {} (shared machine: other processes compete for the CPU)",
        load.join(" ")
    )
}

/// The server's version and durability settings as the server reports them.
async fn server_line(ctx: &Ctx<'_>) -> Result<String> {
    let row = ctx
        .admin
        .query_one(
            "SELECT current_setting('server_version'), current_setting('fsync'),
                    current_setting('synchronous_commit'), current_setting('full_page_writes'),
                    current_setting('wal_sync_method')",
            &[],
        )
        .await?;
    let v = |i: usize| row.get::<_, String>(i);
    Ok(format!(
        "postgres {}: fsync = {}, synchronous_commit = {}, full_page_writes = {}, wal_sync_method = {}",
        v(0),
        v(1),
        v(2),
        v(3),
        v(4)
    ))
}
