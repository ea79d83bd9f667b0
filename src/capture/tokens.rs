//! `flywheel_tokens_total`: the tokens each answer's usage counts, added by
//! alias and version. A captured exchange is counted by the writer from its
//! record; one capture leaves alone is counted as it is submitted when
//! its answer reports its usage, so it never waits in the capture queue.

use crate::exchange::{Outcome, Wire};
use crate::routing::Route;
use crate::telemetry::Handles;
use metrics::Counter;
use std::sync::LazyLock;

/// Prompt and completion tokens, where known.
pub type Tokens = [Option<u64>; 2];

/// The counters by alias and version, kept: registering them by their
/// labels on each record showed in the writer's profile.
static COUNTERS: LazyLock<Handles<[Counter; 2]>> = LazyLock::new(Handles::default);

/// Adds `tokens` to the route's counters.
pub fn add(route: &Route, tokens: Tokens) {
    let alias = route.alias.as_deref().unwrap_or_default();
    let version = route.version.as_deref().unwrap_or_default();
    let counters = COUNTERS.get([alias, version], || {
        ["prompt", "completion"].map(|kind| {
            metrics::counter!("flywheel_tokens_total", "alias" => alias.to_string(), "version" => version.to_string(), "kind" => kind)
        })
    });
    for (n, counter) in tokens.iter().zip(&counters) {
        if let Some(n) = n {
            counter.increment(*n);
        }
    }
}

/// The tokens a record's answer (`response`) counts in its usage: the
/// answer's own, or the estimate capture made for an answer without any.
pub fn of_record(response: &serde_json::Value) -> Tokens {
    let usage = &response["usage"];
    ["prompt_tokens", "completion_tokens"].map(|field| usage[field].as_u64())
}

/// The tokens a whole chat completion reports in its `usage`, read for
/// that alone (about a microsecond, where building its record costs five);
/// `None` for anything else — a stream, an error, an answer without usage
/// or one strict JSON refuses — which only its record can count.
pub fn reported(wire: Wire, streamed: bool, outcome: Outcome, answer: &[u8]) -> Option<Tokens> {
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Usage>,
    }
    #[derive(serde::Deserialize)]
    struct Usage {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
    }
    if wire != Wire::Chat || streamed || outcome == Outcome::UpstreamError {
        return None;
    }
    let usage = serde_json::from_slice::<Answer>(answer).ok()?.usage?;
    Some([usage.prompt_tokens, usage.completion_tokens])
}
