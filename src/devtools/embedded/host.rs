//! What this machine provides a cluster with: the PostgreSQL server
//! programs, and the unprivileged user to run them as when we are root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{EmbeddedError, PG_BIN_ENV, check, io_err};

/// Server programs a cluster cannot run without.
const SERVER_PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Finds the server programs: `WALHOOK_PG_BIN`, then the highest
/// `/usr/lib/postgresql/<version>/bin`, then `initdb` on `PATH` (symlinks
/// resolved, so `psql` and `pg_recvlogical` are looked up next to the real one).
pub(super) fn find_bin_dir() -> Result<PathBuf, EmbeddedError> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if let Some(program) = SERVER_PROGRAMS
            .into_iter()
            .find(|p| !is_executable(&dir.join(p)))
        {
            return Err(EmbeddedError::BadPgBin { dir, program });
        }
        return Ok(dir);
    }
    let versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    if let Some(dir) = highest_version_dir(&versions, has_server_programs) {
        return Ok(dir);
    }
    let from_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("initdb"))
            .find(|initdb| is_executable(initdb))
            .and_then(|initdb| std::fs::canonicalize(initdb).ok())
            .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
            .filter(|dir| has_server_programs(dir))
    });
    from_path.ok_or_else(|| EmbeddedError::NotInstalled {
        searched: format!("{PG_BIN_ENV} unset, /usr/lib/postgresql/*/bin, PATH"),
    })
}

/// Among `<root>/<version>` directories, the `<version>/bin` with the highest
/// numeric version that passes `usable`.
fn highest_version_dir(
    version_dirs: &[PathBuf],
    usable: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let mut candidates: Vec<(Vec<u32>, PathBuf)> = version_dirs
        .iter()
        .filter_map(|dir| {
            let name = dir.file_name()?.to_str()?;
            let version = name
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, dir.join("bin")))
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .rev()
        .map(|(_, bin)| bin)
        .find(|bin| usable(bin))
}

fn has_server_programs(dir: &Path) -> bool {
    SERVER_PROGRAMS.iter().all(|p| is_executable(&dir.join(p)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Our effective uid, from `/proc/self/status` (std has no `geteuid`), else
/// from `id -u`.
pub(super) fn effective_uid() -> Result<u32, EmbeddedError> {
    if let Some(uid) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(euid_from_status)
    {
        return Ok(uid);
    }
    let output = Command::new("id")
        .arg("-u")
        .output()
        .map_err(io_err("running `id -u`"))?;
    check("id -u", output)?
        .trim()
        .parse()
        .map_err(|_| EmbeddedError::Io {
            context: "reading the effective uid".into(),
            source: std::io::Error::other("`id -u` printed no number"),
        })
}

/// The second field of the `Uid:` line (real, effective, saved, fs).
fn euid_from_status(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// uid and gid of `postgres`, else `nobody`, from `/etc/passwd`, else `id`.
pub(super) fn unprivileged_user() -> Result<(u32, u32), EmbeddedError> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    ["postgres", "nobody"]
        .into_iter()
        .find_map(|user| passwd_ids(&passwd, user).or_else(|| ids_from_id_command(user)))
        .ok_or(EmbeddedError::NoUnprivilegedUser)
}

fn passwd_ids(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != user {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// For users that come from NSS (LDAP...) rather than `/etc/passwd`.
fn ids_from_id_command(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let output = Command::new("id")
            .args([flag, user])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        output.status.success().then_some(())?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_numeric_version_wins_and_unusable_ones_are_skipped() {
        let dirs: Vec<PathBuf> = ["9.6", "15", "16", "README", "14"]
            .iter()
            .map(|v| Path::new("/usr/lib/postgresql").join(v))
            .collect();
        assert_eq!(
            highest_version_dir(&dirs, |_| true),
            Some(PathBuf::from("/usr/lib/postgresql/16/bin"))
        );
        let not_16 = |p: &Path| !p.starts_with("/usr/lib/postgresql/16");
        assert_eq!(
            highest_version_dir(&dirs, not_16),
            Some(PathBuf::from("/usr/lib/postgresql/15/bin"))
        );
        assert_eq!(highest_version_dir(&dirs, |_| false), None);
        // 10 > 9.6 numerically even though "10" < "9.6" as text.
        let dirs = [PathBuf::from("/x/9.6"), PathBuf::from("/x/10")];
        assert_eq!(
            highest_version_dir(&dirs, |_| true),
            Some(PathBuf::from("/x/10/bin"))
        );
    }

    #[test]
    fn euid_is_the_second_uid_field() {
        let status = "Name:\tcat\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n";
        assert_eq!(euid_from_status(status), Some(0));
        assert_eq!(euid_from_status("Name:\tcat\n"), None);
    }

    #[test]
    fn passwd_lookup_reads_uid_and_gid_of_the_exact_user() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres2:x:7:7::/:/bin/sh\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(passwd_ids(passwd, "postgres"), Some((101, 104)));
        assert_eq!(passwd_ids(passwd, "nobody"), None);
        assert_eq!(passwd_ids("broken:x:notanumber:1::/:", "broken"), None);
    }
}
