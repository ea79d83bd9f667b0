//! Per-key rate limits (governor's GCRA) and the `x-ratelimit-*` headers
//! OpenAI clients know.

use crate::config::LimitsConfig;
use crate::openai::ApiError;
use crate::service::Next;
use arc_swap::ArcSwap;
use axum::http::{HeaderMap, HeaderValue};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::collections::HashSet;
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

type Limiter = RateLimiter<
    Arc<str>,
    DefaultKeyedStateStore<Arc<str>>,
    DefaultClock,
    StateInformationMiddleware,
>;

pub struct RateLimits {
    limiter: Option<Limiter>,
    /// Keys no limit applies to: the demo's own seeding traffic, which
    /// must not queue behind (or use up) the limits a person trying the
    /// demo meets. Read lock-free on every request.
    exempt: ArcSwap<HashSet<Arc<str>>>,
    per_minute: u32,
    burst: u32,
    /// Time for one request's worth of capacity to come back.
    interval: Duration,
}

/// This process's share of the configured limit: the buckets live in each
/// replica's memory, so with `replicas = N` each takes an N-th (at least
/// one request) and a key's limit across the deployment stays about the
/// configured one. A limit that was on stays on.
fn per_replica(config: &LimitsConfig) -> (u32, u32) {
    let n = config.replicas.max(1);
    let share = |v: u32| if v == 0 { 0 } else { (v / n).max(1) };
    (share(config.requests_per_minute), share(config.burst))
}

/// What a request that passed may tell its client.
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    pub limit: u32,
    pub remaining: u32,
    pub reset: Duration,
}

impl RateLimits {
    pub fn new(config: &LimitsConfig) -> Self {
        let (requests_per_minute, burst) = per_replica(config);
        let per_minute = NonZeroU32::new(requests_per_minute);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let limiter = per_minute.map(|rpm| {
            RateLimiter::keyed(Quota::per_minute(rpm).allow_burst(burst))
                .with_middleware::<StateInformationMiddleware>()
        });
        Self {
            limiter,
            exempt: ArcSwap::default(),
            per_minute: requests_per_minute,
            burst: burst.get(),
            interval: Duration::from_secs(60) / requests_per_minute.max(1),
        }
    }

    /// Exempts the key with id `key` from limits from now on.
    pub fn exempt(&self, key: &str) {
        self.exempt.rcu(|current| {
            let mut next = HashSet::clone(current);
            next.insert(Arc::from(key));
            next
        });
    }

    /// Takes one request from `key`'s bucket: `Ok(None)` when limits are
    /// off or do not apply to the key.
    pub fn check(&self, key: &Arc<str>) -> Result<Option<Allowance>, ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(None);
        };
        if self.exempt.load().contains(key) {
            return Ok(None);
        }
        match limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Ok(Some(Allowance {
                    limit: self.per_minute,
                    remaining,
                    reset: self.interval * (self.burst.saturating_sub(remaining)),
                }))
            }
            Err(not_until) => Err(ApiError::RateLimited {
                limit: self.per_minute,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }),
        }
    }

    /// Forgets idle buckets so memory stays flat with many anonymous callers.
    pub fn shrink(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The pruning service's step (run by `app` once a minute).
pub fn prune_step(limits: &RateLimits) -> Result<Next, Infallible> {
    limits.shrink();
    Ok(Next::Wait)
}

pub fn write_headers(headers: &mut HeaderMap, limit: u32, remaining: u32, reset: Duration) {
    headers.insert("x-ratelimit-limit-requests", HeaderValue::from(limit));
    headers.insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from(remaining),
    );
    if let Ok(v) = HeaderValue::try_from(format_reset(reset)) {
        headers.insert("x-ratelimit-reset-requests", v);
    }
}

/// OpenAI's duration style: `20ms`, `1.5s`, `6m0s`.
fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = d.as_secs_f64();
        format!("{}s", (s * 1000.0).round() / 1000.0)
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_divide_the_limit_and_never_turn_it_off() {
        let config = |rpm, burst, replicas| LimitsConfig {
            requests_per_minute: rpm,
            burst,
            replicas,
        };
        assert_eq!(per_replica(&config(600, 60, 1)), (600, 60));
        assert_eq!(per_replica(&config(600, 60, 3)), (200, 20));
        assert_eq!(per_replica(&config(2, 1, 4)), (1, 1));
        assert_eq!(per_replica(&config(0, 10, 2)), (0, 5));
        let limits = RateLimits::new(&config(60, 4, 2));
        let key: Arc<str> = "k".into();
        assert!(limits.check(&key).is_ok());
        assert!(limits.check(&key).is_ok());
        assert!(
            limits.check(&key).is_err(),
            "a burst of 4 over 2 replicas is 2 here"
        );
    }

    #[test]
    fn the_burst_is_served_then_refused_with_a_wait() {
        let limits = RateLimits::new(&LimitsConfig {
            requests_per_minute: 60,
            burst: 3,
            replicas: 1,
        });
        let key: Arc<str> = "k".into();
        let remaining: Vec<u32> = (0..3)
            .map(|_| limits.check(&key).unwrap().unwrap().remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        match limits.check(&key) {
            Err(ApiError::RateLimited { limit, retry_after }) => {
                assert_eq!(limit, 60);
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let other: Arc<str> = "other".into();
        assert!(limits.check(&other).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn pruning_keeps_the_buckets_in_use() {
        let limits = RateLimits::new(&LimitsConfig {
            requests_per_minute: 60,
            burst: 3,
            ..LimitsConfig::default()
        });
        let key: Arc<str> = "k".into();
        assert_eq!(limits.check(&key).unwrap().unwrap().remaining, 2);
        assert_eq!(prune_step(&limits).unwrap(), Next::Wait);
        assert_eq!(limits.check(&key).unwrap().unwrap().remaining, 1);
    }

    #[test]
    fn an_exempt_key_is_never_limited_and_others_still_are() {
        let limits = RateLimits::new(&LimitsConfig {
            requests_per_minute: 60,
            burst: 1,
            replicas: 1,
        });
        limits.exempt("seeder");
        let seeder: Arc<str> = "seeder".into();
        for _ in 0..100 {
            assert!(limits.check(&seeder).unwrap().is_none());
        }
        let person: Arc<str> = "person".into();
        assert!(limits.check(&person).unwrap().is_some());
        assert!(limits.check(&person).is_err());
    }

    #[test]
    fn zero_turns_limits_off() {
        let limits = RateLimits::new(&LimitsConfig {
            requests_per_minute: 0,
            burst: 0,
            replicas: 1,
        });
        assert!(limits.check(&"k".into()).unwrap().is_none());
    }

    #[test]
    fn resets_read_like_openai() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
