//! What the instance node should say and whether it should exist, as one switch that drain
//! requests, SIGHUP (metadata declared again) and the registrar share.
//!
//! - Serving: registered with the instance's own weight.
//! - Soft drain: still registered, with weight 0, so consumers that weigh (pgpool's
//!   `backend_weightN`, HAProxy's `weight`, the `url`/`hostports` presets) send it no new work
//!   while sessions already there finish.
//! - Drain: deregistered.
//!
//! Every change of the document gets a new generation; the registrar reports the generation the
//! node holds, so a caller knows when its change has reached ZooKeeper.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::instance::{DocumentError, DrainNote, Instance};

/// How drained an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    Serving,
    /// Registered with weight 0.
    Soft,
    /// Deregistered.
    Out,
}

/// The bytes the node should hold, and which change they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub generation: u64,
    pub bytes: Arc<[u8]>,
}

/// The wanted state of one registration.
pub struct Switch {
    state: Mutex<State>,
    /// `false` while drained out (the registrar also waits for health).
    serving: watch::Sender<bool>,
    document: watch::Sender<Document>,
}

struct State {
    instance: Instance,
    drain: Drain,
    /// Why and until when the operator drained it.
    note: DrainNote,
    /// Counts drain requests: an expiry ends only the drain it was set for.
    epoch: u64,
    generation: u64,
}

impl Switch {
    /// Serving `instance`, whose document is `bytes` (encoded when the plan was checked).
    pub fn new(instance: Instance, bytes: Vec<u8>) -> Arc<Switch> {
        let (serving, _) = watch::channel(true);
        let (document, _) = watch::channel(Document {
            generation: 1,
            bytes: bytes.into(),
        });
        Arc::new(Switch {
            state: Mutex::new(State {
                instance,
                drain: Drain::Serving,
                note: DrainNote::default(),
                epoch: 0,
                generation: 1,
            }),
            serving,
            document,
        })
    }

    pub fn serving(&self) -> watch::Receiver<bool> {
        self.serving.subscribe()
    }

    pub fn document(&self) -> watch::Receiver<Document> {
        self.document.subscribe()
    }

    pub fn drain(&self) -> Drain {
        self.lock().drain
    }

    /// Sets the drain state with what the operator said of it (nothing for `Serving`); returns
    /// the previous state, the generation of the document that carries it (a caller waits for
    /// the node to hold that generation) and the drain's epoch (for [`Switch::expire`]).
    pub fn set_drain(&self, drain: Drain, note: DrainNote) -> (Drain, u64, u64) {
        let mut state = self.lock();
        let previous = std::mem::replace(&mut state.drain, drain);
        let note = if drain == Drain::Serving {
            DrainNote::default()
        } else {
            note
        };
        let note_changed = std::mem::replace(&mut state.note, note) != state.note;
        state.epoch += 1;
        if (previous == Drain::Soft) != (drain == Drain::Soft)
            || (drain == Drain::Soft && note_changed)
        {
            // Encoding cannot fail here: only the weight changed, and weight 0 is never longer
            // than the weight the instance was validated with.
            let _ = self.publish(&mut state);
        }
        self.serving.send_if_modified(|s| {
            let now = drain != Drain::Out;
            std::mem::replace(s, now) != now
        });
        (previous, state.generation, state.epoch)
    }

    /// Ends the drain of `epoch` (its time is up), unless another request came since; whether
    /// it did.
    pub fn expire(&self, epoch: u64) -> bool {
        if self.lock().epoch != epoch {
            return false;
        }
        self.set_drain(Drain::Serving, DrainNote::default());
        true
    }

    /// What the operator said of the current drain.
    pub fn note(&self) -> DrainNote {
        self.lock().note.clone()
    }

    /// Replaces the metadata (declared again on SIGHUP). Nothing changes when it is the same;
    /// when the new document cannot be encoded the old one stays.
    pub fn set_meta(&self, meta: BTreeMap<String, String>) -> Result<bool, DocumentError> {
        let mut state = self.lock();
        if state.instance.meta == meta {
            return Ok(false);
        }
        let old = std::mem::replace(&mut state.instance.meta, meta);
        if let Err(err) = self.publish(&mut state) {
            state.instance.meta = old;
            return Err(err);
        }
        Ok(true)
    }

