//! Why an instance deregistered: the departure record an agent writes (at
//! `<root>/departures/S/ID`, see [`crate::layout::Layout::departure`]) in the same multi-op that
//! deletes its node, and how a director reads it.
//!
//! A node that vanishes **without** a record went with its session (a crash, a partition, a
//! ZooKeeper data wipe). With a record, the reason tells an operator's intent (stopped,
//! drained) from a failure (the checks failed, the process ended by itself): the director's
//! removal delay skips every deregistration, its cliff guard (`max_drop`) only the intended
//! ones.
//!
//! ```
//! use herald::departure::Departure;
//! let record = Departure::Drained.record(1_700_000_000_000);
//! assert_eq!(Departure::parse(&record), Departure::Drained);
//! assert!(Departure::Drained.intended());
//! assert!(!Departure::Unhealthy.intended());
//! ```

use std::fmt;

/// The reason in a departure record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// herald was asked to stop (a stop signal): a scale-down, a redeploy.
    Stopped,
    /// Drained out (`herald drain`, SIGUSR1).
    Drained,
    /// Its health checks failed.
    Unhealthy,
    /// The process it announces ended by itself (`herald run --service`).
    Exited,
    /// A record without a reason this version knows (an older agent wrote only the time):
    /// a deregistration, taken as intended.
    Unknown,
}

impl Departure {
    /// Whether an operator meant it: such departures are not a cliff.
    pub fn intended(self) -> bool {
        matches!(
            self,
            Departure::Stopped | Departure::Drained | Departure::Unknown
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Departure::Stopped => "stopped",
            Departure::Drained => "drained",
            Departure::Unhealthy => "unhealthy",
            Departure::Exited => "exited",
            Departure::Unknown => "unknown",
        }
    }

    /// The record's bytes: `{"at_ms":…,"reason":"…"}` (`at_ms`: the agent's clock).
    pub fn record(self, at_ms: u64) -> Vec<u8> {
        format!("{{\"at_ms\":{at_ms},\"reason\":\"{}\"}}", self.as_str()).into_bytes()
    }

    /// The reason a record gives; anything unreadable is [`Departure::Unknown`].
    pub fn parse(record: &[u8]) -> Departure {
        let reason = serde_json::from_slice::<serde_json::Value>(record)
            .ok()
            .and_then(|v| v.get("reason")?.as_str().map(str::to_owned));
        reason
            .as_deref()
            .map_or(Departure::Unknown, Departure::named)
    }

    /// The reason [`Departure::as_str`] names; anything else is [`Departure::Unknown`].
    pub fn named(name: &str) -> Departure {
        match name {
            "stopped" => Departure::Stopped,
            "drained" => Departure::Drained,
            "unhealthy" => Departure::Unhealthy,
            "exited" => Departure::Exited,
            _ => Departure::Unknown,
        }
    }
}

impl fmt::Display for Departure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back() {
        for d in [
            Departure::Stopped,
            Departure::Drained,
            Departure::Unhealthy,
            Departure::Exited,
        ] {
            assert_eq!(Departure::parse(&d.record(1)), d);
        }
    }

    #[test]
    fn an_older_record_or_garbage_is_an_unknown_deregistration() {
        assert_eq!(Departure::parse(br#"{"at_ms":5}"#), Departure::Unknown);
        assert_eq!(Departure::parse(b"\xff"), Departure::Unknown);
        assert_eq!(
            Departure::parse(br#"{"reason":"later"}"#),
            Departure::Unknown
        );
        assert!(Departure::Unknown.intended());
    }

    #[test]
    fn only_an_operator_s_intent_is_intended() {
        assert!(Departure::Stopped.intended());
        assert!(Departure::Drained.intended());
        assert!(!Departure::Unhealthy.intended());
        assert!(!Departure::Exited.intended());
    }
}
