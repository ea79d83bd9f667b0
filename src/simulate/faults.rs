//! Faults injected by request headers, so tests and demos can make the
//! simulator fail the way real providers do — through the proxy, which
//! forwards client headers.

use axum::http::HeaderMap;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Faults {
    /// `x-sim-status`: answer with this status and an OpenAI error body.
    pub status: Option<u16>,
    /// `x-sim-retry-after`: sent as `retry-after` with the fault.
    pub retry_after: Option<String>,
    /// `x-sim-fail-times` + `x-sim-fault-id`: only the first N requests
    /// carrying that id fail.
    fail_times: Option<(u32, String)>,
    /// `x-sim-delay-ms`: wait before the response headers.
    pub delay: Option<Duration>,
    /// `x-sim-token-delay-ms`: per-token delay for this request.
    pub token_delay: Option<Duration>,
    /// `x-sim-drop-after`: abort the body after this many content tokens.
    pub drop_after: Option<usize>,
    /// `x-sim-garbage: 1`: a 200 whose body is not JSON.
    pub garbage: bool,
}

impl Faults {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
        let fail_times = match (number("x-sim-fail-times"), text("x-sim-fault-id")) {
            (Some(n), Some(id)) => Some((u32::try_from(n).unwrap_or(u32::MAX), id.to_string())),
            _ => None,
        };
        Self {
            status: number("x-sim-status")
                .and_then(|s| u16::try_from(s).ok())
                .filter(|s| (400..600).contains(s)),
            retry_after: text("x-sim-retry-after").map(String::from),
            fail_times,
            delay: number("x-sim-delay-ms").map(Duration::from_millis),
            token_delay: number("x-sim-token-delay-ms").map(Duration::from_millis),
            drop_after: number("x-sim-drop-after").and_then(|n| usize::try_from(n).ok()),
            garbage: text("x-sim-garbage") == Some("1"),
        }
    }

    /// Whether the status fault applies to this request, counting it.
    pub fn fail_now(&self, failures: &Mutex<HashMap<String, u32>>) -> bool {
        if self.status.is_none() {
            return false;
        }
        let Some((times, id)) = &self.fail_times else {
            return true;
        };
        let Ok(mut counts) = failures.lock() else {
            return true;
        };
        let served = counts.entry(id.clone()).or_insert(0);
        if *served < *times {
            *served += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_times_counts_per_fault_id() {
        let mut h = HeaderMap::new();
        h.insert("x-sim-status", "503".parse().unwrap());
        h.insert("x-sim-fail-times", "2".parse().unwrap());
        h.insert("x-sim-fault-id", "a".parse().unwrap());
        let faults = Faults::from_headers(&h);
        let failures = Mutex::default();
        let outcomes: Vec<bool> = (0..3).map(|_| faults.fail_now(&failures)).collect();
        assert_eq!(outcomes, [true, true, false]);
        assert!(!Faults::from_headers(&HeaderMap::new()).fail_now(&failures));
    }
}
