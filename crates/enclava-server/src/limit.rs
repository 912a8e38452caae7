//! Per-source rate limits for the endpoints anyone may call without a credential (registration,
//! challenges, releases): a token bucket per source address, refilled at a steady rate. A refused
//! call is told how long to wait (`429` with `Retry-After`, or `RESOURCE_EXHAUSTED` with a
//! `retry-after` entry). Memory is bounded: idle buckets are dropped, and past a cap the map starts
//! over.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources tracked at most at once.
const MAX_SOURCES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per source: `burst` calls at once, then one per `every`.
#[derive(Debug)]
pub struct RateLimiter {
    every: Duration,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    /// `per_period` calls per `period` for each source, with bursts of as many; `None` when the
    /// limit is 0 (off).
    pub fn new(per_period: u32, period: Duration) -> Option<RateLimiter> {
        (per_period > 0).then(|| RateLimiter {
            every: period / per_period,
            burst: f64::from(per_period),
            buckets: Mutex::default(),
        })
    }

    /// Takes one call for `source`: `Err(seconds)` to wait when its bucket is empty. Calls without
    /// a known source (in-process tests) are not limited.
    pub fn check(&self, source: Option<IpAddr>) -> Result<(), u64> {
        let Some(ip) = source else { return Ok(()) };
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SOURCES && !map.contains_key(&ip) {
            let full = self.every.mul_f64(self.burst);
            map.retain(|_, b| now.duration_since(b.at) < full);
            if map.len() >= MAX_SOURCES {
                map.clear();
            }
        }
        let b = map.entry(ip).or_insert(Bucket { tokens: self.burst, at: now });
        let refill = now.duration_since(b.at).as_secs_f64() / self.every.as_secs_f64();
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) * self.every.as_secs_f64();
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_waits_and_others_are_apart() {
        let l = RateLimiter::new(3, Duration::from_secs(60)).expect("on");
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            assert!(l.check(a).is_ok());
        }
        let wait = l.check(a).expect_err("empty");
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(l.check(b).is_ok(), "another source has its own bucket");
        assert!(l.check(None).is_ok(), "no source, no limit");
        assert!(RateLimiter::new(0, Duration::from_secs(1)).is_none());
    }
}
