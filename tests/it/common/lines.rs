//! A child process's output, line by line, read on background threads so a
//! test can wait for a line with a deadline.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Why no matching line came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinesEnd {
    /// The deadline passed.
    Timeout,
    /// Every stream closed (the process ended).
    Closed,
}

/// Lines from one or more streams (e.g. stdout and stderr), interleaved in
/// arrival order, and every line seen so far.
pub struct Lines {
    rx: Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn from_readers(readers: Vec<Box<dyn Read + Send>>) -> Lines {
        let (tx, rx) = mpsc::channel();
        for reader in readers {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Read until a line satisfies `pred` and return it.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, LinesEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Err(LinesEnd::Timeout),
                Err(RecvTimeoutError::Disconnected) => return Err(LinesEnd::Closed),
            }
        }
    }

    /// Collect what is left once the process has ended (its pipes close).
    pub fn drain(&mut self, timeout: Duration) {
        while let Ok(line) = self.rx.recv_timeout(timeout) {
            self.seen.push(line);
        }
    }

    /// Everything seen so far.
    pub fn output(&self) -> String {
        self.seen.join("\n")
    }
}