    /// The instance as it is registered now (weight 0 while softly drained).
    pub fn instance(&self) -> Instance {
        let state = self.lock();
        effective(&state)
    }

    fn publish(&self, state: &mut State) -> Result<(), DocumentError> {
        let bytes = effective(state).to_json()?;
        state.generation += 1;
        self.document.send_replace(Document {
            generation: state.generation,
            bytes: bytes.into(),
        });
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn effective(state: &State) -> Instance {
    let mut instance = state.instance.clone();
    if state.drain == Drain::Soft {
        instance.weight = 0;
        instance.drained = Some(state.note.clone());
    }
    instance
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch() -> Arc<Switch> {
        let mut i = Instance::new(
            "pg".parse().unwrap(),
            "db1".parse().unwrap(),
            "10.0.0.5".to_owned(),
            5432,
        );
        i.weight = 3;
        let bytes = i.to_json().unwrap();
        Switch::new(i, bytes)
    }

    fn weight(doc: &Document) -> u64 {
        let v: serde_json::Value = serde_json::from_slice(&doc.bytes).unwrap();
        v["payload"]["weight"].as_u64().unwrap()
    }

    #[test]
    fn a_soft_drain_keeps_the_node_with_weight_zero_and_undrain_restores_the_weight() {
        let s = switch();
        let docs = s.document();
        assert_eq!(weight(&docs.borrow()), 3);
        let (previous, generation, _) = s.set_drain(Drain::Soft, DrainNote::default());
        assert_eq!(previous, Drain::Serving);
        assert_eq!(docs.borrow().generation, generation);
        assert_eq!(weight(&docs.borrow()), 0);
        assert!(*s.serving().borrow());
        s.set_drain(Drain::Serving, DrainNote::default());
        assert_eq!(weight(&docs.borrow()), 3);
    }

    #[test]
    fn a_drain_deregisters_without_touching_the_document() {
        let s = switch();
        let (_, generation, _) = s.set_drain(Drain::Out, DrainNote::default());
        assert!(!*s.serving().borrow());
        assert_eq!(generation, 1);
        // Soft after out: registered again, weightless.
        s.set_drain(Drain::Soft, DrainNote::default());
        assert!(*s.serving().borrow());
        assert_eq!(weight(&s.document().borrow()), 0);
    }

    #[test]
    fn a_drain_with_a_note_carries_it_and_its_expiry_ends_only_that_drain() {
        let s = switch();
        let note = DrainNote {
            reason: Some("kernel upgrade".to_owned()),
            until_ms: Some(1),
        };
        let (_, _, first) = s.set_drain(Drain::Soft, note.clone());
        let doc: serde_json::Value = serde_json::from_slice(&s.document().borrow().bytes).unwrap();
        assert_eq!(doc["payload"]["drain"]["reason"], "kernel upgrade");
        assert_eq!(s.note(), note);
        // A later request: the first drain's expiry changes nothing.
        let (_, _, second) = s.set_drain(Drain::Out, DrainNote::default());
        assert!(!s.expire(first));
        assert_eq!(s.drain(), Drain::Out);
        assert!(s.expire(second));
        assert_eq!(s.drain(), Drain::Serving);
        let doc: serde_json::Value = serde_json::from_slice(&s.document().borrow().bytes).unwrap();
        assert!(doc["payload"].get("drain").is_none(), "{doc}");
    }

    #[test]
    fn new_metadata_is_a_new_document_and_the_same_metadata_is_not() {
        let s = switch();
        let meta = BTreeMap::from([("password".to_owned(), "new".to_owned())]);
        assert!(s.set_meta(meta.clone()).unwrap());
        assert_eq!(s.document().borrow().generation, 2);
        assert!(!s.set_meta(meta).unwrap());
        assert_eq!(s.document().borrow().generation, 2);
        let too_big = BTreeMap::from([("x".to_owned(), "y".repeat(2 << 20))]);
        assert!(s.set_meta(too_big).is_err());
        assert_eq!(s.instance().meta["password"], "new");
        assert_eq!(s.document().borrow().generation, 2);
    }
}
