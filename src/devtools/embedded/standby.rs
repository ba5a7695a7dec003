//! A streaming standby of a [`TempCluster`], for failover tests: a base
//! backup of the primary (`pg_basebackup -R` over a physical slot it creates),
//! started on a port of its own, and promoted when the test says so. It is a
//! `TempCluster` like any other: the same watchdog removes it.

use std::os::unix::fs::chown;

use super::error::io_err;
use super::{ClusterOptions, EmbeddedError, SUPERUSER, TempCluster, check};

impl TempCluster {
    /// Starts a streaming standby of this cluster (the primary, which must
    /// be running): `pg_basebackup -R -C -S slot` copies it and creates the
    /// physical replication slot `slot` on it, then the copy starts with
    /// `opts`' configuration lines (e.g. `hot_standby_feedback = on`).
    /// `primary_conninfo` names database `postgres` (a standby that
    /// synchronizes logical slots, PostgreSQL 17+, needs one) and
    /// `application_name = slot` (the name `synchronous_standby_names` sees). Only `opts`' extra
    /// lines count: its pg_hba lines and files come from the primary.
    pub fn start_standby(&self, slot: &str, opts: ClusterOptions) -> Result<Self, EmbeddedError> {
        let mut standby = TempCluster::empty(self.bin_dir.clone())?;
        standby.base_backup(self, slot)?;
        standby.start_on_free_port(&opts.extra_conf)?;
        Ok(standby)
    }

    /// Promotes a standby to a primary (`pg_ctl promote`), waiting until it
    /// accepts writes.
    pub fn promote(&self) -> Result<(), EmbeddedError> {
        self.pg_ctl(&[], &["-w", "-t", "60", "promote"])
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`).
    pub fn stop(&self) -> Result<(), EmbeddedError> {
        self.pg_ctl(&[], &["-w", "-t", "60", "-m", "fast", "stop"])
    }

    fn base_backup(&self, primary: &TempCluster, slot: &str) -> Result<(), EmbeddedError> {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres application_name={slot}",
            primary.port
        );
        let program = self.bin_dir.join("pg_basebackup");
        let mut cmd = self.server_command(&program);
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-d", &conninfo, "-X", "stream", "-R", "-C", "-S", slot])
            // A spread checkpoint would make the copy wait a minute or more.
            .args(["--checkpoint=fast", "--no-sync"]);
        let output = cmd
            .output()
            .map_err(io_err(format!("running {}", program.display())))?;
        check("pg_basebackup", output)?;
        // -R wrote standby.signal and a primary_conninfo with every option
        // of pg_basebackup's libpq, which the server's walreceiver may load
        // an older libpq for (the PyPI builds use the system's) and refuse:
        // replace it with the few options that matter. The primary's
        // walhook.conf came along; start_on_free_port writes the standby's.
        let auto = self.data.join("postgresql.auto.conf");
        let text = format!(
            "primary_conninfo = '{}'\nprimary_slot_name = '{slot}'\n",
            conninfo.replace('\'', "''")
        );
        std::fs::write(&auto, text).map_err(io_err(format!("writing {}", auto.display())))?;
        if let Some((uid, gid)) = self.run_as {
            chown(&auto, Some(uid), Some(gid))
                .map_err(io_err(format!("chown {}", auto.display())))?;
        }
        Ok(())
    }
}
