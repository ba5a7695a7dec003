//! walhook benchmarks (issues 2 and 3). Each subcommand starts a throwaway
//! PostgreSQL cluster, runs the release `walhook` binary as a child process
//! (so its memory can be read from `/proc/PID/status`), repeats the
//! measurement `--reps` times and prints every repetition, the medians, and
//! ratios against a baseline measured in the same run.
//!
//! Run it through `bench/ingest.sh` and `bench/dispatch.sh`, or
//! `cargo build --release --bin walhook && cargo run --release --example bench -- <sub>`.
//! What each subcommand measures is described in `bench/README.md`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::extract::State;
use axum::http::StatusCode;
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::process::{Child, Command};
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;
use walhook::devtools::embedded::{ClusterOptions, TempCluster};

#[derive(Parser, Debug)]
#[command(about = "walhook benchmarks: ingest, bigtx, dispatch, latency, backlog")]
struct Cli {
    /// Repetitions of each measurement (medians are printed).
    #[arg(long, global = true, default_value_t = 3)]
    reps: usize,
    /// The walhook binary (default: target/release/walhook next to this example).
    #[arg(long, global = true, env = "WALHOOK_BIN")]
    walhook: Option<PathBuf>,
    /// Keep the work directory (configs, walhook logs) after the run.
    #[arg(long, global = true)]
    keep: bool,
    /// Extra TOML lines for the `[delivery]` table of every walhook config,
    /// e.g. --delivery 'max_in_flight = 512'.
    #[arg(long, global = true)]
    delivery: Vec<String>,
    /// Extra postgresql.conf lines for the throwaway cluster (for
    /// investigation, e.g. --pg-conf "shared_preload_libraries = 'pg_stat_statements'").
    #[arg(long, global = true)]
    pg_conf: Vec<String>,
    /// Print the top statements of pg_stat_statements after each repetition
    /// (needs --pg-conf "shared_preload_libraries = 'pg_stat_statements'").
    #[arg(long, global = true)]
    statements: bool,
    /// SQL run after each `walhook setup` (for experiments with the ledger
    /// schema); `{schema}` stands for the ledger schema.
    #[arg(long, global = true)]
    after_setup: Option<String>,
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Capture throughput against pg_recvlogical draining the same changes.
    Ingest {
        /// Row changes in the workload.
        #[arg(long, default_value_t = 200_000)]
        changes: u64,
        /// Row changes per source transaction.
        #[arg(long, default_value_t = 1_000)]
        txn_rows: u64,
        /// `crm`: 60% inserts, 30% updates, 10% deletes; `inserts`: inserts only.
        #[arg(long, value_enum, default_value_t = Mix::Crm)]
        mix: Mix,
    },
    /// Peak RSS of capture while it ingests one large UPDATE transaction.
    Bigtx {
        /// Rows updated by the one transaction; one measurement per size.
        #[arg(long, value_delimiter = ',', default_value = "100000,500000")]
        rows: Vec<u64>,
    },
    /// End-to-end deliveries/s from first commit to the last 2xx.
    Dispatch {
        /// Row changes (inserts) committed while walhook runs.
        #[arg(long, default_value_t = 100_000)]
        changes: u64,
        /// Concurrency of the plain-HTTP baseline.
        #[arg(long, default_value_t = 256)]
        baseline_concurrency: usize,
    },
    /// Commit-to-arrival latency at a steady rate.
    Latency {
        /// Row changes per second.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        /// One insert transaction every this many milliseconds.
        #[arg(long, default_value_t = 10)]
        tick_ms: u64,
        /// How long the steady load lasts.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Peak RSS of a dispatcher working a large backlog against a slow, failing receiver.
    Backlog {
        /// Pending deliveries to build up.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// How long each repetition samples RSS.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// The receiver waits this long, then answers 503.
        #[arg(long, default_value_t = 50)]
        receiver_delay_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mix {
    Crm,
    Inserts,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let bin = walhook_binary(cli.walhook.as_deref())?;
    eprintln!("[bench] walhook binary: {}", bin.display());
    eprintln!("[bench] starting a throwaway PostgreSQL cluster");
    // fsync is off in the throwaway cluster (no disk cost). synchronous_commit
    // must stay on (Postgres' default): logical walsenders send only flushed
    // WAL, so `off` would add up to wal_writer_delay (200 ms) to every
    // change's latency. Set explicitly since the figures depend on it.
    let opts = cli.pg_conf.iter().fold(
        ClusterOptions::new().conf("synchronous_commit = on"),
        |o, line| o.conf(line.clone()),
    );
    let cluster = TempCluster::start_with(opts).context("starting the throwaway cluster")?;
    let dir = tempfile::Builder::new()
        .prefix("walhook-bench-")
        .tempdir()
        .context("creating the work directory")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let ctx = Ctx::new(&cluster, bin, dir.path().to_path_buf(), &cli).await?;
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

async fn run(cli: &Cli, ctx: &Ctx<'_>) -> Result<()> {
    println!("{}", machine_line());
    match &cli.command {
        Sub::Ingest {
            changes,
            txn_rows,
            mix,
        } => ingest(ctx, cli.reps, *changes, *txn_rows, *mix).await,
        Sub::Bigtx { rows } => bigtx(ctx, cli.reps, rows).await,
        Sub::Dispatch {
            changes,
            baseline_concurrency,
        } => dispatch(ctx, cli.reps, *changes, *baseline_concurrency).await,
        Sub::Latency {
            rate,
            tick_ms,
            seconds,
        } => latency(ctx, cli.reps, *rate, *tick_ms, *seconds).await,
        Sub::Backlog {
            rows,
            seconds,
            receiver_delay_ms,
        } => backlog(ctx, cli.reps, *rows, *seconds, *receiver_delay_ms).await,
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
fn machine_line() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "machine: {cores} cores, load average {} (shared machine: other processes compete for the CPU)",
        load.join(" ")
    )
}

// ---------------------------------------------------------------------------
// Harness: cluster, databases, configs, child processes.

struct Ctx<'a> {
    cluster: &'a TempCluster,
    bin: PathBuf,
    dir: PathBuf,
    admin: Client,
    delivery_extra: Vec<String>,
    statements: bool,
    after_setup: Option<String>,
    clk_tck: f64,
}

impl<'a> Ctx<'a> {
    async fn new(cluster: &'a TempCluster, bin: PathBuf, dir: PathBuf, cli: &Cli) -> Result<Self> {
        let admin = connect(&cluster.url("postgres")).await?;
        let clk_tck = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        Ok(Ctx {
            cluster,
            bin,
            dir,
            admin,
            delivery_extra: cli.delivery.clone(),
            statements: cli.statements,
            after_setup: cli.after_setup.clone(),
            clk_tck,
        })
    }

    /// A new database with the benchmark table in it.
    async fn fresh_db(&self, name: &str) -> Result<(String, Client)> {
        self.drop_db(name).await?;
        self.admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = self.cluster.url(name);
        let client = connect(&url).await?;
        client.batch_execute(LEADS_DDL).await?;
        if self.statements {
            client
                .batch_execute(
                    "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()",
                )
                .await?;
        }
        Ok((url, client))
    }

    /// With `--statements`: the statements that took the most time so far.
    async fn print_statements(&self, db: &Client) -> Result<()> {
        if !self.statements {
            return Ok(());
        }
        let rows = db
            .query(
                "SELECT calls, total_exec_time + total_plan_time, rows, total_plan_time,
                        regexp_replace(query, '\\s+', ' ', 'g')
                   FROM pg_stat_statements ORDER BY total_exec_time + total_plan_time DESC LIMIT 10",
                &[],
            )
            .await?;
        for r in rows {
            let (calls, total, n, plan, query): (i64, f64, i64, f64, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            println!(
                "    {total:9.0} ms (planning {plan:5.0}) {calls:7} calls {:7.2} ms/call {n:9} rows  {}",
                total / calls.max(1) as f64,
                query.chars().take(110).collect::<String>()
            );
        }
        Ok(())
    }

    /// Drops the database and its replication slots (slots retain WAL and
    /// block DROP DATABASE).
    async fn drop_db(&self, name: &str) -> Result<()> {
        self.admin
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1",
                &[&name],
            )
            .await?;
        self.admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        Ok(())
    }

    /// Writes a walhook config: the `leads` table as `lead`, slot and ledger
    /// schema both named `name`, optionally one endpoint, admin HTTP off.
    fn config(&self, url: &str, name: &str, endpoint: Option<&str>) -> Result<PathBuf> {
        let mut text = format!(
            r#"[source]
url = "{url}"
name = "bench"
slot = "{name}"
publication = "walhook"
connect_timeout = "10s"

[ledger]
schema = "{name}"

[[objects]]
table = "public.leads"
slug = "lead"

[admin]
listen = ""

[delivery]
{delivery}
"#,
            delivery = self.delivery_extra.join("\n")
        );
        if let Some(ep) = endpoint {
            text.push_str(&format!(
                r#"
[[endpoints]]
id = "recv"
url = "{ep}"
secret = "bench-secret"
timeout = "10s"
"#
            ));
        }
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// `walhook setup`: ledger schema, publication, slot, replica identity.
    /// The ledger schema is named after the config file.
    async fn setup(&self, config: &Path) -> Result<()> {
        let out = Command::new(&self.bin)
            .arg("--config")
            .arg(config)
            .arg("setup")
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "walhook setup failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        if let Some(sql) = &self.after_setup {
            let text = std::fs::read_to_string(config)?;
            let url = text
                .lines()
                .find_map(|l| l.strip_prefix("url = \"")?.strip_suffix('"'))
                .context("no url in the config")?;
            let schema = config.file_stem().unwrap_or_default().to_string_lossy();
            connect(url)
                .await?
                .batch_execute(&sql.replace("{schema}", &schema))
                .await
                .context("--after-setup")?;
        }
        Ok(())
    }

    async fn spawn(&self, config: &Path, args: &[&str], label: &str) -> Result<Proc> {
        let log = self.dir.join(format!(
            "{}-{}.log",
            config.file_stem().unwrap_or_default().to_string_lossy(),
            label
        ));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(config)
            .arg("run")
            .args(args)
            .env("RUST_LOG", "info,tokio_postgres=warn")
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id().context("walhook exited at once")?;
        Ok(Proc {
            child,
            pid,
            log,
            clk_tck: self.clk_tck,
        })
    }
}

async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A walhook child process.
struct Proc {
    child: Child,
    pid: u32,
    log: PathBuf,
    clk_tck: f64,
}

impl Proc {
    /// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
    fn status_bytes(&self, key: &str) -> Option<u64> {
        read_status_bytes(self.pid, key)
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid, self.clk_tck)
    }

    /// Resets VmHWM to the current RSS (Linux `clear_refs` value 5).
    fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    /// Fails with the end of the log when the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "walhook exited unexpectedly ({status}); end of {}:\n{}",
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// SIGTERM (graceful stop), SIGKILL if it takes longer than 30 s.
    async fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    eprintln!(
                        "[bench] walhook exited with {status}; end of {}:\n{}",
                        self.log.display(),
                        log_tail(&self.log)
                    );
                }
            }
            Err(_) => {
                eprintln!("[bench] walhook did not stop within 30 s after SIGTERM; killing it");
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

/// User + system CPU seconds of any process (walhook, or a Postgres backend).
fn cpu_seconds(pid: u32, clk_tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck)
}

/// CPU seconds used so far by the whole cluster: the postmaster, its live
/// children, and (through the postmaster's cutime/cstime) every child that
/// has exited.
fn cluster_cpu(ctx: &Ctx<'_>) -> f64 {
    let Some(pm) = ctx.cluster.postmaster_pid() else {
        return f64::NAN;
    };
    let fields = |pid: u32| -> Option<Vec<f64>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        Some(
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect(),
        )
    };
    // After the name: [0] state, [1] ppid, [11] utime, [12] stime, [13] cutime, [14] cstime.
    let Some(own) = fields(pm) else {
        return f64::NAN;
    };
    let mut ticks = own[11] + own[12] + own[13] + own[14];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(f) = fields(pid)
            && f.get(1).copied() == Some(f64::from(pm))
        {
            ticks += f[11] + f[12];
        }
    }
    ticks / ctx.clk_tck
}

