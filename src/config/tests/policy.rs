//! Per-endpoint policy (`retry`, `headers`, `rate_limit`, `max_in_flight`,
//! `filter`) and per-object `when_changed`.

use super::*;

const GLOBAL: &str = "[delivery.retry]\ninitial = \"2s\"\nmax_interval = \"1m\"\njitter = 0\n";

fn with_retry(endpoint_retry: &str) -> String {
    minimal(
        "",
        &format!("{ENDPOINT}retry = {{ {endpoint_retry} }}\n\n{GLOBAL}"),
    )
}

#[test]
fn an_endpoint_retry_table_overrides_the_global_policy_key_by_key() {
    let c = parse_ok(&with_retry(
        r#"schedule = ["1s", "5s"], max_attempts = 3, disable_after = "1h""#,
    ));
    let r = &c.endpoints[0].retry;
    assert_eq!(
        r.schedule,
        Some(vec![Duration::from_secs(1), Duration::from_secs(5)])
    );
    assert_eq!(r.max_attempts, Some(3));
    assert_eq!(r.disable_after, Duration::from_secs(3600));
    // Inherited from [delivery.retry], then the defaults.
    assert_eq!(r.initial, Duration::from_secs(2));
    assert_eq!(r.jitter, 0.0);
    assert_eq!(r.then_every, Duration::from_secs(24 * 3600));
    assert_eq!(c.delivery.retry.schedule, None);
    // Without a table, the global policy.
    let c = parse_ok(&minimal("", &format!("{ENDPOINT}\n{GLOBAL}")));
    assert_eq!(c.endpoints[0].retry, c.delivery.retry);
    // The table form works as well as the inline one.
    let c = parse_ok(&endpoint("\n[endpoints.retry]\ninitial = \"5s\"\n"));
    assert_eq!(c.endpoints[0].retry.initial, Duration::from_secs(5));
}

