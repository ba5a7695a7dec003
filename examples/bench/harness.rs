//! The harness: the throwaway cluster, databases with the workload table,
//! walhook configs (ledger in the source database or in a database of its
//! own), `walhook setup`, the walhook child processes, and waiting for them.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;
use tokio_postgres::{Client, NoTls};
use walhook::devtools::embedded::TempCluster;

use crate::procfs::{Proc, cpu_seconds};
use crate::receiver::SECRET;
use crate::workload::LEADS_DDL;

/// Where walhook's ledger lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The default: a schema in the source database.
    Source,
    /// `[ledger] url` names another database of the same cluster.
    Separate,
}

impl Placement {
    pub fn label(self) -> &'static str {
        match self {
            Placement::Source => "ledger in the source db",
            Placement::Separate => "ledger in a separate db",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Placement::Source => "src",
            Placement::Separate => "sep",
        }
    }
}

/// What the benchmarks share: the cluster, the walhook binary, the work
/// directory and the command-line options that apply to every run.
pub struct Ctx<'a> {
    pub cluster: &'a TempCluster,
    pub bin: PathBuf,
    pub dir: PathBuf,
    /// A connection to the `postgres` database, for cluster-wide views.
    pub admin: Client,
    pub delivery_extra: Vec<String>,
    pub statements: bool,
    pub after_setup: Option<String>,
    pub clk_tck: f64,
    pub placements: Vec<Placement>,
}

/// A source database with the workload table, and the database that holds
/// separate ledgers (when one is asked for).
pub struct Target {
    pub name: String,
    pub url: String,
    pub db: Client,
    pub ledger_db: Option<(String, String)>,
}

/// One walhook config against a [`Target`]. Its slot and its ledger schema
/// are both named `slot`.
pub struct Instance {
    pub slot: String,
    pub config: PathBuf,
    /// The database that holds the ledger, and its URL.
    pub ledger_db: String,
    pub ledger_url: String,
}

/// How a config differs from the defaults.
#[derive(Default)]
pub struct Opts<'a> {
    /// One endpoint with this URL; `None`: no endpoint at all.
    pub endpoint: Option<&'a str>,
    /// The endpoint's per-attempt timeout (default 10s).
    pub timeout: Option<&'a str>,
    /// `[source] status_interval`: how soon the slot shows what walhook
    /// acknowledged. The benchmarks that wait on the slot set it short.
    pub status_interval: Option<&'a str>,
}

impl Instance {
    /// A new connection to the ledger's database.
    pub async fn ledger(&self) -> Result<Client> {
        connect(&self.ledger_url).await
    }

