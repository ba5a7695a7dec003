//! A throwaway PostgreSQL cluster for `walhook demo` and the integration tests.
//!
//! [`TempCluster`] runs `initdb` into a fresh directory under the system temp
//! dir, configures it for logical replication on a free loopback port and
//! starts it with `pg_ctl`. Dropping it (or [`TempCluster::shutdown`]) stops
//! the server and deletes the directory.
//!
//! Cleanup also happens when the owning process dies without running
//! destructors (a `static`, `kill -9`, Ctrl-C in the demo): every cluster has a
//! small watchdog shell holding the read end of a pipe whose write end only
//! this process holds. When the process exits for any reason the kernel closes
//! the pipe, the watchdog sees end-of-file, stops the server and removes the
//! directory. No polling, no signal handlers.
//!
//! All methods block (they run `initdb`, `pg_ctl` and `psql` as child
//! processes, which takes up to a few seconds for `start`). From async code,
//! call them through `tokio::task::spawn_blocking` when the runtime must keep
//! serving other tasks meanwhile.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

mod error;
mod host;
mod standby;

pub use self::error::EmbeddedError;
use self::error::io_err;
use self::host::{effective_uid, find_bin_dir, unprivileged_user};
use crate::pg::quote_ident;

/// Environment variable naming the directory that holds `initdb`, `pg_ctl`
/// and `postgres`; it wins over every other place.
pub const PG_BIN_ENV: &str = "WALHOOK_PG_BIN";

/// The superuser `initdb` creates; connections need no password (trust).
pub const SUPERUSER: &str = "postgres";

/// How many fresh ports `start` tries when another process grabbed the free
/// port between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 3;

/// Log lines quoted in a start error.
const LOG_TAIL_LINES: usize = 30;

/// Options for [`TempCluster::start_with`]. The default is what
/// [`TempCluster::start`] uses.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    extra_conf: Vec<String>,
    hba: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
}

impl ClusterOptions {
    /// Same as `ClusterOptions::default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a `postgresql.conf` line after walhook's own settings, so it
    /// overrides them (e.g. `wal_level=replica` for a negative test).
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.extra_conf.push(line.into());
        self
    }

    /// Adds a `pg_hba.conf` line. Given any, they replace walhook's `host`
    /// lines (the `local` ones stay), so a test decides who may connect over
    /// TCP and how (e.g. `hostssl all all 127.0.0.1/32 scram-sha-256`).
    /// [`TempCluster::psql`] connects over TCP as `postgres`: keep a line
    /// that lets it in.
    pub fn hba(mut self, line: impl Into<String>) -> Self {
        self.hba.push(line.into());
        self
    }

    /// Writes `contents` to `name` in the data directory before the server
    /// starts, readable by the server only (mode 0600): a certificate or key
    /// for `ssl = on` (`ssl_cert_file = 'server.crt'` is relative to it).
    pub fn file(mut self, name: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.into(), contents.into()));
        self
    }
}

/// A running PostgreSQL cluster in its own temporary directory, reachable at
/// `127.0.0.1:`[`port`](Self::port) as superuser `postgres` without a password
/// (also for replication connections), with `wal_level=logical`.
///
/// It promises to leave nothing behind: dropping it, calling
/// [`shutdown`](Self::shutdown), or the death of the process for any reason
/// stops the server and deletes the directory. When the process runs as root,
/// the server runs as the `postgres` system user (or `nobody`).
#[derive(Debug)]
pub struct TempCluster {
    bin_dir: PathBuf,
    base: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    /// uid/gid the server programs run as; `None` means as ourselves.
    run_as: Option<(u32, u32)>,
    /// Holds the write end of the watchdog's stdin; see the module docs.
    watchdog: Option<Child>,
    finished: bool,
}

impl TempCluster {
    /// Starts a cluster with the default settings. Blocks for a second or two.
    pub fn start() -> Result<Self, EmbeddedError> {
        Self::start_with(ClusterOptions::default())
    }

    /// Starts a cluster, appending `opts`' extra configuration lines.
    pub fn start_with(opts: ClusterOptions) -> Result<Self, EmbeddedError> {
        Self::start_on(find_bin_dir()?, opts)
    }

