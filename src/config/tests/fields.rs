//! Each table's keys: accepted values, defaults, and the rejected ones.

use super::*;

#[test]
fn source_names() {
    for bad in ["Walhook", "wal-hook", "", &"a".repeat(64)] {
        assert_err(
            &minimal(&format!("slot = \"{bad}\""), ""),
            &["`source.slot`"],
        );
    }
    let c = parse_ok(&minimal(&format!("slot = \"{}\"", "a".repeat(63)), ""));
    assert_eq!(c.source.slot.len(), 63);
    for bad in ["", "my app", "a:b"] {
        assert_err(
            &minimal(&format!("name = \"{bad}\""), ""),
            &["`source.name`"],
        );
    }
    assert_eq!(
        parse_ok(&minimal("name = \"My-App_2\"", "")).source.name,
        "My-App_2"
    );
    for bad in ["", "1pub", "Pub", "a-b", "a.b"] {
        assert_err(
            &minimal(&format!("publication = \"{bad}\""), ""),
            &["`source.publication`", "identifier"],
        );
        assert_err(
            &minimal("", &format!("[ledger]\nschema = \"{bad}\"\n")),
            &["`ledger.schema`", "identifier"],
        );
    }
    assert_eq!(
        parse_ok(&minimal("replica_identity = \"default\"", ""))
            .source
            .replica_identity,
        ReplicaIdentity::Default
    );
    assert_err(
        &minimal("replica_identity = \"nothing\"", ""),
        &["`source.replica_identity`", "\"full\" or \"default\""],
    );
}

#[test]
fn failover_slot() {
    assert!(!parse_ok(&minimal("", "")).source.failover);
    assert!(parse_ok(&minimal("failover = true", "")).source.failover);
    assert_err(&minimal("failover = \"yes\"", ""), &["`source.failover`"]);
}

#[test]
fn ledger_url() {
    let same = parse_ok(&minimal("", &format!("[ledger]\nurl = \"{DB_URL}\"\n")));
    assert!(same.ledger.url.is_none());
    assert_eq!(same.ledger_url().expose(), DB_URL);
    let other = parse_ok(&minimal(
        "",
        "[ledger]\nurl = \"postgres://u:ledger-pass@127.0.0.1/other\"\nkeep_bodies = \"all\"\nretention = \"2d\"\n",
    ));
    assert_eq!(
        other.ledger_url().expose(),
        "postgres://u:ledger-pass@127.0.0.1/other"
    );
    assert_eq!(other.ledger.keep_bodies, KeepBodies::All);
    assert_eq!(other.ledger.retention, Duration::from_secs(2 * 86_400));
    assert_eq!(
        other.ledger.retention_failed,
        Duration::from_secs(30 * 86_400)
    );
    assert!(!format!("{other:?}").contains("ledger-pass"));
    assert_err(
        &minimal("", "[ledger]\nkeep_bodies = \"some\"\n"),
        &["`ledger.keep_bodies`", "\"failed\" or \"all\""],
    );
    assert_err(
        &minimal("", "[ledger]\nurl_env = \"LEDGER_DB\"\n"),
        &["`ledger.url_env`", "LEDGER_DB", "not set"],
    );
}

#[test]
fn objects() {
    let c = parse_ok(&minimal(
        "",
        "[[objects]]\ntable = \"crm.students\"\nslug = \"student\"\nexclude_columns = [\"ssn\"]\n",
    ));
    assert_eq!(c.objects[1].schema, "crm");
    assert_eq!(c.objects[1].table, "students");
    assert_eq!(c.objects[1].exclude_columns, ["ssn"]);
    assert_eq!(c.objects[1].qualified_sql(), "\"crm\".\"students\"");
    assert_eq!(
        c.object("crm", "students").map(|o| o.slug.as_str()),
        Some("student")
    );
    assert!(c.object("public", "students").is_none());

    let no_objects = format!("[source]\nurl = \"{DB_URL}\"\n");
    assert_err(&no_objects, &["`objects`", "at least one"]);
    for bad in ["Lead", "1lead", "lead-x", "", "_lead"] {
        assert_err(
            &minimal(
                "",
                &format!("[[objects]]\ntable = \"x\"\nslug = \"{bad}\"\n"),
            ),
            &["`objects[1].slug`", "not a valid slug"],
        );
    }
    assert_err(
        &minimal("", "[[objects]]\ntable = \"users\"\nslug = \"lead\"\n"),
        &["`objects[1].slug`", "unique"],
    );
    assert_err(
        &minimal(
            "",
            "[[objects]]\ntable = \"public.leads\"\nslug = \"lead2\"\n",
        ),
        &["`objects[1].table`", "already mapped"],
    );
    for bad in ["a.b.c", "", ".x", "x.", " leads"] {
        assert_err(
            &minimal(
                "",
                &format!("[[objects]]\ntable = \"{bad}\"\nslug = \"x\"\n"),
            ),
            &["`objects[1].table`", "schema.table"],
        );
    }
    assert_err(
        &minimal("", "[[objects]]\nslug = \"x\"\n"),
        &["`objects[1].table`", "missing"],
    );
    assert_err(
        &minimal("", "[[objects]]\ntable = \"x\"\n"),
        &["`objects[1].slug`", "missing"],
    );
    assert_err(
        &minimal(
            "",
            "[[objects]]\ntable = \"x\"\nslug = \"x\"\nexclude_columns = [\"\"]\n",
        ),
        &["`objects[1].exclude_columns`"],
    );
}

