//! Failed logins slow down the address they came from: each failure doubles the wait before the
//! next attempt from that IP is answered, up to a maximum. Memory is bounded: past
//! `max_tracked` addresses the stalest entries are forgotten.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

struct Entry {
    failures: u32,
    until: Instant,
}

pub struct Backoff {
    base: Duration,
    max: Duration,
    max_tracked: usize,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration, max_tracked: usize) -> Self {
        Backoff {
            base,
            max,
            max_tracked: max_tracked.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long an attempt from `ip` must wait before it is answered.
    pub fn delay(&self, ip: IpAddr, now: Instant) -> Duration {
        self.entries
            .lock()
            .get(&ip)
            .map(|e| e.until.saturating_duration_since(now))
            .unwrap_or_default()
    }

    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut entries = self.entries.lock();
        if entries.len() >= self.max_tracked && !entries.contains_key(&ip) {
            // Forget the entry whose back-off ends first: it matters least.
            if let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| *k) {
                entries.remove(&oldest);
            }
        }
        let e = entries.entry(ip).or_insert(Entry {
            failures: 0,
            until: now,
        });
        e.failures = e.failures.saturating_add(1);
        let wait = self
            .base
            .saturating_mul(1u32 << (e.failures - 1).min(16))
            .min(self.max);
        e.until = now + wait;
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.entries.lock().remove(&ip);
    }

    pub fn tracked(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets_on_success() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350), 10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t = Instant::now();
        assert_eq!(b.delay(ip, t), Duration::ZERO);
        b.failed(ip, t);
        assert_eq!(b.delay(ip, t), Duration::from_millis(100));
        b.failed(ip, t);
        assert_eq!(b.delay(ip, t), Duration::from_millis(200));
        b.failed(ip, t);
        assert_eq!(b.delay(ip, t), Duration::from_millis(350));
        b.succeeded(ip);
        assert_eq!(b.delay(ip, t), Duration::ZERO);
    }

    #[test]
    fn memory_is_bounded() {
        let b = Backoff::new(Duration::from_millis(1), Duration::from_secs(1), 100);
        let t = Instant::now();
        for i in 0..1000u32 {
            b.failed(IpAddr::from(i.to_be_bytes()), t);
        }
        assert_eq!(b.tracked(), 100);
    }
}
