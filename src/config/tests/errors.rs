//! Error reporting: unknown keys, types, syntax, durations; secrets kept out.

use super::*;

#[test]
fn unknown_keys_name_the_path_and_line() {
    assert_err(
        &minimal("slott = \"x\"", ""),
        &[
            "line 3",
            "unknown key `source.slott`, expected one of: url, url_env, name, slot",
        ],
    );
    assert_err(
        "bogus = 1\n",
        &["line 1", "unknown key `bogus`", "source, ledger, objects"],
    );
    assert_err(
        &minimal(
            "",
            "[[objects]]\ntable = \"users\"\nslug = \"user\"\nexclude = []\n",
        ),
        &["unknown key `objects[1].exclude`", "exclude_columns"],
    );
    assert_err(
        &endpoint("secret_envs = \"X\"\n"),
        &["unknown key `endpoints[0].secret_envs`"],
    );
    assert_err(
        &minimal("", "[delivery.retry]\ninitial = \"1s\"\ninitail = \"1s\"\n"),
        &["line 11", "unknown key `delivery.retry.initail`"],
    );
    assert_err(
        &minimal("", "[delivery]\nretry = { intial = \"1s\" }\n"),
        &["unknown key `delivery.retry.intial`"],
    );
    assert_err(
        &minimal("", "[admin]\ntokn = \"x\"\n"),
        &["unknown key `admin.tokn`"],
    );
    assert_err(
        &minimal("", "[ledger]\nschem = \"x\"\n"),
        &["unknown key `ledger.schem`"],
    );
}

#[test]
fn type_errors_name_the_key() {
    assert_err(
        &minimal("", "[delivery]\nmax_in_flight = \"many\"\n"),
        &["line 10", "`delivery.max_in_flight`", "invalid type"],
    );
    assert_err(
        &endpoint("allow_insecure_http = \"yes\"\n"),
        &["`endpoints[0].allow_insecure_http`"],
    );
    assert_err(
        &endpoint("events = [\"*\", 3]\n"),
        &["`endpoints[0].events"],
    );
}

#[test]
fn syntax_error_has_a_line() {
    assert_err("[source\nurl = 1\n", &["line 1"]);
}

#[test]
fn datetime_value_still_names_the_key() {
    assert_err(
        &minimal("when = 1979-05-27", ""),
        &["line 3", "unknown key `source.when`"],
    );
    assert_err(
        &minimal(
            "",
            "[delivery]
header_prefix = 1979-05-27T07:32:00Z
",
        ),
        &["line 10", "`delivery.header_prefix`", "invalid type"],
    );
}

#[test]
fn bad_durations_in_config() {
    assert_err(
        &minimal("connect_timeout = \"30 seconds\"", ""),
        &[
            "line 3",
            "`source.connect_timeout`",
            "expected a duration like \"30s\"",
        ],
    );
    assert_err(
        &endpoint("timeout = 10\n"),
        &[
            "`endpoints[0].timeout`",
            "invalid type: integer",
            "expected a duration like",
        ],
    );
    assert_err(
        &minimal("", "[delivery.retry]\nschedule = [\"1m\", \"5\"]\n"),
        &["`delivery.retry.schedule", "expected a duration like"],
    );
}

