//! kubelet's back-off (`flowcontrol.Backoff`) for crash loops and image pulls: the first retry is
//! immediate, then 10 s doubling to 300 s; an entry whose last event is older than twice the maximum
//! (10 min) starts over. Time is passed in, so the logic is pure and testable.

use std::collections::HashMap;
use std::time::Duration;

pub const INITIAL: Duration = Duration::from_secs(10);
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    backoff: Duration,
    /// When the event that set `backoff` happened (ns since the epoch).
    last_update: i64,
}

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(INITIAL, MAX)
    }
}

fn elapsed(from: i64, to: i64) -> Duration {
    Duration::from_nanos(u64::try_from(to.saturating_sub(from)).unwrap_or(0))
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            entries: HashMap::new(),
        }
    }

    fn expired(&self, entry: &Entry, event_time: i64) -> bool {
        elapsed(entry.last_update, event_time) > self.max * 2
    }

    /// Records a retry caused by an event at `event_time` (a container's finish, a failed pull) and
    /// grows the delay for the next one.
    pub fn next(&mut self, key: &str, event_time: i64) {
        let (initial, max) = (self.initial, self.max);
        let current = self.entries.get(key).copied();
        let backoff = match current {
            Some(e) if !self.expired(&e, event_time) => (e.backoff * 2).min(max),
            _ => initial,
        };
        self.entries.insert(
            key.to_string(),
            Entry {
                backoff,
                last_update: event_time,
            },
        );
    }

    /// How long the caller must still wait at `now` before retrying after an event at `event_time`;
    /// `None` when it may retry now.
    pub fn remaining(&self, key: &str, event_time: i64, now: i64) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        if self.expired(entry, event_time) {
            return None;
        }
        let waited = elapsed(event_time, now);
        (waited < entry.backoff).then(|| entry.backoff - waited)
    }

    /// Like [`Backoff::remaining`], measured from the last recorded event (image pulls).
    pub fn remaining_since_update(&self, key: &str, now: i64) -> Option<Duration> {
        let last = self.entries.get(key)?.last_update;
        self.remaining(key, last, now)
    }

    /// The current delay for a key (for messages: "back-off 20s restarting failed container").
    pub fn current(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|e| e.backoff)
    }

    pub fn forget(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Drops entries idle for longer than twice the maximum.
    pub fn gc(&mut self, now: i64) {
        let max = self.max;
        self.entries
            .retain(|_, e| elapsed(e.last_update, now) <= max * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn first_retry_is_immediate_then_doubles_to_the_cap() {
        let mut b = Backoff::default();
        assert_eq!(b.remaining("k", 0, 0), None, "nothing recorded: no wait");
        b.next("k", 0);
        assert_eq!(b.current("k"), Some(Duration::from_secs(10)));
        // Second failure one second after the first restart: must wait out 10 s from that failure.
        assert_eq!(b.remaining("k", S, 3 * S), Some(Duration::from_secs(8)));
        assert_eq!(b.remaining("k", S, 11 * S), None);
        let mut expected = 10;
        let mut t = S;
        for _ in 0..8 {
            b.next("k", t);
            expected = (expected * 2).min(300);
            assert_eq!(b.current("k"), Some(Duration::from_secs(expected)));
            t += 5 * S;
        }
        assert_eq!(b.current("k"), Some(Duration::from_secs(300)));
    }

    #[test]
    fn resets_after_ten_quiet_minutes() {
        let mut b = Backoff::default();
        b.next("k", 0);
        b.next("k", S);
        assert_eq!(b.current("k"), Some(Duration::from_secs(20)));
        let later = S + 601 * S;
        assert_eq!(b.remaining("k", later, later), None);
        b.next("k", later);
        assert_eq!(b.current("k"), Some(Duration::from_secs(10)));
    }

    #[test]
    fn gc_drops_idle_entries() {
        let mut b = Backoff::default();
        b.next("old", 0);
        b.next("new", 600 * S);
        b.gc(601 * S);
        assert_eq!(b.current("old"), None);
        assert!(b.current("new").is_some());
    }
}
