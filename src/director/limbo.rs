//! The removal delay: an instance whose node vanished without a deregistration — its session was
//! lost, which may be a blip of the network or of ZooKeeper — stays in the output's value for a
//! while, unless it comes back first (as Finagle keeps removed members in a limbo). An agent
//! that deregisters (stopped, drained, failing its checks) leaves a departure record in the same
//! multi-op that deletes its node; such an instance is removed at once: that was its intent.
//!
//! Pure: the leader feeds it the selected instances of each derivation and whether a departed
//! instance deregistered, and wakes when the next held instance is due to go.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::instance::Instance;
use crate::layout::{InstanceId, ServiceName};

type Id = (ServiceName, InstanceId);

/// One output's held instances.
#[derive(Debug)]
pub struct Limbo {
    delay: Duration,
    /// The instances of the previous derivation that were live.
    previous: BTreeMap<Id, Instance>,
    /// Vanished without deregistering: kept until the instant.
    held: BTreeMap<Id, (Instance, Instant)>,
}

/// What changed in limbo with one derivation, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// Vanished without a deregistration: now held.
    pub held: Vec<Id>,
    /// Held until now and due: gone from the value.
    pub expired: Vec<Id>,
    /// Held and back.
    pub returned: Vec<Id>,
}

impl Limbo {
    pub fn new(delay: Duration) -> Limbo {
        Limbo {
            delay,
            previous: BTreeMap::new(),
            held: BTreeMap::new(),
        }
    }

    /// The instances to derive from: `live` and those held, with what moved and when the next
    /// held one is due. `deregistered` says whether a vanished instance left a departure
    /// record.
    pub fn apply(
        &mut self,
        live: Vec<Instance>,
        deregistered: impl Fn(&ServiceName, &InstanceId) -> bool,
        now: Instant,
    ) -> (Vec<Instance>, Moves, Option<Instant>) {
        let mut moves = Moves::default();
        if self.delay.is_zero() {
            return (live, moves, None);
        }
        let current: BTreeMap<Id, Instance> = live
            .iter()
            .map(|i| ((i.service.clone(), i.id.clone()), i.clone()))
            .collect();
        for (id, instance) in std::mem::take(&mut self.previous) {
            if !current.contains_key(&id)
                && !self.held.contains_key(&id)
                && !deregistered(&id.0, &id.1)
            {
                self.held.insert(id.clone(), (instance, now + self.delay));
                moves.held.push(id);
            }
        }
        self.held.retain(|id, (_, until)| {
            if current.contains_key(id) {
                moves.returned.push(id.clone());
                false
            } else if *until <= now || deregistered(&id.0, &id.1) {
                moves.expired.push(id.clone());
                false
            } else {
                true
            }
        });
        self.previous = current;
        let next = self.held.values().map(|(_, until)| *until).min();
        let mut instances = live;
        instances.extend(self.held.values().map(|(i, _)| i.clone()));
        instances.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        (instances, moves, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> Instance {
        Instance::new(
            "pg".parse().unwrap(),
            id.parse().unwrap(),
            "10.0.0.1".to_owned(),
            5432,
        )
    }

    fn ids(instances: &[Instance]) -> Vec<String> {
        instances.iter().map(|i| i.id.to_string()).collect()
    }

    #[test]
    fn a_lost_session_is_held_for_the_delay_a_deregistration_is_not() {
        let t0 = Instant::now();
        let mut limbo = Limbo::new(Duration::from_secs(30));
        let (a, b, c) = (instance("a"), instance("b"), instance("c"));
        let never = |_: &ServiceName, _: &InstanceId| false;
        let (out, _, next) = limbo.apply(vec![a.clone(), b.clone(), c.clone()], never, t0);
        assert_eq!(
            (ids(&out), next),
            (["a", "b", "c"].map(String::from).to_vec(), None)
        );
        // b's session is lost, c deregisters.
        let left = |_: &ServiceName, id: &InstanceId| id.as_str() == "c";
        let (out, moves, next) = limbo.apply(vec![a.clone()], left, t0 + Duration::from_secs(1));
        assert_eq!(ids(&out), ["a", "b"]);
        assert_eq!(moves.held.len(), 1);
        assert_eq!(next, Some(t0 + Duration::from_secs(31)));
        // Still held before the delay; gone after it.
        let (out, _, _) = limbo.apply(vec![a.clone()], left, t0 + Duration::from_secs(30));
        assert_eq!(ids(&out), ["a", "b"]);
        let (out, moves, next) = limbo.apply(vec![a.clone()], left, t0 + Duration::from_secs(31));
        assert_eq!((ids(&out), next), (vec!["a".to_owned()], None));
        assert_eq!(moves.expired.len(), 1);
    }

    #[test]
    fn an_instance_back_within_the_delay_never_left_the_value() {
        let t0 = Instant::now();
        let mut limbo = Limbo::new(Duration::from_secs(30));
        let never = |_: &ServiceName, _: &InstanceId| false;
        let (a, b) = (instance("a"), instance("b"));
        limbo.apply(vec![a.clone(), b.clone()], never, t0);
        let (out, _, _) = limbo.apply(vec![a.clone()], never, t0 + Duration::from_secs(2));
        assert_eq!(ids(&out), ["a", "b"]);
        let (out, moves, next) = limbo.apply(
            vec![a.clone(), b.clone()],
            never,
            t0 + Duration::from_secs(5),
        );
        assert_eq!(
            (ids(&out), next),
            (vec!["a".to_owned(), "b".to_owned()], None)
        );
        assert_eq!(moves.returned.len(), 1);
        // A held instance that then deregisters (its record is found later) goes at once.
        limbo.apply(vec![a.clone()], never, t0 + Duration::from_secs(6));
        let left = |_: &ServiceName, id: &InstanceId| id.as_str() == "b";
        let (out, _, _) = limbo.apply(vec![a.clone()], left, t0 + Duration::from_secs(7));
        assert_eq!(ids(&out), ["a"]);
    }

    #[test]
    fn no_delay_changes_nothing() {
        let mut limbo = Limbo::new(Duration::ZERO);
        let never = |_: &ServiceName, _: &InstanceId| false;
        limbo.apply(vec![instance("a")], never, Instant::now());
        let (out, moves, next) = limbo.apply(vec![], never, Instant::now());
        assert!(out.is_empty() && next.is_none() && moves == Moves::default());
    }
}
