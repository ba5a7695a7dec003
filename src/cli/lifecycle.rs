//! The commands that start, set up, check and stop walhook, and the signal
//! handling of the long-running ones.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use walhook::admin::dbs::{self, Dbs};
use walhook::admin::{check, render};
use walhook::config::Config;
use walhook::source::setup;

use super::output::print_out;

pub async fn demo() -> Result<ExitCode> {
    use walhook::devtools::{demo, listen};
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone(), None)?;
    match demo::run(listen::Printer::stdout(), shutdown).await? {
        demo::Outcome::Completed(_) => Ok(ExitCode::SUCCESS),
        // The shell convention for "ended by SIGINT".
        demo::Outcome::Interrupted => Ok(ExitCode::from(130)),
    }
}

pub async fn listen(opts: walhook::devtools::listen::ListenOptions) -> Result<ExitCode> {
    use walhook::devtools::listen;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone(), None)?;
    listen::run(opts, listen::Printer::stdout(), shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn setup(cfg: &Config, print_sql: bool, role: Option<&str>) -> Result<ExitCode> {
    if print_sql {
        for stmt in setup::plan_sql(cfg, role) {
            println!("{stmt}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let dbs = Dbs::connect(cfg, "walhook setup").await?;
    let steps = setup::run(dbs.source(), dbs.ledger(), cfg).await?;
    let changed = steps.iter().filter(|s| s.changed).count();
    for s in &steps {
        println!("{}", s.render());
    }
    if let Some(why) = setup::incomplete(&steps) {
        bail!(why);
    }
    if changed == 0 {
        println!("nothing to change: walhook is already set up");
    } else {
        println!("setup done: {changed} change(s)");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(cfg: Config, roles: walhook::Roles) -> Result<ExitCode> {
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone(), Some(STOP_DEADLINE))?;
    walhook::run(Arc::new(cfg), roles, shutdown).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

pub async fn check(path: &std::path::Path, json: bool) -> Result<ExitCode> {
    let report = match Config::load(path) {
        Ok(cfg) => check::run(&cfg, &path.display().to_string()).await,
        Err(e) => check::CheckReport::config_error(&e.to_string()),
    };
    print_out(json, &report, render::checks)?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn teardown(cfg: &Config, drop_ledger: bool, yes: bool) -> Result<ExitCode> {
    if !yes {
        let ledger = if drop_ledger {
            " and the whole ledger"
        } else {
            ""
        };
        bail!(
            "teardown drops the replication slot {} and publication {}{ledger}; run again with --yes to confirm",
            cfg.source.slot,
            cfg.source.publication,
        );
    }
    use walhook::source::teardown;
    // The slot first: it is what makes Postgres retain WAL.
    let source = dbs::connect_source(cfg, "walhook teardown").await?;
    for line in teardown::run(&source, cfg).await? {
        println!("{line}");
    }
    let schema = &cfg.ledger.schema;
    if drop_ledger {
        let ledger = dbs::connect_ledger(cfg, "walhook teardown").await?;
        println!("{}", teardown::drop_ledger(&ledger, schema).await?);
    } else {
        println!("= ledger schema {schema} kept (use --drop-ledger to drop it)");
    }
    Ok(ExitCode::SUCCESS)
}

/// How long a graceful stop may take before the process exits anyway (a
/// frozen database must not keep walhook from stopping). Nothing is lost: the
/// slot is acknowledged only past what is resolved.
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_millis(4_500);

/// The first SIGTERM or SIGINT starts a graceful stop (for `run`, bounded by
/// `deadline`); a second one exits at once.
fn spawn_signal_handler(
    shutdown: CancellationToken,
    deadline: Option<std::time::Duration>,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping gracefully"),
            _ = int.recv() => tracing::info!("SIGINT: stopping gracefully"),
        }
        shutdown.cancel();
        if let Some(deadline) = deadline {
            std::thread::spawn(move || {
                std::thread::sleep(deadline);
                eprintln!(
                    "walhook: the graceful stop did not finish within {deadline:?} (is the database answering?); exiting. Nothing is lost: what was not acknowledged is sent again after the restart."
                );
                std::process::exit(1);
            });
        }
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("walhook: second signal: exiting now");
        std::process::exit(130);
    });
    Ok(())
}