/// CPU seconds of walhook's walsender, capture writer and dispatch backends.
async fn walhook_backends_cpu(ctx: &Ctx<'_>, db: &Client) -> Result<(f64, f64, f64)> {
    let (walsender, writer) = server_cpu(db, "wh", "walhook capture writer", ctx.clk_tck).await?;
    let (_, dispatch) = server_cpu(db, "wh", "walhook dispatch", ctx.clk_tck).await?;
    Ok((walsender, writer, dispatch))
}

/// CPU seconds of this process (the receiver, the workload client).
fn own_cpu(ctx: &Ctx<'_>) -> f64 {
    cpu_seconds(std::process::id(), ctx.clk_tck).unwrap_or(f64::NAN)
}

/// CPU seconds of the Postgres server processes serving walhook: the
/// walsender of `slot` and the backend of the connection named `app`.
async fn server_cpu(db: &Client, slot: &str, app: &str, clk_tck: f64) -> Result<(f64, f64)> {
    let row = db
        .query_one(
            "SELECT (SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1),
                    (SELECT pid FROM pg_stat_activity
                      WHERE application_name = $2 AND datname = current_database() LIMIT 1)",
            &[&slot, &app],
        )
        .await?;
    let cpu = |pid: Option<i32>| {
        pid.and_then(|p| cpu_seconds(p as u32, clk_tck))
            .unwrap_or(f64::NAN)
    };
    Ok((cpu(row.get(0)), cpu(row.get(1))))
}

