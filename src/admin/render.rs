//! Human-readable output of the admin reports (the CLI without `--json`).
//!
//! Text that comes from outside (response excerpts, error messages, record
//! keys) goes through [`clean`], so a receiver cannot send escape sequences to
//! the operator's terminal.

use std::fmt::Write as _;

use super::check::{CheckReport, CheckState};
use super::human::{human_bytes, human_lag};
use super::prune::PruneReport;
use super::reports::{DeliveryDetail, DeliverySummary, EndpointState, PingOutcome, Shown, Status};

/// Control characters escaped (`\n`, `\u{1b}`), everything else as is.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Left-aligned columns separated by two spaces; a header row, then rows.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let _ = write!(l, "{c:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn truncate(s: &str, max: usize) -> String {
    let s = clean(s);
    if s.chars().count() <= max {
        s
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// `walhook status`.
pub fn status(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "database   {}", s.database);
    ledger_line(&mut out, s);
    let slot = &s.slot;
    if slot.exists {
        let lag = human_lag(slot.lag_bytes, slot.lag_seconds);
        let _ = writeln!(
            out,
            "slot       {} ({}, {}{}), {lag}",
            slot.name,
            or_dash(slot.plugin.as_deref()),
            if slot.active { "active" } else { "inactive" },
            slot.wal_status
                .as_deref()
                .map(|w| format!(", wal {w}"))
                .unwrap_or_default(),
        );
        let _ = writeln!(
            out,
            "           confirmed {}, ledger {}",
            or_dash(slot.confirmed_flush_lsn.as_deref()),
            or_dash(slot.ledger_lsn.as_deref()),
        );
    } else {
        let _ = writeln!(
            out,
            "slot       {} does not exist (run `walhook setup`)",
            slot.name
        );
    }
    for (i, n) in s.notices.iter().enumerate() {
        let head = if i == 0 { "notices" } else { "" };
        let _ = writeln!(
            out,
            "{head:<10} {} {} (since {})",
            n.level.as_str(),
            clean(&n.message),
            n.since
        );
    }
    let _ = writeln!(out, "events     {} captured", s.events.total);
    for (name, n) in &s.events.by_name {
        let _ = writeln!(out, "             {name:<24} {n}");
    }
    if s.truncates > 0 {
        let _ = writeln!(out, "truncates  {} (no row events)", s.truncates);
    }
    let d = &s.deliveries;
    let _ = writeln!(
        out,
        "deliveries {} pending, {} retrying, {} succeeded, {} disabled",
        d.pending, d.retrying, d.succeeded, d.disabled
    );
    out.push('\n');
    out.push_str(&endpoints(&s.endpoints));
    out
}

/// The ledger: where it is, its size, and row estimates of the big tables.
fn ledger_line(out: &mut String, s: &Status) {
    let place = s
        .ledger_database
        .as_deref()
        .map(|db| format!(" in {db}"))
        .unwrap_or_default();
    let size = &s.ledger_size;
    let _ = writeln!(
        out,
        "ledger     schema {}{place}, {}",
        s.ledger_schema,
        human_bytes(size.total_bytes)
    );
    let rows: Vec<String> = ["events", "deliveries", "attempts", "delivered"]
        .iter()
        .filter_map(|name| size.tables.iter().find(|t| t.table == *name))
        .map(|t| format!("{} ~{}", t.table, or_dash(t.rows_estimate)))
        .collect();
    if !rows.is_empty() {
        let _ = writeln!(out, "           rows {}", rows.join(", "));
    }
}

fn endpoint_state(e: &EndpointState) -> String {
    if !e.configured {
        "not configured".into()
    } else if e.enabled {
        if e.failing_since.is_some() {
            "enabled (failing)".into()
        } else {
            "enabled".into()
        }
    } else {
        format!(
            "DISABLED: {}",
            clean(e.disabled_reason.as_deref().unwrap_or("by hand"))
        )
    }
}

/// `walhook endpoints list`.
pub fn endpoints(list: &[EndpointState]) -> String {
    if list.is_empty() {
        return "no endpoints configured\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                endpoint_state(e),
                or_dash(e.target.as_deref()),
                e.events.join(","),
                e.deliveries.pending.to_string(),
                e.deliveries.retrying.to_string(),
                e.deliveries.succeeded.to_string(),
                e.deliveries.disabled.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ENDPOINT",
            "STATE",
            "TARGET",
            "EVENTS",
            "PENDING",
            "RETRYING",
            "SUCCEEDED",
            "DISABLED",
        ],
        &rows,
    )
}

fn last_result(d: &DeliverySummary) -> String {
    match (d.last_status_code, &d.last_error) {
        (_, Some(e)) => truncate(e, 40),
        (Some(c), None) => format!("HTTP {c}"),
        (None, None) => "-".into(),
    }
}

