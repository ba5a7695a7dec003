//! `walhook init`: writes a starter config (see [`walhook::admin::init`])
//! and says what to do next.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use walhook::admin::init::{self, Candidate, SECRET_ENV};
use walhook::config::Secret;
use walhook::pg;

/// Where the database URL comes from when `--database-url` is not given.
const URL_ENV: &str = "DATABASE_URL";

pub async fn run(path: &Path, database_url: Option<String>, force: bool) -> Result<ExitCode> {
    if path.exists() && !force {
        bail!(
            "{} already exists; `walhook init` does not overwrite it (add --force to replace it, or --config OTHER.toml to write another file)",
            path.display()
        );
    }
    let from_env = database_url.is_none();
    let url = database_url.or_else(|| std::env::var(URL_ENV).ok().filter(|u| !u.is_empty()));
    let tables = match &url {
        Some(url) => tables(url).await?,
        None => Vec::new(),
    };
    // A URL with a password stays out of the file: it is read from DATABASE_URL.
    let in_file = url.as_deref().filter(|u| !from_env && !has_password(u));
    let text = init::starter_config(in_file, &tables);
    write(path, &text, force)?;
    let secret = init::new_secret();
    print!(
        "{}",
        summary(
            path,
            url.is_some(),
            from_env,
            in_file.is_some(),
            &tables,
            &secret
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// The tables `init` lists, read from the database at `url`.
async fn tables(url: &str) -> Result<Vec<Candidate>> {
    let db = pg::connect(&Secret::new(url), "walhook init", pg::DEFAULT_LOGIN_TIMEOUT)
        .await
        .context(
            "cannot list the tables for the config (give a reachable database with --database-url or DATABASE_URL, or neither to write a config without tables)",
        )?;
    init::candidates(&db, "walhook")
        .await
        .map_err(pg::DbError)
        .context("cannot list the database's tables")
}

fn has_password(url: &str) -> bool {
    pg::conninfo::parse(url).is_ok_and(|c| c.pg.get_password().is_some())
}

/// Writes `text` to `path`; without `force`, only if no file is there (a
/// file created meanwhile is not replaced either).
fn write(path: &Path, text: &str, force: bool) -> Result<()> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true);
    if force {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let mut file = open
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// What was written, the secret (shown this once) and the next steps.
fn summary(
    path: &Path,
    had_url: bool,
    from_env: bool,
    url_in_file: bool,
    tables: &[Candidate],
    secret: &str,
) -> String {
    let file = path.display();
    let mut out = format!("wrote {file}\n");
    match (had_url, tables.first()) {
        (false, _) => out.push_str(
            "  no database given (--database-url or DATABASE_URL), so no tables are listed: edit the example [[objects]], or run `walhook init --force --database-url URL` to list the database's tables\n",
        ),
        (true, None) => out.push_str(
            "  the database has no table with a primary key yet: edit the example [[objects]] once it has\n",
        ),
        (true, Some(first)) => out.push_str(&format!(
            "  {} table(s) with a primary key listed as [[objects]]: {}.{} is mapped, the others are commented out (uncomment the ones to send)\n",
            tables.len(),
            first.schema,
            first.table
        )),
    }
    if !url_in_file {
        let why = if had_url && !from_env {
            " (the URL holds a password, so it is not written in the file)"
        } else {
            ""
        };
        out.push_str(&format!(
            "  the database URL is read from {URL_ENV}{why}: export it before the next steps\n"
        ));
    }
    out.push_str(&format!(
        "\nThe endpoint `receiver` signs with a secret read from {SECRET_ENV}. A fresh one, shown only now (it is not written anywhere):\n\n  export {SECRET_ENV}='{secret}'\n\n"
    ));
    let flag = if path == Path::new(super::DEFAULT_CONFIG) {
        String::new()
    } else {
        format!(" --config {file}")
    };
    out.push_str(&format!(
        "Next steps:\n  1. edit {file}: the objects to map and the endpoint's url (`walhook listen` receives at the one written)\n  2. walhook setup{flag}    creates the ledger schema, publication and slot\n  3. walhook check{flag}    checks everything walhook needs\n  4. walhook run{flag}      captures and delivers\n"
    ));
    out
}