#[test]
fn endpoint_ids() {
    for good in ["crm", "0crm", "crm_2-b"] {
        let text = endpoint("").replace("id = \"crm\"", &format!("id = \"{good}\""));
        assert_eq!(parse_ok(&text).endpoints[0].id, good);
    }
    for bad in ["Crm", "-crm", "_crm", "", "c.rm"] {
        let text = endpoint("").replace("id = \"crm\"", &format!("id = \"{bad}\""));
        assert_err(&text, &["`endpoints[0].id`", "not a valid endpoint id"]);
    }
    let dup = minimal("", &format!("{ENDPOINT}\n{ENDPOINT}"));
    assert_err(&dup, &["`endpoints[1].id`", "unique"]);
    let c = parse_ok(&endpoint(""));
    assert!(c.endpoint("crm").is_some());
    assert!(c.endpoint("other").is_none());
}

#[test]
fn endpoint_urls() {
    let with_url =
        |url: &str, extra: &str| endpoint(extra).replace("https://example.com/hook", url);
    for good in [
        "https://example.com/a?b=c",
        "http://127.0.0.1:8080/hook",
        "http://127.3.2.1/hook",
        "http://[::1]:9000/",
        "http://localhost:3000/x",
        "http://LOCALHOST/x",
    ] {
        parse_ok(&with_url(good, ""));
    }
    for bad in [
        "http://example.com/hook",
        "http://10.0.0.1/x",
        "http://[::2]/x",
        "http://localhost.example.com/",
    ] {
        assert_err(
            &with_url(bad, ""),
            &["`endpoints[0].url`", "loopback", "allow_insecure_http"],
        );
        let c = parse_ok(&with_url(bad, "allow_insecure_http = true\n"));
        assert!(c.endpoints[0].allow_insecure_http);
    }
    for bad in [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "ws://127.0.0.1/",
    ] {
        assert_err(
            &with_url(bad, ""),
            &["`endpoints[0].url`", "unsupported scheme"],
        );
    }
    assert_err(
        &with_url("example.com/hook", ""),
        &["`endpoints[0].url`", "not a valid URL"],
    );
    assert_err(&with_url("https://", ""), &["`endpoints[0].url`"]);

    let no_url = endpoint("").replace("url = \"https://example.com/hook\"\n", "");
    assert_err(&no_url, &["`endpoints[0].url`", "missing"]);
    assert_err(
        &endpoint("url_env = \"U\"\n"),
        &["`endpoints[0].url`", "not both"],
    );
    let env_url = endpoint("").replace(
        "url = \"https://example.com/hook\"",
        "url_env = \"CRM_URL\"",
    );
    let env = fake_env(&[("CRM_URL", "https://hooks.example.com/x")]);
    let c = Config::from_toml_str_with_env(&env_url, "walhook.toml", &env).unwrap();
    assert_eq!(c.endpoints[0].url.as_str(), "https://hooks.example.com/x");
    let e = parse_err(&env_url);
    assert!(
        e.contains("`endpoints[0].url_env`") && e.contains("CRM_URL"),
        "{e}"
    );
}

