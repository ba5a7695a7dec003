//! A walhook child process and what `/proc` tells about processes: CPU
//! seconds, resident memory, sampled over time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Clock ticks per second, the unit of `/proc/PID/stat` CPU times.
pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A walhook child process.
pub struct Proc {
    pub child: Child,
    pub pid: u32,
    pub log: PathBuf,
    pub clk_tck: f64,
}

impl Proc {
    /// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
    pub fn status_bytes(&self, key: &str) -> Option<u64> {
        read_status_bytes(self.pid, key)
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid, self.clk_tck).unwrap_or(f64::NAN)
    }

    /// Resets VmHWM to the current RSS (Linux `clear_refs` value 5).
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    /// Fails with the end of the log when the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
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
    pub async fn stop(mut self) -> Result<()> {
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

/// The fields of `/proc/PID/stat` after the parenthesised name: [0] state,
/// [1] ppid, [11] utime, [12] stime, [13] cutime, [14] cstime.
fn stat_fields(pid: u32) -> Option<Vec<f64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0.0))
            .collect(),
    )
}

/// User + system CPU seconds of any process (walhook, a Postgres backend).
pub fn cpu_seconds(pid: u32, clk_tck: f64) -> Option<f64> {
    let f = stat_fields(pid)?;
    Some((f.get(11)? + f.get(12)?) / clk_tck)
}

/// CPU seconds used so far by the process tree under `root` one level deep:
/// `root`, its live children, and (through its cutime/cstime) every child
/// that has exited. For the postmaster this is the whole cluster.
pub fn tree_cpu(root: u32, clk_tck: f64) -> f64 {
    let Some(own) = stat_fields(root) else {
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
        if let Some(f) = stat_fields(pid)
            && f.get(1).copied() == Some(f64::from(root))
        {
            ticks += f[11] + f[12];
        }
    }
    ticks / clk_tck
}

/// CPU seconds of this process (the receiver, the workload client).
pub fn own_cpu(clk_tck: f64) -> f64 {
    cpu_seconds(std::process::id(), clk_tck).unwrap_or(f64::NAN)
}

pub fn read_status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    let kb: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Samples a process's VmRSS every 50 ms until stopped.
pub struct RssSampler {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Vec<(Duration, u64)>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
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

    pub async fn finish(self) -> Samples {
        self.stop.cancel();
        Samples(self.handle.await.unwrap_or_default())
    }
}

/// VmRSS samples: (time since sampling started, bytes).
pub struct Samples(pub Vec<(Duration, u64)>);

impl Samples {
    pub fn max(&self) -> u64 {
        self.0.iter().map(|s| s.1).max().unwrap_or(0)
    }

    /// The median sample: what RSS stays at while the work goes on.
    pub fn median(&self) -> u64 {
        let mut v: Vec<u64> = self.0.iter().map(|s| s.1).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    }

    /// The last sample taken at or before `at`.
    pub fn at(&self, at: Duration) -> u64 {
        self.0
            .iter()
            .take_while(|s| s.0 <= at)
            .last()
            .map_or(0, |s| s.1)
    }
}
