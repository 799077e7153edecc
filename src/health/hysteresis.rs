//! Rise and fall, as in HAProxy and Nerve: a check that is down comes up after `rise`
//! consecutive successes, one that is up goes down after `fall` consecutive failures, so that a
//! single lucky or unlucky run changes nothing.

/// One check's up/down state. Starts down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hysteresis {
    rise: u32,
    fall: u32,
    up: bool,
    /// Consecutive results contradicting the current state.
    streak: u32,
}

impl Hysteresis {
    /// A zero `rise` or `fall` counts as 1: a state cannot change without a run.
    pub(super) fn new(rise: u32, fall: u32) -> Hysteresis {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            up: false,
            streak: 0,
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.up
    }

    /// Records one run's result; returns the new state when this run changed it.
    pub(super) fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(self.up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `results` ("+" success, "-" failure) through a fresh state machine and renders the
    /// transitions: "U" when it comes up, "D" when it goes down, "." otherwise.
    fn transitions(rise: u32, fall: u32, results: &str) -> String {
        let mut state = Hysteresis::new(rise, fall);
        results
            .chars()
            .map(|r| match state.observe(r == '+') {
                Some(true) => 'U',
                Some(false) => 'D',
                None => '.',
            })
            .collect()
    }

    #[test]
    fn rise_and_fall() {
        // (rise, fall, results, transitions)
        let table = [
            // Starts down: failures change nothing.
            (2, 2, "---", "..."),
            // Up after `rise` consecutive successes.
            (2, 2, "++", ".U"),
            (3, 2, "+++", "..U"),
            // A failure resets the count towards rising.
            (2, 2, "+-+-++", ".....U"),
            // Down after `fall` consecutive failures, not before.
            (2, 2, "++-+-+--", ".U.....D"),
            (2, 3, "++---", ".U..D"),
            // After going down, it needs `rise` successes again.
            (2, 2, "++--+-++", ".U.D...U"),
            // rise 1 / fall 1: every result counts.
            (1, 1, "+-+", "UDU"),
            // Zero counts as one.
            (0, 0, "+-", "UD"),
            // Successes while up and failures while down are steady.
            (1, 2, "++++", "U..."),
        ];
        for (rise, fall, results, want) in table {
            assert_eq!(
                transitions(rise, fall, results),
                want,
                "rise {rise} fall {fall}: {results}"
            );
        }
    }

    #[test]
    fn starts_down() {
        assert!(!Hysteresis::new(2, 2).is_up());
    }
}