#[test]
fn endpoint_secrets() {
    let base = endpoint("").replace("secret = \"s3cr3t-value\"\n", "");
    assert_err(&base, &["`endpoints[0].secret`", "missing"]);
    assert_err(
        &format!("{base}secret = \"a\"\nsecret_env = \"B\"\n"),
        &["`endpoints[0].secret`", "only one"],
    );
    assert_err(
        &format!("{base}secrets = []\n"),
        &["`endpoints[0].secrets`", "at least one"],
    );
    assert_err(
        &format!("{base}secret = \"\"\n"),
        &["`endpoints[0].secret`", "empty"],
    );
    assert_err(
        &format!("{base}secret_env = \"CRM_SECRET\"\n"),
        &["`endpoints[0].secret_env`", "`CRM_SECRET` is not set"],
    );
    let env = fake_env(&[("S1", "one"), ("S2", "two")]);
    let c = Config::from_toml_str_with_env(
        &format!("{base}secrets_env = [\"S1\", \"S2\"]\n"),
        "walhook.toml",
        &env,
    )
    .unwrap();
    let got: Vec<_> = c.endpoints[0]
        .secrets
        .iter()
        .map(|k| k.secret().expose())
        .collect();
    assert_eq!(got, ["one", "two"]);
    let e = Config::from_toml_str_with_env(
        &format!("{base}secrets_env = [\"S1\", \"S3\"]\n"),
        "walhook.toml",
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("`endpoints[0].secrets_env`") && e.contains("`S3`"),
        "{e}"
    );
    let c = parse_ok(&format!("{base}secrets = [\"new\", \"old\"]\n"));
    assert_eq!(c.endpoints[0].secrets.len(), 2);
}

