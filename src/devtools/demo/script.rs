//! What the demo does: its tables, the scripted changes and the events they
//! must make, and its configuration with fresh secrets.

use rand::Rng;

/// The endpoint that gets every event and never fails; the script waits for
/// it after each change.
pub(super) const STEADY_ENDPOINT: &str = "crm";

/// The endpoint that answers 500 to its first `ANALYTICS_FAILURES` requests.
pub(super) const FLAKY_ENDPOINT: &str = "analytics";

/// How many requests the flaky endpoint answers with 500 first.
pub(super) const ANALYTICS_FAILURES: u32 = 2;

/// The four demo tables: three in `public`, and a custom object with a
/// composite key in its own schema.
pub(super) const TABLES_SQL: &str = "
CREATE TABLE public.leads (
  id text PRIMARY KEY, name text NOT NULL, email text, score int,
  created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE public.users (
  id bigint PRIMARY KEY, email text NOT NULL, password_hash text, active boolean NOT NULL DEFAULT true);
CREATE TABLE public.opportunities (
  id int PRIMARY KEY, lead_id text, stage text NOT NULL, value numeric(12,2), meta jsonb);
CREATE SCHEMA crm;
CREATE TABLE crm.students (
  school text, student_no int, name text NOT NULL, enrolled_on date,
  PRIMARY KEY (school, student_no));
INSERT INTO public.leads (id, name, email, score) VALUES
  ('L-0001', 'Edsger Dijkstra', 'edsger@example.com', 70),
  ('L-0002', 'Barbara Liskov', 'barbara@example.com', 90);
";

/// The object the demo backfills at the end: its rows from before walhook
/// started (the two seeded leads; the script's own lead is deleted by then).
pub(super) const BACKFILL_SLUG: &str = "lead";

/// The events the backfill sends, one per seeded lead.
pub(super) const BACKFILLED: &[&str] = &["lead.backfill", "lead.backfill"];

/// One scripted change and the event it must produce (none for an update of
/// an excluded column only).
pub(super) struct Step {
    pub(super) sql: &'static str,
    pub(super) event: Option<&'static str>,
}

pub(super) const STEPS: &[Step] = &[
    Step {
        sql: "INSERT INTO public.leads (id, name, email, score) VALUES ('L-1001', 'Ada Lovelace', 'ada@example.com', 40)",
        event: Some("lead.create"),
    },
    Step {
        sql: "INSERT INTO public.users (id, email, password_hash) VALUES (1, 'grace@example.com', '$argon2id$v=19$m=65536$c2FsdA$aGFzaA')",
        event: Some("user.create"),
    },
    Step {
        sql: "INSERT INTO public.opportunities (id, lead_id, stage, value, meta) VALUES (7, 'L-1001', 'qualification', 12500.00, '{\"source\": \"webinar\"}')",
        event: Some("opportunity.create"),
    },
    Step {
        sql: "INSERT INTO crm.students (school, student_no, name, enrolled_on) VALUES ('north', 42, 'Alan Turing', '2025-09-01')",
        event: Some("student.create"),
    },
    Step {
        sql: "UPDATE public.leads SET score = 85 WHERE id = 'L-1001'",
        event: Some("lead.update"),
    },
    Step {
        sql: "UPDATE public.users SET password_hash = '$argon2id$v=19$m=65536$bmV3$cm90YXRlZA' WHERE id = 1",
        event: None,
    },
    Step {
        sql: "UPDATE public.users SET email = 'grace.hopper@example.com' WHERE id = 1",
        event: Some("user.update"),
    },
    Step {
        sql: "UPDATE public.opportunities SET stage = 'won', value = 14000.00 WHERE id = 7",
        event: Some("opportunity.update"),
    },
    Step {
        sql: "SELECT pg_logical_emit_message(true, 'walhook', '{\"event\": \"invoice.paid\", \"key\": \"INV-7\", \"data\": {\"opportunity\": 7, \"amount\": 14000.00}}')",
        event: Some("invoice.paid"),
    },
    Step {
        sql: "UPDATE crm.students SET name = 'Alan M. Turing' WHERE school = 'north' AND student_no = 42",
        event: Some("student.update"),
    },
    Step {
        sql: "DELETE FROM public.opportunities WHERE id = 7",
        event: Some("opportunity.delete"),
    },
    Step {
        sql: "DELETE FROM crm.students WHERE school = 'north' AND student_no = 42",
        event: Some("student.delete"),
    },
    Step {
        sql: "DELETE FROM public.leads WHERE id = 'L-1001'",
        event: Some("lead.delete"),
    },
    Step {
        sql: "DELETE FROM public.users WHERE id = 1",
        event: Some("user.delete"),
    },
];

/// The excluded column; it must never appear in a body.
pub(super) const EXCLUDED_COLUMN: &str = "password_hash";

/// The demo's configuration: the cluster, the four objects, the two
/// endpoints, and the three-day retry rule scaled down to seconds.
pub(super) fn config_text(
    db_url: &str,
    port: u16,
    crm_secret: &str,
    analytics_secret: &str,
) -> String {
    format!(
        r#"[source]
url = "{db_url}"
name = "demo"
slot = "walhook"
publication = "walhook"
status_interval = "200ms"
connect_timeout = "10s"

[admin]
enabled = false

[[objects]]
table = "public.leads"
slug = "lead"

[[objects]]
table = "public.users"
slug = "user"
exclude_columns = ["{EXCLUDED_COLUMN}"]

[[objects]]
table = "public.opportunities"
slug = "opportunity"

[[objects]]
table = "crm.students"
slug = "student"

[[endpoints]]
id = "{STEADY_ENDPOINT}"
url = "http://127.0.0.1:{port}/hooks/{STEADY_ENDPOINT}"
secret = "{crm_secret}"
events = ["*"]
signing = ["superleap"]
timeout = "5s"

[[endpoints]]
id = "{FLAKY_ENDPOINT}"
url = "http://127.0.0.1:{port}/hooks/{FLAKY_ENDPOINT}"
secret = "{analytics_secret}"
events = ["lead.*", "student.*"]
signing = ["standard-webhooks"]
timeout = "5s"

[delivery.retry]
initial = "1s"
max_interval = "5s"
backoff_window = "20s"
then_every = "5s"
disable_after = "40s"
"#
    )
}

/// A fresh superleap secret: 32 random `[0-9A-Za-z]`.
pub(super) fn random_secret() -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// A fresh Standard Webhooks secret: `whsec_` + base64 of 24 random bytes.
pub(super) fn random_whsec() -> String {
    use base64::Engine as _;
    let key: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, SigningScheme};

    /// The demo's configuration with a made-up database and receiver port.
    pub(in crate::devtools::demo) fn demo_config() -> Config {
        Config::from_toml_str(
            &config_text(
                "postgres://postgres@127.0.0.1:5/walhook_demo",
                9,
                &random_secret(),
                &random_whsec(),
            ),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn config_is_valid_and_endpoints_use_both_schemes() {
        let cfg = demo_config();
        assert_eq!(cfg.objects.len(), 4);
        assert_eq!(cfg.objects[1].exclude_columns, vec![EXCLUDED_COLUMN]);
        assert_eq!(cfg.admin.listen, None);
        assert_eq!(cfg.endpoints[0].signing, vec![SigningScheme::Superleap]);
        assert_eq!(
            cfg.endpoints[1].signing,
            vec![SigningScheme::StandardWebhooks]
        );
        assert_eq!(cfg.delivery.retry.initial, Duration::from_secs(1));
        assert_eq!(cfg.delivery.retry.disable_after, Duration::from_secs(40));
    }

    #[test]
    fn script_touches_every_object_with_every_verb() {
        let script: Vec<&str> = STEPS.iter().filter_map(|s| s.event).collect();
        for slug in ["lead", "user", "opportunity", "student"] {
            for verb in ["create", "update", "delete"] {
                let name = format!("{slug}.{verb}");
                assert_eq!(script.iter().filter(|n| **n == name).count(), 1, "{name}");
            }
        }
        // The excluded-column update is there, and emits nothing.
        assert!(
            STEPS
                .iter()
                .any(|s| s.event.is_none() && s.sql.contains(EXCLUDED_COLUMN))
        );
    }

    #[test]
    fn secrets_are_fresh_and_well_formed() {
        let a = random_secret();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_secret());
        assert!(crate::config::decode_whsec(&random_whsec()).is_ok());
    }
}
