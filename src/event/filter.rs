//! Endpoint event filters (SPEC §5): `*`, `slug.*`, `*.verb` and exact names.
//!
//! Event names are `slug.verb`. A filter containing a dot is matched part by
//! part, each part being `*` or a literal; a filter without a dot is `*` (every
//! event) or an exact name. Matching is case-sensitive, as names are lowercase.

/// Whether one filter selects `event_name`.
pub fn matches(filter: &str, event_name: &str) -> bool {
    if filter == "*" {
        return true;
    }
    match (filter.split_once('.'), event_name.split_once('.')) {
        (Some((fs, fv)), Some((ns, nv))) => part(fs, ns) && part(fv, nv),
        _ => filter == event_name,
    }
}

fn part(filter: &str, name: &str) -> bool {
    filter == "*" || filter == name
}

/// Whether any of an endpoint's filters selects `event_name`. An empty list
/// selects nothing (the configuration defaults to `["*"]`).
pub fn subscribed(filters: &[String], event_name: &str) -> bool {
    filters.iter().any(|f| matches(f, event_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_everything() {
        assert!(matches("*", "lead.create"));
        assert!(matches("*", "student.delete"));
        assert!(matches("*", "walhook.ping"));
    }

    #[test]
    fn slug_star() {
        assert!(matches("lead.*", "lead.create"));
        assert!(matches("lead.*", "lead.update"));
        assert!(matches("lead.*", "lead.delete"));
        assert!(!matches("lead.*", "leads.create"));
        assert!(!matches("lead.*", "opportunity.create"));
        assert!(!matches("lead.*", "lea.create"));
        assert!(!matches("lead.*", "lead"));
    }

    #[test]
    fn star_verb() {
        assert!(matches("*.delete", "lead.delete"));
        assert!(matches("*.delete", "student.delete"));
        assert!(!matches("*.delete", "lead.deleted"));
        assert!(!matches("*.delete", "lead.create"));
        assert!(matches("*.*", "lead.create"));
    }

    #[test]
    fn exact() {
        assert!(matches("opportunity.create", "opportunity.create"));
        assert!(!matches("opportunity.create", "opportunity.update"));
        assert!(!matches("opportunity.create", "opportunity.create2"));
        assert!(!matches("Lead.create", "lead.create"));
        assert!(!matches("lead", "lead.create"));
    }

    #[test]
    fn subscribed_any_filter() {
        let filters = vec!["lead.*".to_owned(), "opportunity.create".to_owned()];
        assert!(subscribed(&filters, "lead.update"));
        assert!(subscribed(&filters, "opportunity.create"));
        assert!(!subscribed(&filters, "opportunity.delete"));
        assert!(!subscribed(&filters, "user.create"));
        assert!(!subscribed(&[], "lead.create"));
        assert!(subscribed(&["*".to_owned()], "user.create"));
    }
}