#[test]
fn signing_schemes() {
    let both = parse_ok(
        &endpoint("signing = [\"superleap\", \"standard-webhooks\"]\n")
            .replace("s3cr3t-value", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    );
    assert_eq!(
        both.endpoints[0].signing,
        [SigningScheme::Superleap, SigningScheme::StandardWebhooks]
    );
    let msg = parse_err(&endpoint("signing = [\"standard-webhooks\"]\n"));
    assert!(
        msg.contains("`endpoints[0].secret`") && msg.contains("whsec_"),
        "{msg}"
    );
    assert!(!msg.contains("s3cr3t-value"), "{msg}");
    for bad in ["whsec_", "whsec_not*base64!", "whsec_abc"] {
        let text = endpoint("signing = [\"standard-webhooks\"]\n").replace("s3cr3t-value", bad);
        let msg = parse_err(&text);
        assert!(msg.contains("whsec_<base64>"), "{msg}");
    }
    let rotation = endpoint("signing = [\"standard-webhooks\"]\n").replace(
        "secret = \"s3cr3t-value\"",
        "secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"old-plain-secret\"]",
    );
    let msg = parse_err(&rotation);
    assert!(
        msg.contains("`endpoints[0].secrets`") && msg.contains("#2"),
        "{msg}"
    );
    assert!(!msg.contains("old-plain-secret"), "{msg}");
    assert_err(
        &endpoint("signing = []\n"),
        &["`endpoints[0].signing`", "at least one"],
    );
    assert_err(
        &endpoint("signing = [\"svix\"]\n"),
        &["`endpoints[0].signing`", "unknown scheme"],
    );
    assert_err(
        &endpoint("signing = [\"superleap\", \"superleap\"]\n"),
        &["`endpoints[0].signing`", "twice"],
    );
    // Keys are decoded at load: signing has nothing left to check.
    let key = &both.endpoints[0].secrets.primary();
    assert_eq!(
        key.standard_webhooks_key().map(<[u8]>::len),
        Ok(24),
        "{key:?}"
    );
}

#[test]
fn event_filters() {
    for good in [
        "*",
        "lead.*",
        "*.create",
        "*.update",
        "*.delete",
        "lead.create",
        "student.delete",
    ] {
        let c = parse_ok(&endpoint(&format!("events = [\"{good}\"]\n")));
        assert_eq!(c.endpoints[0].events, [good]);
    }
    for bad in [
        "",
        "lead",
        "*.*",
        "lead.created",
        "Lead.create",
        "lead.create.x",
        "*.insert",
        "lead.",
        ".create",
        "**",
    ] {
        assert_err(
            &endpoint(&format!("events = [\"{bad}\"]\n")),
            &["`endpoints[0].events`", "invalid event filter"],
        );
    }
    assert_err(
        &endpoint("events = []\n"),
        &["`endpoints[0].events`", "subscribes to nothing"],
    );

    let c = parse_ok(&endpoint("events = [\"lead.create\", \"*.delete\"]\n"));
    let ep = &c.endpoints[0];
    assert!(ep.subscribes_to("lead.create") && ep.subscribes_to("user.delete"));
    assert!(!ep.subscribes_to("lead.update"));
}

#[test]
fn delivery_settings() {
    let c = parse_ok(&endpoint(
        "[delivery]\nordering = \"none\"\nmax_in_flight = 1\nheader_prefix = \"X-Acme\"\nlease = \"2m\"\nendpoint_disable_after = \"3d\"\nnotify_endpoint = \"crm\"\n",
    ));
    let d = &c.delivery;
    assert_eq!(d.ordering, Ordering::None);
    assert_eq!(d.max_in_flight, 1);
    assert_eq!(d.header_prefix.as_str(), "x-acme");
    assert_eq!(d.header_prefix.signature().as_str(), "x-acme-signature");
    assert_eq!(d.lease, Duration::from_secs(120));
    assert_eq!(
        d.endpoint_disable_after,
        Some(Duration::from_secs(3 * 86_400))
    );
    assert_eq!(d.notify_endpoint.as_deref(), Some("crm"));

    assert_err(
        &minimal("", "[delivery]\nordering = \"fifo\"\n"),
        &["`delivery.ordering`", "\"per-record\" or \"none\""],
    );
    for bad in ["0", "-3"] {
        assert_err(
            &minimal("", &format!("[delivery]\nmax_in_flight = {bad}\n")),
            &["`delivery.max_in_flight`", "at least 1"],
        );
    }
    for bad in ["", "x superleap", "x-", "-x", "x_y"] {
        assert_err(
            &minimal("", &format!("[delivery]\nheader_prefix = \"{bad}\"\n")),
            &["`delivery.header_prefix`"],
        );
    }
    // Leases are renewed while an attempt runs: a timeout may exceed them.
    let c = parse_ok(&endpoint("timeout = \"60s\"\n[delivery]\nlease = \"5s\"\n"));
    assert_eq!(c.delivery.lease, Duration::from_secs(5));
    assert_err(
        &minimal("", "[delivery]\nspill_after = \"0s\"\n"),
        &["`delivery.spill_after`"],
    );
    assert_err(
        &minimal("", "[delivery]\nwindow = 0\n"),
        &["`delivery.window`"],
    );
    assert_err(
        &endpoint("[delivery]\nnotify_endpoint = \"ops\"\n"),
        &["`delivery.notify_endpoint`", "\"ops\"", "crm"],
    );
}

#[test]
fn retry_settings() {
    let c = parse_ok(&minimal(
        "",
        "[delivery.retry]\ninitial = \"1s\"\nmultiplier = 3\nmax_interval = \"1m\"\nbackoff_window = \"10s\"\nthen_every = \"5s\"\ndisable_after = \"30s\"\njitter = 0\nschedule = [\"1s\", \"2s\", \"500ms\"]\nmax_attempts = 4\n",
    ));
    let r = &c.delivery.retry;
    assert_eq!(r.initial, Duration::from_secs(1));
    assert_eq!(r.multiplier, 3.0);
    assert_eq!(r.max_interval, Duration::from_secs(60));
    assert_eq!(r.backoff_window, Duration::from_secs(10));
    assert_eq!(r.then_every, Duration::from_secs(5));
    assert_eq!(r.disable_after, Duration::from_secs(30));
    assert_eq!(r.jitter, 0.0);
    assert_eq!(
        r.schedule.as_deref(),
        Some(
            &[
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_millis(500)
            ][..]
        )
    );
    assert_eq!(r.max_attempts, Some(4));

    let retry = |body: &str| minimal("", &format!("[delivery.retry]\n{body}\n"));
    assert_err(
        &retry("multiplier = 0.5"),
        &["`delivery.retry.multiplier`", ">= 1.0"],
    );
    assert_err(&retry("multiplier = nan"), &["`delivery.retry.multiplier`"]);
    assert_err(
        &retry("jitter = 1.5"),
        &["`delivery.retry.jitter`", "0.0 to 1.0"],
    );
    assert_err(&retry("jitter = -0.1"), &["`delivery.retry.jitter`"]);
    assert_err(
        &retry("schedule = []"),
        &["`delivery.retry.schedule`", "must not be empty"],
    );
    assert_err(
        &retry("schedule = [\"1s\"]\nmax_attempts = 0"),
        &["`delivery.retry.max_attempts`", "at least 1"],
    );
    assert_err(
        &retry("max_attempts = 3"),
        &["`delivery.retry.max_attempts`", "schedule"],
    );
    assert_err(
        &retry("initial = \"1h\"\nmax_interval = \"1m\""),
        &["`delivery.retry.max_interval`", "shorter than `initial`"],
    );
    assert_eq!(parse_ok(&retry("jitter = 1")).delivery.retry.jitter, 1.0);
}

#[test]
fn admin_settings() {
    let off = parse_ok(&minimal("", "[admin]\nlisten = \"\"\n"));
    assert!(off.admin.listen.is_none());
    let disabled = parse_ok(&minimal(
        "",
        "[admin]\nenabled = false\nlisten = \"0.0.0.0:9187\"\n",
    ));
    assert!(disabled.admin.listen.is_none());
    let local = parse_ok(&minimal("", "[admin]\nlisten = \"localhost:9000\"\n"));
    assert_eq!(local.admin.listen, Some("127.0.0.1:9000".parse().unwrap()));
    let v6 = parse_ok(&minimal("", "[admin]\nlisten = \"[::1]:9187\"\n"));
    assert_eq!(v6.admin.listen, Some("[::1]:9187".parse().unwrap()));

    let msg = parse_err(&minimal("", "[admin]\nlisten = \"0.0.0.0:9187\"\n"));
    assert!(
        msg.contains("`admin.listen`") && msg.contains("token"),
        "{msg}"
    );
    let c = parse_ok(&minimal(
        "",
        "[admin]\nlisten = \"0.0.0.0:9187\"\ntoken = \"tok-123\"\n",
    ));
    assert_eq!(c.admin.token.as_ref().map(Secret::expose), Some("tok-123"));
    let env = fake_env(&[("ADMIN_TOKEN", "tok-456")]);
    let c = Config::from_toml_str_with_env(
        &minimal(
            "",
            "[admin]\nlisten = \"10.0.0.5:9187\"\ntoken_env = \"ADMIN_TOKEN\"\n",
        ),
        "walhook.toml",
        &env,
    )
    .unwrap();
    assert_eq!(c.admin.token.as_ref().map(Secret::expose), Some("tok-456"));
    assert_err(
        &minimal("", "[admin]\ntoken_env = \"ADMIN_TOKEN\"\n"),
        &["`admin.token_env`", "`ADMIN_TOKEN` is not set"],
    );
    assert_err(
        &minimal("", "[admin]\ntoken = \"a\"\ntoken_env = \"B\"\n"),
        &["`admin.token`", "not both"],
    );
    for bad in ["9187", "127.0.0.1", "example.com:80", "127.0.0.1:99999"] {
        assert_err(
            &minimal("", &format!("[admin]\nlisten = \"{bad}\"\n")),
            &["`admin.listen`", "127.0.0.1:9187"],
        );
    }
}

#[test]
fn secrets_key_comes_from_the_named_variable() {
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);
    let text = minimal("", "");
    let c = Config::from_toml_str_with_env(&text, "walhook.toml", &fake_env(&[])).unwrap();
    assert_eq!(c.admin.secrets_key_env, "WALHOOK_SECRETS_KEY");
    assert!(c.admin.secrets_key.is_none());
    let pairs = [("WALHOOK_SECRETS_KEY", key.as_str())];
    let env = fake_env(&pairs);
    let c = Config::from_toml_str_with_env(&text, "walhook.toml", &env).unwrap();
    assert!(c.admin.secrets_key.is_some());
    // Another variable, named in the file.
    let text = minimal("", "[admin]\nsecrets_key_env = \"MY_KEY\"\n");
    let pairs = [("MY_KEY", key.as_str())];
    let env = fake_env(&pairs);
    let c = Config::from_toml_str_with_env(&text, "walhook.toml", &env).unwrap();
    assert_eq!(c.admin.secrets_key_env, "MY_KEY");
    assert!(c.admin.secrets_key.is_some());
    // A value that is not a key: an error naming the variable, not the value.
    let env = fake_env(&[("MY_KEY", "c2hvcnQ=")]);
    let msg = Config::from_toml_str_with_env(&text, "walhook.toml", &env)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("admin.secrets_key_env") && msg.contains("MY_KEY"),
        "{msg}"
    );
    assert!(msg.contains("32") && !msg.contains("c2hvcnQ"), "{msg}");
}
