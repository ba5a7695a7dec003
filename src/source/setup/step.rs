//! What `walhook setup` did, step by step, and the steps it left to a DBA.

use super::SetupError;

/// One line of what setup did or found, or could not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub what: String,
    pub changed: bool,
    /// Not done: the role lacks a privilege for it.
    pub needs_dba: Option<DbaWork>,
}

/// A step the role may not do, and what a DBA runs instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbaWork {
    /// The server's words (`permission denied for ...`).
    pub reason: String,
    /// The statements, `;`-terminated (or `--` comments).
    pub sql: Vec<String>,
}

/// When steps were skipped: what to tell the operator (the run failed).
pub fn incomplete(steps: &[Step]) -> Option<String> {
    let skipped: Vec<&Step> = steps.iter().filter(|s| s.needs_dba.is_some()).collect();
    if skipped.is_empty() {
        return None;
    }
    Some(format!(
        "setup is incomplete: {} step(s) need privileges this role lacks (permission denied). A DBA runs the SQL shown above, or everything walhook needs for this role: `walhook setup --print-sql` (sql/00-role.sql to sql/05-slot.sql explain it); then `walhook check`.",
        skipped.len()
    ))
}

impl Step {
    pub(super) fn found(what: impl Into<String>) -> Step {
        Step {
            what: what.into(),
            changed: false,
            needs_dba: None,
        }
    }

    pub(super) fn made(what: impl Into<String>) -> Step {
        Step {
            what: what.into(),
            changed: true,
            needs_dba: None,
        }
    }

    /// A [`SetupError::Privilege`] becomes a skipped step with `sql` for a
    /// DBA; any other error stays an error.
    pub(super) fn skip_denied(
        e: SetupError,
        what: impl Into<String>,
        sql: Vec<String>,
    ) -> Result<Step, SetupError> {
        match e {
            SetupError::Privilege { detail, .. } => Ok(Step {
                what: what.into(),
                changed: false,
                needs_dba: Some(DbaWork {
                    reason: detail,
                    sql,
                }),
            }),
            other => Err(other),
        }
    }

    /// The line `walhook setup` prints: `+` made, `=` found, `!` skipped
    /// (then the reason and the SQL for a DBA, indented).
    pub fn render(&self) -> String {
        match &self.needs_dba {
            None => format!("{} {}", if self.changed { "+" } else { "=" }, self.what),
            Some(work) => {
                let mut out = format!(
                    "! {}: not done, {}; a DBA runs (as the owner or a superuser):",
                    self.what, work.reason
                );
                for stmt in &work.sql {
                    out.push_str("\n    ");
                    out.push_str(stmt);
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skipped_step_shows_the_reason_and_the_sql_and_fails_the_run() {
        let denied = SetupError::Privilege {
            action: "create the publication".into(),
            detail: "must be owner of table leads".into(),
        };
        let sql = vec!["CREATE PUBLICATION \"walhook\" FOR TABLE \"public\".\"leads\";".into()];
        let step = Step::skip_denied(denied, "publication walhook", sql).unwrap();
        assert_eq!(
            step.render(),
            "! publication walhook: not done, must be owner of table leads; a DBA runs (as the owner or a superuser):\n    CREATE PUBLICATION \"walhook\" FOR TABLE \"public\".\"leads\";"
        );
        let done = [Step::made("publication walhook created"), step];
        assert!(
            incomplete(&done)
                .unwrap()
                .starts_with("setup is incomplete: 1 step(s)")
        );
        assert_eq!(incomplete(&done[..1]), None);
        let other = SetupError::SlotInUse { slot: "s".into() };
        assert!(Step::skip_denied(other, "slot", vec![]).is_err());
    }
}
