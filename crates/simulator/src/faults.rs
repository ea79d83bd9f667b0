//! Faults injected by request headers, so tests and demos can make the
//! simulator fail the way real providers do — through the proxy, which
//! forwards client headers:
//!
//! | header | effect |
//! |---|---|
//! | `x-sim-status: 503` | that status (any 4xx/5xx) with an OpenAI error body |
//! | `x-sim-retry-after: 1` | sent back as `retry-after` with the status fault |
//! | `x-sim-retry-after-ms: 50` | sent back as `retry-after-ms` (Azure's) with the status fault |
//! | `x-sim-fail-times: N` + `x-sim-fault-id: id` | only the first N requests with that id fail |
//! | `x-sim-delay-ms: N` | wait before the response headers (first byte) |
//! | `x-sim-token-delay-ms: N` | per-token delay for this request |
//! | `x-sim-drop-after: N` | abort the body after N content tokens |
//! | `x-sim-garbage: 1` | a 200 whose body is not JSON |
//! | `x-sim-fail-rate: MODEL=P[, MODEL=P]` | a chat completion for MODEL answers 500 (`server_error`) with probability P (0–1) |
//!
//! The proxy sends the same client headers to every model version, so a
//! header fault hits them all alike; `x-sim-fail-rate` (and the
//! `fail_rates` setting, `--fail-rate MODEL=P`, which the header overrides
//! model by model) names the model it applies to, so that one version can
//! be made unreliable while the others are not. It is checked once the
//! request has named its model, after validation.

use super::Sim;
use super::wire::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub const STATUS: &str = "x-sim-status";
pub const RETRY_AFTER: &str = "x-sim-retry-after";
pub const RETRY_AFTER_MS: &str = "x-sim-retry-after-ms";
pub const FAIL_TIMES: &str = "x-sim-fail-times";
pub const FAULT_ID: &str = "x-sim-fault-id";
pub const DELAY_MS: &str = "x-sim-delay-ms";
pub const TOKEN_DELAY_MS: &str = "x-sim-token-delay-ms";
pub const DROP_AFTER: &str = "x-sim-drop-after";
pub const GARBAGE: &str = "x-sim-garbage";
pub const FAIL_RATE: &str = "x-sim-fail-rate";

/// The faults that decide whether a request is answered at all; they apply
/// to every route, before the handler runs.
#[derive(Debug, Default, PartialEq)]
pub struct Faults {
    status: Option<StatusCode>,
    retry_after: Option<HeaderValue>,
    retry_after_ms: Option<HeaderValue>,
    /// Only the first N requests carrying this fault id fail.
    fail_times: Option<(u32, String)>,
    delay: Option<Duration>,
    garbage: bool,
}

/// The faults that shape a generated answer: its pace and where it breaks.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Pacing {
    pub token_delay: Option<Duration>,
    pub drop_after: Option<usize>,
}

fn text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    text(headers, name).and_then(|v| v.parse().ok())
}

fn millis(headers: &HeaderMap, name: &str) -> Option<Duration> {
    number(headers, name).map(Duration::from_millis)
}

impl Faults {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let fail_times = match (number(headers, FAIL_TIMES), text(headers, FAULT_ID)) {
            (Some(n), Some(id)) => Some((u32::try_from(n).unwrap_or(u32::MAX), id.to_string())),
            _ => None,
        };
        Self {
            status: number(headers, STATUS)
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .filter(|s| s.is_client_error() || s.is_server_error()),
            retry_after: text(headers, RETRY_AFTER).and_then(|v| HeaderValue::try_from(v).ok()),
            retry_after_ms: text(headers, RETRY_AFTER_MS)
                .and_then(|v| HeaderValue::try_from(v).ok()),
            fail_times,
            delay: millis(headers, DELAY_MS),
            garbage: text(headers, GARBAGE) == Some("1"),
        }
    }

    /// Whether the status fault applies to this request, counting it against
    /// its fault id. Without a fault id every request fails.
    fn fail_now(&self, failures: &Mutex<HashMap<String, u32>>) -> Option<StatusCode> {
        let status = self.status?;
        let Some((times, id)) = &self.fail_times else {
            return Some(status);
        };
        // A poisoned map only means another request panicked mid-count; the
        // counts themselves are still whole numbers.
        let mut counts = failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let served = counts.entry(id.clone()).or_insert(0);
        if *served < *times {
            *served += 1;
            Some(status)
        } else {
            None
        }
    }

    fn response(&self, status: StatusCode) -> Response {
        let error = match status.as_u16() {
            429 => ApiError::new(
                status,
                "requests",
                "Rate limit reached for requests (simulated). Please try again later.",
            )
            .code("rate_limit_exceeded"),
            500..=599 => ApiError::new(
                status,
                "server_error",
                "The server had an error while processing your request (simulated).",
            ),
            _ => ApiError::new(
                status,
                "invalid_request_error",
                format!("Simulated client error {status}."),
            ),
        };
        let mut response = error.into_response();
        if let Some(after) = &self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, after.clone());
        }
        if let Some(after) = &self.retry_after_ms {
            response
                .headers_mut()
                .insert("retry-after-ms", after.clone());
        }
        response
    }
}

