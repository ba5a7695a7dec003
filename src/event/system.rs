//! Events walhook makes itself, besides the row events of mapped tables:
//! `endpoint.disabled` (sent to `delivery.notify_endpoint`) and
//! `walhook.ping` (`walhook endpoints ping`). They have no commit position,
//! so their id suffix is random; otherwise their ids have the row events'
//! shape, `{source}:{slug}:{time_ms}:{record_key}:{event}:{suffix}`.

use super::id::{escape_key, random_suffix};
use super::{Event, Verb};

/// `endpoint.disabled`: an endpoint was disabled as a whole.
pub const ENDPOINT_DISABLED: &str = "endpoint.disabled";
/// `walhook.ping`: a test event sent by hand.
pub const PING: &str = "walhook.ping";
/// Every system event name (valid as an endpoint's event filter).
pub const NAMES: [&str; 2] = [ENDPOINT_DISABLED, PING];

/// The body of a ping.
pub const PING_BODY: &str = r#"{"before":{},"after":{"ping":true},"diff":{}}"#;

fn system_event(
    source: &str,
    slug: &str,
    name: &str,
    verb: Verb,
    record_key: &str,
    now_unix_ms: i64,
    body: String,
) -> Event {
    let record_key = escape_key(record_key);
    Event {
        id: format!(
            "{source}:{slug}:{now_unix_ms}:{record_key}:{name}:{}",
            random_suffix()
        ),
        name: name.to_string(),
        slug: slug.to_string(),
        verb,
        record_key,
        body,
    }
}

/// `endpoint.disabled` for `endpoint`, disabled for `reason`.
pub fn endpoint_disabled(source: &str, endpoint: &str, reason: &str, now_unix_ms: i64) -> Event {
    let body = serde_json::json!({
        "before": {},
        "after": {"endpoint": endpoint, "reason": reason, "enabled": false},
        "diff": {"enabled": false},
    })
    .to_string();
    system_event(
        source,
        "endpoint",
        ENDPOINT_DISABLED,
        Verb::Update,
        endpoint,
        now_unix_ms,
        body,
    )
}

/// `walhook.ping` for `endpoint`.
pub fn ping(source: &str, endpoint: &str, now_unix_ms: i64) -> Event {
    system_event(
        source,
        "walhook",
        PING,
        Verb::Update,
        endpoint,
        now_unix_ms,
        PING_BODY.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(id: &str) -> Vec<&str> {
        id.split(':').collect()
    }

    #[test]
    fn ids_have_the_row_events_shape() {
        let e = endpoint_disabled("app", "crm", "410 Gone", 1_741_686_315_971);
        let p = parts(&e.id);
        assert_eq!(
            p[..5],
            [
                "app",
                "endpoint",
                "1741686315971",
                "crm",
                "endpoint.disabled"
            ]
        );
        assert_eq!(p[5].len(), 8);
        assert_eq!(e.name, ENDPOINT_DISABLED);
        let body: serde_json::Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(body["after"]["reason"], "410 Gone");
        assert_eq!(body["diff"], serde_json::json!({"enabled": false}));
    }

    #[test]
    fn ping_ids_differ_and_bodies_are_json() {
        let a = ping("app", "crm", 5);
        let b = ping("app", "crm", 5);
        assert_ne!(a.id, b.id);
        assert_eq!(
            parts(&a.id)[..5],
            ["app", "walhook", "5", "crm", "walhook.ping"]
        );
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["after"]["ping"], true);
    }
}
