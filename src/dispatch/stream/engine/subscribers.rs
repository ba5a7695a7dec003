//! Which endpoints an event goes to: those whose `events` select its name
//! (cached by name), minus those whose content `filter` does not pass it.
//! The body is parsed only for an event that some subscribed endpoint
//! filters, once for all of them. An event a filter rejects, or cannot
//! decide about (an evaluation error, a result that is not a bool), is not
//! delivered to that endpoint and is counted; an undecided one is also
//! logged, at most once a minute per endpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Ep;
use crate::event::expr::{EvalError, FilterInput};
use crate::metrics::Metrics;

/// At most one warning per endpoint this often about events its filter
/// could not decide about.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The endpoints subscribed to one event name.
struct ByName {
    /// Without a filter: every event of the name goes to them.
    plain: Arc<[usize]>,
    /// With a filter: evaluated per event.
    filtered: Arc<[usize]>,
}

/// The subscription cache and the filters' warning state.
#[derive(Default)]
pub(super) struct Subscriptions {
    by_name: HashMap<String, ByName>,
    /// Endpoint index -> when its filter last warned, and the undecided
    /// events since.
    warned: HashMap<usize, (Instant, u64)>,
}

impl Subscriptions {
    /// The endpoints (indexes into `eps`, ascending) event `name` with
    /// `body` goes to.
    pub(super) fn of(
        &mut self,
        eps: &[Ep],
        metrics: &Metrics,
        name: &str,
        body: &[u8],
    ) -> Arc<[usize]> {
        let subs = match self.by_name.get(name) {
            Some(s) => s,
            None => self
                .by_name
                .entry(name.to_string())
                .or_insert_with(|| by_name(eps, name)),
        };
        if subs.filtered.is_empty() {
            return subs.plain.clone();
        }
        let (plain, filtered) = (subs.plain.clone(), subs.filtered.clone());
        let input = FilterInput::new(name, body);
        let mut out: Vec<usize> = plain.to_vec();
        for &i in filtered.iter() {
            let filter = eps[i]
                .cfg
                .filter
                .as_ref()
                .expect("filtered endpoints have a filter");
            let verdict = input
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|v| filter.matches(v));
            match verdict {
                Ok(true) => out.push(i),
                Ok(false) => metrics.event_filtered(&eps[i].id),
                Err(e) => {
                    metrics.event_filtered(&eps[i].id);
                    self.undecided(&eps[i], i, name, &e);
                }
            }
        }
        out.sort_unstable();
        out.into()
    }

    /// Logs that `ep`'s filter could not decide about an event, unless it
    /// did within `WARN_EVERY`.
    fn undecided(&mut self, ep: &Ep, i: usize, event: &str, error: &EvalError) {
        let now = Instant::now();
        let (at, since) = self.warned.entry(i).or_insert((now - WARN_EVERY, 0));
        *since += 1;
        if now.duration_since(*at) >= WARN_EVERY {
            tracing::warn!(
                endpoint = %ep.id, event, %error, undecided = *since,
                "the endpoint's filter could not decide about an event, so it is not delivered there (write `has(before.x)` to test for a key first); logged once a minute"
            );
            *at = now;
            *since = 0;
        }
    }
}

fn by_name(eps: &[Ep], name: &str) -> ByName {
    let (filtered, plain): (Vec<usize>, Vec<usize>) = eps
        .iter()
        .enumerate()
        .filter(|(_, e)| e.cfg.subscribes_to(name))
        .map(|(i, _)| i)
        .partition(|i| eps[*i].cfg.filter.is_some());
    ByName {
        plain: plain.into(),
        filtered: filtered.into(),
    }
}
