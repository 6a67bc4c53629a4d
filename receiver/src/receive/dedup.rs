//! Duplicate detection for the receiver: which broadcast ids were seen
//! recently, bounded by count and by age.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{DEFAULT_WINDOW, DEFAULT_WINDOW_AGE};

/// Remembers the broadcast ids seen within a window, bounded both by count
/// and by age; the oldest ids are forgotten first. Every check is O(1)
/// (amortised: the ids it forgets were each inserted once).
///
/// An id's age counts from its first sighting; later copies do not extend
/// it.
#[derive(Debug)]
pub struct Dedup {
    max_ids: usize,
    max_age: Duration,
    seen: HashSet<Arc<str>>,
    /// Ids in the order first seen, with when.
    order: VecDeque<(Instant, Arc<str>)>,
}

impl Dedup {
    /// Remembers up to `max_ids` ids (at least 1), each for less than
    /// `max_age`. A zero `max_age` remembers nothing.
    pub fn new(max_ids: usize, max_age: Duration) -> Dedup {
        let max_ids = max_ids.max(1);
        let capacity = max_ids.min(DEFAULT_WINDOW);
        Dedup {
            max_ids,
            max_age,
            seen: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
        }
    }

    /// Whether `id` is new within the window; it is remembered from now on.
    pub fn first_time(&mut self, id: &str) -> bool {
        self.first_time_at(id, Instant::now())
    }

    /// [`Dedup::first_time`] with the clock passed in. `now` must not go
    /// backwards between calls (an earlier `now` forgets nothing).
    pub fn first_time_at(&mut self, id: &str, now: Instant) -> bool {
        self.forget_expired(now);
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= self.max_ids
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        let id: Arc<str> = Arc::from(id);
        self.seen.insert(Arc::clone(&id));
        self.order.push_back((now, id));
        true
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some((seen_at, _)) = self.order.front() {
            if now.saturating_duration_since(*seen_at) < self.max_age {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
    }
}

impl Default for Dedup {
    /// [`DEFAULT_WINDOW`] ids for [`DEFAULT_WINDOW_AGE`].
    fn default() -> Dedup {
        Dedup::new(DEFAULT_WINDOW, DEFAULT_WINDOW_AGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_dropped() {
        let mut dedup = Dedup::default();
        let now = Instant::now();
        assert!(dedup.first_time_at("a", now));
        assert!(dedup.first_time_at("b", now));
        assert!(!dedup.first_time_at("a", now));
        assert!(!dedup.first_time_at("b", now + Duration::from_secs(1)));
        assert!(!dedup.first_time("a"));
        assert_eq!(dedup.len(), 2);
    }

    #[test]
    fn the_oldest_ids_are_forgotten_beyond_the_count() {
        let mut dedup = Dedup::new(3, DEFAULT_WINDOW_AGE);
        let now = Instant::now();
        for id in ["a", "b", "c"] {
            assert!(dedup.first_time_at(id, now));
        }
        // A repeat neither counts as new nor refreshes "a".
        assert!(!dedup.first_time_at("a", now));
        assert!(dedup.first_time_at("d", now));
        assert_eq!(dedup.len(), 3);
        assert!(dedup.first_time_at("a", now), "a was the oldest");
        // Remembering "a" again forgot "b", the oldest then.
        assert!(!dedup.first_time_at("c", now));
        assert!(!dedup.first_time_at("d", now));
        assert!(dedup.first_time_at("b", now));
    }

    #[test]
    fn ids_are_forgotten_at_the_maximum_age() {
        let mut dedup = Dedup::new(DEFAULT_WINDOW, Duration::from_secs(60));
        let start = Instant::now();
        assert!(dedup.first_time_at("old", start));
        assert!(dedup.first_time_at("new", start + Duration::from_secs(30)));
        let almost = start + Duration::from_secs(59);
        assert!(!dedup.first_time_at("old", almost));
        // A repeat does not extend the window: "old" goes at 60 s.
        let expired = start + Duration::from_secs(60);
        assert!(dedup.first_time_at("old", expired));
        assert!(!dedup.first_time_at("new", expired));
        assert_eq!(dedup.len(), 2);
        // Much later, everything seen before is forgotten.
        let later = start + Duration::from_secs(3600);
        assert!(dedup.first_time_at("new", later));
        assert_eq!(dedup.len(), 1);
    }

    #[test]
    fn a_clock_going_backwards_forgets_nothing() {
        let mut dedup = Dedup::new(10, Duration::from_secs(1));
        let now = Instant::now() + Duration::from_secs(10);
        assert!(dedup.first_time_at("a", now));
        assert!(!dedup.first_time_at("a", now - Duration::from_secs(5)));
    }

    #[test]
    fn a_window_of_zero_ids_still_remembers_the_last_one() {
        let mut dedup = Dedup::new(0, DEFAULT_WINDOW_AGE);
        let now = Instant::now();
        assert!(dedup.first_time_at("a", now));
        assert!(!dedup.first_time_at("a", now));
        assert!(dedup.first_time_at("b", now));
        assert!(dedup.first_time_at("a", now));
    }
}
