//! The per-VIP, per-host state machine (LinK's states and events), as a
//! pure transition function.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    /// Starting: health not known yet; never contends.
    Booting,
    /// Healthy and eligible; contends when the VIP is free.
    Standby,
    /// Holds the VIP (owner key, address bound, announced).
    Activated,
    /// Unhealthy or faulted: holds nothing, does not contend.
    Failing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Something this host cannot serve the VIP with (interface gone, bind
    /// failed, lost etcd under the `release` policy).
    Fault,
    /// Won the election.
    Elected,
    /// Lost ownership (key deleted or taken, failover).
    Demoted,
    HealthCheckFail,
    HealthCheckSuccess,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Booting => "BOOTING",
            Self::Standby => "STANDBY",
            Self::Activated => "ACTIVATED",
            Self::Failing => "FAILING",
        })
    }
}

impl State {
    /// Reads a state as [`fmt::Display`] writes it.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Booting, Self::Standby, Self::Activated, Self::Failing]
            .into_iter()
            .find(|s| s.to_string() == text)
    }
}

/// The state after `event`, or `None` when the event does not apply in
/// `state` (the caller logs and ignores it).
#[must_use]
#[expect(
    clippy::match_same_arms,
    reason = "one arm per transition reads as the table"
)]
pub fn next(state: State, event: Event) -> Option<State> {
    use Event::{Demoted, Elected, Fault, HealthCheckFail, HealthCheckSuccess};
    use State::{Activated, Booting, Failing, Standby};
    match (state, event) {
        (Booting | Failing, HealthCheckSuccess) => Some(Standby),
        (Booting | Standby | Activated, HealthCheckFail | Fault) => Some(Failing),
        (Standby, Elected) => Some(Activated),
        (Activated, Demoted) => Some(Standby),
        // Already there, or not meaningful here (an election while booting
        // or failing is refused: such a host must not hold the VIP).
        (Standby | Activated, HealthCheckSuccess)
        | (Failing, HealthCheckFail | Fault | Demoted)
        | (Booting | Standby, Demoted)
        | (Booting | Activated | Failing, Elected) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::Event::*;
    use super::State::*;
    use super::*;

    #[test]
    fn every_edge() {
        let table = [
            (Booting, Fault, Some(Failing)),
            (Booting, Elected, None),
            (Booting, Demoted, None),
            (Booting, HealthCheckFail, Some(Failing)),
            (Booting, HealthCheckSuccess, Some(Standby)),
            (Standby, Fault, Some(Failing)),
            (Standby, Elected, Some(Activated)),
            (Standby, Demoted, None),
            (Standby, HealthCheckFail, Some(Failing)),
            (Standby, HealthCheckSuccess, None),
            (Activated, Fault, Some(Failing)),
            (Activated, Elected, None),
            (Activated, Demoted, Some(Standby)),
            (Activated, HealthCheckFail, Some(Failing)),
            (Activated, HealthCheckSuccess, None),
            (Failing, Fault, None),
            (Failing, Elected, None),
            (Failing, Demoted, None),
            (Failing, HealthCheckFail, None),
            (Failing, HealthCheckSuccess, Some(Standby)),
        ];
        for (state, event, want) in table {
            assert_eq!(next(state, event), want, "{state} + {event:?}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(Activated.to_string(), "ACTIVATED");
        assert_eq!(
            serde_json::to_string(&Standby).expect("json"),
            "\"STANDBY\""
        );
    }
}