    /// Starts a cluster with the server programs of `bin_dir` (a test that
    /// needs a given major version), whatever `WALHOOK_PG_BIN` says.
    pub fn start_on(bin_dir: PathBuf, opts: ClusterOptions) -> Result<Self, EmbeddedError> {
        let mut cluster = Self::empty(bin_dir)?;
        cluster.initdb(&opts)?;
        cluster.start_on_free_port(&opts.extra_conf)?;
        Ok(cluster)
    }

    /// A cluster with its directories and watchdog but no data directory
    /// yet; from here on, Drop cleans up whatever was created.
    fn empty(bin_dir: PathBuf) -> Result<Self, EmbeddedError> {
        let run_as = if effective_uid()? == 0 {
            Some(unprivileged_user()?)
        } else {
            None
        };
        let base = make_unique_dir()?;
        let mut cluster = TempCluster {
            data: base.join("data"),
            socket_dir: base.join("sock"),
            log: base.join("postgres.log"),
            base,
            bin_dir,
            port: 0,
            run_as,
            watchdog: None,
            finished: false,
        };
        cluster.prepare_dirs()?;
        cluster.spawn_watchdog()?;
        Ok(cluster)
    }

    /// Writes `walhook.conf` for a free port and starts the server, with a
    /// fresh port when another process took the first one meanwhile.
    fn start_on_free_port(&mut self, extra_conf: &[String]) -> Result<(), EmbeddedError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.port = free_port()?;
            self.write_conf(extra_conf)?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(EmbeddedError::Start { ref log_tail, .. })
                    if attempt < PORT_ATTEMPTS && is_bind_failure(log_tail) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The TCP port on 127.0.0.1; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db` as the superuser, e.g.
    /// `postgres://postgres@127.0.0.1:54321/app`. `db` is used verbatim, so it
    /// should be a plain identifier.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The directory holding `initdb`, `pg_ctl`, `psql`, `pg_recvlogical`...
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The postmaster's process id, read from `postmaster.pid`; `None` when
    /// the server is not running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Creates database `name` (quoted as an identifier).
    pub fn create_database(&self, name: &str) -> Result<(), EmbeddedError> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        )
        .map(drop)
    }

    /// Runs `sql` in database `db` with the cluster's `psql` as a script
    /// (statements separated by `;`, each in its own transaction unless the
    /// script says otherwise), stopping at the first error. Returns what psql
    /// printed, unaligned and without headers (`psql -At`), with the final
    /// newline removed: `SHOW wal_level` gives `logical`.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, EmbeddedError> {
        // Some platforms ship the client apart from the server programs.
        let psql = Some(self.bin_dir.join("psql"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("psql"));
        let mut child = Command::new(&psql)
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-f",
                "-",
            ])
            // Our own settings decide, not the caller's environment.
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(format!("running {}", psql.display())))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Feed the script from another thread: a large script and a large
        // result would otherwise deadlock on full pipes.
        let output = std::thread::scope(|s| {
            s.spawn(move || {
                // A write error means psql exited early; its status says why.
                let _ = stdin.write_all(sql.as_bytes());
            });
            child.wait_with_output()
        })
        .map_err(io_err(format!("running {}", psql.display())))?;
        let mut out = check(&format!("psql -d {db}"), output)?;
        if out.ends_with('\n') {
            out.pop();
        }
        Ok(out)
    }

    /// Restarts the server (`pg_ctl restart -m fast`) on the same port.
    pub fn restart(&self) -> Result<(), EmbeddedError> {
        self.pg_ctl(
            &["-l".as_ref(), self.log.as_os_str()],
            &["-w", "-t", "60", "-m", "fast", "restart"],
        )
        .map_err(|e| self.start_error(e))
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`): no
    /// shutdown checkpoint; the next start runs crash recovery.
    pub fn stop_immediate(&self) -> Result<(), EmbeddedError> {
        self.pg_ctl(&[], &["-w", "-m", "immediate", "stop"])
    }

    /// Starts the server again after [`stop_immediate`](Self::stop_immediate),
    /// on the same port.
    pub fn start_again(&self) -> Result<(), EmbeddedError> {
        self.pg_ctl_start()
    }

    /// Stops the server and removes the directory, reporting failures (Drop
    /// does the same but can only ignore them). The demo calls this on Ctrl-C.
    pub fn shutdown(mut self) -> Result<(), EmbeddedError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), EmbeddedError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let stopped = if self.data.join("postmaster.pid").exists() {
            self.stop_immediate()
        } else {
            Ok(())
        };
        let removed = std::fs::remove_dir_all(&self.base)
            .map_err(io_err(format!("removing {}", self.base.display())));
        if let Some(mut watchdog) = self.watchdog.take() {
            // Closing its stdin lets it run its (now empty) cleanup and exit.
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
        stopped.and(removed)
    }

    /// A command for a server program, run as the unprivileged user if any.
    fn server_command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.base).stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn prepare_dirs(&self) -> Result<(), EmbeddedError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.socket_dir)
            .map_err(io_err(format!("creating {}", self.socket_dir.display())))?;
        std::fs::File::create(&self.log)
            .map_err(io_err(format!("creating {}", self.log.display())))?;
        if let Some((uid, gid)) = self.run_as {
            for path in [&self.base, &self.socket_dir, &self.log] {
                chown(path, Some(uid), Some(gid))
                    .map_err(io_err(format!("chown {} to uid {uid}", path.display())))?;
            }
        }
        Ok(())
    }

    fn spawn_watchdog(&mut self) -> Result<(), EmbeddedError> {
        // Ignores the signals a terminal or test runner sends to the whole
        // group, waits for EOF on stdin (our process is gone or done), then
        // stops the server and deletes the directory.
        const SCRIPT: &str = r#"trap '' INT TERM HUP QUIT
read -r _
if [ -f "$1/postmaster.pid" ]; then "$2" -D "$1" -m immediate -w stop >/dev/null 2>&1; fi
rm -rf -- "$3""#;
        let mut cmd = self.server_command("/bin/sh");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("walhook-pg-watchdog")
            .arg(&self.data)
            .arg(self.bin_dir.join("pg_ctl"))
            .arg(&self.base)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: Ctrl-C in a terminal does not reach it.
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(io_err("starting the cleanup watchdog (/bin/sh)"))?;
        self.watchdog = Some(child);
        Ok(())
    }

    fn initdb(&self, opts: &ClusterOptions) -> Result<(), EmbeddedError> {
        let mut cmd = self.server_command(self.bin_dir.join("initdb"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-A", "trust", "-U", SUPERUSER, "--no-sync", "-E", "UTF8"])
            // C locale: no dependency on which locales the machine generated.
            .arg("--locale=C");
        let output = cmd.output().map_err(io_err("running initdb"))?;
        check("initdb", output)?;
        let hba = self.data.join("pg_hba.conf");
        std::fs::write(&hba, hba_conf(&opts.hba))
            .map_err(io_err(format!("writing {}", hba.display())))?;
        for (name, contents) in &opts.files {
            self.write_private(name, contents)?;
        }
        let conf = self.data.join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_err(format!("opening {}", conf.display())))?;
        file.write_all(b"\n# Added by walhook: the settings below live in walhook.conf.\ninclude 'walhook.conf'\n")
            .map_err(io_err(format!("writing {}", conf.display())))?;
        Ok(())
    }

    /// A file in the data directory only the server's user may read.
    fn write_private(&self, name: &str, contents: &[u8]) -> Result<(), EmbeddedError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.data.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(format!("creating {}", path.display())))?;
        file.write_all(contents)
            .map_err(io_err(format!("writing {}", path.display())))?;
        if let Some((uid, gid)) = self.run_as {
            chown(&path, Some(uid), Some(gid))
                .map_err(io_err(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    fn write_conf(&self, extra: &[String]) -> Result<(), EmbeddedError> {
        let path = self.data.join("walhook.conf");
        std::fs::write(&path, server_conf(self.port, &self.socket_dir, extra))
            .map_err(io_err(format!("writing {}", path.display())))?;
        if let Some((uid, gid)) = self.run_as {
            chown(&path, Some(uid), Some(gid))
                .map_err(io_err(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), EmbeddedError> {
        self.pg_ctl(
            &["-l".as_ref(), self.log.as_os_str()],
            &["-w", "-t", "60", "start"],
        )
        .map_err(|e| self.start_error(e))
    }

    /// Runs `pg_ctl -D data <paths...> <args...>`.
    fn pg_ctl(&self, paths: &[&OsStr], args: &[&str]) -> Result<(), EmbeddedError> {
        let mut cmd = self.server_command(self.bin_dir.join("pg_ctl"));
        cmd.arg("-D").arg(&self.data).args(paths).args(args);
        let output = cmd.output().map_err(io_err("running pg_ctl"))?;
        check(&format!("pg_ctl {}", args.join(" ")), output).map(drop)
    }

    /// Turns a failed `pg_ctl` into a [`EmbeddedError::Start`] quoting the log.
    fn start_error(&self, e: EmbeddedError) -> EmbeddedError {
        match e {
            EmbeddedError::Command { output, .. } => {
                let log_tail = match std::fs::read(&self.log) {
                    Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES),
                    Err(e) => format!("(could not read the log: {e})"),
                };
                EmbeddedError::Start {
                    reason: output,
                    log: self.log.clone(),
                    log_tail,
                }
            }
            other => other,
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Local connections are always trusted; TCP ones too, unless the caller
/// gave lines of its own.
fn hba_conf(tcp_lines: &[String]) -> String {
    let mut hba = "\
# Written by walhook: a throwaway cluster, loopback only.
local all         all                trust
local replication all                trust
"
    .to_owned();
    if tcp_lines.is_empty() {
        hba.push_str(
            "host  all         all   127.0.0.1/32 trust\nhost  replication all   127.0.0.1/32 trust\n",
        );
    }
    for line in tcp_lines {
        hba.push_str(line);
        hba.push('\n');
    }
    hba
}

/// The settings walhook needs, then the caller's lines (later lines win).
///
/// `fsync = off` is safe for a throwaway cluster: the tests crash the server,
/// never the machine. `synchronous_commit` stays on on purpose: with it off,
/// a commit acknowledged just before `stop_immediate` can vanish, which would
/// make crash tests of walhook's no-loss guarantee fail for the wrong reason;
/// without fsync it costs only a `write()` per commit.
fn server_conf(port: u16, socket_dir: &Path, extra: &[String]) -> String {
    let socket_dir = socket_dir.display().to_string().replace('\'', "''");
    let mut conf = format!(
        "listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
fsync = off
synchronous_commit = on
full_page_writes = off
shared_buffers = 128MB
max_connections = 200
wal_sender_timeout = 60s
"
    );
    for line in extra {
        conf.push_str(line);
        conf.push('\n');
    }
    conf
}

/// Checks a finished program's status; returns its stdout.
fn check(program: &str, output: Output) -> Result<String, EmbeddedError> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(EmbeddedError::Command {
        program: program.to_owned(),
        status: output.status,
        output: format!("{}{}", stderr.trim_end(), stdout.trim_end())
            .trim()
            .to_owned(),
    })
}

fn is_bind_failure(log: &str) -> bool {
    log.contains("could not bind") || log.contains("Address already in use")
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Asks the kernel for a free loopback port. Another process may take it
/// before the server binds it; `start_with` retries in that case.
fn free_port() -> Result<u16, EmbeddedError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("binding 127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("reading a bound port"))?
        .port();
    Ok(port)
}

/// Creates `$TMPDIR/walhook-pg-<pid>-<n>-<nanos>` (mode 0700), failing
/// rather than reusing an existing directory.
fn make_unique_dir() -> Result<PathBuf, EmbeddedError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let tmp = std::env::temp_dir();
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = tmp.join(format!("walhook-pg-{}-{n}-{nanos}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(format!("creating {}", dir.display()))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_sets_logical_replication_and_extra_lines_come_last() {
        let conf = server_conf(5555, Path::new("/tmp/it's"), &["wal_level=replica".into()]);
        assert!(conf.contains("port = 5555\n"));
        assert!(conf.contains("unix_socket_directories = '/tmp/it''s'\n"));
        assert!(conf.contains("listen_addresses = '127.0.0.1'\n"));
        let logical = conf.find("wal_level = logical").expect("logical");
        let replica = conf.find("wal_level=replica").expect("extra line");
        assert!(replica > logical, "extra lines must override ours");
    }

    #[test]
    fn hba_lines_replace_the_tcp_defaults() {
        assert!(hba_conf(&[]).contains("host  all         all   127.0.0.1/32 trust"));
        let own = hba_conf(&["hostssl all all 127.0.0.1/32 cert".into()]);
        assert!(own.contains("local all"), "{own}");
        assert!(!own.contains("host  all"), "{own}");
        assert!(
            own.ends_with("hostssl all all 127.0.0.1/32 cert\n"),
            "{own}"
        );
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }

    #[test]
    fn bind_failures_are_recognised() {
        assert!(is_bind_failure(
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use"
        ));
        assert!(!is_bind_failure(
            "FATAL:  data directory has wrong ownership"
        ));
    }
}
