//! Judging the demo: which deliveries each endpoint must get, what has not
//! arrived yet, the closing summary and the final checks.

use std::collections::BTreeMap;

use super::DemoError;
use super::receiver::{Received, Receiver};
use super::script::EXCLUDED_COLUMN;
use crate::config::Config;
use crate::event::filter;

/// What the demo saw, for the closing summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Events in the ledger by name.
    pub events: BTreeMap<String, i64>,
    pub endpoints: Vec<EndpointSummary>,
    /// Requests whose signatures verified, of all requests.
    pub signatures_verified: usize,
    pub requests: usize,
}

/// One endpoint's share of the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSummary {
    pub id: String,
    /// Distinct events answered 2xx.
    pub delivered: usize,
    pub expected: usize,
    /// Every request it received.
    pub attempts: usize,
    /// Requests it answered with a failure status.
    pub failed: usize,
}

/// How many deliveries of each event name each endpoint must get for
/// `events`: keyed by (endpoint, event name).
pub(super) fn expected_deliveries(
    cfg: &Config,
    events: &[&str],
) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for ep in &cfg.endpoints {
        for name in events {
            if filter::subscribed(&ep.events, name) {
                *out.entry((ep.id.clone(), name.to_string())).or_default() += 1;
            }
        }
    }
    out
}

/// Distinct event ids answered 2xx with verified signatures, by (endpoint, name).
pub(super) fn delivered(log: &[Received]) -> BTreeMap<(String, String), Vec<&str>> {
    let mut out: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for r in log.iter().filter(|r| r.succeeded() && r.verified) {
        let ids = out
            .entry((r.endpoint.clone(), r.event.clone()))
            .or_default();
        if !ids.contains(&r.event_id.as_str()) {
            ids.push(&r.event_id);
        }
    }
    out
}

/// Whether any request failed signature verification.
pub(super) fn any_rejected(log: &[Received]) -> bool {
    log.iter().any(|r| !r.verified)
}

/// What has not arrived yet, as `endpoint event (got/want)`.
pub(super) fn missing(
    expected: &BTreeMap<(String, String), usize>,
    log: &[Received],
) -> Vec<String> {
    let got = delivered(log);
    expected
        .iter()
        .filter_map(|((ep, name), &want)| {
            let n = got.get(&(ep.clone(), name.clone())).map_or(0, Vec::len);
            (n < want).then(|| format!("{ep} {name} ({n}/{want})"))
        })
        .collect()
}

pub(super) fn summarize(
    cfg: &Config,
    expected: &BTreeMap<(String, String), usize>,
    events: BTreeMap<String, i64>,
    log: &[Received],
) -> Summary {
    let got = delivered(log);
    let endpoints = cfg
        .endpoints
        .iter()
        .map(|ep| {
            let reqs: Vec<&Received> = log.iter().filter(|r| r.endpoint == ep.id).collect();
            EndpointSummary {
                id: ep.id.clone(),
                delivered: got
                    .iter()
                    .filter(|((id, _), _)| *id == ep.id)
                    .map(|(_, ids)| ids.len())
                    .sum(),
                expected: expected
                    .iter()
                    .filter(|((id, _), _)| *id == ep.id)
                    .map(|(_, n)| *n)
                    .sum(),
                attempts: reqs.len(),
                failed: reqs.iter().filter(|r| !r.succeeded()).count(),
            }
        })
        .collect();
    Summary {
        events,
        endpoints,
        signatures_verified: log.iter().filter(|r| r.verified).count(),
        requests: log.len(),
    }
}

