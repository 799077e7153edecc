//! The guards between a derived value and its publish: each looks at the candidate (how many
//! instances it is made of, whether it is empty) against what this output had before, and
//! either lets it through or holds it with a reason — the last value then stays.
//!
//! - **min_instances**: fewer selected instances than the output needs.
//! - **empty**: the derived value is empty (every instance has weight 0, say).
//! - **max drop** (a cliff): the candidate has fewer than `1 − max_drop` of the instances the
//!   output had at its largest within `drop_window` (values published, and — while another
//!   director leads — views seen). Held until the drop has lasted `drop_confirm`; then it is
//!   published and becomes the new reference. An instance that left **on purpose** (its
//!   departure record says stopped or drained: a scale-down, a redeploy, a drain) is taken out
//!   of every remembered count, so intent is never a cliff. What counts is what nobody asked
//!   for: nodes gone with their sessions (a mass session loss, a partition), gone without a
//!   record (a ZooKeeper data wipe), deregistered by failing checks or by a process that ended
//!   by itself (a bad deploy). A session loss or a wipe recovers (agents register again) within
//!   seconds, so it is never published; a real failure is published `drop_confirm` late.
//!
//! Pure: the caller passes the time, so every rule is a table test.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// An output's guard settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub min_instances: usize,
    pub allow_empty: bool,
    /// The largest fraction of the instances a value may lose at once (0 < max_drop ≤ 1; 1:
    /// no cliff guard).
    pub max_drop: f64,
    /// How far back the largest instance count is remembered.
    pub drop_window: Duration,
    /// How long a drop must last before it is published.
    pub drop_confirm: Duration,
}

/// Why a candidate may be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Nothing held it.
    Clear,
    /// A drop beyond `max_drop` that has lasted `drop_confirm`.
    Confirmed,
}

/// Why a candidate is not published.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    TooFew {
        have: usize,
        need: usize,
    },
    Empty,
    /// The instances fell from `from` (the reference) to `to`; published at `until` if the drop
    /// lasts.
    Cliff {
        from: usize,
        to: usize,
        until: Instant,
    },
}

impl Hold {
    /// A short name for the reason, for counters and status pages.
    pub fn reason(&self) -> &'static str {
        match self {
            Hold::TooFew { .. } => "min_instances",
            Hold::Empty => "empty",
            Hold::Cliff { .. } => "max_drop",
        }
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::TooFew { have, need } => {
                write!(f, "fewer instances than min_instances ({have} < {need})")
            }
            Hold::Empty => write!(f, "the derived value is empty"),
            Hold::Cliff { from, to, until } => write!(
                f,
                "the instances fell from {from} to {to}, more than max_drop allows; published if the drop lasts {}s more",
                until.saturating_duration_since(Instant::now()).as_secs()
            ),
        }
    }
}

/// What an output remembers between candidates.
#[derive(Debug, Clone)]
pub struct Guards {
    limits: Limits,
    /// Instance counts with when they were published or seen, oldest first, within the window.
    seen: VecDeque<(Instant, usize)>,
    /// Since when the current drop has lasted.
    cliff_since: Option<Instant>,
    /// An operator confirmed the current drop (`herald confirm`).
    confirmed: bool,
}

