//! What bounds the gateway against its clients: connections, the time a request head and a body
//! may take, and the bytes of request bodies held at once across all uploads.
//!
//! A client controls how many connections it opens, how slowly it sends, and how many uploads
//! it leaves half sent; each of those is bounded here so that no client (or many) can make the
//! gateway grow without limit or stop answering others.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::values::MAX_VALUE_LEN;

/// The gateway's bounds; [`Limits::default`] holds the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's accept queue until one ends.
    pub max_connections: usize,
    /// How long a request head may take to arrive, counted from the connection's opening or the
    /// end of its previous response: so it is also how long a kept-alive connection may idle.
    pub header_timeout: Duration,
    /// How long a request body may take to arrive once its head has, and how long a response
    /// may go untaken (a write that makes no progress).
    pub body_timeout: Duration,
    /// Bytes of request bodies held at once across all uploads.
    pub upload_budget: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            upload_budget: 64 << 20,
        }
    }
}

/// A size such as `65536`, `64KiB` or `64MiB` (also `k`/`K`/`KB`, `m`/`M`/`MB`, all powers of
/// 1024), in bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let shift = match unit {
        "" | "B" => 0,
        "k" | "K" | "KB" | "KiB" => 10,
        "m" | "M" | "MB" | "MiB" => 20,
        "g" | "G" | "GB" | "GiB" => 30,
        _ => return Err(format!("unknown unit {unit:?}; write e.g. 64MiB or 65536")),
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?} is not a size; write e.g. 64MiB or 65536"))
}

/// The bytes of request bodies the gateway holds at once. An upload reserves what it may hold
/// (its declared length, or the largest value when it declares none) before any of its body is
/// read, and gives it back when its request ends, however it ends.
#[derive(Debug, Clone)]
pub struct UploadBudget {
    bytes: Arc<Semaphore>,
}

/// Bytes reserved by one upload; returned to the budget when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl UploadBudget {
    /// A budget of `bytes`; at least one largest value always fits.
    pub fn new(bytes: usize) -> UploadBudget {
        UploadBudget {
            bytes: Arc::new(Semaphore::new(
                bytes.clamp(MAX_VALUE_LEN, Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// Reserves room for a body of `declared` bytes (none declared: the largest value), or
    /// `None` when the budget is spent.
    pub fn reserve(&self, declared: Option<usize>) -> Option<Reservation> {
        let wanted = declared.unwrap_or(MAX_VALUE_LEN).min(MAX_VALUE_LEN);
        // MAX_VALUE_LEN (about 1 MiB) fits a u32.
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
        self.bytes
            .clone()
            .try_acquire_many_owned(wanted)
            .ok()
            .map(|permit| Reservation { _permit: permit })
    }

    /// Bytes not reserved now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, size) in [
            ("0", Some(0)),
            ("65536", Some(65536)),
            ("64KiB", Some(64 << 10)),
            ("64k", Some(64 << 10)),
            ("64MiB", Some(64 << 20)),
            ("2M", Some(2 << 20)),
            ("1GiB", Some(1 << 30)),
            ("", None),
            ("MiB", None),
            ("64 MiB", None),
            ("64TiB", None),
            ("-1", None),
            ("1.5MiB", None),
        ] {
            assert_eq!(parse_size(text).ok(), size, "{text:?}");
        }
    }

    #[test]
    fn uploads_share_the_budget_and_give_it_back() {
        let budget = UploadBudget::new(2 << 20);
        let a = budget.reserve(Some(1_000_000)).expect("first fits");
        let b = budget.reserve(Some(1_000_000)).expect("second fits");
        assert!(budget.reserve(Some(1_000_000)).is_none(), "third is over");
        // One that declares nothing may need the largest value.
        assert!(budget.reserve(None).is_none());
        assert!(
            budget.reserve(Some(0)).is_some(),
            "an empty body holds nothing"
        );
        drop(a);
        let c = budget.reserve(Some(1_000_000)).expect("room again");
        drop((b, c));
        assert_eq!(budget.available(), 2 << 20);
    }

    #[test]
    fn one_largest_value_always_fits() {
        let budget = UploadBudget::new(1);
        assert!(budget.reserve(None).is_some());
    }
}