#[test]
fn zero_durations_rejected() {
    let cases = [
        (
            minimal("connect_timeout = \"0s\"", ""),
            "source.connect_timeout",
        ),
        (
            minimal("status_interval = \"0ms\"", ""),
            "source.status_interval",
        ),
        (endpoint("timeout = \"0s\"\n"), "endpoints[0].timeout"),
        (
            minimal("", "[delivery]\nlease = \"0s\"\n"),
            "delivery.lease",
        ),
        (
            minimal("", "[delivery]\nendpoint_disable_after = \"0s\"\n"),
            "delivery.endpoint_disable_after",
        ),
        (
            minimal("", "[delivery.retry]\ninitial = \"0s\"\n"),
            "delivery.retry.initial",
        ),
        (
            minimal("", "[delivery.retry]\nmax_interval = \"0s\"\n"),
            "delivery.retry.max_interval",
        ),
        (
            minimal("", "[delivery.retry]\nthen_every = \"0s\"\n"),
            "delivery.retry.then_every",
        ),
        (
            minimal("", "[delivery.retry]\ndisable_after = \"0s\"\n"),
            "delivery.retry.disable_after",
        ),
        (
            minimal("", "[delivery.retry]\nschedule = [\"1s\", \"0s\"]\n"),
            "delivery.retry.schedule",
        ),
    ];
    for (text, key) in cases {
        assert_err(&text, &[&format!("`{key}`"), "longer than zero"]);
    }
    // A zero backoff window means "no exponential phase" and is allowed.
    let c = parse_ok(&minimal("", "[delivery.retry]\nbackoff_window = \"0s\"\n"));
    assert_eq!(c.delivery.retry.backoff_window, Duration::ZERO);
}

#[test]
fn secrets_never_in_debug_output() {
    let text = minimal(
        "",
        "[[endpoints]]\nid = \"crm\"\nurl = \"https://example.com/h\"\nsecrets = [\"hook-secret-1\", \"hook-secret-2\"]\n[admin]\ntoken = \"admin-token-1\"\n",
    );
    let c = parse_ok(&text);
    let dbg = format!("{c:?} {:#?}", c);
    for s in [
        "db-pass-123",
        "hook-secret-1",
        "hook-secret-2",
        "admin-token-1",
    ] {
        assert!(!dbg.contains(s), "{s} leaked into Debug output");
    }
    assert!(dbg.contains("Secret(***)"));
}

#[test]
fn secrets_never_in_errors() {
    const S: &str = "very-secret-value";
    let cases = [
        // Type errors on secret-bearing keys quote the value in serde's message.
        endpoint(&format!("secrets = \"{S}\"\n")).replace("secret = \"s3cr3t-value\"\n", ""),
        minimal("", &format!("[admin]\ntoken = [\"{S}\"]\nlisten = 5\n")),
        minimal("", &format!("[admin]\ntoken = {{ x = \"{S}\" }}\n")),
        minimal("", "").replace(
            DB_URL,
            &format!("postgres://u:{S}@127.0.0.1/db?sslmode=nope"),
        ),
        minimal("", "").replace(DB_URL, &format!("{S} is not a url")),
        endpoint("signing = [\"standard-webhooks\"]\n").replace("s3cr3t-value", S),
        endpoint("").replace(
            "https://example.com/hook",
            &format!("http://user:{S}@example.com/"),
        ),
        endpoint("").replace("https://example.com/hook", &format!("https://[{S}]/")),
        minimal(
            "",
            &format!("[ledger]\nurl = \"postgres://u:{S}@127.0.0.1/x?sslmode=nope\"\n"),
        ),
        // Syntax errors: an unterminated string holding a secret.
        minimal("", &format!("[admin]\ntoken = \"{S}\n")),
        minimal("", &format!("[admin]\ntoken = '{S}\n")),
        minimal("", &format!("[admin]\ntoken = {S}\n")),
    ];
    for text in cases {
        let msg = parse_err(&text);
        let dbg = format!("{:?}", parse(&text).unwrap_err());
        assert!(
            !msg.contains(S) && !dbg.contains(S),
            "secret leaked: {msg}\n{text}"
        );
    }
    // Secrets from the environment are not echoed either.
    let env = fake_env(&[("CRM_SECRET", S)]);
    let text = endpoint("signing = [\"standard-webhooks\"]\n")
        .replace("secret = \"s3cr3t-value\"", "secret_env = \"CRM_SECRET\"");
    let msg = Config::from_toml_str_with_env(&text, "walhook.toml", &env)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`endpoints[0].secret_env`") && !msg.contains(S),
        "{msg}"
    );
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, minimal("slott = 1", "")).unwrap();
    let msg = Config::load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("walhook.toml") && msg.contains("source.slott"),
        "{msg}"
    );
    let missing = Config::load(&dir.path().join("nope.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("cannot read config file") && missing.contains("nope.toml"),
        "{missing}"
    );
}
