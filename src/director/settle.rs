//! Settling: a leader that has just won, or whose view of the instances was just rebuilt (a
//! reconnect, a new session), publishes nothing until the output's instances have been quiet for
//! a while. What it sees then can be a transient: after a mass session loss the agents
//! re-register within milliseconds of each other, and publishing each intermediate list would
//! reload every consumer with one, two, three of five backends. A view that is already quiet
//! costs nothing: settling ends at the first look.

use std::time::Duration;

use tokio::time::Instant;

/// Whether a leader may publish yet. Pure: the caller says what time it is and when the
/// output's instances last changed.
#[derive(Debug, Clone)]
pub struct Settle {
    quiet: Duration,
    max: Duration,
    /// When settling began; `None` when settled.
    began: Option<Instant>,
}

impl Settle {
    /// Settling from `now` (a term begins).
    pub fn new(quiet: Duration, max: Duration, now: Instant) -> Settle {
        Settle {
            quiet,
            max,
            began: Some(now),
        }
    }

    /// The view is being rebuilt: settle again once it is ready (a settle already under way
    /// keeps its start, so `max` bounds the whole episode).
    pub fn again(&mut self, now: Instant) {
        self.began.get_or_insert(now);
    }

    /// `None` when publishing may go ahead (and settling is over), else when to look again:
    /// once the instances (last changed at `last_change`) have been quiet for `quiet`, or
    /// `max` after settling began, whichever comes first.
    pub fn hold_until(&mut self, last_change: Option<Instant>, now: Instant) -> Option<Instant> {
        let began = self.began?;
        let quiet_at = last_change.map_or(now, |at| at + self.quiet);
        let at = quiet_at.min(began + self.max);
        if now >= at {
            self.began = None;
            return None;
        }
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_quiet_view_is_settled_at_the_first_look() {
        let t0 = Instant::now();
        let mut settle = Settle::new(S, 10 * S, t0);
        // Last change long ago, or never.
        assert_eq!(settle.hold_until(Some(t0 - 5 * S), t0), None);
        // Settled: a change right after is published at once too.
        assert_eq!(settle.hold_until(Some(t0), t0), None);
        let mut never = Settle::new(S, 10 * S, t0);
        assert_eq!(never.hold_until(None, t0), None);
    }

    #[test]
    fn changes_keep_it_settling_until_quiet() {
        let t0 = Instant::now();
        let mut settle = Settle::new(S, 10 * S, t0);
        // Re-registrations every 200ms: each one moves the end of the quiet period.
        for n in 0..5u32 {
            let change = t0 + n * S / 5;
            assert_eq!(settle.hold_until(Some(change), change), Some(change + S));
        }
        let last = t0 + 4 * S / 5;
        assert_eq!(settle.hold_until(Some(last), last + S / 2), Some(last + S));
        assert_eq!(settle.hold_until(Some(last), last + S), None);
        // Settled: a later change is published at once.
        let later = last + 2 * S;
        assert_eq!(settle.hold_until(Some(later), later), None);
    }

    #[test]
    fn a_view_that_never_goes_quiet_is_published_after_max() {
        let t0 = Instant::now();
        let mut settle = Settle::new(S, 3 * S, t0);
        let mut now = t0;
        while now < t0 + 3 * S {
            assert_eq!(
                settle.hold_until(Some(now), now),
                Some((now + S).min(t0 + 3 * S))
            );
            now += S / 10;
        }
        assert_eq!(settle.hold_until(Some(now), now), None);
    }

    #[test]
    fn a_rebuild_settles_again_and_keeps_the_first_start() {
        let t0 = Instant::now();
        let mut settle = Settle::new(S, 3 * S, t0);
        assert_eq!(settle.hold_until(None, t0), None);
        let rebuilt = t0 + 10 * S;
        settle.again(rebuilt);
        // The rebuilt listing changed something just now: wait for quiet.
        assert_eq!(settle.hold_until(Some(rebuilt), rebuilt), Some(rebuilt + S));
        // A second disconnect during the same episode does not extend the bound.
        settle.again(rebuilt + 2 * S);
        let change = rebuilt + 2900 * S / 1000;
        assert_eq!(
            settle.hold_until(Some(change), change),
            Some(rebuilt + 3 * S)
        );
    }

    #[test]
    fn zero_turns_it_off() {
        let t0 = Instant::now();
        let mut settle = Settle::new(Duration::ZERO, Duration::ZERO, t0);
        assert_eq!(settle.hold_until(Some(t0), t0), None);
    }
}