/// `walhook deliveries list`.
pub fn deliveries(list: &[DeliverySummary]) -> String {
    if list.is_empty() {
        return "no deliveries match\n".into();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            let state = if d.in_flight {
                format!("{} (sending)", d.status.as_str())
            } else {
                d.status.as_str().to_string()
            };
            vec![
                d.id.to_string(),
                d.created_at.clone(),
                d.event.clone(),
                d.endpoint.clone(),
                state,
                d.attempts.to_string(),
                last_result(d),
                or_dash(d.next_attempt_at.as_deref()),
                truncate(&d.event_id, 80),
            ]
        })
        .collect();
    table(
        &[
            "ID", "CREATED", "EVENT", "ENDPOINT", "STATUS", "ATTEMPTS", "LAST", "NEXT", "EVENT ID",
        ],
        &rows,
    )
}

fn detail(out: &mut String, d: &DeliveryDetail) {
    let s = &d.delivery;
    let _ = writeln!(out, "delivery   {}", s.id);
    let _ = writeln!(out, "event      {} ({})", s.event, clean(&s.event_id));
    let _ = writeln!(out, "record     {}", clean(&s.record));
    let _ = writeln!(out, "endpoint   {}", s.endpoint);
    let _ = writeln!(
        out,
        "status     {}{}",
        s.status.as_str(),
        if s.in_flight {
            " (an attempt is under way)"
        } else {
            ""
        }
    );
    if let Some(next) = &s.next_attempt_at {
        let _ = writeln!(out, "next       {next}");
    }
    let _ = writeln!(out, "committed  {}", s.commit_time);
    let _ = writeln!(out, "created    {}", s.created_at);
    let _ = writeln!(out, "body       {}", clean(&d.body.to_string()));
    if d.attempts.is_empty() {
        let _ = writeln!(out, "attempts   none yet");
    }
    for (i, a) in d.attempts.iter().enumerate() {
        let result = match (&a.error, a.status_code) {
            (Some(e), _) => clean(e),
            (None, Some(c)) => format!("HTTP {c}"),
            (None, None) => "-".into(),
        };
        let _ = writeln!(
            out,
            "attempt {:<2} {}  {} ms  {}",
            i + 1,
            a.started_at,
            a.duration_ms,
            result
        );
        if let Some(obj) = a.request_headers.as_object() {
            for (k, v) in obj {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                let _ = writeln!(out, "    > {}: {}", clean(k), clean(&v));
            }
        }
        if let Some(x) = &a.response_excerpt {
            let _ = writeln!(out, "    < {}", truncate(x, 400));
        }
    }
}

/// `walhook deliveries show`.
pub fn shown(s: &Shown) -> String {
    let mut out = String::new();
    match s {
        Shown::One(d) => detail(&mut out, d),
        Shown::Event(list) => {
            for (i, d) in list.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                detail(&mut out, d);
            }
        }
    }
    out
}

/// `walhook endpoints ping`.
pub fn ping(p: &PingOutcome) -> String {
    let mut out = format!(
        "{} ping to {} ({}): {} in {} ms\n",
        if p.ok { "✓" } else { "✗" },
        p.endpoint,
        p.target,
        clean(&p.outcome),
        p.duration_ms
    );
    let _ = writeln!(out, "  event id {}", p.event_id);
    if let Some(x) = &p.response_excerpt {
        let _ = writeln!(out, "  response {}", truncate(x, 400));
    }
    out
}

/// `walhook prune`.
pub fn pruned(r: &PruneReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: succeeded history older than {}, disabled deliveries older than {}",
        if r.dry_run {
            "would prune (--dry-run: nothing changed)"
        } else {
            "pruned"
        },
        r.older_than,
        r.disabled_older_than
    );
    let n = &r.rows;
    for (what, count) in [
        ("delivered", n.delivered),
        ("deliveries succeeded", n.deliveries_succeeded),
        ("deliveries disabled", n.deliveries_disabled),
        ("attempts", n.attempts),
        ("events", n.events),
    ] {
        let _ = writeln!(out, "  {what:<22} {count:>9}");
    }
    if !r.events_considered {
        out.push_str("  (events kept: the slot's confirmed position could not be read)\n");
    }
    out
}

/// `walhook check`.
pub fn checks(r: &CheckReport) -> String {
    let mut out = String::new();
    for c in &r.checks {
        let mark = match c.state {
            CheckState::Ok => "✓",
            CheckState::Warn => "!",
            CheckState::Fail => "✗",
        };
        let _ = writeln!(out, "{mark} {}: {}", c.name, clean(&c.detail));
        if let Some(h) = &c.hint {
            let _ = writeln!(out, "    → {}", clean(h));
        }
    }
    let fails = r
        .checks
        .iter()
        .filter(|c| c.state == CheckState::Fail)
        .count();
    let warns = r
        .checks
        .iter()
        .filter(|c| c.state == CheckState::Warn)
        .count();
    if fails == 0 {
        let _ = writeln!(out, "all checks passed ({warns} warning(s))");
    } else {
        let _ = writeln!(out, "{fails} check(s) failed, {warns} warning(s)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_escapes_terminal_controls() {
        assert_eq!(clean("ok\u{1b}[31mred\n"), "ok\\u{1b}[31mred\\n");
        assert_eq!(clean("héllo ✓"), "héllo ✓");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xxx".into(), "y".into()],
                vec!["z".into(), "wwww".into()],
            ],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz    wwww\n");
    }

    #[test]
    fn truncate_marks_the_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
