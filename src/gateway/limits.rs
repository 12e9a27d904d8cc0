//! The per-user limit on concurrent in-flight requests (per instance).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct InFlight {
    max: u32,
    counts: Mutex<HashMap<i64, u32>>,
}

/// Held for the life of one request, stream included; releases its slot when dropped.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<InFlight>,
    user_id: i64,
}

impl InFlight {
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self { max, counts: Mutex::new(HashMap::new()) })
    }

    /// A slot for `user_id`, or `None` when they already have `max` requests in flight.
    pub fn try_acquire(self: &Arc<Self>, user_id: i64) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = counts.entry(user_id).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot { owner: self.clone(), user_id })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_released() {
        let l = InFlight::new(2);
        let a = l.try_acquire(1).unwrap();
        let _b = l.try_acquire(1).unwrap();
        assert!(l.try_acquire(1).is_none());
        assert!(l.try_acquire(2).is_some());
        drop(a);
        assert!(l.try_acquire(1).is_some());
    }
}
