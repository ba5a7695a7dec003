//! Secrets never reach the logs: the database password, endpoint secrets, a
//! token in an endpoint URL and the admin token, even at debug level and
//! while deliveries fail.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{app, free_port, fresh_db, send_signal, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_debug_logs_of_a_failing_run() {
    let db = fresh_db("secrets").await;
    db.psql("CREATE TABLE leads (id text PRIMARY KEY, name text)")
        .await;
    // The test cluster trusts loopback, so the password is accepted and unused.
    let url = db.url.replace("postgres@", "postgres:DbPassSECRET1@");
    let closed = free_port();
    let admin_port = free_port();
    let text = app::config_text(
        &db,
        "[[objects]]\ntable = \"leads\"\nslug = \"lead\"\n",
        &format!(
            r#"[[endpoints]]
id = "crm"
url = "http://walhook:UrlPassSECRET3@127.0.0.1:{closed}/hook?token=UrlTokenSECRET4"
secret = "EndpointSECRET2"
timeout = "1s"

[delivery.retry]
initial = "100ms"

[admin]
listen = "127.0.0.1:{admin_port}"
token = "AdminSECRET5"
"#
        ),
    )
    .replace(&db.url, &url);
    app::setup(&app::parse(&text)).await;
    let (dir, path) = app::write_config(&text);
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(app::bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let client = db.connect().await;
    client
        .execute("INSERT INTO leads VALUES ('l1', 'Ada')", &[])
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "three failed attempts", || async {
        let n: i32 = client
            .query_opt("SELECT attempts FROM walhook.deliveries", &[])
            .await
            .ok()
            .flatten()?
            .get(0);
        (n >= 3).then_some(())
    })
    .await;
    // The admin API refuses a wrong token (logged at debug, if at all).
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{admin_port}/api/status"))
        .bearer_auth("WrongTokenSECRET6")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    send_signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    if std::env::var_os("WALHOOK_SHOW_LOG").is_some() {
        eprintln!("{text}");
    }
    assert!(
        text.contains("attempt finished") && text.contains("Connection refused"),
        "the failed attempts are in the log: {text}"
    );
    for secret in [
        "DbPassSECRET1",
        "EndpointSECRET2",
        "UrlPassSECRET3",
        "UrlTokenSECRET4",
        "AdminSECRET5",
        "WrongTokenSECRET6",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the log:\n{text}"
        );
    }
}