impl Pacing {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self {
            token_delay: millis(headers, TOKEN_DELAY_MS),
            drop_after: number(headers, DROP_AFTER)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        }
    }
}

/// Parses `MODEL=P`, P a probability from 0 to 1: one `--fail-rate` value
/// or one entry of the `x-sim-fail-rate` header.
pub fn parse_fail_rate(text: &str) -> Result<(String, f64), String> {
    let Some((model, rate)) = text.split_once('=') else {
        return Err(format!("expected MODEL=P, got `{text}`"));
    };
    let model = model.trim();
    if model.is_empty() {
        return Err(format!("no model named in `{text}`"));
    }
    match rate.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok((model.to_string(), p)),
        _ => Err(format!(
            "the rate in `{text}` is not a probability from 0 to 1"
        )),
    }
}

/// The chance that a chat completion for `model` fails: the request's
/// `x-sim-fail-rate` entry for it if there is one, else the configured rate.
/// Malformed header entries are ignored, as the other fault headers' are.
pub fn fail_rate(headers: &HeaderMap, configured: &HashMap<String, f64>, model: &str) -> f64 {
    let from_header = headers
        .get_all(FAIL_RATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|entry| parse_fail_rate(entry).ok())
        .filter(|(m, _)| m == model)
        .map(|(_, p)| p)
        .next_back();
    from_header
        .or_else(|| configured.get(model).copied())
        .unwrap_or(0.0)
}

/// Whether this request for `model` is one of the failures its rate asks for.
pub fn model_fails(headers: &HeaderMap, configured: &HashMap<String, f64>, model: &str) -> bool {
    let rate = fail_rate(headers, configured, model);
    rate > 0.0 && rand::random::<f64>() < rate
}

/// The answer of a model that failed by its fail rate.
pub fn model_failure(model: &str) -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        format!("The server had an error while processing your request to `{model}` (simulated)."),
    )
    .into_response()
}

/// Middleware: the first-byte delay, then a status fault or garbage instead
/// of the real answer.
pub async fn inject(State(sim): State<Sim>, request: Request, next: Next) -> Response {
    let faults = Faults::from_headers(request.headers());
    if let Some(delay) = faults.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = faults.fail_now(&sim.failures) {
        return faults.response(status);
    }
    if faults.garbage {
        return (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "upstream exploded",
        )
            .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    axum::http::HeaderName::from_static(k),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn fail_times_counts_per_fault_id() {
        let h = headers(&[(STATUS, "503"), (FAIL_TIMES, "2"), (FAULT_ID, "a")]);
        let faults = Faults::from_headers(&h);
        let failures = Mutex::default();
        let outcomes: Vec<bool> = (0..3)
            .map(|_| faults.fail_now(&failures).is_some())
            .collect();
        assert_eq!(outcomes, [true, true, false]);
        let other = headers(&[(STATUS, "503"), (FAIL_TIMES, "1"), (FAULT_ID, "b")]);
        assert!(Faults::from_headers(&other).fail_now(&failures).is_some());
        assert!(
            Faults::from_headers(&HeaderMap::new())
                .fail_now(&failures)
                .is_none()
        );
    }

    #[test]
    fn only_error_statuses_are_faults() {
        for (value, fault) in [("200", false), ("302", false), ("404", true), ("599", true)] {
            let faults = Faults::from_headers(&headers(&[(STATUS, value)]));
            assert_eq!(faults.status.is_some(), fault, "{value}");
        }
    }

    #[test]
    fn fail_rates_parse_and_the_header_wins() {
        assert_eq!(
            parse_fail_rate(" gpt-4o = 0.25"),
            Ok(("gpt-4o".into(), 0.25))
        );
        for bad in [
            "gpt-4o",
            "=0.5",
            "gpt-4o=1.5",
            "gpt-4o=-0.1",
            "gpt-4o=x",
            "m=NaN",
        ] {
            assert!(parse_fail_rate(bad).is_err(), "{bad}");
        }
        let configured = HashMap::from([("a".to_string(), 0.5), ("b".to_string(), 0.2)]);
        let h = headers(&[(FAIL_RATE, "a=1, junk, c=0.3")]);
        assert_eq!(fail_rate(&h, &configured, "a"), 1.0);
        assert_eq!(fail_rate(&h, &configured, "b"), 0.2);
        assert_eq!(fail_rate(&h, &configured, "c"), 0.3);
        assert_eq!(fail_rate(&HeaderMap::new(), &configured, "d"), 0.0);
        assert!(!model_fails(&HeaderMap::new(), &configured, "d"));
    }

    #[test]
    fn pacing_reads_its_headers() {
        let pacing = Pacing::from_headers(&headers(&[(TOKEN_DELAY_MS, "40"), (DROP_AFTER, "3")]));
        assert_eq!(
            pacing,
            Pacing {
                token_delay: Some(Duration::from_millis(40)),
                drop_after: Some(3)
            }
        );
        assert_eq!(Pacing::from_headers(&HeaderMap::new()), Pacing::default());
    }
}
