//! Custom events from SQL: an application emits a logical message with the
//! prefix `walhook` inside its transaction,
//!
//! ```sql
//! SELECT pg_logical_emit_message(true, 'walhook',
//!   '{"event":"invoice.paid","key":"inv_42","data":{"amount":120}}');
//! ```
//!
//! and walhook delivers `invoice.paid` in commit order with the row changes
//! of that transaction, only if it commits. `event` is required (`slug.verb`,
//! lower case); `key` (a string or number) is the record key for per-record
//! order and the id, default empty; `data` is any JSON value, default `{}`.
//! The body has the row events' shape: `before` `{}`, `after` and `diff` the
//! data. The id is a row event's id with that slug, key and name, its suffix
//! from the commit position and the message's index among the changes.

use serde::Deserialize;
use serde_json::Value;

use super::{ChangeContext, Event, Verb, id};

/// The logical message prefix walhook reads.
pub const PREFIX: &str = "walhook";

/// Why a `walhook` message is not an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CustomError {
    #[error("the message is not a JSON object with an \"event\" name: {0}")]
    Json(String),
    #[error(
        "\"{0}\" is not an event name; expected slug.verb in lower case letters, digits and `_`, like \"invoice.paid\""
    )]
    Name(String),
    #[error("\"key\" must be a string or a number")]
    Key,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    event: String,
    #[serde(default)]
    key: Option<Value>,
    #[serde(default)]
    data: Option<Value>,
}

/// The event a `walhook` message carries.
pub fn from_message(content: &[u8], ctx: &ChangeContext) -> Result<Event, CustomError> {
    let m: Message =
        serde_json::from_slice(content).map_err(|e| CustomError::Json(e.to_string()))?;
    let (slug, verb) = split_name(&m.event).ok_or_else(|| CustomError::Name(m.event.clone()))?;
    let key = match m.key {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(CustomError::Key),
    };
    let record_key = id::escape_key(&key);
    let data = m.data.unwrap_or_else(|| Value::Object(Default::default()));
    let body = format!(r#"{{"before":{{}},"after":{data},"diff":{data}}}"#);
    let id = id::event_id(
        ctx.source_name,
        slug,
        ctx.commit_time_unix_micros,
        &record_key,
        &m.event,
        ctx.commit_lsn.as_u64(),
        ctx.change_index,
    );
    Ok(Event {
        id,
        slug: slug.to_string(),
        verb: match verb {
            "create" => Verb::Create,
            "delete" => Verb::Delete,
            _ => Verb::Update,
        },
        name: m.event,
        record_key,
        body,
    })
}

/// `slug.verb`, both `[a-z][a-z0-9_]*`.
fn split_name(name: &str) -> Option<(&str, &str)> {
    let (slug, verb) = name.split_once('.')?;
    let part = |s: &str| {
        let mut b = s.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_lowercase())
            && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
    };
    (part(slug) && part(verb)).then_some((slug, verb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::Lsn;

    fn ctx() -> ChangeContext<'static> {
        ChangeContext {
            source_name: "app",
            commit_lsn: Lsn(0x16B_3740_0028),
            commit_time_unix_micros: 1_741_686_315_971_000,
            change_index: 2,
        }
    }

    #[test]
    fn a_message_becomes_an_event_with_the_row_events_shape() {
        let e = from_message(
            br#"{"event":"invoice.paid","key":"inv 42","data":{"amount":120.50}}"#,
            &ctx(),
        )
        .unwrap();
        assert_eq!(e.name, "invoice.paid");
        assert_eq!(e.slug, "invoice");
        assert_eq!(e.record_key, "inv%2042");
        assert_eq!(
            e.body,
            r#"{"before":{},"after":{"amount":120.50},"diff":{"amount":120.50}}"#
        );
        let parts: Vec<&str> = e.id.split(':').collect();
        assert_eq!(
            parts[..5],
            [
                "app",
                "invoice",
                "1741686315971",
                "inv%2042",
                "invoice.paid"
            ]
        );
        assert_eq!(parts[5], id::suffix(0x16B_3740_0028, 2));
    }

    #[test]
    fn key_and_data_are_optional() {
        let e = from_message(br#"{"event":"job.done","key":7}"#, &ctx()).unwrap();
        assert_eq!(e.record_key, "7");
        assert_eq!(e.body, r#"{"before":{},"after":{},"diff":{}}"#);
        let e = from_message(br#"{"event":"job.done"}"#, &ctx()).unwrap();
        assert_eq!(e.record_key, "");
    }

    #[test]
    fn bad_messages_are_errors() {
        assert!(matches!(
            from_message(b"not json", &ctx()),
            Err(CustomError::Json(_))
        ));
        assert!(matches!(
            from_message(br#"{"event":"Invoice.Paid"}"#, &ctx()),
            Err(CustomError::Name(_))
        ));
        assert!(matches!(
            from_message(br#"{"event":"nodot"}"#, &ctx()),
            Err(CustomError::Name(_))
        ));
        assert_eq!(
            from_message(br#"{"event":"a.b","key":[1]}"#, &ctx()).unwrap_err(),
            CustomError::Key
        );
        assert!(matches!(
            from_message(br#"{"event":"a.b","extra":1}"#, &ctx()),
            Err(CustomError::Json(_))
        ));
    }
}
