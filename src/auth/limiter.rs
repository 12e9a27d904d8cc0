//! Password attempts, limited per account and per client address, and the bound on password
//! hashes computed at once; failed redemption-code attempts, limited per user and per address.
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
    /// Redemption-code attempts.
    pub redeem: RedeemAttempts,
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
            redeem: RedeemAttempts::default(),
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

/// Redemption-code attempts per user and per client address, in the same window as passwords.
/// As with passwords, an attempt takes its slot before the code is looked up (so concurrent
/// guesses cannot exceed the limit), a successful redemption gives its slot back, and a failure
/// keeps it.
#[derive(Debug, Default)]
pub struct RedeemAttempts {
    by_user: Mutex<HashMap<i64, Vec<Instant>>>,
    by_address: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

/// One redemption attempt's place in the windows.
#[derive(Debug)]
pub struct RedeemSlot {
    user: i64,
    address: Option<IpAddr>,
    at: Instant,
}

/// Whole seconds until the oldest attempt in a full window leaves it (at least one).
fn retry_after(list: &[Instant], now: Instant) -> u64 {
    let oldest = list.iter().min().copied().unwrap_or(now);
    let left = WINDOW.saturating_sub(now.duration_since(oldest));
    u64::try_from(left.as_millis().div_ceil(1000)).unwrap_or(u64::MAX).max(1)
}

impl RedeemAttempts {
    /// Takes a slot for `user` and `address`, unless `per_user` (or `per_address`) attempts are
    /// already in the window; then the seconds until one leaves it.
    pub fn take(
        &self,
        user: i64,
        address: Option<IpAddr>,
        per_user: usize,
        per_address: usize,
    ) -> Result<RedeemSlot, u64> {
        let now = Instant::now();
        // Both locks at once, always in this order, as for passwords.
        let (Ok(mut users), Ok(mut addresses)) = (self.by_user.lock(), self.by_address.lock()) else {
            return Err(1);
        };
        prune(&mut users, now);
        prune(&mut addresses, now);
        let user_list = users.entry(user).or_default();
        if recent(user_list, now) >= per_user {
            return Err(retry_after(user_list, now));
        }
        if let Some(a) = address {
            let address_list = addresses.entry(a).or_default();
            if recent(address_list, now) >= per_address {
                return Err(retry_after(address_list, now));
            }
            address_list.push(now);
        }
        user_list.push(now);
        Ok(RedeemSlot { user, address, at: now })
    }

    /// Gives the slot of a successful redemption (or of one the server failed) back.
    pub fn release(&self, slot: RedeemSlot) {
        if let Ok(mut users) = self.by_user.lock()
            && let Some(list) = users.get_mut(&slot.user)
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

    #[test]
    fn redemption_attempts_are_limited_per_user_and_per_address() {
        let f = Failures::new(1);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = f.redeem.take(1, Some(a), 3, 3).unwrap();
        assert!(f.redeem.take(1, Some(a), 3, 3).is_ok());
        assert!(f.redeem.take(1, Some(b), 3, 3).is_ok());
        let wait = f.redeem.take(1, Some(b), 3, 3).unwrap_err();
        assert!((1..=WINDOW.as_secs()).contains(&wait), "{wait}");
        // Another user from the first address: the address has room for one more.
        assert!(f.redeem.take(2, Some(a), 3, 3).is_ok());
        assert!(f.redeem.take(3, Some(a), 3, 3).is_err());
        f.redeem.release(first);
        assert!(f.redeem.take(1, None, 3, 3).is_ok(), "a success gives its slot back");
        assert!(f.redeem.take(1, None, 3, 3).is_err());
    }
}
