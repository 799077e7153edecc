//! Finding the instances that make an output's check fail, so that one bad registration (a typo
//! in one sidecar's address) never freezes the value for everyone.
//!
//! When a candidate value fails the check, the suspects are the instances added or changed
//! since the last value that passed (all of them when there is none yet); the others are the
//! base, known good together. [`culprits`] bisects the suspects: a half whose value (with the
//! base and the suspects already cleared) passes is cleared, a failing half is split again, and
//! a single failing suspect is a culprit. `k` culprits among `n` suspects cost about
//! `k · 2 · log2(n)` check runs, bounded by `max_checks`.
//!
//! It answers only when the answer is believable: if the base alone fails, or every one of
//! several suspects would be excluded, the check itself (or something every instance shares) is
//! at fault, and nothing is excluded.

use std::future::Future;

use serde::{Deserialize, Serialize};

/// An instance an output leaves out, as `<root>/excluded/<KEY>` lists it (a JSON array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excluded {
    pub service: String,
    pub id: String,
    /// How the check failed (its exit; its own output is in the director's log).
    pub reason: String,
}

/// The bytes of `<root>/excluded/<KEY>`.
pub fn to_bytes(excluded: &[Excluded]) -> Vec<u8> {
    serde_json::to_vec(excluded).unwrap_or_else(|_| b"[]".to_vec())
}

/// Reads `<root>/excluded/<KEY>`; what cannot be read lists nobody.
pub fn parse(bytes: &[u8]) -> Vec<Excluded> {
    serde_json::from_slice(bytes).unwrap_or_default()
}

/// What the bisection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// These suspects (indices into the list given) fail the check; the rest pass with the base.
    Culprits(Vec<usize>),
    /// No believable answer; why.
    Nobody(&'static str),
}

/// Bisects `suspects` (indices) on top of `base`: `passes(set)` runs the check on the value of
/// `set`. The value of `base` + `suspects` is known to fail.
pub async fn culprits<F, Fut>(
    base: &[usize],
    suspects: &[usize],
    max_checks: usize,
    mut passes: F,
) -> Found
where
    F: FnMut(Vec<usize>) -> Fut,
    Fut: Future<Output = bool>,
{
    if suspects.is_empty() {
        return Found::Nobody("nothing changed since the last value that passed");
    }
    let mut checks = 0usize;
    if !base.is_empty() {
        checks += 1;
        if !passes(base.to_vec()).await {
            return Found::Nobody("the value fails its check even without the new instances");
        }
    }
    // Depth first, first halves first, so that what is cleared joins the base of what follows.
    let mut good: Vec<usize> = base.to_vec();
    let mut bad: Vec<usize> = Vec::new();
    let mut stack = vec![(suspects.to_vec(), Known::Failing)];
    while let Some((set, known)) = stack.pop() {
        let failing = match known {
            Known::Failing => true,
            // Its sibling half was cleared whole: the failure is in this half.
            Known::FailingIfNoneFoundSince(found) => bad.len() == found,
            Known::Unknown => false,
        };
        if !failing {
            checks += 1;
            if checks > max_checks {
                return Found::Nobody("the check ran too often while looking for the culprits");
            }
            let all: Vec<usize> = good.iter().chain(&set).copied().collect();
            if passes(all).await {
                good.extend(set);
                continue;
            }
        }
        if let [one] = set[..] {
            bad.push(one);
            continue;
        }
        let (first, second) = set.split_at(set.len() / 2);
        stack.push((second.to_vec(), Known::FailingIfNoneFoundSince(bad.len())));
        stack.push((first.to_vec(), Known::Unknown));
    }
    if bad.len() == suspects.len() && suspects.len() > 1 {
        return Found::Nobody("every new instance fails the check: the check may be at fault");
    }
    bad.sort_unstable();
    Found::Culprits(bad)
}

/// What is known of a set of suspects before its check.
enum Known {
    /// Its value fails.
    Failing,
    /// Its first sibling half is being searched; if that finds no culprit (the count of culprits
    /// is still this), this half fails.
    FailingIfNoneFoundSince(usize),
    /// Nothing: check it.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// The check: a value fails when it holds any of `bad`.
    fn search(base: &[usize], suspects: &[usize], bad: &[usize], max: usize) -> (Found, usize) {
        let runs = Cell::new(0);
        let found = futures_lite_block_on(culprits(base, suspects, max, |set| {
            runs.set(runs.get() + 1);
            let ok = !set.iter().any(|i| bad.contains(i));
            async move { ok }
        }));
        (found, runs.get())
    }

    fn futures_lite_block_on<T>(fut: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(fut)
    }

    #[test]
    fn the_list_round_trips() {
        let list = vec![Excluded {
            service: "web".into(),
            id: "web9".into(),
            reason: "check exited with status 1".into(),
        }];
        assert_eq!(parse(&to_bytes(&list)), list);
        assert_eq!(to_bytes(&[]), b"[]");
        assert_eq!(parse(b"not json"), []);
    }

    #[test]
    fn one_culprit_among_many_is_found_in_logarithmic_checks() {
        let base: Vec<usize> = (0..10).collect();
        let suspects: Vec<usize> = (10..42).collect();
        let (found, runs) = search(&base, &suspects, &[29], 64);
        assert_eq!(found, Found::Culprits(vec![29]));
        // 1 for the base, then about 2 per halving of 32.
        assert!(runs <= 1 + 2 * 5, "{runs} checks");
    }

    #[test]
    fn several_culprits_and_none() {
        let suspects: Vec<usize> = (0..8).collect();
        let (found, _) = search(&[], &suspects, &[1, 6], 64);
        assert_eq!(found, Found::Culprits(vec![1, 6]));
        let (found, _) = search(&[], &[3], &[3], 64);
        assert_eq!(found, Found::Culprits(vec![3]));
    }

    #[test]
    fn no_believable_answer_excludes_nobody() {
        // The base fails on its own.
        let (found, runs) = search(&[0, 1], &[2, 3], &[0], 64);
        assert!(matches!(found, Found::Nobody(why) if why.contains("without the new")));
        assert_eq!(runs, 1);
        // Every suspect fails: the check is more likely wrong than all of them.
        let (found, _) = search(&[0], &[1, 2, 3], &[1, 2, 3], 64);
        assert!(matches!(found, Found::Nobody(why) if why.contains("check may be at fault")));
        // Nothing new.
        assert!(matches!(search(&[0], &[], &[0], 64).0, Found::Nobody(_)));
        // Out of budget.
        let suspects: Vec<usize> = (0..64).collect();
        let (found, runs) = search(&[], &suspects, &[5, 17, 40, 63], 6);
        assert!(matches!(found, Found::Nobody(why) if why.contains("too often")));
        assert!(runs <= 6, "{runs}");
    }
}