fn read_status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    let kb: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Samples a process's VmRSS every 50 ms until stopped.
struct RssSampler {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Vec<(Duration, u64)>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            let start = Instant::now();
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        if let Some(rss) = read_status_bytes(pid, "VmRSS") {
                            samples.push((start.elapsed(), rss));
                        }
                    }
                }
            }
            samples
        });
        RssSampler { stop, handle }
    }

    async fn finish(self) -> Vec<(Duration, u64)> {
        self.stop.cancel();
        self.handle.await.unwrap_or_default()
    }
}

fn max_rss(samples: &[(Duration, u64)]) -> u64 {
    samples.iter().map(|s| s.1).max().unwrap_or(0)
}

/// The last sample taken at or before `at`.
fn rss_at(samples: &[(Duration, u64)], at: Duration) -> u64 {
    samples
        .iter()
        .take_while(|s| s.0 <= at)
        .last()
        .map_or(0, |s| s.1)
}

/// Waits until the ledger's progress for `slot` is past `lsn`: every event of
/// the transaction that contains `lsn` (and of all before it) is committed.
async fn wait_progress(
    db: &Client,
    schema: &str,
    lsn: &str,
    proc: &mut Proc,
    timeout: Duration,
) -> Result<Instant> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {schema}.progress WHERE slot = $1 AND lsn > $2::text::pg_lsn)"
    );
    let deadline = Instant::now() + timeout;
    loop {
        if db
            .query_one(&sql, &[&schema, &lsn])
            .await?
            .get::<_, bool>(0)
        {
            return Ok(Instant::now());
        }
        proc.check_alive()?;
        if Instant::now() > deadline {
            bail!("walhook did not reach LSN {lsn} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until walhook streams from its slot and, with `dispatch`, its
/// dispatcher is connected.
async fn wait_ready(db: &Client, slot: &str, dispatch: bool, proc: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let streaming: bool = db
            .query_one(
                "SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false)",
                &[&slot],
            )
            .await?
            .get(0);
        let dispatching: bool = !dispatch
            || db
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                     WHERE application_name = 'walhook dispatch' AND datname = current_database())",
                    &[],
                )
                .await?
                .get::<_, bool>(0);
        if streaming && dispatching {
            return Ok(());
        }
        proc.check_alive()?;
        if Instant::now() > deadline {
            bail!("walhook did not become ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn count(db: &Client, sql: &str) -> Result<i64> {
    Ok(db.query_one(sql, &[]).await?.get(0))
}

// ---------------------------------------------------------------------------
// Workload: a CRM-like table with ten columns.

const LEADS_DDL: &str = "
CREATE TABLE public.leads (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL,
    phone      text,
    company    text,
    stage      text NOT NULL,
    score      integer NOT NULL,
    amount     numeric(12,2),
    tags       text[],
    updated_at timestamptz NOT NULL
);
-- The workload table is not what is measured: keep autovacuum off it.
ALTER TABLE public.leads SET (autovacuum_enabled = off);
";

/// Rows `$1..=$2` (ids `lead_000000001`...), about 200 bytes each.
const INSERT_SQL: &str = "
INSERT INTO public.leads (id, name, email, phone, company, stage, score, amount, tags, updated_at)
SELECT 'lead_' || lpad(g::text, 9, '0'),
       'Lead Person ' || g,
       'lead.person.' || g || '@example.com',
       '+1-555-' || lpad((g % 10000)::text, 4, '0'),
       'Company ' || (g % 5000) || ' Ltd',
       (ARRAY['new','contacted','qualified','proposal','won','lost'])[1 + g % 6],
       (g % 100)::int,
       ((g * 37) % 1000000) / 100.0,
       ARRAY['tag' || (g % 7), 'region' || (g % 3)],
       clock_timestamp()
FROM generate_series($1::int8, $2::int8) AS g";

/// Changes three columns of each listed row (so every row emits an event).
const UPDATE_SQL: &str = "
UPDATE public.leads
   SET stage = (ARRAY['new','contacted','qualified','proposal','won','lost'])[1 + (score + 1) % 6],
       score = score + 1,
       updated_at = clock_timestamp()
 WHERE id = ANY($1::text[])";

const DELETE_SQL: &str = "DELETE FROM public.leads WHERE id = ANY($1::text[])";

fn lead_id(n: u64) -> String {
    format!("lead_{n:09}")
}

enum Op {
    Insert(u64, u64),
    Update(Vec<String>),
    Delete(Vec<String>),
}

/// The transactions of the ingest workload. `crm`: groups of ten
/// transactions of `t` rows each: six insert new rows, three update rows
/// inserted earlier, one deletes rows no update touches, so every statement
/// changes exactly `t` rows.
fn workload(mix: Mix, changes: u64, t: u64) -> Result<Vec<Op>> {
    match mix {
        Mix::Inserts => {
            if !changes.is_multiple_of(t) {
                bail!("--changes must be a multiple of --txn-rows");
            }
            Ok((0..changes / t)
                .map(|i| Op::Insert(i * t + 1, (i + 1) * t))
                .collect())
        }
        Mix::Crm => {
            if !changes.is_multiple_of(10 * t) {
                bail!("with --mix crm, --changes must be a multiple of 10 x --txn-rows");
            }
            // Each group inserts 6t rows; its last t are deleted, the first
            // 5t survive. Surviving row number r (0-based, over all groups):
            let survivor = |r: u64| (r / (5 * t)) * 6 * t + r % (5 * t) + 1;
            let mut ops = Vec::new();
            for k in 0..changes / (10 * t) {
                for i in 0..6 {
                    let first = 6 * t * k + i * t + 1;
                    ops.push(Op::Insert(first, first + t - 1));
                }
                for i in 0..3 {
                    let first = 3 * t * k + i * t;
                    ops.push(Op::Update(
                        (first..first + t).map(|r| lead_id(survivor(r))).collect(),
                    ));
                }
                let first = 6 * t * k + 5 * t + 1;
                ops.push(Op::Delete((first..first + t).map(lead_id).collect()));
            }
            Ok(ops)
        }
    }
}

/// Runs one operation as its own transaction. Returns the WAL insert position
/// read inside it (after the change): the transaction's commit record comes
/// after that position, and every earlier transaction's commit before it.
async fn run_op(db: &mut Client, op: &Op) -> Result<String> {
    let tx = db.transaction().await?;
    let (n, want) = match op {
        Op::Insert(a, b) => (
            tx.execute(INSERT_SQL, &[&(*a as i64), &(*b as i64)])
                .await?,
            b - a + 1,
        ),
        Op::Update(ids) => (tx.execute(UPDATE_SQL, &[ids]).await?, ids.len() as u64),
        Op::Delete(ids) => (tx.execute(DELETE_SQL, &[ids]).await?, ids.len() as u64),
    };
    if n != want {
        bail!("workload statement changed {n} rows, expected {want}");
    }
    let lsn: String = tx
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    tx.commit().await?;
    Ok(lsn)
}

async fn insert_rows(db: &mut Client, total: u64, per_txn: u64) -> Result<String> {
    let mut lsn = String::new();
    let mut first = 1;
    while first <= total {
        let last = (first + per_txn - 1).min(total);
        lsn = run_op(db, &Op::Insert(first, last)).await?;
        first = last + 1;
    }
    Ok(lsn)
}

// ---------------------------------------------------------------------------
// Figures.

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `123456.7` -> `123,457`.
fn grouped(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

// ---------------------------------------------------------------------------
// ingest

struct IngestRun {
    secs: f64,
    /// CPU seconds of walhook, its walsender and its ledger backend.
    cpu: (f64, f64, f64),
    peak: u64,
}

async fn ingest(ctx: &Ctx<'_>, reps: usize, changes: u64, t: u64, mix: Mix) -> Result<()> {
    let ops = workload(mix, changes, t)?;
    let mix_text = match mix {
        Mix::Crm => format!(
            "{} inserts, {} updates (3 columns), {} deletes, interleaved",
            changes * 6 / 10,
            changes * 3 / 10,
            changes / 10
        ),
        Mix::Inserts => format!("{changes} inserts"),
    };
    println!(
        "ingest: {} row changes on a 10-column table ({mix_text}), {} transactions of {t} rows, REPLICA IDENTITY FULL; {reps} repetitions",
        grouped(changes as f64),
        ops.len()
    );
    println!(
        "  pg_recvlogical: drains its own pgoutput slot (proto 1) to /dev/null up to the last change (--endpos)"
    );
    println!(
        "  walhook: `run --no-dispatch --no-admin` started after the workload committed, until the ledger holds every event"
    );
    let mut base_rates = Vec::new();
    let mut a_rates = Vec::new();
    let mut b_rates = Vec::new();
    let mut a_ratios = Vec::new();
    let mut b_ratios = Vec::new();
    for rep in 1..=reps {
        let name = format!("ingest_{rep}");
        let (url, mut db) = ctx.fresh_db(&name).await?;
        let cfg_a = ctx.config(&url, "wh_plain", None)?;
        let cfg_b = ctx.config(&url, "wh_endpoint", Some("http://127.0.0.1:9/hook"))?;
        ctx.setup(&cfg_a).await?;
        ctx.setup(&cfg_b).await?;
        db.batch_execute("SELECT pg_create_logical_replication_slot('bench_baseline', 'pgoutput')")
            .await?;
        let started = Instant::now();
        let mut lsns = Vec::with_capacity(ops.len());
        for op in &ops {
            lsns.push(run_op(&mut db, op).await?);
        }
        let workload_secs = started.elapsed().as_secs_f64();
        let end = lsns.last().cloned().unwrap_or_default();
        let before_end = lsns.iter().rev().nth(1).cloned().unwrap_or_default();

        // Rotate the order so no consumer always runs first.
        let mut results: [Option<IngestRun>; 3] = [None, None, None];
        for k in 0..3 {
            let which = (k + rep - 1) % 3;
            let r = match which {
                0 => run_recvlogical(ctx, &name, &db, &end, &before_end).await?,
                1 => run_walhook_ingest(ctx, &cfg_a, "wh_plain", &db, &end, changes, false).await?,
                _ => {
                    run_walhook_ingest(ctx, &cfg_b, "wh_endpoint", &db, &end, changes, true).await?
                }
            };
            results[which] = Some(r);
        }
        let [Some(base), Some(a), Some(b)] = results else {
            unreachable!("all three ran");
        };
        let n = changes as f64;
        let (rb, ra, rbb) = (n / base.secs, n / a.secs, n / b.secs);
        println!(
            "rep {rep}: workload committed in {workload_secs:.1} s | pg_recvlogical {:.2} s = {}/s | walhook {:.2} s = {}/s ({:.0}%, {}, peak RSS {:.1} MB) | walhook+1 endpoint {:.2} s = {}/s ({:.0}%, {}, peak RSS {:.1} MB)",
            base.secs,
            grouped(rb),
            a.secs,
            grouped(ra),
            100.0 * ra / rb,
            cpu_text(a.cpu),
            mb(a.peak),
            b.secs,
            grouped(rbb),
            100.0 * rbb / rb,
            cpu_text(b.cpu),
            mb(b.peak),
        );
        base_rates.push(rb);
        a_rates.push(ra);
        b_rates.push(rbb);
        a_ratios.push(ra / rb);
        b_ratios.push(rbb / rb);
        ctx.print_statements(&db).await?;
        drop(db);
        ctx.drop_db(&name).await?;
    }
    let ratio_a = median(&a_ratios);
    println!(
        "median: pg_recvlogical {}/s | walhook (no endpoint) {}/s | walhook (1 endpoint) {}/s",
        grouped(median(&base_rates)),
        grouped(median(&a_rates)),
        grouped(median(&b_rates)),
    );
    println!(
        "ratio walhook/pg_recvlogical (median of per-repetition ratios): no endpoint {:.0}%, 1 endpoint {:.0}% (target >= 50%: {})",
        100.0 * ratio_a,
        100.0 * median(&b_ratios),
        verdict(ratio_a >= 0.5)
    );
    Ok(())
}

fn cpu_text((own, walsender, backend): (f64, f64, f64)) -> String {
    format!("cpu s: walhook {own:.1} walsender {walsender:.1} ledger backend {backend:.1}")
}

async fn run_recvlogical(
    ctx: &Ctx<'_>,
    dbname: &str,
    db: &Client,
    end: &str,
    before_end: &str,
) -> Result<IngestRun> {
    let program = ctx.cluster.bin_dir().join("pg_recvlogical");
    let port = ctx.cluster.port().to_string();
    let started = Instant::now();
    let out = Command::new(&program)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            dbname,
        ])
        .args(["--slot", "bench_baseline", "--start", "--no-loop"])
        .args(["-P", "pgoutput", "-o", "proto_version=1"])
        .args(["-o", "publication_names=walhook"])
        .args(["--endpos", end, "-f", "/dev/null"])
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "pg_recvlogical failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Sanity: it really went through the workload (past the second-last transaction).
    let past: bool = db
        .query_one(
            "SELECT confirmed_flush_lsn > $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'bench_baseline'",
            &[&before_end],
        )
        .await?
        .get(0);
    if !past {
        bail!("pg_recvlogical stopped before the end of the workload");
    }
    Ok(IngestRun {
        secs,
        cpu: (0.0, 0.0, 0.0),
        peak: 0,
    })
}

async fn run_walhook_ingest(
    ctx: &Ctx<'_>,
    config: &Path,
    name: &str,
    db: &Client,
    end: &str,
    changes: u64,
    with_endpoint: bool,
) -> Result<IngestRun> {
    let started = Instant::now();
    let mut proc = ctx
        .spawn(config, &["--no-dispatch", "--no-admin"], "ingest")
        .await?;
    let done = wait_progress(db, name, end, &mut proc, Duration::from_secs(600)).await?;
    let secs = (done - started).as_secs_f64();
    let own = proc.cpu_seconds().unwrap_or(f64::NAN);
    let (walsender, backend) = server_cpu(db, name, "walhook capture writer", ctx.clk_tck).await?;
    let cpu = (own, walsender, backend);
    let peak = proc.status_bytes("VmHWM").unwrap_or(0);
    proc.stop().await?;
    let events = count(db, &format!("SELECT count(*) FROM {name}.events")).await?;
    let deliveries = count(db, &format!("SELECT count(*) FROM {name}.deliveries")).await?;
    let want_deliveries = if with_endpoint { changes as i64 } else { 0 };
    if events != changes as i64 || deliveries != want_deliveries {
        bail!(
            "{name}: the ledger holds {events} events and {deliveries} deliveries, expected {changes} and {want_deliveries}"
        );
    }
    Ok(IngestRun { secs, cpu, peak })
}

// ---------------------------------------------------------------------------
// bigtx

async fn bigtx(ctx: &Ctx<'_>, reps: usize, sizes: &[u64]) -> Result<()> {
    println!(
        "bigtx: peak RSS of `walhook run --no-dispatch --no-admin` (one endpoint configured, so deliveries are written too) while it ingests ONE UPDATE transaction of N rows; {reps} repetitions"
    );
    println!(
        "  the table is filled before the slot exists, so walhook sees only the UPDATE; VmHWM is reset (clear_refs) once walhook is streaming and idle"
    );
    let mut summary = Vec::new();
    for &rows in sizes {
        let mut peaks = Vec::new();
        let mut idles = Vec::new();
        let mut rates = Vec::new();
        for rep in 1..=reps {
            let name = format!("bigtx_{rows}_{rep}");
            let (url, mut db) = ctx.fresh_db(&name).await?;
            insert_rows(&mut db, rows, 50_000).await?;
            let cfg = ctx.config(&url, "wh", Some("http://127.0.0.1:9/hook"))?;
            ctx.setup(&cfg).await?;
            let mut proc = ctx
                .spawn(
                    &cfg,
                    &["--no-dispatch", "--no-admin"],
                    &format!("{rows}-{rep}"),
                )
                .await?;
            wait_ready(&db, "wh", false, &mut proc).await?;
            let idle = proc.status_bytes("VmRSS").unwrap_or(0);
            let reset = proc.reset_peak();
            let sampler = RssSampler::start(proc.pid);
            let started = Instant::now();
            let tx = db.transaction().await?;
            let n = tx
                .execute(
                    "UPDATE public.leads SET score = score + 1, stage = 'updated', updated_at = clock_timestamp()",
                    &[],
                )
                .await?;
            let lsn: String = tx
                .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
                .await?
                .get(0);
            tx.commit().await?;
            let committed = Instant::now();
            let done = wait_progress(&db, "wh", &lsn, &mut proc, Duration::from_secs(1800)).await?;
            let samples = sampler.finish().await;
            let hwm = proc.status_bytes("VmHWM").unwrap_or(0);
            let cpu = proc.cpu_seconds().unwrap_or(f64::NAN);
            proc.stop().await?;
            let events = count(&db, "SELECT count(*) FROM wh.events").await?;
            if n != rows || events != rows as i64 {
                bail!("bigtx: updated {n} rows, ledger holds {events} events; expected {rows}");
            }
            // Without clear_refs the high-water mark includes start-up; the
            // 50 ms samples are the fallback figure then.
            let peak = if reset {
                hwm.max(max_rss(&samples))
            } else {
                max_rss(&samples)
            };
            let catch_up = (done - committed).as_secs_f64();
            let rate = rows as f64 / (done - started).as_secs_f64();
            println!(
                "rows {}, rep {rep}: idle RSS {:.1} MB, peak {:.1} MB (VmHWM{}; max of 50 ms samples {:.1} MB) | UPDATE took {:.1} s, walhook done {:.1} s after commit, {}/s overall, cpu {:.1} s",
                grouped(rows as f64),
                mb(idle),
                mb(peak),
                if reset {
                    " after reset"
                } else {
                    " since start"
                },
                mb(max_rss(&samples)),
                (committed - started).as_secs_f64(),
                catch_up,
                grouped(rate),
                cpu,
            );
            peaks.push(mb(peak));
            idles.push(mb(idle));
            rates.push(rate);
            ctx.print_statements(&db).await?;
            drop(db);
            ctx.drop_db(&name).await?;
        }
        summary.push((rows, median(&peaks), median(&idles), median(&rates)));
    }
    for (rows, peak, idle, rate) in &summary {
        println!(
            "median rows {}: peak RSS {peak:.1} MB (idle {idle:.1} MB), {}/s (target < 100 MB: {})",
            grouped(*rows as f64),
            grouped(*rate),
            verdict(*peak < 100.0)
        );
    }
    if summary.len() >= 2 {
        let (small, large) = (&summary[0], &summary[summary.len() - 1]);
        println!(
            "peak at {} rows / peak at {} rows = {:.2} ({}x the rows)",
            grouped(large.0 as f64),
            grouped(small.0 as f64),
            large.1 / small.1,
            large.0 / small.0.max(1)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The receiver: answers at once (or slowly with 503), counts requests, and
// in latency mode records arrival minus the row's `updated_at`.

const MODE_OK: u8 = 0;
const MODE_LATENCY: u8 = 1;
const MODE_SLOW_FAIL: u8 = 2;

#[derive(Default)]
struct Receiver {
    mode: AtomicU8,
    delay_ms: AtomicU64,
    count: AtomicU64,
    target: AtomicU64,
    reached_at: Mutex<Option<Instant>>,
    latencies_ms: Mutex<Vec<f64>>,
}

impl Receiver {
    fn reset(&self, mode: u8, target: u64) {
        self.mode.store(mode, AtomicOrdering::SeqCst);
        self.count.store(0, AtomicOrdering::SeqCst);
        self.target.store(target, AtomicOrdering::SeqCst);
        *self.reached_at.lock().unwrap() = None;
        self.latencies_ms.lock().unwrap().clear();
    }

    fn count(&self) -> u64 {
        self.count.load(AtomicOrdering::SeqCst)
    }

    /// Waits until `target` requests were counted; returns when the last one arrived.
    async fn wait_target(&self, proc: &mut Proc, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = *self.reached_at.lock().unwrap() {
                return Ok(at);
            }
            proc.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "the receiver got {} of {} requests within {timeout:?}",
                    self.count(),
                    self.target.load(AtomicOrdering::SeqCst)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn hook(State(r): State<Arc<Receiver>>, body: Bytes) -> StatusCode {
    match r.mode.load(AtomicOrdering::Relaxed) {
        MODE_SLOW_FAIL => {
            let delay = r.delay_ms.load(AtomicOrdering::Relaxed);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            r.count.fetch_add(1, AtomicOrdering::SeqCst);
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        MODE_LATENCY => {
            let arrived = time::OffsetDateTime::now_utc();
            if let Some(ms) = latency_ms(&body, arrived) {
                r.latencies_ms.lock().unwrap().push(ms);
            }
        }
        _ => {}
    }
    let n = r.count.fetch_add(1, AtomicOrdering::SeqCst) + 1;
    if n == r.target.load(AtomicOrdering::SeqCst) {
        *r.reached_at.lock().unwrap() = Some(Instant::now());
    }
    StatusCode::OK
}

/// Arrival minus the row's `updated_at` (set with `clock_timestamp()`).
fn latency_ms(body: &[u8], arrived: time::OffsetDateTime) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let ts = v.get("after")?.get("updated_at")?.as_str()?;
    let ts =
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    Some((arrived - ts).as_seconds_f64() * 1000.0)
}

async fn start_receiver() -> Result<(Arc<Receiver>, String)> {
    let state = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((state, url))
}

/// The HTTP ceiling: `n` POSTs of a typical event body from `concurrency`
/// tasks with the same client settings as walhook, to the same receiver.
async fn http_baseline(url: &str, n: u64, concurrency: usize) -> Result<Duration> {
    let client = walhook::dispatch::http::build_client()?;
    let body = Bytes::from_static(
        br#"{"before":{},"after":{"id":"lead_000000001","name":"Lead Person 1","email":"lead.person.1@example.com","phone":"+1-555-0001","company":"Company 1 Ltd","stage":"contacted","score":1,"amount":0.37,"tags":["tag1","region1"],"updated_at":"2025-02-21T08:33:28.148123Z"},"diff":{"id":"lead_000000001","name":"Lead Person 1","email":"lead.person.1@example.com","phone":"+1-555-0001","company":"Company 1 Ltd","stage":"contacted","score":1,"amount":0.37,"tags":["tag1","region1"],"updated_at":"2025-02-21T08:33:28.148123Z"}}"#,
    );
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, body, next) =
            (client.clone(), url.to_string(), body.clone(), next.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, AtomicOrdering::Relaxed) < n {
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(
                        "x-superleap-event-id",
                        "bench:lead:1:lead_1:lead.create:abcdefgh",
                    )
                    .header("x-superleap-event", "lead.create")
                    .header("x-superleap-signature", "sha256=0000")
                    .body(body.clone())
                    .send()
                    .await?;
                resp.error_for_status()?.bytes().await?;
            }
            Ok::<(), reqwest::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(started.elapsed())
}

// ---------------------------------------------------------------------------
// dispatch

async fn dispatch(ctx: &Ctx<'_>, reps: usize, changes: u64, concurrency: usize) -> Result<()> {
    let (recv, url) = start_receiver().await?;
    println!(
        "dispatch: {} inserts (transactions of 1,000 rows) committed while `walhook run --no-admin` (capture + dispatch, default [delivery]{}) runs; one endpoint, a receiver on 127.0.0.1 answering 200 at once; time from the first commit to the last 2xx; {reps} repetitions",
        grouped(changes as f64),
        if ctx.delivery_extra.is_empty() {
            String::new()
        } else {
            format!(" + {}", ctx.delivery_extra.join(", "))
        }
    );
    println!(
        "  baseline: the same number of POSTs from {concurrency} concurrent tasks (walhook's HTTP client settings) to the same receiver, no database"
    );
    let mut rates = Vec::new();
    let mut base_rates = Vec::new();
    let mut ratios = Vec::new();
    for rep in 1..=reps {
        recv.reset(MODE_OK, changes);
        let base = http_baseline(&url, changes, concurrency).await?;
        let base_rate = changes as f64 / base.as_secs_f64();

        let name = format!("dispatch_{rep}");
        let (db_url, mut db) = ctx.fresh_db(&name).await?;
        let cfg = ctx.config(&db_url, "wh", Some(&url))?;
        ctx.setup(&cfg).await?;
        recv.reset(MODE_OK, changes);
        let mut proc = ctx.spawn(&cfg, &["--no-admin"], &format!("{rep}")).await?;
        wait_ready(&db, "wh", true, &mut proc).await?;
        let sampler = RssSampler::start(proc.pid);
        let cpu0 = proc.cpu_seconds().unwrap_or(0.0);
        let (pg0, own0) = (cluster_cpu(ctx), own_cpu(ctx));
        let parts0 = walhook_backends_cpu(ctx, &db).await?;
        let started = Instant::now();
        insert_rows(&mut db, changes, 1_000).await?;
        let committed = started.elapsed().as_secs_f64();
        let done = recv
            .wait_target(&mut proc, Duration::from_secs(900))
            .await?;
        let secs = (done - started).as_secs_f64();
        let cpu = proc.cpu_seconds().unwrap_or(f64::NAN) - cpu0;
        let (pg, own) = (cluster_cpu(ctx) - pg0, own_cpu(ctx) - own0);
        let parts = walhook_backends_cpu(ctx, &db).await?;
        let (ws, cw, dp) = (parts.0 - parts0.0, parts.1 - parts0.1, parts.2 - parts0.2);
        let peak = max_rss(&sampler.finish().await);
        proc.stop().await?;
        let succeeded = count(
            &db,
            "SELECT count(*) FROM wh.deliveries WHERE status = 'succeeded'",
        )
        .await?;
        let rate = changes as f64 / secs;
        println!(
            "rep {rep}: baseline {}/s | walhook {:.2} s = {}/s ({:.0}% of baseline; commits done after {committed:.1} s; cpu s: walhook {cpu:.1}, postgres {pg:.1} (walsender {ws:.1}, capture writer {cw:.1}, dispatch {dp:.1}), receiver+workload {own:.1}; peak RSS {:.1} MB; {} requests received, {succeeded} deliveries succeeded)",
            grouped(base_rate),
            secs,
            grouped(rate),
            100.0 * rate / base_rate,
            mb(peak),
            recv.count(),
        );
        rates.push(rate);
        base_rates.push(base_rate);
        ratios.push(rate / base_rate);
        ctx.print_statements(&db).await?;
        drop(db);
        ctx.drop_db(&name).await?;
    }
    let rate = median(&rates);
    println!(
        "median: walhook {}/s end to end, baseline {}/s, walhook/baseline {:.0}% (target >= 10,000/s: {})",
        grouped(rate),
        grouped(median(&base_rates)),
        100.0 * median(&ratios),
        verdict(rate >= 10_000.0)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// latency

async fn latency(ctx: &Ctx<'_>, reps: usize, rate: u64, tick_ms: u64, seconds: u64) -> Result<()> {
    let per_tick = (rate * tick_ms / 1000).max(1);
    let ticks = seconds * 1000 / tick_ms;
    let total = per_tick * ticks;
    let (recv, url) = start_receiver().await?;
    println!(
        "latency: {per_tick} inserts every {tick_ms} ms ({rate}/s) for {seconds} s = {} changes while `walhook run --no-admin` runs; each row's updated_at = clock_timestamp(); the receiver records arrival - updated_at; {reps} repetitions",
        grouped(total as f64)
    );
    let mut p50s = Vec::new();
    let mut p90s = Vec::new();
    let mut p99s = Vec::new();
    let mut maxes = Vec::new();
    for rep in 1..=reps {
        let name = format!("latency_{rep}");
        let (db_url, mut db) = ctx.fresh_db(&name).await?;
        let cfg = ctx.config(&db_url, "wh", Some(&url))?;
        ctx.setup(&cfg).await?;
        recv.reset(MODE_LATENCY, total);
        let mut proc = ctx.spawn(&cfg, &["--no-admin"], &format!("{rep}")).await?;
        wait_ready(&db, "wh", true, &mut proc).await?;
        let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
        let started = Instant::now();
        let mut next = 1;
        let mut late_ticks = 0;
        for _ in 0..ticks {
            tick.tick().await;
            let t0 = Instant::now();
            run_op(&mut db, &Op::Insert(next, next + per_tick - 1)).await?;
            if t0.elapsed() > Duration::from_millis(tick_ms) {
                late_ticks += 1;
            }
            next += per_tick;
        }
        let load_secs = started.elapsed().as_secs_f64();
        recv.wait_target(&mut proc, Duration::from_secs(120))
            .await?;
        proc.stop().await?;
        let mut lat = recv.latencies_ms.lock().unwrap().clone();
        if lat.len() as u64 != total {
            bail!(
                "latency: {} of {total} requests carried a readable updated_at",
                lat.len()
            );
        }
        lat.sort_by(f64::total_cmp);
        let (p50, p90, p99, max) = (
            percentile(&lat, 50.0),
            percentile(&lat, 90.0),
            percentile(&lat, 99.0),
            lat[lat.len() - 1],
        );
        println!(
            "rep {rep}: p50 {p50:.1} ms, p90 {p90:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({} samples; load lasted {load_secs:.1} s, {late_ticks} inserts took longer than a tick)",
            lat.len()
        );
        p50s.push(p50);
        p90s.push(p90);
        p99s.push(p99);
        maxes.push(max);
        ctx.print_statements(&db).await?;
        drop(db);
        ctx.drop_db(&name).await?;
    }
    let p99 = median(&p99s);
    println!(
        "median: p50 {:.1} ms, p90 {:.1} ms, p99 {p99:.1} ms, max {:.1} ms (target p99 <= 50 ms: {})",
        median(&p50s),
        median(&p90s),
        median(&maxes),
        verdict(p99 <= 50.0)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// backlog

async fn backlog(ctx: &Ctx<'_>, reps: usize, rows: u64, seconds: u64, delay_ms: u64) -> Result<()> {
    let (recv, url) = start_receiver().await?;
    recv.delay_ms.store(delay_ms, AtomicOrdering::SeqCst);
    println!(
        "backlog: {} pending deliveries, then `walhook run --no-capture --no-admin` (dispatch only, default [delivery]) against a receiver that waits {delay_ms} ms and answers 503; VmRSS sampled every 50 ms for {seconds} s; {reps} repetitions on the same backlog (reset to pending in between)",
        grouped(rows as f64)
    );
    let name = "backlog";
    let (db_url, mut db) = ctx.fresh_db(name).await?;
    let cfg = ctx.config(&db_url, "wh", Some(&url))?;
    ctx.setup(&cfg).await?;
    // Build the backlog with capture only: nothing is sent.
    let mut proc = ctx
        .spawn(&cfg, &["--no-dispatch", "--no-admin"], "fill")
        .await?;
    let started = Instant::now();
    let end = insert_rows(&mut db, rows, 10_000).await?;
    let committed = started.elapsed().as_secs_f64();
    let done = wait_progress(&db, "wh", &end, &mut proc, Duration::from_secs(3600)).await?;
    let fill_peak = proc.status_bytes("VmHWM").unwrap_or(0);
    proc.stop().await?;
    let pending = count(
        &db,
        "SELECT count(*) FROM wh.deliveries WHERE status = 'pending'",
    )
    .await?;
    if pending != rows as i64 {
        bail!("backlog: {pending} pending deliveries, expected {rows}");
    }
    println!(
        "fill: {} rows committed in {committed:.1} s, captured by {:.1} s ({}/s), capture peak RSS {:.1} MB",
        grouped(rows as f64),
        (done - started).as_secs_f64(),
        grouped(rows as f64 / (done - started).as_secs_f64()),
        mb(fill_peak)
    );
    let mut peaks = Vec::new();
    for rep in 1..=reps {
        if rep > 1 {
            db.batch_execute(
                "UPDATE wh.deliveries
                    SET status = 'pending', attempts = 0, cycle_attempts = 0,
                        next_attempt_at = now(), cycle_started_at = now(),
                        lease_owner = NULL, lease_until = NULL,
                        last_status_code = NULL, last_error = NULL
                  WHERE status <> 'pending' OR lease_owner IS NOT NULL",
            )
            .await?;
        }
        recv.reset(MODE_SLOW_FAIL, u64::MAX);
        let mut proc = ctx
            .spawn(
                &cfg,
                &["--no-capture", "--no-admin"],
                &format!("drain-{rep}"),
            )
            .await?;
        let sampler = RssSampler::start(proc.pid);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        proc.check_alive()?;
        let samples = sampler.finish().await;
        let hwm = proc.status_bytes("VmHWM").unwrap_or(0);
        let cpu = proc.cpu_seconds().unwrap_or(f64::NAN);
        let attempts = recv.count();
        proc.stop().await?;
        let peak = max_rss(&samples);
        let window = Duration::from_secs(seconds);
        println!(
            "rep {rep}: peak VmRSS {:.1} MB (VmHWM {:.1} MB); VmRSS at {}s/{}s/{}s: {:.1}/{:.1}/{:.1} MB; {} attempts answered in {seconds} s ({}/s); cpu {cpu:.1} s",
            mb(peak),
            mb(hwm),
            seconds / 4,
            seconds / 2,
            seconds,
            mb(rss_at(&samples, window / 4)),
            mb(rss_at(&samples, window / 2)),
            mb(rss_at(&samples, window)),
            grouped(attempts as f64),
            grouped(attempts as f64 / seconds as f64),
        );
        peaks.push(mb(hwm.max(peak)));
    }
    ctx.print_statements(&db).await?;
    drop(db);
    ctx.drop_db(name).await?;
    let peak = median(&peaks);
    println!(
        "median peak RSS {peak:.1} MB with {} deliveries pending (target < 100 MB: {})",
        grouped(rows as f64),
        verdict(peak < 100.0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crm_workload_changes_each_row_as_planned() {
        let ops = workload(Mix::Crm, 200, 10).unwrap();
        assert_eq!(ops.len(), 20);
        let mut live = std::collections::BTreeSet::new();
        let mut changed = 0;
        for op in &ops {
            match op {
                Op::Insert(a, b) => {
                    for n in *a..=*b {
                        assert!(live.insert(lead_id(n)), "inserted twice: {n}");
                        changed += 1;
                    }
                }
                Op::Update(ids) => {
                    for id in ids {
                        assert!(live.contains(id), "update of a missing row {id}");
                        changed += 1;
                    }
                }
                Op::Delete(ids) => {
                    for id in ids {
                        assert!(live.remove(id), "delete of a missing row {id}");
                        changed += 1;
                    }
                }
            }
        }
        assert_eq!(changed, 200);
        assert_eq!(live.len(), 120 - 20);
    }

    #[test]
    fn figures() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(grouped(1234567.4), "1,234,567");
        assert_eq!(grouped(999.0), "999");
    }

    #[test]
    fn latency_is_read_from_the_after_image() {
        let body = br#"{"before":{},"after":{"id":"x","updated_at":"2025-02-21T08:33:28.148Z"},"diff":{}}"#;
        let arrived = time::macros::datetime!(2025-02-21 08:33:28.160 UTC);
        let ms = latency_ms(body, arrived).unwrap();
        assert!((ms - 12.0).abs() < 1e-6, "{ms}");
    }
}
