//! `walhook run` as a child process whose log is read line by line, for
//! tests that judge what an operator would see: log lines, `/readyz`,
//! `/metrics`, how and how fast the process ends.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::lines::Lines;

/// A running `walhook run`; killed (SIGKILL) when dropped.
pub struct Daemon {
    pub child: Child,
    pub lines: Lines,
}

impl Daemon {
    /// `walhook run <args> --config <config>` with `RUST_LOG` set to
    /// `rust_log`, or unset (walhook's default levels) when `None`.
    pub fn spawn(config: &Path, args: &[&str], rust_log: Option<&str>) -> Daemon {
        let mut cmd = Command::new(super::app::bin());
        cmd.arg("run")
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let mut child = cmd.spawn().expect("spawn walhook run");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Lines::from_readers(vec![Box::new(stdout), Box::new(stderr)]);
        Daemon { child, lines }
    }

    /// The first log line (from now on) that satisfies `pred`; panics with
    /// everything logged so far when none comes within `timeout`.
    pub fn wait_log(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let lines = &mut self.lines;
        match tokio::task::block_in_place(|| lines.read_until(timeout, pred)) {
            Ok(line) => line,
            Err(end) => panic!(
                "no log line {what} within {timeout:?} ({end:?}); the log:\n{}",
                self.lines.output()
            ),
        }
    }

    /// Reads the log for `window` (a measurement period, not a wait for a
    /// condition) and returns every line seen so far.
    pub fn log_for(&mut self, window: Duration) -> String {
        let lines = &mut self.lines;
        let _ = tokio::task::block_in_place(|| lines.read_until(window, |_| false));
        self.lines.output()
    }

    /// Waits up to `timeout` for the process to end: its status and how long
    /// it took, or `None` when it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let started = Instant::now();
        let child = &mut self.child;
        tokio::task::block_in_place(|| {
            while started.elapsed() < timeout {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    return Some((status, started.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        })
    }

    /// Sends `signal` to the process, then waits up to `timeout` for it to
    /// end; panics with its log when it does not.
    pub fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> (ExitStatus, Duration) {
        super::send_signal(self.child.id(), signal);
        match self.wait_exit(timeout) {
            Some(done) => done,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.lines.drain(Duration::from_millis(200));
                panic!(
                    "walhook did not stop within {timeout:?} of SIG{signal}; the log:\n{}",
                    self.lines.output()
                )
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
