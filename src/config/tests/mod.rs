//! The configuration's unit tests: the spec. Helpers and whole-file tests here;
//! per-key tests in `fields`, error reporting in `errors`.

mod errors;
mod fields;
mod policy;

use std::time::Duration;

use super::*;

const DB_URL: &str = "postgres://walhook:db-pass-123@127.0.0.1:5432/app";

fn fake_env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// A minimal valid config with `extra` appended (and `source_extra` inside [source]).
fn minimal(source_extra: &str, extra: &str) -> String {
    format!(
        "[source]\nurl = \"{DB_URL}\"\n{source_extra}\n\n[[objects]]\ntable = \"leads\"\nslug = \"lead\"\n\n{extra}\n"
    )
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str_with_env(text, "walhook.toml", &no_env)
}

fn parse_ok(text: &str) -> Config {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got: {e}\n--- config:\n{text}"),
    }
}

/// The error message; also checks it names the file.
fn parse_err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("walhook.toml: "), "{msg}");
            msg
        }
    }
}

fn assert_err(text: &str, needles: &[&str]) {
    let msg = parse_err(text);
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not contain {n:?}");
    }
}

const ENDPOINT: &str =
    "[[endpoints]]\nid = \"crm\"\nurl = \"https://example.com/hook\"\nsecret = \"s3cr3t-value\"\n";

fn endpoint(extra: &str) -> String {
    minimal("", &format!("{ENDPOINT}{extra}"))
}

#[test]
fn example_file_parses() {
    let env = fake_env(&[
        ("DATABASE_URL", DB_URL),
        ("WALHOOK_CRM_SECRET", "crm-secret-xyz"),
        ("WALHOOK_ADMIN_TOKEN", "admin-token-xyz"),
    ]);
    let c = Config::from_toml_str_with_env(
        include_str!("../../../config.example.toml"),
        "config.example.toml",
        &env,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.source.url.expose(), DB_URL);
    let slugs: Vec<_> = c.objects.iter().map(|o| o.slug.as_str()).collect();
    assert_eq!(slugs, ["lead", "user", "opportunity", "student"]);
    assert_eq!(c.objects[1].exclude_columns, ["password_hash"]);
    assert_eq!(c.objects[3].schema, "crm");
    assert_eq!(c.objects[3].table, "students");
    assert_eq!(
        c.endpoints[0].secrets.primary().secret().expose(),
        "crm-secret-xyz"
    );
    assert_eq!(c.endpoints[0].events, ["lead.*", "opportunity.create"]);
    assert_eq!(
        c.admin.token.as_ref().map(Secret::expose),
        Some("admin-token-xyz")
    );
    assert_eq!(c.delivery.retry, RetryConfig::default());
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn example_file_keys_are_the_defaults() {
    // The example documents the defaults: apart from what it sets on purpose it
    // must give the same config as a minimal file.
    let env = fake_env(&[
        ("DATABASE_URL", DB_URL),
        ("WALHOOK_CRM_SECRET", "x"),
        ("WALHOOK_ADMIN_TOKEN", "t"),
    ]);
    let ex =
        Config::from_toml_str_with_env(include_str!("../../../config.example.toml"), "x", &env)
            .unwrap();
    let min = parse_ok(&endpoint(""));
    assert_eq!(format!("{:?}", ex.source), format!("{:?}", min.source));
    assert_eq!(format!("{:?}", ex.ledger), format!("{:?}", min.ledger));
    assert_eq!(format!("{:?}", ex.delivery), format!("{:?}", min.delivery));
    assert_eq!(ex.endpoints[0].timeout, min.endpoints[0].timeout);
    assert_eq!(ex.endpoints[0].signing, min.endpoints[0].signing);
    assert_eq!(ex.admin.listen, min.admin.listen);
}

#[test]
fn spec_example_parses() {
    let spec = r#"
[source]
url_env = "DATABASE_URL"          # or url = "postgres://..."
name = "app"                      # first part of event ids
slot = "walhook"
publication = "walhook"

[ledger]
schema = "walhook"                # in the source database unless url is set

[[objects]]
table = "public.leads"
slug = "lead"

[[objects]]
table = "public.users"
slug = "user"
exclude_columns = ["password_hash"]

[[objects]]
table = "crm.students"            # a custom object
slug = "student"

[[endpoints]]
id = "crm"
url = "https://example.com/hooks/walhook"
secret_env = "WALHOOK_CRM_SECRET"
events = ["lead.*", "opportunity.create"]   # default ["*"]
signing = ["superleap"]                     # and/or "standard-webhooks"
timeout = "10s"

[delivery]
ordering = "per-record"           # or "none"
max_in_flight = 256

[delivery.retry]                  # defaults = the three-day rule
initial = "30s"
multiplier = 2.0
max_interval = "6h"
backoff_window = "24h"            # exponential until the event is this old
then_every = "24h"                # then once a day
disable_after = "72h"             # then the delivery is disabled
# schedule = ["1m", "5m", "15m", "1h"]    # alternative: a fixed list

[admin]
listen = "127.0.0.1:9187"
token_env = "WALHOOK_ADMIN_TOKEN"
"#;
    let env = fake_env(&[
        ("DATABASE_URL", DB_URL),
        ("WALHOOK_CRM_SECRET", "x"),
        ("WALHOOK_ADMIN_TOKEN", "t"),
    ]);
    let c = Config::from_toml_str_with_env(spec, "walhook.toml", &env).unwrap();
    // `opportunity.create` names no object there: valid, but worth a warning.
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("opportunity.create"), "{w:?}");
}