#[test]
fn endpoint_retry_errors_name_the_endpoint_key_and_line() {
    let text = with_retry(r#"initial = "0s""#);
    let line = text.lines().position(|l| l.starts_with("retry")).unwrap() + 1;
    assert_err(
        &text,
        &[
            &format!("line {line}: `endpoints[0].retry.initial`"),
            "longer than zero",
        ],
    );
    assert_err(
        &with_retry("tries = 3"),
        &["unknown key `endpoints[0].retry.tries`", "max_attempts"],
    );
    assert_err(
        &with_retry(r#"schedule = ["1s", "x"]"#),
        &["`endpoints[0].retry.schedule", "expected a duration"],
    );
    // Checks across keys apply to the merged policy.
    assert_err(
        &with_retry(r#"initial = "5m""#),
        &[
            "`endpoints[0].retry.max_interval`",
            "shorter than `initial`",
        ],
    );
    assert_err(
        &with_retry("max_attempts = 2"),
        &["`endpoints[0].retry.max_attempts`", "schedule"],
    );
}

#[test]
fn extra_headers_from_values_and_the_environment() {
    let text = endpoint(r#"headers = { "X-Api-Key" = { env = "CRM_KEY" }, x-tenant = "acme" }"#);
    let env = fake_env(&[("CRM_KEY", "key-from-env-123")]);
    let c = Config::from_toml_str_with_env(&text, "walhook.toml", &env).unwrap();
    let h: Vec<(&str, &str)> = c.endpoints[0]
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.expose()))
        .collect();
    assert_eq!(h, [("x-api-key", "key-from-env-123"), ("x-tenant", "acme")]);
    assert!(!format!("{c:?}").contains("key-from-env-123"));
    assert!(!format!("{c:?}").contains("acme"));
    assert_err(
        &text,
        &[
            "`endpoints[0].headers.X-Api-Key.env`",
            "`CRM_KEY` is not set",
        ],
    );
}

#[test]
fn reserved_and_bad_header_names_are_rejected() {
    for (name, why) in [
        ("Content-Type", "sets it"),
        ("host", "sets it"),
        ("content-length", "sets it"),
        ("transfer-encoding", "sets it"),
        ("user-agent", "walhook/<version>"),
        ("x-superleap-signature", "header_prefix"),
        ("X-Superleap-Anything", "header_prefix"),
        ("webhook-id", "Standard Webhooks"),
        ("proxy-authorization", "hop-by-hop"),
    ] {
        assert_err(
            &endpoint(&format!("headers = {{ \"{name}\" = \"v\" }}")),
            &[&format!("`endpoints[0].headers.{name}`"), why],
        );
    }
    assert_err(
        &endpoint(r#"headers = { "bad name" = "v" }"#),
        &["not a valid header name"],
    );
    assert_err(
        &endpoint(r#"headers = { "x-a" = "1", "X-A" = "2" }"#),
        &["set twice"],
    );
    // A prefix of its own frees the default one; authorization is allowed.
    let c = parse_ok(&minimal(
        "",
        &format!(
            "{ENDPOINT}headers = {{ x-superleap-v = \"1\", authorization = \"Bearer t\" }}\n[delivery]\nheader_prefix = \"x-acme\"\n"
        ),
    ));
    assert_eq!(c.endpoints[0].headers.len(), 2);
}

#[test]
fn header_values_never_appear_in_errors() {
    for (value, needle) in [
        (r#""secret-line\nbreak""#, "not a valid header value"),
        (r#""  ""#, "must not be empty"),
        ("42", "not shown"),
        (r#"{ var = "X" }"#, "endpoints[0].headers.x-key"),
    ] {
        let msg = parse_err(&endpoint(&format!("headers = {{ x-key = {value} }}")));
        assert!(msg.contains(needle), "{msg}");
        assert!(!msg.contains("secret-line") && !msg.contains("42"), "{msg}");
    }
}

#[test]
fn rate_limit_and_max_in_flight() {
    let c = parse_ok(&endpoint("rate_limit = 5\nmax_in_flight = 1"));
    assert_eq!(c.endpoints[0].rate_limit, Some(5.0));
    assert_eq!(c.endpoints[0].max_in_flight, Some(1));
    assert!(c.endpoints[0].ledger_only());
    let c = parse_ok(&endpoint("rate_limit = 0.5"));
    assert_eq!(c.endpoints[0].rate_limit, Some(0.5));
    let c = parse_ok(&endpoint(""));
    assert_eq!(
        (c.endpoints[0].rate_limit, c.endpoints[0].max_in_flight),
        (None, None)
    );
    assert!(!c.endpoints[0].ledger_only());
    assert_err(
        &endpoint("rate_limit = 0"),
        &["`endpoints[0].rate_limit`", "above 0"],
    );
    assert_err(&endpoint("rate_limit = -2"), &["`endpoints[0].rate_limit`"]);
    assert_err(
        &endpoint("max_in_flight = 0"),
        &["`endpoints[0].max_in_flight`", "at least 1"],
    );
}

#[test]
fn a_filter_compiles_and_a_bad_one_names_endpoint_line_and_position() {
    let c = parse_ok(&endpoint(
        r#"filter = 'after.stage == "won" && before.stage != "won"'"#,
    ));
    let f = c.endpoints[0].filter.as_ref().unwrap();
    assert_eq!(
        f.source(),
        r#"after.stage == "won" && before.stage != "won""#
    );
    let text = endpoint(r#"filter = 'after.stage == "won" &&'"#);
    let line = text.lines().position(|l| l.starts_with("filter")).unwrap() + 1;
    assert_err(
        &text,
        &[
            &format!("line {line}: `endpoints[0].filter` (endpoint \"crm\")"),
            "line 1, column 24 of the expression",
        ],
    );
    assert_err(
        &endpoint(r#"filter = 'row.stage == "won"'"#),
        &["column 1 of the expression", "unknown variable `row`"],
    );
}

#[test]
fn when_changed_lists_columns() {
    let obj = |extra: &str| {
        format!(
            "[source]\nurl = \"{DB_URL}\"\n[[objects]]\ntable = \"leads\"\nslug = \"lead\"\n{extra}\n"
        )
    };
    let c = parse_ok(&obj(r#"when_changed = ["stage", "score"]"#));
    assert_eq!(c.objects[0].when_changed, ["stage", "score"]);
    assert!(parse_ok(&obj("")).objects[0].when_changed.is_empty());
    assert_err(
        &obj("when_changed = []"),
        &["`objects[0].when_changed`", "drop every update"],
    );
    assert_err(
        &obj(r#"when_changed = ["a", "a"]"#),
        &["`objects[0].when_changed`", "listed twice"],
    );
    assert_err(
        &obj("exclude_columns = [\"note\"]\nwhen_changed = [\"stage\", \"note\"]"),
        &[
            "`objects[0].when_changed`",
            "\"note\" is also in exclude_columns",
        ],
    );
}

#[test]
fn the_example_file_policy_lines_are_valid_when_uncommented() {
    let keys = [
        "when_changed",
        "retry",
        "headers",
        "rate_limit",
        "max_in_flight",
        "filter",
    ];
    let text: String = include_str!("../../../config.example.toml")
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if keys.iter().any(|k| rest.starts_with(&format!("{k} ="))) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let env = fake_env(&[
        ("DATABASE_URL", DB_URL),
        ("WALHOOK_CRM_SECRET", "x"),
        ("WALHOOK_CRM_API_KEY", "k"),
        ("WALHOOK_ADMIN_TOKEN", "t"),
    ]);
    let c = Config::from_toml_str_with_env(&text, "config.example.toml", &env)
        .unwrap_or_else(|e| panic!("{e}"));
    let ep = &c.endpoints[0];
    assert_eq!(ep.retry.max_attempts, Some(5));
    assert_eq!(ep.headers.len(), 2);
    assert_eq!((ep.rate_limit, ep.max_in_flight), (Some(10.0), Some(1)));
    assert!(ep.filter.is_some());
    assert_eq!(c.objects[0].when_changed, ["stage", "score"]);
}