pub(super) fn render_summary(s: &Summary) -> String {
    let total: i64 = s.events.values().sum();
    let mut by_slug: Vec<(String, i64)> = Vec::new();
    for (name, n) in &s.events {
        let slug = name.split('.').next().unwrap_or(name).to_string();
        match by_slug.iter_mut().find(|(s, _)| *s == slug) {
            Some((_, c)) => *c += n,
            None => by_slug.push((slug, *n)),
        }
    }
    let slugs: Vec<String> = by_slug.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let mut out = format!(
        "\nsummary\n  events captured      {total} ({}); the {EXCLUDED_COLUMN}-only update emitted none",
        slugs.join(", ")
    );
    for ep in &s.endpoints {
        let retries = if ep.failed == 0 {
            "no retries needed".to_string()
        } else {
            let recovered = if ep.delivered == ep.expected {
                ", all recovered by retry"
            } else {
                ""
            };
            format!("{} failed attempt(s){recovered}", ep.failed)
        };
        out.push_str(&format!(
            "\n  {:<20} {}/{} delivered in {} attempt(s): {retries}",
            ep.id, ep.delivered, ep.expected, ep.attempts
        ));
    }
    let mark = if s.signatures_verified == s.requests {
        "✓"
    } else {
        "✗"
    };
    out.push_str(&format!(
        "\n  signatures verified  {}/{} {mark}",
        s.signatures_verified, s.requests
    ));
    out
}

/// The final checks: signatures, events (the excluded-column update made
/// none), no body with the excluded column.
pub(super) fn check(
    summary: &Summary,
    script: &[&str],
    receiver: &Receiver,
) -> Result<(), DemoError> {
    if summary.signatures_verified != summary.requests {
        return Err(DemoError::Signatures {
            failed: summary.requests - summary.signatures_verified,
            total: summary.requests,
        });
    }
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    for name in script {
        *want.entry(name.to_string()).or_default() += 1;
    }
    if summary.events != want {
        return Err(DemoError::Unexpected(format!(
            "the ledger holds events {:?}, the script makes {:?}",
            summary.events, want
        )));
    }
    if receiver.with_log(|log| log.iter().any(|r| r.leaks_excluded)) {
        return Err(DemoError::Unexpected(format!(
            "a request body contains the excluded column {EXCLUDED_COLUMN}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devtools::demo::receiver::tests::rec;
    use crate::devtools::demo::script::STEPS;
    use crate::devtools::demo::script::tests::demo_config;

    #[test]
    fn expected_deliveries_follow_the_filters() {
        let cfg = demo_config();
        let script: Vec<&str> = STEPS.iter().filter_map(|s| s.event).collect();
        let e = expected_deliveries(&cfg, &script);
        let per = |ep: &str| -> usize {
            e.iter()
                .filter(|((id, _), _)| id == ep)
                .map(|(_, n)| n)
                .sum()
        };
        assert_eq!(per("crm"), 13);
        assert_eq!(per("analytics"), 6);
        assert!(!e.contains_key(&("analytics".into(), "user.create".into())));
    }

    #[test]
    fn missing_counts_distinct_successful_verified_events() {
        let mut expected = BTreeMap::new();
        expected.insert(("a".to_string(), "lead.create".to_string()), 2);
        let mut log = vec![
            rec("a", "lead.create", "id1", 500, true),
            rec("a", "lead.create", "id1", 200, true),
            rec("a", "lead.create", "id1", 200, true), // a duplicate delivery
            rec("a", "lead.create", "id2", 200, false), // unverified
        ];
        assert_eq!(missing(&expected, &log), vec!["a lead.create (1/2)"]);
        log.push(rec("a", "lead.create", "id2", 200, true));
        assert!(missing(&expected, &log).is_empty());
    }

    #[test]
    fn summary_counts_retries_and_signatures() {
        let cfg = demo_config();
        let expected = expected_deliveries(&cfg, &["lead.create"]);
        let log = vec![
            rec("crm", "lead.create", "id1", 200, true),
            rec("analytics", "lead.create", "id1", 500, true),
            rec("analytics", "lead.create", "id1", 200, true),
        ];
        let events = BTreeMap::from([("lead.create".to_string(), 1)]);
        let s = summarize(&cfg, &expected, events, &log);
        assert_eq!(s.signatures_verified, 3);
        assert_eq!(s.requests, 3);
        let analytics = &s.endpoints[1];
        assert_eq!(
            (
                analytics.delivered,
                analytics.expected,
                analytics.attempts,
                analytics.failed
            ),
            (1, 1, 2, 1)
        );
        let text = render_summary(&s);
        assert!(
            text.contains("1 failed attempt(s), all recovered by retry"),
            "{text}"
        );
        assert!(text.contains("signatures verified  3/3 ✓"), "{text}");
        assert!(text.contains("events captured      1 (lead 1)"), "{text}");
    }
}