#[test]
fn defaults() {
    let env = fake_env(&[("DATABASE_URL", DB_URL)]);
    let text = "[[objects]]\ntable = \"leads\"\nslug = \"lead\"\n";
    let c = Config::from_toml_str_with_env(text, "walhook.toml", &env).unwrap();
    assert_eq!(c.source.url.expose(), DB_URL);
    assert_eq!(c.source.name, "app");
    assert_eq!(c.source.slot, "walhook");
    assert_eq!(c.source.publication, "walhook");
    assert_eq!(c.source.connect_timeout, Duration::from_secs(30));
    assert_eq!(c.source.replica_identity, ReplicaIdentity::Full);
    assert_eq!(c.source.status_interval, Duration::from_secs(1));
    assert_eq!(c.ledger.schema, "walhook");
    assert!(c.ledger.url.is_none());
    assert_eq!(c.objects[0].schema, "public");
    assert_eq!(c.objects[0].table, "leads");
    assert!(c.objects[0].exclude_columns.is_empty());
    assert!(c.endpoints.is_empty());
    assert_eq!(c.delivery.ordering, Ordering::PerRecord);
    assert_eq!(c.delivery.max_in_flight, 256);
    assert_eq!(c.delivery.header_prefix.as_str(), "x-superleap");
    assert_eq!(c.delivery.lease, Duration::from_secs(15));
    assert_eq!(c.delivery.spill_after, Duration::from_secs(1));
    assert_eq!(c.ledger.keep_bodies, KeepBodies::Failed);
    assert_eq!(c.delivery.endpoint_disable_after, None);
    assert_eq!(c.delivery.notify_endpoint, None);
    let r = &c.delivery.retry;
    assert_eq!(r.initial, Duration::from_secs(30));
    assert_eq!(r.multiplier, 2.0);
    assert_eq!(r.max_interval, Duration::from_secs(6 * 3600));
    assert_eq!(r.backoff_window, Duration::from_secs(24 * 3600));
    assert_eq!(r.then_every, Duration::from_secs(24 * 3600));
    assert_eq!(r.disable_after, Duration::from_secs(72 * 3600));
    assert_eq!(r.jitter, 0.2);
    assert_eq!(r.schedule, None);
    assert_eq!(r.max_attempts, None);
    assert_eq!(c.admin.listen, Some("127.0.0.1:9187".parse().unwrap()));
    assert!(c.admin.token.is_none());
    assert_eq!(c.warnings().len(), 1, "no endpoints: {:?}", c.warnings());
}

#[test]
fn endpoint_defaults() {
    let c = parse_ok(&endpoint(""));
    let e = &c.endpoints[0];
    assert_eq!(e.id, "crm");
    assert_eq!(e.url.as_str(), "https://example.com/hook");
    assert_eq!(e.secrets.len(), 1);
    assert_eq!(e.events, ["*"]);
    assert_eq!(e.signing, [SigningScheme::Superleap]);
    assert_eq!(e.timeout, Duration::from_secs(10));
    assert!(!e.allow_insecure_http);
    assert!(e.subscribes_to("lead.create"));
}

#[test]
fn missing_database_url_names_key_and_variable() {
    let text = "[[objects]]\ntable = \"leads\"\nslug = \"lead\"\n";
    let e = Config::from_toml_str_with_env(text, "walhook.toml", &no_env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`source.url_env`"), "{e}");
    assert!(e.contains("DATABASE_URL"), "{e}");
    assert!(e.contains("not set"), "{e}");
    let env = fake_env(&[("DATABASE_URL", "  ")]);
    let e = Config::from_toml_str_with_env(text, "walhook.toml", &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("DATABASE_URL") && e.contains("empty"), "{e}");
}

#[test]
fn tls_settings_are_validated_with_the_url() {
    for ok in [
        "sslmode=disable",
        "sslmode=require",
        "sslmode=verify-full&sslrootcert=/etc/ca.pem",
        "sslrootcert=system",
        "sslmode=verify-ca&sslrootcert=ca.pem&sslcert=c.pem&sslkey=k.pem",
    ] {
        parse_ok(&minimal("", "").replace(DB_URL, &format!("{DB_URL}?{ok}")));
    }
    assert_err(
        &minimal("", "").replace(DB_URL, &format!("{DB_URL}?sslmode=verify_full")),
        &["`source.url`", "sslmode=verify_full is not a valid sslmode"],
    );
    assert_err(
        &minimal("", "").replace(DB_URL, &format!("{DB_URL}?sslmode=verify-full")),
        &["`source.url`", "needs sslrootcert"],
    );
    // The replication connection cannot bind the channel; the ledger's can.
    assert_err(
        &minimal("", "").replace(DB_URL, &format!("{DB_URL}?channel_binding=require")),
        &["`source.url`", "channel_binding=require cannot be honoured"],
    );
    parse_ok(&minimal(
        "",
        &format!("[ledger]\nurl = \"{DB_URL}2?channel_binding=require&sslmode=require\"\n"),
    ));
}

#[test]
fn url_env_indirection() {
    let text = "[source]\nurl_env = \"MY_DB\"\n[[objects]]\ntable = \"leads\"\nslug = \"lead\"\n";
    let env = fake_env(&[("MY_DB", DB_URL), ("DATABASE_URL", "postgres://other/x")]);
    let c = Config::from_toml_str_with_env(text, "walhook.toml", &env).unwrap();
    assert_eq!(c.source.url.expose(), DB_URL);
    assert_err(
        &minimal("url_env = \"X\"", ""),
        &["`source.url`", "either `url` or `url_env`"],
    );
    assert_err(
        &minimal("", "").replace(DB_URL, ""),
        &["`source.url`", "empty"],
    );
    assert_err(
        &minimal("", "").replace(DB_URL, "not a url at all ="),
        &["`source.url`", "PostgreSQL connection string"],
    );
}
