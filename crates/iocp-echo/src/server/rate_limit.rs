//! The per-source token bucket behind `--udp-rate`.
//!
//! UDP echo reflects whatever arrives to whatever source address the packet
//! claims, so it is rate-limited per source IP (ports are free to spoof or
//! rotate, so they do not make a new source). Each source has a bucket of
//! `rate` tokens (a burst of one second) refilled at `rate` per second; a
//! datagram takes a token or is dropped. The table is bounded: full buckets
//! are forgotten by [`RateLimiter::prune`], and when it is still full a new
//! source is refused (its datagram dropped) rather than growing memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

const MAX_SOURCES: usize = 65_536;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    pub(crate) fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        RateLimiter {
            rate,
            burst: rate,
            buckets: HashMap::new(),
        }
    }

    /// Whether a datagram from `ip` may be echoed now.
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_SOURCES {
            self.prune(now);
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets sources whose bucket has refilled (they are as new again).
    pub(crate) fn prune(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
        });
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_limits_and_refills() {
        let mut r = RateLimiter::new(10);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        let ok = (0..100).filter(|_| r.allow(ip, t0)).count();
        assert_eq!(ok, 10, "a burst of one second");
        assert!(r.allow(other, t0), "sources are independent");
        assert!(!r.allow(ip, t0 + Duration::from_millis(50)));
        assert!(
            r.allow(ip, t0 + Duration::from_millis(150)),
            "refilled by one token"
        );
        r.prune(t0 + Duration::from_secs(5));
        assert_eq!(r.sources(), 0);
    }
}
