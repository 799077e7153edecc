//! Spacing ZooKeeper requests at a rate: a director's re-listing after a reconnect or a new
//! session reads every instance of its services, and several directors (or many agents) doing
//! it at once is a read storm. Each request takes a slot `1/rate` after the previous one's; after
//! a quiet spell up to a tenth of a second's worth go at once.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A request rate shared by every task that holds it (an `Arc<Pace>`).
#[derive(Debug)]
pub struct Pace {
    every: Duration,
    burst: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pace {
    /// `per_second` requests a second; `None` for 0 (unpaced).
    pub fn per_second(per_second: u32) -> Option<Pace> {
        (per_second > 0).then(|| Pace {
            every: Duration::from_secs(1) / per_second,
            burst: Duration::from_millis(100),
            next: Mutex::new(None),
        })
    }

    /// Waits for the next slot.
    ///
    /// # Cancellation safety
    /// Safe: a dropped wait only leaves its slot unused.
    pub async fn take(&self) {
        let now = Instant::now();
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let earliest = now.checked_sub(self.burst).unwrap_or(now);
            let slot = next.map_or(earliest, |n| n.max(earliest));
            *next = Some(slot + self.every);
            slot
        };
        if slot > now {
            tokio::time::sleep_until(slot).await;
        }
    }
}

/// Takes a slot of `pace`, if any.
pub async fn paced(pace: Option<&Pace>) {
    if let Some(pace) = pace {
        pace.take().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_after_a_burst() {
        assert!(Pace::per_second(0).is_none());
        let pace = Pace::per_second(100).unwrap();
        let start = Instant::now();
        // A tenth of a second's worth at once (11 slots up to now), then one every 10 ms.
        for _ in 0..11 {
            pace.take().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..19 {
            pace.take().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(190));
        // After a quiet second, a burst again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let quiet = Instant::now();
        for _ in 0..11 {
            pace.take().await;
        }
        assert_eq!(quiet.elapsed(), Duration::ZERO);
    }
}
