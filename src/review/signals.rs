//! Quality-signal filters and their view: what a conversation's turns say
//! (kept on the conversation as they are stored) and what its review says
//! (labels, ratings), checked without reading an inference.

use crate::store::{ConversationRecord, Review};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Each filter set must hold; unset ones are not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct SignalFilter {
    /// The last answer finished (status ok, finish_reason stop), or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_labels: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_rating: Option<bool>,
    /// Repeats an older conversation's text, or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_error: Option<bool>,
    /// The last answer has at least this many characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_answer_chars: Option<u32>,
    /// A chat app's housekeeping request; unset means `false`: background
    /// tasks are left out unless asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background_task: Option<bool>,
}

impl SignalFilter {
    pub fn keep(&self, c: &ConversationRecord) -> bool {
        let s = &c.signals;
        let is = |want: Option<bool>, have: bool| want.is_none_or(|w| w == have);
        is(self.complete, s.complete_answer)
            && is(self.has_labels, has_labels(&c.review))
            && is(self.has_rating, has_rating(&c.review))
            && is(self.duplicate, s.duplicate_of.is_some())
            && is(self.upstream_error, s.upstream_error)
            && self.min_answer_chars.is_none_or(|m| s.answer_chars >= m)
            && self.background_task.unwrap_or(false) == s.background_task
    }
}

pub fn has_labels(r: &Review) -> bool {
    r.threat_type.is_some() || r.severity.is_some()
}

pub fn has_rating(r: &Review) -> bool {
    r.rating_count > 0
}

/// The `signals` object of a conversation summary.
pub fn signals_view(c: &ConversationRecord) -> Value {
    let s = &c.signals;
    json!({
        "complete_answer": s.complete_answer,
        "answer_chars": s.answer_chars,
        "duplicate_of": s.duplicate_of,
        "has_labels": has_labels(&c.review),
        "has_rating": has_rating(&c.review),
        "upstream_error": s.upstream_error,
        "background_task": s.background_task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_stored_before_signals_reads_with_them_unset() {
        let old = r#"{"id": "conv_1", "inference_ids": ["inf_1"], "parent_id": null,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            "review": {"status": "approved", "threat_type": "malware"}}"#;
        let c: ConversationRecord = serde_json::from_str(old).unwrap();
        assert_eq!(c.signals, Default::default());
        let view = signals_view(&c);
        assert_eq!(view["has_labels"], true);
        assert_eq!(view["complete_answer"], false);
        let unfinished = SignalFilter {
            complete: Some(false),
            duplicate: Some(false),
            ..SignalFilter::default()
        };
        assert!(unfinished.keep(&c));
        let long = SignalFilter {
            min_answer_chars: Some(1),
            ..SignalFilter::default()
        };
        assert!(!long.keep(&c));
    }
}
