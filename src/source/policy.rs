//! What capture does about an error: one function from the error (and its
//! SQLSTATE, when the server sent one) to a policy, with the operator's hint
//! next to it. Capture never gives up: even what needs the operator is
//! retried, slowly, so that walhook resumes by itself once it is fixed.

use std::time::Duration;

use super::error::CaptureError;
use super::objects::ResolveError;

/// The error policy for one failed capture session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Another process reads the slot: this one is the standby. Try to take
    /// over every `STANDBY_POLL`; not an error.
    StandBy,
    /// Passing trouble (connection lost, server restarting): reconnect with
    /// backoff.
    Reconnect,
    /// Waiting alone will not fix it: log at error level with the hint, and
    /// keep retrying at the longest backoff.
    Operator { hint: &'static str },
}

/// How often a standby tries to take the slot over.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);
/// The first reconnect delay, doubled after each failure up to `MAX_BACKOFF`.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// The policy for `e`.
pub fn policy(e: &CaptureError) -> Policy {
    match e {
        // The message says what to do (fix the config, restore a key...).
        CaptureError::Objects(ResolveError::Object(_))
        | CaptureError::Event(_)
        | CaptureError::Publication(_) => {
            return Policy::Operator {
                hint: "walhook cannot map a change without losing or leaking data; it retries until this is fixed",
            };
        }
        _ => {}
    }
    match e.sqlstate() {
        // object_in_use: "replication slot ... is active for PID ..."
        Some("55006") => Policy::StandBy,
        Some(code) => by_sqlstate(code),
        None => Policy::Reconnect,
    }
}

fn by_sqlstate(code: &str) -> Policy {
    let hint = match code {
        // undefined_object: the slot or the publication is gone.
        "42704" => "the replication slot or publication is missing: run `walhook setup`",
        "28P01" | "28000" => {
            "authentication failed: check the database URL and the role's password"
        }
        "42501" => {
            "permission denied: the role needs REPLICATION and the privileges of sql/00-role.sql (`walhook check` names what is missing)"
        }
        "3D000" => "the database does not exist: check the database URL",
        "53100" => "the database server's disk is full: free space, then walhook resumes",
        "42P01" | "3F000" => {
            "a ledger table or schema is missing: run `walhook setup` (it is idempotent)"
        }
        _ => return Policy::Reconnect,
    };
    Policy::Operator { hint }
}

/// Backoff state across sessions: doubles after each failure, back to the
/// first delay once a session has streamed for a while.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    /// The wait before the next session after one that ended with `policy`.
    pub fn after(&mut self, policy: Policy) -> Duration {
        match policy {
            Policy::StandBy => STANDBY_POLL,
            Policy::Operator { .. } => MAX_BACKOFF,
            Policy::Reconnect => {
                let wait = self.next;
                self.next = (self.next * 2).min(MAX_BACKOFF);
                wait
            }
        }
    }

    /// A session was healthy: the next outage starts again at the first delay.
    pub fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_policies() {
        assert_eq!(by_sqlstate("57P01"), Policy::Reconnect);
        assert!(
            matches!(by_sqlstate("42704"), Policy::Operator { hint } if hint.contains("walhook setup"))
        );
        assert!(matches!(by_sqlstate("42501"), Policy::Operator { .. }));
        assert!(matches!(by_sqlstate("28P01"), Policy::Operator { .. }));
    }

    #[test]
    fn backoff_doubles_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.after(Policy::Reconnect), FIRST_BACKOFF);
        assert_eq!(b.after(Policy::Reconnect), FIRST_BACKOFF * 2);
        for _ in 0..10 {
            b.after(Policy::Reconnect);
        }
        assert_eq!(b.after(Policy::Reconnect), MAX_BACKOFF);
        assert_eq!(b.after(Policy::StandBy), STANDBY_POLL);
        b.reset();
        assert_eq!(b.after(Policy::Reconnect), FIRST_BACKOFF);
    }
}
