//! Least privilege: walhook runs as a role with `LOGIN REPLICATION` only
//! (not a superuser, not the tables' owner) once a DBA has applied
//! `walhook setup --print-sql` as the database owner. `check`, `setup`,
//! `run` (capture and dispatch) and `status` then work as that role; a
//! privilege taken away is named by `check` with the GRANT that gives it
//! back, and `run` refuses to start in the same words.

use std::time::Duration;

use crate::common::app::{self, CRM_OBJECTS, CRM_TABLES};
use crate::common::daemon::Daemon;
use crate::common::{Behaviour, Receiver, TestDb, fresh_db, wait_until};

/// A role with LOGIN REPLICATION only (roles are cluster-wide: named after
/// the database), and a config that logs in as it.
async fn replication_only_role(db: &TestDb, receiver: &Receiver) -> (String, String) {
    let role = format!("{}_role", db.name);
    db.psql(&format!("CREATE ROLE {role} WITH LOGIN REPLICATION"))
        .await;
    let rest = format!(
        "[[endpoints]]\nid = \"hooks\"\nurl = \"{}hooks\"\nsecret = \"s3cret\"\n",
        receiver.url()
    );
    let text = app::config_text(db, CRM_OBJECTS, &rest).replace("postgres@", &format!("{role}@"));
    (role, text)
}

fn cli_ok(path: &std::path::Path, args: &[&str]) -> String {
    let (ok, out, err) = app::run_cli(path, args);
    assert!(ok, "walhook {args:?} failed:\n{out}\n{err}");
    out
}

