//! What one captured inference, or one piece of feedback, adds to its
//! version's experiment tally. The rules, in one place:
//!
//! - A fallback counts against the candidate that failed (a request, an
//!   error, a fallback) and not for production, which only stood in.
//! - Latency is that of answers that completed (`ok`); errors are
//!   upstream errors and broken streams; a client that left is counted
//!   apart, as neither.
//! - Each rating and each thumb is one observation; negative feedback is a
//!   thumb down or a rating of 2 or less.
//! - Label agreement: feedback that labels an answer's threat type, when
//!   the answer states one (read by the evaluation extractor).

use crate::evaluation::extract::Extractor;
use crate::store::{FeedbackRecord, InferenceRecord, TallyKey, VersionTally};

fn key(record: &InferenceRecord, version: &str) -> Option<TallyKey> {
    Some(TallyKey {
        alias: record.alias.clone()?,
        version: version.to_string(),
        shadow: record.shadow_of.is_some(),
    })
}

/// The tally delta of one captured inference; `None` for names that are
/// no alias.
pub fn of_inference(record: &InferenceRecord) -> Option<(TallyKey, VersionTally)> {
    if let Some(failed) = &record.fallback_from {
        let delta = VersionTally {
            requests: 1,
            errors: 1,
            fallbacks: 1,
            ..Default::default()
        };
        return Some((key(record, failed)?, delta));
    }
    let mut delta = VersionTally {
        requests: 1,
        ..Default::default()
    };
    match record.status.as_str() {
        "ok" => delta.latency.record(record.latency_ms),
        "client_cancelled" => delta.cancelled = 1,
        _ => delta.errors = 1,
    }
    let usage = &record.response["usage"];
    delta.prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0);
    delta.completion_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
    Some((key(record, record.version.as_deref()?)?, delta))
}

/// The tally delta of one piece of feedback on `inference`; `None` when it
/// adds nothing a tally counts.
pub fn of_feedback(
    inference: &InferenceRecord,
    feedback: &FeedbackRecord,
    extractor: &Extractor,
) -> Option<(TallyKey, VersionTally)> {
    let mut delta = VersionTally::default();
    if let Some(r) = feedback.rating {
        delta.ratings.add(f64::from(r));
    }
    if let Some(t) = &feedback.thumbs {
        delta.thumbs.add(t == "up");
    }
    if feedback.rating.is_some() || feedback.thumbs.is_some() {
        let negative =
            feedback.thumbs.as_deref() == Some("down") || feedback.rating.is_some_and(|r| r <= 2);
        delta.negative.add(negative);
    }
    if let Some(label) = &feedback.threat_type
        && let Some(stated) = extractor.extract(&answer_text(inference)).threat_type
    {
        delta.label_agreement.add(&stated == label);
    }
    if delta == VersionTally::default() {
        return None;
    }
    Some((key(inference, inference.version.as_deref()?)?, delta))
}

/// The text of an inference's first choice.
pub fn answer_text(record: &InferenceRecord) -> String {
    record.response["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Sums the deltas of a batch per tally, so each is written once.
pub fn of_batch(records: &[InferenceRecord]) -> Vec<(TallyKey, VersionTally)> {
    let mut sums: std::collections::BTreeMap<TallyKey, VersionTally> = Default::default();
    for (k, delta) in records.iter().filter_map(of_inference) {
        sums.entry(k).or_default().merge(&delta);
    }
    sums.into_iter().collect()
}