    /// Deliveries that succeeded: narrow rows of the fast path plus
    /// ledger deliveries that succeeded.
    pub async fn succeeded(&self, ledger: &Client) -> Result<(i64, i64)> {
        let s = &self.slot;
        let row = ledger
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {s}.delivered),
                            (SELECT count(*) FROM {s}.deliveries WHERE status = 'succeeded')"
                ),
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Waits until `n` deliveries are recorded as succeeded (see
    /// [`Instance::succeeded`]); returns how many and when.
    pub async fn wait_recorded(&self, n: u64) -> Result<(i64, Instant)> {
        let ledger = self.ledger().await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (fast, ledgered) = self.succeeded(&ledger).await?;
            if fast + ledgered >= n as i64 {
                return Ok((fast + ledgered, Instant::now()));
            }
            if Instant::now() > deadline {
                bail!("only {fast} + {ledgered} of {n} deliveries were recorded within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The commit time (from the WAL's commit record, as walhook recorded
    /// it) of every delivered event, in microseconds since the Unix epoch.
    pub async fn commit_times(&self) -> Result<HashMap<String, i64>> {
        let s = &self.slot;
        let rows = self
            .ledger()
            .await?
            .query(
                &format!(
                    "SELECT event_id, (extract(epoch FROM commit_time) * 1000000)::int8
                       FROM {s}.delivered
                     UNION ALL
                     SELECT e.event_id, (extract(epoch FROM e.commit_time) * 1000000)::int8
                       FROM {s}.deliveries d JOIN {s}.events e ON e.seq = d.event_seq"
                ),
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

pub async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

pub async fn count(db: &Client, sql: &str) -> Result<i64> {
    Ok(db.query_one(sql, &[]).await?.get(0))
}

impl<'a> Ctx<'a> {
    /// A fresh source database `name` with the workload table, and with
    /// `separate`, a fresh `{name}_ledger` database for separate ledgers.
    pub async fn target(&self, name: &str, separate: bool) -> Result<Target> {
        self.drop_db(name).await?;
        self.admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = self.cluster.url(name);
        let db = connect(&url).await?;
        db.batch_execute(LEADS_DDL).await?;
        let ledger_db = if separate {
            let l = format!("{name}_ledger");
            self.drop_db(&l).await?;
            self.admin
                .batch_execute(&format!("CREATE DATABASE {l}"))
                .await?;
            let url = self.cluster.url(&l);
            Some((l, url))
        } else {
            None
        };
        Ok(Target {
            name: name.to_string(),
            url,
            db,
            ledger_db,
        })
    }

    /// Drops the target's databases (and their slots).
    pub async fn drop_target(&self, t: Target) -> Result<()> {
        drop(t.db);
        self.drop_db(&t.name).await?;
        if let Some((l, _)) = &t.ledger_db {
            self.drop_db(l).await?;
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

    /// Writes a config for `slot` against `t` (the `leads` table as `lead`,
    /// admin HTTP off, `ordering = "per-record"`, `max_in_flight = 256`,
    /// then the `--delivery` lines) and runs `walhook setup`.
    pub async fn instance(
        &self,
        t: &Target,
        slot: &str,
        placement: Placement,
        opts: Opts<'_>,
    ) -> Result<Instance> {
        let (ledger_db, ledger_url) = match placement {
            Placement::Source => (t.name.clone(), t.url.clone()),
            Placement::Separate => t
                .ledger_db
                .clone()
                .context("the target has no separate ledger database")?,
        };
        let inst = Instance {
            slot: slot.to_string(),
            config: self.dir.join(format!("{slot}.toml")),
            ledger_db,
            ledger_url,
        };
        let text = config_text(&t.url, &inst, placement, &opts, &self.delivery_extra);
        std::fs::write(&inst.config, text)?;
        self.setup(&inst).await?;
        Ok(inst)
    }

    /// `walhook setup` (ledger schema, publication, slot, replica identity),
    /// then `--after-setup` on the ledger's database.
    async fn setup(&self, inst: &Instance) -> Result<()> {
        let out = Command::new(&self.bin)
            .arg("--config")
            .arg(&inst.config)
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
        let ledger = inst.ledger().await?;
        // `walhook setup` of this version creates the ledger's tables in the
        // source database only; a separate ledger gets them here (the DDL is
        // idempotent, so this is a no-op once setup does it itself).
        for stmt in walhook::ledger::schema::ddl(&inst.slot) {
            ledger.batch_execute(&stmt).await?;
        }
        if let Some(sql) = &self.after_setup {
            ledger
                .batch_execute(&sql.replace("{schema}", &inst.slot))
                .await
                .context("--after-setup")?;
        }
        Ok(())
    }

    /// Creates a pgoutput slot for `pg_recvlogical` in the target's database.
    pub async fn baseline_slot(&self, t: &Target, slot: &str) -> Result<()> {
        t.db.execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await?;
        Ok(())
    }

    /// `walhook run` with `args`; its output goes to a log in the work
    /// directory.
    pub async fn spawn(&self, inst: &Instance, args: &[&str], label: &str) -> Result<Proc> {
        let log = self.dir.join(format!("{}-{label}.log", inst.slot));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(&self.bin)
            .arg("--config")
            .arg(&inst.config)
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

    /// Waits until walhook streams from its slot and, with `dispatch`, its
    /// ledger dispatcher is connected.
    pub async fn wait_ready(&self, inst: &Instance, dispatch: bool, proc: &mut Proc) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let row = self
                .admin
                .query_one(
                    "SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false),
                            EXISTS (SELECT 1 FROM pg_stat_activity
                                     WHERE application_name = 'walhook dispatch' AND datname = $2)",
                    &[&inst.slot, &inst.ledger_db],
                )
                .await?;
            if row.get::<_, bool>(0) && (!dispatch || row.get::<_, bool>(1)) {
                return Ok(());
            }
            proc.check_alive()?;
            if Instant::now() > deadline {
                bail!("walhook did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `slot` is confirmed past `lsn`: walhook acknowledged the
    /// transaction that contains it, so every delivery of it (and of every
    /// transaction before) is resolved: recorded as delivered or durably in
    /// the ledger.
    pub async fn wait_confirmed(
        &self,
        slot: &str,
        lsn: &str,
        proc: &mut Proc,
        timeout: Duration,
    ) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let past: bool = self
                .admin
                .query_one(
                    "SELECT coalesce((SELECT confirmed_flush_lsn > $2::text::pg_lsn
                                        FROM pg_replication_slots WHERE slot_name = $1), false)",
                    &[&slot, &lsn],
                )
                .await?
                .get(0);
            if past {
                return Ok(Instant::now());
            }
            proc.check_alive()?;
            if Instant::now() > deadline {
                bail!("slot {slot} was not confirmed past {lsn} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// CPU seconds so far of every server process that serves walhook
    /// (its walsender and its connections), by pid.
    pub async fn backends(&self) -> Result<Backends> {
        let rows = self
            .admin
            .query(
                "SELECT pid, CASE WHEN backend_type = 'walsender' THEN 'walsender'
                                  ELSE regexp_replace(application_name, '^walhook ', '') END
                   FROM pg_stat_activity WHERE application_name LIKE 'walhook%'",
                &[],
            )
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            let pid: i32 = r.get(0);
            if let Some(cpu) = cpu_seconds(pid as u32, self.clk_tck) {
                out.insert(pid, (r.get::<_, String>(1), cpu));
            }
        }
        Ok(Backends(out))
    }

    /// CPU seconds of the whole cluster so far.
    pub fn cluster_cpu(&self) -> f64 {
        self.cluster
            .postmaster_pid()
            .map_or(f64::NAN, |pm| crate::procfs::tree_cpu(pm, self.clk_tck))
    }

    /// With `--statements`: resets pg_stat_statements.
    pub async fn reset_statements(&self) -> Result<()> {
        if self.statements {
            self.admin
                .batch_execute("SELECT pg_stat_statements_reset()")
                .await?;
        }
        Ok(())
    }

    /// With `--statements`: the statements that took the most time since the
    /// last reset, in any database.
    pub async fn print_statements(&self) -> Result<()> {
        if !self.statements {
            return Ok(());
        }
        let rows = self
            .admin
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
}

/// CPU seconds of walhook's server processes at one moment.
pub struct Backends(BTreeMap<i32, (String, f64)>);

impl Backends {
    /// CPU used since `earlier`, per kind of connection, largest first;
    /// connections opened since count in full.
    pub fn since(&self, earlier: &Backends) -> Vec<(String, f64)> {
        let mut by_name: BTreeMap<&str, f64> = BTreeMap::new();
        for (pid, (name, cpu)) in &self.0 {
            let before = earlier.0.get(pid).map_or(0.0, |(_, c)| *c);
            *by_name.entry(name).or_default() += cpu - before;
        }
        let mut out: Vec<(String, f64)> = by_name
            .into_iter()
            .filter(|(_, cpu)| *cpu >= 0.05)
            .map(|(n, c)| (n.to_string(), c))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }
}

/// "walsender 1.2, stream history 0.8".
pub fn backends_text(parts: &[(String, f64)]) -> String {
    let text: Vec<String> = parts.iter().map(|(n, c)| format!("{n} {c:.1}")).collect();
    text.join(", ")
}

/// The TOML of one config. `--delivery` lines come last and replace the
/// benchmark's own keys of the same name.
fn config_text(
    url: &str,
    inst: &Instance,
    placement: Placement,
    opts: &Opts<'_>,
    delivery_extra: &[String],
) -> String {
    let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    let overridden: Vec<String> = delivery_extra.iter().map(|l| key(l)).collect();
    let mut delivery: Vec<String> = ["ordering = \"per-record\"", "max_in_flight = 256"]
        .iter()
        .filter(|l| !overridden.contains(&key(l)))
        .map(|l| l.to_string())
        .collect();
    delivery.extend(delivery_extra.iter().cloned());
    let status_interval = opts
        .status_interval
        .map(|s| format!("status_interval = \"{s}\"\n"))
        .unwrap_or_default();
    let ledger_url = match placement {
        Placement::Source => String::new(),
        Placement::Separate => format!("url = \"{}\"\n", inst.ledger_url),
    };
    let mut text = format!(
        r#"[source]
url = "{url}"
name = "bench"
slot = "{slot}"
publication = "walhook"
connect_timeout = "10s"
{status_interval}
[ledger]
schema = "{slot}"
{ledger_url}
[[objects]]
table = "public.leads"
slug = "lead"

[admin]
listen = ""

[delivery]
{delivery}
"#,
        slot = inst.slot,
        delivery = delivery.join("\n"),
    );
    if let Some(ep) = opts.endpoint {
        text.push_str(&format!(
            r#"
[[endpoints]]
id = "recv"
url = "{ep}"
secret = "{SECRET}"
timeout = "{timeout}"
"#,
            timeout = opts.timeout.unwrap_or("10s"),
        ));
    }
    text
}

/// Runs `pg_recvlogical` on `slot` (pgoutput, proto 1, publication
/// `walhook`) to /dev/null until `end`; returns its wall time. Checks that
/// it went past `before_end` (the second-last transaction).
pub async fn recvlogical(
    ctx: &Ctx<'_>,
    t: &Target,
    slot: &str,
    end: &str,
    before_end: &str,
) -> Result<f64> {
    let program = ctx.cluster.bin_dir().join("pg_recvlogical");
    let port = ctx.cluster.port().to_string();
    let started = Instant::now();
    let out = Command::new(&program)
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d"])
        .arg(&t.name)
        .args(["--slot", slot, "--start", "--no-loop"])
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
    let past: bool = t
        .db
        .query_one(
            "SELECT confirmed_flush_lsn > $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot, &before_end],
        )
        .await?
        .get(0);
    if !past {
        bail!("pg_recvlogical stopped before the end of the workload");
    }
    Ok(secs)
}
