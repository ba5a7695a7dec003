//! Delivery states: the four stored in the `status` column (SPEC §5) and
//! `held`, which is derived when a delivery is shown or counted: a pending
//! or retrying delivery whose endpoint is disabled. Deriving it (rather than
//! storing it) means disabling or enabling an endpoint changes no delivery
//! row, and no delivery can be left `held` by an endpoint enabled again.

use std::str::FromStr;

use serde::Serialize;

/// A delivery's state: the `status` column (SPEC §5), or `Held`, derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Retrying,
    Succeeded,
    Disabled,
    /// Pending or retrying, but its endpoint is disabled: nothing is sent
    /// until the endpoint is enabled again. Never stored.
    Held,
}

/// The SQL expression of a delivery's shown state, over `deliveries d` LEFT
/// JOIN `endpoints h` (an endpoint without a row has never been disabled).
pub const SHOWN_STATE_SQL: &str =
    "CASE WHEN d.status IN ('pending', 'retrying') AND h.enabled IS FALSE
        THEN 'held' ELSE d.status END";

impl DeliveryState {
    pub const ALL: [DeliveryState; 5] = [
        DeliveryState::Pending,
        DeliveryState::Retrying,
        DeliveryState::Succeeded,
        DeliveryState::Disabled,
        DeliveryState::Held,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Disabled => "disabled",
            DeliveryState::Held => "held",
        }
    }

    /// The state of a `status` column value (the table's CHECK allows no
    /// other), or of [`SHOWN_STATE_SQL`].
    pub(super) fn of_column(s: &str) -> DeliveryState {
        s.parse().unwrap_or(DeliveryState::Pending)
    }
}

/// A word that names no delivery state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid status: `{0}` is not a delivery state; use pending, retrying, held, succeeded or disabled"
)]
pub struct UnknownState(pub String);

impl FromStr for DeliveryState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `failed` is what operators tend to type for "not delivered yet, failing".
        match s.trim().to_ascii_lowercase().as_str() {
            "pending" => Ok(DeliveryState::Pending),
            "retrying" | "failed" | "failing" => Ok(DeliveryState::Retrying),
            "succeeded" | "success" | "delivered" => Ok(DeliveryState::Succeeded),
            "disabled" => Ok(DeliveryState::Disabled),
            "held" => Ok(DeliveryState::Held),
            other => Err(UnknownState(other.to_string())),
        }
    }
}

/// Deliveries counted by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    pub pending: i64,
    pub retrying: i64,
    pub succeeded: i64,
    pub disabled: i64,
    /// Pending or retrying deliveries of disabled endpoints (not counted
    /// as pending or retrying).
    pub held: i64,
    pub total: i64,
}

impl StateCounts {
    pub(super) fn add(&mut self, state: DeliveryState, n: i64) {
        match state {
            DeliveryState::Pending => self.pending += n,
            DeliveryState::Retrying => self.retrying += n,
            DeliveryState::Succeeded => self.succeeded += n,
            DeliveryState::Disabled => self.disabled += n,
            DeliveryState::Held => self.held += n,
        }
        self.total += n;
    }

    pub fn get(&self, state: DeliveryState) -> i64 {
        match state {
            DeliveryState::Pending => self.pending,
            DeliveryState::Retrying => self.retrying,
            DeliveryState::Succeeded => self.succeeded,
            DeliveryState::Disabled => self.disabled,
            DeliveryState::Held => self.held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_and_print() {
        for s in DeliveryState::ALL {
            assert_eq!(s.as_str().parse::<DeliveryState>().unwrap(), s);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert_eq!(
            "failed".parse::<DeliveryState>().unwrap(),
            DeliveryState::Retrying
        );
        let err = "lost".parse::<DeliveryState>().unwrap_err().to_string();
        assert!(err.contains("`lost`"), "{err}");
    }
}
