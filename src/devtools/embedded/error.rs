//! Why a throwaway cluster could not be created, started or used.

use std::path::PathBuf;
use std::process::ExitStatus;

use super::PG_BIN_ENV;

/// What the user should do when no PostgreSQL server programs are found.
const INSTALL_HINT: &str = "install them with `apt-get install postgresql-15` on Debian/Ubuntu \
     (any PostgreSQL >= 14 server package works elsewhere), or set WALHOOK_PG_BIN to the \
     directory that holds them";

/// Why a throwaway cluster could not be created, started or used.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No directory holds `initdb`, `pg_ctl` and `postgres`.
    #[error("PostgreSQL server programs (initdb, pg_ctl, postgres) not found ({searched}): {hint}", hint = INSTALL_HINT)]
    NotInstalled {
        /// The places that were searched, for the message.
        searched: String,
    },
    /// `WALHOOK_PG_BIN` is set but lacks a server program.
    #[error("{PG_BIN_ENV}={dir} does not contain `{program}`: {hint}", dir = dir.display(), hint = INSTALL_HINT)]
    BadPgBin {
        /// The directory named by the variable.
        dir: PathBuf,
        /// The first missing program.
        program: &'static str,
    },
    /// Running as root, and neither `postgres` nor `nobody` exists to run the
    /// server as (PostgreSQL refuses to run as root).
    #[error(
        "running as root but found no unprivileged user (`postgres` or `nobody`) to run PostgreSQL as"
    )]
    NoUnprivilegedUser,
    /// A file-system or process-spawning operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PostgreSQL program ran but reported failure.
    #[error("`{program}` failed ({status}): {output}")]
    Command {
        /// The program and its main arguments.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr and stdout.
        output: String,
    },
    /// The server did not come up; `log_tail` is the end of its log.
    #[error("PostgreSQL did not start: {reason}\n--- last lines of {log} ---\n{log_tail}", log = log.display())]
    Start {
        /// `pg_ctl`'s own message.
        reason: String,
        /// The server log file.
        log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },
}

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_error_says_what_to_install() {
        let e = EmbeddedError::NotInstalled {
            searched: "PATH".into(),
        };
        let text = e.to_string();
        assert!(text.contains("apt-get install postgresql-15"), "{text}");
        assert!(text.contains("WALHOOK_PG_BIN"), "{text}");
    }
}