impl Guards {
    pub fn new(limits: Limits) -> Guards {
        Guards {
            limits,
            seen: VecDeque::new(),
            cliff_since: None,
            confirmed: false,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Before deriving: enough instances?
    pub fn enough(&self, count: usize) -> Result<(), Hold> {
        if !self.limits.allow_empty && count < self.limits.min_instances {
            return Err(Hold::TooFew {
                have: count,
                need: self.limits.min_instances,
            });
        }
        Ok(())
    }

    /// After deriving: may a value of `count` instances (`empty`: no bytes) be published now?
    pub fn admit(&mut self, count: usize, empty: bool, now: Instant) -> Result<Pass, Hold> {
        if empty && !self.limits.allow_empty {
            return Err(Hold::Empty);
        }
        self.forget(now);
        let reference = self.reference();
        if self.limits.max_drop >= 1.0 || reference == 0 || !self.is_cliff(reference, count) {
            self.cliff_since = None;
            self.confirmed = false;
            return Ok(Pass::Clear);
        }
        let since = *self.cliff_since.get_or_insert(now);
        let until = since + self.limits.drop_confirm;
        if now >= until || self.confirmed {
            return Ok(Pass::Confirmed);
        }
        Err(Hold::Cliff {
            from: reference,
            to: count,
            until,
        })
    }

    /// A value of `count` instances was published: after a confirmed drop it is the new
    /// reference.
    pub fn published(&mut self, count: usize, now: Instant) {
        self.confirmed = false;
        if self.cliff_since.take().is_some() {
            self.seen.clear();
        }
        self.record(count, now);
    }

    /// An operator confirmed the drop held now: the next candidate with it passes. Whether a
    /// drop was held.
    pub fn confirm(&mut self) -> bool {
        self.confirmed = self.cliff_since.is_some();
        self.confirmed
    }

    /// `gone` of the instances counted so far left on purpose (stopped or drained, as their
    /// departure records say): they are taken out of every remembered count, so a scale-down or
    /// a drain is not a drop.
    pub fn left_on_purpose(&mut self, gone: usize) {
        for (_, count) in &mut self.seen {
            *count = count.saturating_sub(gone);
        }
    }

    /// Another director leads and the view has `count` of the output's instances: remembered,
    /// so that a takeover compares with what was there.
    pub fn observed(&mut self, count: usize, now: Instant) {
        self.record(count, now);
    }

    fn record(&mut self, count: usize, now: Instant) {
        self.forget(now);
        // Only the largest count within the window matters: a smaller one recorded after a larger
        // one outlives it, so the older larger ones stay until they age out.
        while self.seen.back().is_some_and(|&(_, c)| c <= count) {
            self.seen.pop_back();
        }
        self.seen.push_back((now, count));
    }

    fn forget(&mut self, now: Instant) {
        while self.seen.len() > 1
            && self
                .seen
                .front()
                .is_some_and(|&(at, _)| now.saturating_duration_since(at) > self.limits.drop_window)
        {
            self.seen.pop_front();
        }
    }

    /// The largest count within the window (the newest count is kept even when older).
    fn reference(&self) -> usize {
        self.seen.iter().map(|&(_, c)| c).max().unwrap_or(0)
    }

    fn is_cliff(&self, reference: usize, count: usize) -> bool {
        let lost = reference.saturating_sub(count) as f64;
        lost > self.limits.max_drop * reference as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        min_instances: 1,
        allow_empty: false,
        max_drop: 0.5,
        drop_window: Duration::from_secs(300),
        drop_confirm: Duration::from_secs(30),
    };

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn min_instances_and_empty() {
        let g = Guards::new(LIMITS);
        assert_eq!(g.enough(0), Err(Hold::TooFew { have: 0, need: 1 }));
        assert_eq!(g.enough(1), Ok(()));
        let mut g = Guards::new(LIMITS);
        assert_eq!(g.admit(3, true, Instant::now()), Err(Hold::Empty));
        let mut open = Guards::new(Limits {
            allow_empty: true,
            ..LIMITS
        });
        assert_eq!(open.enough(0), Ok(()));
        assert_eq!(open.admit(0, true, Instant::now()), Ok(Pass::Clear));
    }

    #[test]
    fn a_cliff_is_held_until_it_has_lasted_the_confirmation() {
        let t0 = Instant::now();
        let mut g = Guards::new(LIMITS);
        // No reference yet: the first value passes whatever its size.
        assert_eq!(g.admit(10, false, t0), Ok(Pass::Clear));
        g.published(10, t0);
        // Half may go (not more than 50 %).
        assert_eq!(g.admit(5, false, secs(t0, 1)), Ok(Pass::Clear));
        g.published(5, secs(t0, 1));
        // 10 within the window is still the reference: 4 is a cliff.
        let held = g.admit(4, false, secs(t0, 2));
        assert!(
            matches!(
                held,
                Err(Hold::Cliff {
                    from: 10,
                    to: 4,
                    ..
                })
            ),
            "{held:?}"
        );
        assert!(
            g.admit(4, false, secs(t0, 31)).is_err(),
            "not lasted 30s yet"
        );
        assert_eq!(
            g.admit(3, false, secs(t0, 32)),
            Ok(Pass::Confirmed),
            "lasted 30s"
        );
        g.published(3, secs(t0, 32));
        // The published drop is the new reference.
        assert_eq!(g.admit(2, false, secs(t0, 33)), Ok(Pass::Clear));
    }

    #[test]
    fn a_drop_that_recovers_is_never_published_and_starts_over() {
        let t0 = Instant::now();
        let mut g = Guards::new(LIMITS);
        g.published(20, t0);
        // A mass session loss: everyone gone but 2, then back.
        assert!(g.admit(2, false, secs(t0, 1)).is_err());
        assert_eq!(g.admit(19, false, secs(t0, 5)), Ok(Pass::Clear));
        // A new drop later has its own confirmation period.
        assert!(g.admit(3, false, secs(t0, 40)).is_err());
        assert!(g.admit(3, false, secs(t0, 69)).is_err());
        assert_eq!(g.admit(3, false, secs(t0, 70)), Ok(Pass::Confirmed));
    }

    #[test]
    fn the_reference_ages_out_of_the_window() {
        let t0 = Instant::now();
        let mut g = Guards::new(LIMITS);
        g.published(10, t0);
        g.published(6, secs(t0, 100));
        // Within 300s of the 10: 3 is a cliff against 10 (and against 6 too).
        assert!(g.admit(4, false, secs(t0, 200)).is_err());
        // After the 10 ages out, 6 is the reference: 4 is no cliff.
        assert_eq!(g.admit(4, false, secs(t0, 401)), Ok(Pass::Clear));
    }

    #[test]
    fn a_standby_remembers_what_it_saw() {
        let t0 = Instant::now();
        let mut g = Guards::new(LIMITS);
        g.observed(8, t0);
        g.observed(2, secs(t0, 1));
        assert!(
            g.admit(2, false, secs(t0, 2)).is_err(),
            "taking over: 8 was there"
        );
    }

    #[test]
    fn an_operator_confirms_the_drop_held_now() {
        let t0 = Instant::now();
        let mut g = Guards::new(LIMITS);
        assert!(!g.confirm(), "nothing held");
        g.published(10, t0);
        assert!(g.admit(2, false, secs(t0, 1)).is_err());
        assert!(g.confirm());
        assert_eq!(g.admit(2, false, secs(t0, 2)), Ok(Pass::Confirmed));
        g.published(2, secs(t0, 2));
        assert!(!g.confirm(), "the confirmed drop is the new reference");
    }

    #[test]
    fn a_scale_down_or_a_drain_on_purpose_is_no_cliff() {
        let t0 = Instant::now();
        let mut g = Guards::new(LIMITS);
        g.published(10, t0);
        // 8 stopped on purpose (a scale-down): not held.
        g.left_on_purpose(8);
        assert_eq!(g.admit(2, false, secs(t0, 1)), Ok(Pass::Clear));
        g.published(2, secs(t0, 1));
        // The 2 that are left are the reference now: losing both (sessions) is held as ever.
        assert!(g.admit(0, false, secs(t0, 2)).is_err());
    }

    #[test]
    fn lost_sessions_and_failed_checks_count_intended_ones_do_not() {
        let t0 = Instant::now();
        let mut g = Guards::new(LIMITS);
        g.published(10, t0);
        // A bad deploy: 3 stopped on purpose (old version), 4 more failed their checks.
        g.left_on_purpose(3);
        // Against 7 (10 − the 3 stopped): 4 of 7 lost is more than half.
        let held = g.admit(3, false, secs(t0, 1));
        assert!(
            matches!(held, Err(Hold::Cliff { from: 7, to: 3, .. })),
            "{held:?}"
        );
    }

    #[test]
    fn a_standby_takes_intent_out_too() {
        let t0 = Instant::now();
        let mut g = Guards::new(LIMITS);
        g.observed(8, t0);
        g.left_on_purpose(6);
        g.observed(2, secs(t0, 1));
        assert_eq!(g.admit(2, false, secs(t0, 2)), Ok(Pass::Clear));
    }

    #[test]
    fn max_drop_of_one_turns_the_guard_off() {
        let t0 = Instant::now();
        let mut g = Guards::new(Limits {
            max_drop: 1.0,
            ..LIMITS
        });
        g.published(100, t0);
        assert_eq!(g.admit(1, false, secs(t0, 1)), Ok(Pass::Clear));
    }
}
