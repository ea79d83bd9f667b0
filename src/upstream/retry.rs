//! When to retry an upstream request and how long to wait first.

use http::{HeaderMap, StatusCode};
use std::time::{Duration, SystemTime};

pub enum RetryDecision {
    /// Retry, after the upstream's own hint when it gave one.
    Retry(Option<Duration>),
    GiveUp,
}

impl RetryDecision {
    pub fn for_status(status: StatusCode, hint: Option<Duration>) -> Self {
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            RetryDecision::Retry(hint)
        } else {
            RetryDecision::GiveUp
        }
    }
}

/// Exponential backoff with jitter: about 100 ms, 200 ms, 400 ms … capped at 5 s.
pub fn backoff(retries: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << retries.min(6)).min(5_000);
    let jitter = rand::random_range(0..=base / 4);
    Duration::from_millis(base - base / 8 + jitter)
}

/// `retry-after-ms` wins over `retry-after` (seconds or an HTTP date), as in
/// the OpenAI SDKs.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0));
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn retry_after_reads_every_form() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "9"), ("retry-after-ms", "250")])),
            Some(Duration::from_millis(250))
        );
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = retry_after(&headers(&[("retry-after", &future)])).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")])), None);
    }

    #[test]
    fn only_rate_limits_and_server_errors_are_retried() {
        assert!(matches!(
            RetryDecision::for_status(StatusCode::TOO_MANY_REQUESTS, None),
            RetryDecision::Retry(_)
        ));
        assert!(matches!(
            RetryDecision::for_status(StatusCode::BAD_GATEWAY, None),
            RetryDecision::Retry(_)
        ));
        assert!(matches!(
            RetryDecision::for_status(StatusCode::BAD_REQUEST, None),
            RetryDecision::GiveUp
        ));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(0) < Duration::from_millis(200));
        assert!(backoff(3) >= Duration::from_millis(700));
        assert!(backoff(30) <= Duration::from_millis(6_250));
    }
}