fn cli_fails(path: &std::path::Path, args: &[&str]) -> (String, String) {
    let (ok, out, err) = app::run_cli(path, args);
    assert!(!ok, "walhook {args:?} should fail:\n{out}\n{err}");
    (out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_only_role_runs_walhook_after_the_printed_sql() {
    let db = fresh_db("least_priv").await;
    db.psql(CRM_TABLES).await;
    let receiver = Receiver::start(Behaviour::AlwaysOk).await;
    let (role, text) = replication_only_role(&db, &receiver).await;
    let (_dir, path) = app::write_config(&text);

    // Before the DBA: check names what is missing, with the fix.
    let (out, _) = cli_fails(&path, &["check"]);
    assert!(
        out.contains(&format!(
            "✗ privileges: role {role} lacks SELECT on public.leads"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "GRANT SELECT ON \"public\".\"leads\" TO \"{role}\";"
        )),
        "{out}"
    );
    assert!(out.contains("lacks CREATE on database"), "{out}");

    // setup as the role does what it may (the slot), and prints for each
    // other step the SQL a DBA runs instead; it fails.
    let (out, err) = cli_fails(&path, &["setup"]);
    assert!(out.contains("created (pgoutput)"), "{out}");
    assert!(
        out.contains("! publication walhook: not done, permission denied")
            && out.contains("a DBA runs (as the owner or a superuser):\n    CREATE PUBLICATION"),
        "{out}"
    );
    assert!(err.contains("setup is incomplete"), "{err}");

    // The DBA applies the printed SQL (for the URL's user) as the owner.
    let sql = cli_ok(&path, &["setup", "--print-sql"]);
    assert!(
        sql.contains(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"walhook\" AUTHORIZATION \"{role}\";"
        )),
        "{sql}"
    );
    db.psql(&sql).await;

    // The role: check passes, setup has nothing to do, run delivers.
    let out = cli_ok(&path, &["check"]);
    assert!(
        out.contains(&format!("✓ privileges: role {role} has REPLICATION")),
        "{out}"
    );
    assert!(
        out.contains("✓ replication: a replication connection to 127.0.0.1:"),
        "{out}"
    );
    let out = cli_ok(&path, &["setup"]);
    assert!(out.contains("nothing to change"), "{out}");
    let mut run = Daemon::spawn(&path, &[], None);
    let client = db.connect().await;
    client
        .batch_execute(
            "INSERT INTO leads (id, name) VALUES ('l1', 'Ada');
             UPDATE leads SET score = 3 WHERE id = 'l1';
             INSERT INTO crm.students VALUES ('s', 1, 'Bo');",
        )
        .await
        .unwrap();
    let got = wait_until(Duration::from_secs(30), "three deliveries", || async {
        let r = receiver.requests();
        (r.len() >= 3).then_some(r)
    })
    .await;
    // Order holds per record, not across records.
    let mut names: Vec<String> = got
        .iter()
        .map(|r| {
            r.header("x-superleap-event")
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["lead.create", "lead.update", "student.create"],
        "{names:?}"
    );
    let status = cli_ok(&path, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(status["slot"]["exists"].as_bool().unwrap(), "{status}");
    run.signal_and_wait("TERM", Duration::from_secs(10));
    assert!(
        !run.lines.output().contains("permission denied"),
        "{}",
        run.lines.output()
    );

    // A grant taken away: check names it and the GRANT that gives it back.
    db.psql(&format!("REVOKE SELECT ON crm.students FROM {role}"))
        .await;
    let (out, _) = cli_fails(&path, &["check"]);
    assert!(
        out.contains(&format!(
            "✗ privileges: role {role} lacks SELECT on crm.students (backfills read the mapped tables)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "GRANT SELECT ON \"crm\".\"students\" TO \"{role}\";"
        )),
        "{out}"
    );
    db.psql(&format!("GRANT SELECT ON crm.students TO {role}"))
        .await;

    // A publication the role may not change: check says who may.
    db.psql("ALTER PUBLICATION walhook DROP TABLE crm.students")
        .await;
    let (out, _) = cli_fails(&path, &["check"]);
    assert!(
        out.contains("mapped table crm.students is not in the publication walhook"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "role {role} does not own the publication walhook and may not change it: as its owner postgres"
        )),
        "{out}"
    );
    db.psql("ALTER PUBLICATION walhook ADD TABLE crm.students")
        .await;

    // The ledger no longer the role's, and no grant on it: run refuses to
    // start with the same words as check, not a bare "permission denied".
    db.psql(&format!(
        "ALTER SCHEMA walhook OWNER TO postgres; REVOKE ALL ON SCHEMA walhook FROM {role}"
    ))
    .await;
    let (out, _) = cli_fails(&path, &["check"]);
    let grant = format!("GRANT USAGE ON SCHEMA \"walhook\" TO \"{role}\";");
    assert!(
        out.contains(&format!(
            "✗ privileges: role {role} lacks USAGE on schema walhook"
        )),
        "{out}"
    );
    assert!(out.contains(&grant), "{out}");
    let (_, err) = cli_fails(&path, &["run"]);
    assert!(
        err.contains(&format!("role {role} lacks USAGE on schema walhook")),
        "{err}"
    );
    assert!(err.contains(&grant), "{err}");

    // Without REPLICATION: the same for the attribute.
    db.psql(&format!(
        "GRANT USAGE ON SCHEMA walhook TO {role}; ALTER ROLE {role} NOREPLICATION"
    ))
    .await;
    let (out, _) = cli_fails(&path, &["check"]);
    assert!(
        out.contains(&format!("role {role} lacks the REPLICATION attribute")),
        "{out}"
    );
    assert!(
        out.contains("✗ replication: no replication connection to a primary"),
        "{out}"
    );
    let (_, err) = cli_fails(&path, &["run"]);
    assert!(
        err.contains(&format!("ALTER ROLE \"{role}\" REPLICATION;")),
        "{err}"
    );
}

/// The files of `sql/`, as README "Least privilege" tells a DBA to apply
/// them (names replaced: database `app`), leave nothing for `check` to ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_files_set_up_a_least_privilege_role() {
    // Its own cluster: the files name role and slot "walhook", which are
    // cluster-wide.
    let cluster = crate::common::private_cluster(Default::default()).await;
    let db = crate::common::fresh_db_on(&cluster, "sql_files").await;
    db.psql(CRM_TABLES).await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
    for file in [
        "00-role.sql",
        "01-ledger.sql",
        "02-role.sql",
        "03-publication.sql",
        "04-replica-identity.sql",
        "05-slot.sql",
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        let text = text.replace("ON DATABASE app TO", &format!("ON DATABASE {} TO", db.name));
        db.psql(&text).await;
    }
    let receiver = Receiver::start(Behaviour::AlwaysOk).await;
    let rest = format!(
        "[[endpoints]]\nid = \"hooks\"\nurl = \"{}hooks\"\nsecret = \"s3cret\"\n",
        receiver.url()
    );
    let text = app::config_text(&db, CRM_OBJECTS, &rest)
        .replace("postgres@", "walhook@")
        .replace(&format!("slot = \"{}\"", db.name), "slot = \"walhook\"");
    let (_dir, path) = app::write_config(&text);
    let out = cli_ok(&path, &["check"]);
    assert!(
        out.contains("✓ privileges: role walhook has REPLICATION"),
        "{out}"
    );
    assert!(out.contains("✓ slot walhook: exists"), "{out}");
    let out = cli_ok(&path, &["setup"]);
    assert!(out.contains("nothing to change"), "{out}");
}
