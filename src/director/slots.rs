//! Stable member numbers ("slots") for consumers that number their members, such as pgpool's
//! backend ids: each instance keeps its slot for as long as it is registered, and a slot is never
//! given to a different `address:port` while a consumer may still hold it.
//!
//! pgpool takes a backend's address only when its slot is first loaded: on reload it silently
//! keeps the old address of a slot whose `backend_hostnameN` changed, but applies that slot's new
//! weight and flag. So renumbering after a removal would put weights and flags on the wrong
//! servers. The slot map is state the leader publishes with the value, at
//! `<root>/slots/<KEY>`, in the same fenced multi-op, so a director failover keeps it.
//!
//! The rules, applied to the instances oldest first:
//! - an instance keeps the slot it holds, as long as its `address:port` is the one recorded;
//! - a pinned instance (meta `slot` or `pgpool_node_id`) takes its slot unless another live
//!   instance holds it: then it is refused, with an error naming both, and left out;
//! - a new instance takes the slot last held by the same `address:port` (the same server back),
//!   else the lowest slot never used, else — only when all [`MAX_SLOTS`] are used — the slot
//!   retired longest ago, with a warning: the consumer must be restarted to take a new address;
//! - a slot whose instance left is retired: kept with its `address:port`, never reused by
//!   another address while a free slot exists.
//!
//! Pure: [`assign`] is a function of the previous map, the instances and the time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::instance::Instance;
use crate::layout::{InstanceId, ServiceName};

/// The most slots an output has: pgpool's `MAX_NUM_BACKENDS`.
pub const MAX_SLOTS: u32 = 128;

/// Meta keys that pin an instance's slot, in the order they are looked at.
pub const PIN_KEYS: [&str; 2] = ["slot", "pgpool_node_id"];

/// An instance, as slots name it: `service/id`.
pub type Member = (ServiceName, InstanceId);

/// The slot of each instance being derived.
pub type SlotOf = BTreeMap<Member, u32>;

/// Who holds or last held a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// `service/id`.
    pub instance: String,
    pub address: String,
    pub port: Option<u16>,
    /// When the instance left (ms since the Unix epoch); `None` while it is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_ms: Option<u64>,
}

impl Slot {
    fn endpoint(&self) -> (&str, Option<u16>) {
        (&self.address, self.port)
    }
}

/// The slot map of an output: slot number → holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots {
    pub slots: BTreeMap<u32, Slot>,
}

#[derive(Serialize, Deserialize)]
struct Document {
    version: u32,
    slots: BTreeMap<u32, Slot>,
}

/// Why a stored slot map cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the slot map is not readable ({reason}); nothing is published, so that no member is renumbered. Delete the znode to number the members again from 0"
)]
pub struct SlotMapError {
    pub reason: String,
}

impl Slots {
    /// Parses a stored map; `None` (no znode yet) is the empty map.
    pub fn parse(data: Option<&[u8]>) -> Result<Slots, SlotMapError> {
        let Some(data) = data else {
            return Ok(Slots::default());
        };
        let doc: Document = serde_json::from_slice(data).map_err(|e| SlotMapError {
            reason: e.to_string(),
        })?;
        if doc.version != 1 {
            return Err(SlotMapError {
                reason: format!("version {} is not 1", doc.version),
            });
        }
        if let Some(n) = doc.slots.keys().find(|&&n| n >= MAX_SLOTS) {
            return Err(SlotMapError {
                reason: format!("slot {n} is not below {MAX_SLOTS}"),
            });
        }
        Ok(Slots { slots: doc.slots })
    }

    /// The stored form: compact JSON, slots in order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let doc = Document {
            version: 1,
            slots: self.slots.clone(),
        };
        // A map of plain strings and numbers always encodes.
        serde_json::to_vec(&doc).unwrap_or_default()
    }
}

/// An instance left out because it cannot have a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `service/id`.
    pub instance: String,
    pub reason: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instance {}: {}", self.instance, self.reason)
    }
}

/// A slot given to a new address while a consumer may still hold the old one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reused {
    pub slot: u32,
    /// `service/id` of the new holder.
    pub instance: String,
    /// `address:port` of the old holder.
    pub was: String,
}

