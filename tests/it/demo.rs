//! `walhook demo` end to end: the real binary, run to completion and
//! interrupted with SIGINT midway. Both must leave no cluster behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use crate::common::lines::{Lines, LinesEnd};
use crate::common::{process_exists, send_signal};

/// The demo promises "well under a minute"; this leaves room for a slow machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A running `walhook demo`: its stdout line by line, and its exit status
/// once it has ended.
struct Demo {
    pid: u32,
    lines: Lines,
    exited: Receiver<ExitStatus>,
}

impl Demo {
    fn spawn() -> Demo {
        let mut child: Child = Command::new(env!("CARGO_BIN_EXE_walhook"))
            .arg("demo")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn walhook demo");
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        let lines = Lines::from_readers(vec![Box::new(stdout)]);
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        Demo { pid, lines, exited }
    }

    /// Read lines until one satisfies `pred`; panics with the output so far
    /// when the deadline passes or the output ends first.
    fn wait_for_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        match self.lines.read_until(RUN_TIMEOUT, pred) {
            Ok(line) => line,
            Err(LinesEnd::Timeout) => {
                self.kill();
                panic!("no line {what} within {RUN_TIMEOUT:?}:\n{}", self.output());
            }
            Err(LinesEnd::Closed) => panic!("output ended without {what}:\n{}", self.output()),
        }
    }

    /// Wait for the process to exit (killing it after the deadline), then
    /// collect the rest of its output.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let status = match self.exited.recv_timeout(timeout) {
            Ok(status) => status,
            Err(_) => {
                self.kill();
                panic!(
                    "walhook demo did not exit within {timeout:?}:\n{}",
                    self.output()
                );
            }
        };
        // The pipe closes once the process is gone.
        self.lines.drain(Duration::from_secs(10));
        status
    }

    fn kill(&self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
    }

    fn output(&self) -> String {
        self.lines.output()
    }
}

/// The cluster's directory and postmaster pid, from the demo's
/// `PostgreSQL running in DIR on 127.0.0.1:PORT (pid N)` line.
fn cluster_of(line: &str) -> (PathBuf, u32) {
    let rest = line
        .strip_prefix("PostgreSQL running in ")
        .unwrap_or_else(|| panic!("not the cluster line: {line}"));
    let (dir, rest) = rest.split_once(" on 127.0.0.1:").expect("dir and port");
    let pid = rest
        .split_once("(pid ")
        .and_then(|(_, p)| p.strip_suffix(')'))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in: {line}"));
    (PathBuf::from(dir), pid)
}

fn assert_cleaned_up(dir: &Path, pid: u32, output: &str) {
    assert!(
        !dir.exists(),
        "the cluster directory {} is still there:\n{output}",
        dir.display()
    );
    assert!(
        !process_exists(pid),
        "the postmaster (pid {pid}) still runs:\n{output}"
    );
}

#[test]
fn demo_runs_to_completion_shows_every_object_a_recovered_retry_and_cleans_up() {
    let mut demo = Demo::spawn();
    let cluster_line = demo.wait_for_line("naming the cluster", |l| {
        l.starts_with("PostgreSQL running in ")
    });
    let (dir, pid) = cluster_of(&cluster_line);
    assert!(dir.exists(), "{}", dir.display());
    let status = demo.wait(RUN_TIMEOUT);
    let out = demo.output();
    assert!(status.success(), "exit {status}:\n{out}");

    let deliveries: Vec<&str> = out.lines().filter(|l| l.contains(" sig ")).collect();
    // Every verb of every object reached `crm`, and the subscribed ones `analytics`.
    for slug in ["lead", "user", "opportunity", "student"] {
        for verb in ["create", "update", "delete"] {
            let name = format!("{slug}.{verb}");
            assert!(
                deliveries
                    .iter()
                    .any(|l| l.contains(" crm ") && l.contains(&name) && l.contains("200 ok")),
                "no crm delivery of {name}:\n{out}"
            );
            if slug == "lead" || slug == "student" {
                assert!(
                    deliveries.iter().any(|l| l.contains(" analytics ")
                        && l.contains(&name)
                        && l.contains("200 ok")),
                    "no analytics delivery of {name}:\n{out}"
                );
            }
        }
    }
    // The custom event reached crm; the backfill's two leads reached both.
    assert!(
        deliveries
            .iter()
            .any(|l| l.contains(" crm ") && l.contains("invoice.paid") && l.contains("200 ok")),
        "no crm delivery of invoice.paid:\n{out}"
    );
    for ep in [" crm ", " analytics "] {
        let backfilled = deliveries
            .iter()
            .filter(|l| l.contains(ep) && l.contains("lead.backfill") && l.contains("200 ok"))
            .count();
        assert_eq!(backfilled, 2, "{ep}lead.backfill:\n{out}");
    }
    // analytics failed twice, and each failed event was delivered by a retry.
    let failed: Vec<&str> = deliveries
        .iter()
        .filter(|l| l.contains(" analytics ") && l.contains("500 failed"))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(failed.len(), 2, "{out}");
    for id in failed {
        assert!(
            deliveries.iter().any(|l| l.ends_with(id)
                && l.contains(" analytics ")
                && l.contains("200 ok")
                && !l.contains(" #1 ")),
            "event {id} was not delivered by a retry:\n{out}"
        );
    }
    // Every signature verified.
    assert!(!out.contains("sig ✗"), "{out}");
    assert_eq!(
        deliveries.iter().filter(|l| l.contains("sig ✓")).count(),
        25,
        "{out}"
    );
    assert!(out.contains("signatures verified  25/25 ✓"), "{out}");
    assert!(out.contains("15/15 delivered"), "{out}");
    assert!(out.contains("8/8 delivered"), "{out}");
    assert!(out.contains("all recovered by retry"), "{out}");
    assert!(
        out.contains(
            "events captured      15 (invoice 1, lead 5, opportunity 3, student 3, user 3)"
        ),
        "{out}"
    );
    // The excluded column never reached a receiver.
    assert!(
        !deliveries.iter().any(|l| l.contains("password_hash")),
        "{out}"
    );
    assert!(out.contains("stopped walhook"), "{out}");
    assert_cleaned_up(&dir, pid, &out);
}

#[test]
fn sigint_midway_stops_the_demo_and_cleans_up() {
    let mut demo = Demo::spawn();
    let cluster_line = demo.wait_for_line("naming the cluster", |l| {
        l.starts_with("PostgreSQL running in ")
    });
    let (dir, pid) = cluster_of(&cluster_line);
    // After the first failed attempt the demo waits at least ~0.8s for the
    // retry, so the signal lands while walhook is running.
    demo.wait_for_line("with a failed attempt", |l| l.contains("500 failed"));
    send_signal(demo.pid, "INT");
    let status = demo.wait(Duration::from_secs(30));
    let out = demo.output();
    assert_eq!(status.code(), Some(130), "{out}");
    assert!(out.contains("interrupted: cleaning up"), "{out}");
    assert!(!out.contains("\nsummary"), "{out}");
    assert!(out.contains("stopped PostgreSQL and removed"), "{out}");
    assert_cleaned_up(&dir, pid, &out);
}
