//! Password attempts, limited per account and per client address, and the bound on password
//! hashes computed at once.
//!
//! An attempt takes its slot in both windows *before* the password is hashed, in one step under
//! both locks: however many attempts arrive together, at most `PER_ACCOUNT` per account (and
//! `PER_ADDRESS` per address) are ever evaluated in a window. A successful sign-in gives its own
//! slot back; a failure keeps it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Attempts per account within the window.
pub const PER_ACCOUNT: usize = 5;
/// Attempts per client address within the window.
pub const PER_ADDRESS: usize = 20;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// What a refused caller is told to wait when every hashing slot is busy.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// Maps of recent attempts are pruned when they grow beyond this many keys.
const PRUNE_ABOVE: usize = 100_000;

#[derive(Debug)]
pub struct Failures {
    by_account: Mutex<HashMap<String, Vec<Instant>>>,
    by_address: Mutex<HashMap<IpAddr, Vec<Instant>>>,
    /// Argon2 takes ~19 MiB per hash: unbounded, concurrent attempts exhaust memory.
    hashing: std::sync::Arc<Semaphore>,
}

impl Default for Failures {
    fn default() -> Self {
        Self::new(4)
    }
}

/// One attempt's place in the windows; given back with `Failures::release` on success.
#[derive(Debug)]
pub struct Slot {
    account: String,
    address: Option<IpAddr>,
    at: Instant,
}

/// Why an attempt was not let through.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Too many attempts for this account or address in the window.
    Locked,
    /// Every hashing slot is busy; nothing was counted.
    Busy,
}

fn recent(list: &mut Vec<Instant>, now: Instant) -> usize {
    list.retain(|t| now.duration_since(*t) < WINDOW);
    list.len()
}

fn prune<K: Eq + std::hash::Hash>(map: &mut HashMap<K, Vec<Instant>>, now: Instant) {
    if map.len() > PRUNE_ABOVE {
        map.retain(|_, l| recent(l, now) > 0);
    }
}

fn remove_one(list: &mut Vec<Instant>, at: Instant) {
    if let Some(i) = list.iter().position(|t| *t == at) {
        list.swap_remove(i);
    }
}

impl Failures {
    /// `hash_concurrency` password hashes may run at once (at least one).
    pub fn new(hash_concurrency: usize) -> Self {
        Self {
            by_account: Mutex::default(),
            by_address: Mutex::default(),
            hashing: std::sync::Arc::new(Semaphore::new(hash_concurrency.max(1))),
        }
    }

    /// Lets one attempt through: a hashing permit and a slot in both windows, or nothing.
    /// Hold the permit while hashing; pass the slot to `release` if the password was right.
    pub fn admit(&self, account: &str, address: Option<IpAddr>) -> Result<(OwnedSemaphorePermit, Slot), Refused> {
        let permit = match self.hashing.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => return Err(Refused::Busy),
        };
        let slot = self.take(account, address).ok_or(Refused::Locked)?;
        Ok((permit, slot))
    }

    /// Takes a slot in the account's and the address's window, unless either is full.
    pub fn take(&self, account: &str, address: Option<IpAddr>) -> Option<Slot> {
        let now = Instant::now();
        // Both locks at once (always in this order), so that the check and the count are one
        // step for every concurrent attempt.
        let mut accounts = self.by_account.lock().ok()?;
        let mut addresses = self.by_address.lock().ok()?;
        prune(&mut accounts, now);
        prune(&mut addresses, now);
        let account_list = accounts.entry(account.to_owned()).or_default();
        if recent(account_list, now) >= PER_ACCOUNT {
            return None;
        }
        if let Some(a) = address {
            let address_list = addresses.entry(a).or_default();
            if recent(address_list, now) >= PER_ADDRESS {
                return None;
            }
            address_list.push(now);
        }
        account_list.push(now);
        Some(Slot { account: account.to_owned(), address, at: now })
    }

    /// Gives a successful attempt's slot back: a person who knows their password is never
    /// locked out by their own sign-ins.
    pub fn release(&self, slot: Slot) {
        if let Ok(mut accounts) = self.by_account.lock()
            && let Some(list) = accounts.get_mut(&slot.account)
        {
            remove_one(list, slot.at);
        }
        if let (Some(a), Ok(mut addresses)) = (slot.address, self.by_address.lock())
            && let Some(list) = addresses.get_mut(&a)
        {
            remove_one(list, slot.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_gets_a_fixed_number_of_attempts_per_window() {
        let f = Failures::new(1);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut slots = Vec::new();
        for _ in 0..PER_ACCOUNT {
            slots.push(f.take("a@example.com", Some(ip)).unwrap());
        }
        assert!(f.take("a@example.com", None).is_none());
        assert!(f.take("b@example.com", None).is_some());
        f.release(slots.pop().unwrap());
        assert!(f.take("a@example.com", None).is_some(), "a success gives its slot back");
        assert!(f.take("a@example.com", None).is_none());
    }

    #[test]
    fn busy_hashing_refuses_without_counting() {
        let f = Failures::new(1);
        let (permit, _slot) = f.admit("a@example.com", None).unwrap();
        assert_eq!(f.admit("b@example.com", None).unwrap_err(), Refused::Busy);
        drop(permit);
        assert!(f.admit("b@example.com", None).is_ok());
        // b took one slot only: the refused attempt did not count.
        for _ in 1..PER_ACCOUNT {
            assert!(f.take("b@example.com", None).is_some());
        }
        assert!(f.take("b@example.com", None).is_none());
    }
}