/// What [`assign`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned {
    /// The new map, to publish with the value.
    pub slots: Slots,
    /// The slot of every instance that has one.
    pub of: SlotOf,
    /// Instances left out of the value, each with why.
    pub refused: Vec<Refused>,
    /// Slots given to a different address: the consumer must restart to apply them.
    pub reused: Vec<Reused>,
}

fn name(i: &Instance) -> String {
    format!("{}/{}", i.service, i.id)
}

fn endpoint_text(address: &str, port: Option<u16>) -> String {
    match port {
        Some(port) => format!("{address}:{port}"),
        None => address.to_owned(),
    }
}

/// The pinned slot of `i`, if its meta names one. A pin that is not a number below
/// [`MAX_SLOTS`] is an error.
fn pin(i: &Instance) -> Result<Option<u32>, String> {
    for key in PIN_KEYS {
        if let Some(text) = i.meta.get(key) {
            return match text.trim().parse::<u32>() {
                Ok(n) if n < MAX_SLOTS => Ok(Some(n)),
                _ => Err(format!(
                    "its meta {key} is not a slot number from 0 to {}",
                    MAX_SLOTS - 1
                )),
            };
        }
    }
    Ok(None)
}

/// Gives every instance a slot, keeping the ones `previous` records. `now_ms` stamps the slots
/// retired now.
pub fn assign(previous: &Slots, instances: &[&Instance], now_ms: u64) -> Assigned {
    let mut order: Vec<&Instance> = instances.to_vec();
    order.sort_by(|a, b| {
        (a.registered_ms, &a.service, &a.id).cmp(&(b.registered_ms, &b.service, &b.id))
    });
    let mut slots = previous.slots.clone();
    let mut out = Assigned::default();
    // Slots given to a live instance in this round.
    let mut live: BTreeMap<u32, String> = BTreeMap::new();
    let mut pending: Vec<(&Instance, Option<u32>)> = Vec::new();

    // 1. Who keeps what it holds.
    let mut held: BTreeMap<String, u32> = BTreeMap::new();
    for (&n, slot) in &previous.slots {
        if slot.retired_ms.is_none() {
            held.insert(slot.instance.clone(), n);
        }
    }
    for &i in &order {
        let me = name(i);
        let pinned = match pin(i) {
            Ok(p) => p,
            Err(reason) => {
                out.refused.push(Refused {
                    instance: me,
                    reason,
                });
                continue;
            }
        };
        let kept = held.get(&me).copied().filter(|n| {
            let slot = &previous.slots[n];
            slot.endpoint() == (i.address.as_str(), i.port) && pinned.is_none_or(|p| p == *n)
        });
        match kept {
            Some(n) => {
                live.insert(n, me);
                out.of.insert((i.service.clone(), i.id.clone()), n);
            }
            None => pending.push((i, pinned)),
        }
    }

    // 2. Pins, then 3. everyone else; oldest first within each.
    let (pinned, unpinned): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(_, p)| p.is_some());
    for (i, wanted) in pinned.into_iter().chain(unpinned) {
        let me = name(i);
        let endpoint = (i.address.as_str(), i.port);
        let chosen = match wanted {
            Some(n) => {
                if let Some(other) = live.get(&n) {
                    out.refused.push(Refused {
                        instance: me,
                        reason: format!(
                            "it pins slot {n}, which instance {other} holds; give one of them another slot"
                        ),
                    });
                    continue;
                }
                n
            }
            None => {
                let same = slots.iter().find(|(n, s)| {
                    !live.contains_key(n) && s.retired_ms.is_some() && s.endpoint() == endpoint
                });
                let never = (0..MAX_SLOTS).find(|n| !slots.contains_key(n));
                let oldest = slots
                    .iter()
                    .filter(|(n, s)| !live.contains_key(n) && s.retired_ms.is_some())
                    .min_by_key(|(n, s)| (s.retired_ms, **n));
                match (same, never, oldest) {
                    (Some((&n, _)), _, _) => n,
                    (None, Some(n), _) => n,
                    (None, None, Some((&n, _))) => n,
                    (None, None, None) => {
                        out.refused.push(Refused {
                            instance: me,
                            reason: format!("all {MAX_SLOTS} slots are held by live instances"),
                        });
                        continue;
                    }
                }
            }
        };
        if let Some(old) = slots.get(&chosen)
            && old.endpoint() != endpoint
        {
            out.reused.push(Reused {
                slot: chosen,
                instance: me.clone(),
                was: endpoint_text(&old.address, old.port),
            });
        }
        // Whoever held this slot before (a live instance that moved to its pin) lets go of it.
        slots.insert(
            chosen,
            Slot {
                instance: me.clone(),
                address: i.address.clone(),
                port: i.port,
                retired_ms: None,
            },
        );
        live.insert(chosen, me);
        out.of.insert((i.service.clone(), i.id.clone()), chosen);
    }

    // 4. Slots no live instance holds any more are retired (keeping their address).
    let live_slots: BTreeSet<u32> = live.keys().copied().collect();
    for (n, slot) in slots.iter_mut() {
        if !live_slots.contains(n) && slot.retired_ms.is_none() {
            slot.retired_ms = Some(now_ms);
        }
    }
    out.slots = Slots { slots };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, address: &str, port: u16, registered: u64) -> Instance {
        let mut i = Instance::new(
            "pg".parse().unwrap(),
            id.parse().unwrap(),
            address.into(),
            port,
        );
        i.registered_ms = registered;
        i
    }

    fn pinned(mut i: Instance, key: &str, n: &str) -> Instance {
        i.meta.insert(key.into(), n.into());
        i
    }

    /// slot → instance id of each instance, as `id=slot` words in id order.
    fn of(a: &Assigned) -> String {
        a.of.iter()
            .map(|((_, id), n)| format!("{id}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn run(previous: &Slots, instances: &[Instance], now: u64) -> Assigned {
        let refs: Vec<&Instance> = instances.iter().collect();
        assign(previous, &refs, now)
    }

    #[test]
    fn a_first_assignment_numbers_oldest_first_from_zero() {
        let a = run(
            &Slots::default(),
            &[
                inst("b", "10.0.0.2", 5432, 5),
                inst("a", "10.0.0.1", 5432, 9),
                inst("c", "10.0.0.3", 5432, 1),
            ],
            100,
        );
        assert_eq!(of(&a), "a=2 b=1 c=0");
        assert!(a.refused.is_empty() && a.reused.is_empty());
    }

    #[test]
    fn removal_leaves_a_gap_and_nobody_is_renumbered() {
        let all = [
            inst("a", "10.0.0.1", 5432, 1),
            inst("b", "10.0.0.2", 5432, 2),
            inst("c", "10.0.0.3", 5432, 3),
        ];
        let first = run(&Slots::default(), &all, 100);
        let second = run(&first.slots, &all[1..], 200);
        assert_eq!(of(&second), "b=1 c=2");
        assert_eq!(second.slots.slots[&0].retired_ms, Some(200));
        assert_eq!(second.slots.slots[&0].address, "10.0.0.1");
        // A new server takes a slot never used, not the retired one.
        let d = inst("d", "10.0.0.4", 5432, 4);
        let third = run(
            &second.slots,
            &[all[1].clone(), all[2].clone(), d.clone()],
            300,
        );
        assert_eq!(of(&third), "b=1 c=2 d=3");
        // The old server back (a new session, even a new id) gets its old slot back.
        let a_again = inst("a2", "10.0.0.1", 5432, 5);
        let fourth = run(
            &third.slots,
            &[all[1].clone(), all[2].clone(), d, a_again],
            400,
        );
        assert_eq!(of(&fourth), "a2=0 b=1 c=2 d=3");
        assert!(fourth.reused.is_empty());
        assert_eq!(fourth.slots.slots[&0].retired_ms, None);
    }

    #[test]
    fn a_changed_address_is_a_new_slot() {
        let first = run(&Slots::default(), &[inst("a", "10.0.0.1", 5432, 1)], 100);
        let second = run(&first.slots, &[inst("a", "10.0.0.9", 5432, 1)], 200);
        assert_eq!(of(&second), "a=1");
        assert_eq!(second.slots.slots[&0].retired_ms, Some(200));
    }

    #[test]
    fn pins_take_their_slot_and_clashes_are_refused_naming_both() {
        let a = pinned(inst("a", "10.0.0.1", 5432, 1), "pgpool_node_id", "5");
        let b = inst("b", "10.0.0.2", 5432, 2);
        let first = run(&Slots::default(), &[a.clone(), b.clone()], 100);
        assert_eq!(of(&first), "a=5 b=0");
        let c = pinned(inst("c", "10.0.0.3", 5432, 3), "slot", "5");
        let second = run(&first.slots, &[a.clone(), b.clone(), c.clone()], 200);
        assert_eq!(of(&second), "a=5 b=0");
        assert_eq!(second.refused.len(), 1);
        let e = second.refused[0].to_string();
        assert!(
            e.contains("pg/c") && e.contains("pg/a") && e.contains("slot 5"),
            "{e}"
        );
        // A pin on a slot an unpinned instance holds: the holder keeps it.
        let d = pinned(inst("d", "10.0.0.4", 5432, 4), "slot", "0");
        let third = run(&first.slots, &[a, b, d], 300);
        assert_eq!(of(&third), "a=5 b=0");
        assert!(third.refused[0].to_string().contains("pg/b"));
        // A bad pin is refused, naming the key.
        let bad = pinned(inst("e", "10.0.0.5", 5432, 5), "slot", "128");
        let fourth = run(&Slots::default(), &[bad], 400);
        assert!(fourth.of.is_empty());
        assert!(
            fourth.refused[0].reason.contains("meta slot"),
            "{:?}",
            fourth.refused
        );
    }

    #[test]
    fn slots_are_reused_for_another_address_only_when_all_are_used() {
        let mut previous = Slots::default();
        for n in 0..MAX_SLOTS {
            previous.slots.insert(
                n,
                Slot {
                    instance: format!("pg/old{n}"),
                    address: format!("10.1.0.{n}"),
                    port: Some(5432),
                    retired_ms: Some(1000 - u64::from(n)),
                },
            );
        }
        let a = run(&previous, &[inst("new", "10.9.9.9", 5432, 1)], 2000);
        // The slot retired longest ago: the highest number here.
        assert_eq!(of(&a), format!("new={}", MAX_SLOTS - 1));
        assert_eq!(a.reused.len(), 1);
        assert_eq!(a.reused[0].was, format!("10.1.0.{}:5432", MAX_SLOTS - 1));
        // All held by live instances: refused.
        let live: Vec<Instance> = (0..MAX_SLOTS)
            .map(|n| inst(&format!("l{n}"), &format!("10.2.0.{n}"), 5432, u64::from(n)))
            .collect();
        let full = run(&Slots::default(), &live, 1);
        let mut more = live.clone();
        more.push(inst("late", "10.3.0.1", 5432, 999));
        let b = run(&full.slots, &more, 2);
        assert_eq!(b.of.len(), MAX_SLOTS as usize);
        assert!(b.refused[0].reason.contains("all 128 slots"));
    }

    #[test]
    fn the_stored_form_round_trips_and_bad_maps_are_refused() {
        let a = run(&Slots::default(), &[inst("a", "10.0.0.1", 5432, 1)], 100);
        let b = run(&a.slots, &[], 200);
        let bytes = b.slots.to_bytes();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"{"version":1,"slots":{"0":{"instance":"pg/a","address":"10.0.0.1","port":5432,"retired_ms":200}}}"#
        );
        assert_eq!(Slots::parse(Some(&bytes)).unwrap(), b.slots);
        assert_eq!(Slots::parse(None).unwrap(), Slots::default());
        for bad in [
            &b"{"[..],
            br#"{"version":2,"slots":{}}"#,
            br#"{"version":1,"slots":{"200":{"instance":"x","address":"a","port":1}}}"#,
        ] {
            let e = Slots::parse(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("Delete the znode"), "{e}");
        }
    }
}
