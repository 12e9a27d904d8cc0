//! Failed password attempts, limited per account and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures per account within the window.
pub const PER_ACCOUNT: usize = 5;
/// Failures per client address within the window.
pub const PER_ADDRESS: usize = 20;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Default)]
pub struct Failures {
    by_account: Mutex<HashMap<String, Vec<Instant>>>,
    by_address: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

fn recent(list: &mut Vec<Instant>, now: Instant) -> usize {
    list.retain(|t| now.duration_since(*t) < WINDOW);
    list.len()
}

impl Failures {
    /// True when this account or address has failed too often recently.
    pub fn blocked(&self, account: &str, address: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let by_account =
            self.by_account.lock().map(|mut m| m.get_mut(account).map_or(0, |l| recent(l, now))).unwrap_or(0);
        let by_address = address
            .and_then(|a| self.by_address.lock().ok().map(|mut m| m.get_mut(&a).map_or(0, |l| recent(l, now))))
            .unwrap_or(0);
        by_account >= PER_ACCOUNT || by_address >= PER_ADDRESS
    }

    pub fn record(&self, account: &str, address: Option<IpAddr>) {
        let now = Instant::now();
        if let Ok(mut m) = self.by_account.lock() {
            if m.len() > 100_000 {
                m.retain(|_, l| recent(l, now) > 0);
            }
            m.entry(account.to_owned()).or_default().push(now);
        }
        if let (Some(a), Ok(mut m)) = (address, self.by_address.lock()) {
            if m.len() > 100_000 {
                m.retain(|_, l| recent(l, now) > 0);
            }
            m.entry(a).or_default().push(now);
        }
    }

    /// A successful sign-in clears the account's failures.
    pub fn clear(&self, account: &str) {
        if let Ok(mut m) = self.by_account.lock() {
            m.remove(account);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_too_many_failures() {
        let f = Failures::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..PER_ACCOUNT {
            assert!(!f.blocked("a@example.com", Some(ip)));
            f.record("a@example.com", Some(ip));
        }
        assert!(f.blocked("a@example.com", None));
        assert!(!f.blocked("b@example.com", None));
        f.clear("a@example.com");
        assert!(!f.blocked("a@example.com", None));
    }
}
