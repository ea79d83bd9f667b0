//! A captured turn as capture hands it to the store: the record, and what
//! threading, listings and tallies need of it.
//!
//! The record's request and answer are written out as JSON when the turn
//! is made, not when its batch is stored. The capture writer builds a
//! record and a batch later stores it; by then the batch's hundreds of
//! records have left the CPU's caches, and walking each one's JSON trees
//! again to serialise them, then to free them, cost the writer more than
//! doing both at once while the trees are fresh (docs/BENCHMARKS.md,
//! "Records written out as they are built"). The store reads none of
//! the two: it files a turn by the record's other fields, which stay
//! plain fields it can set.

use super::{ConversationSignals, InferenceRecord, Opening, TallyKey, VersionTally};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// One captured exchange for [`crate::store::Store::store_captured`]:
/// its record, redacted, and what threading it needs.
#[derive(Debug, Clone)]
pub struct CapturedTurn {
    /// The record but for its `request` and `response`, which are null
    /// here: [`CapturedTurn::new`] moved them into the turn as JSON, and
    /// [`CapturedTurn::record_json`] writes them back in place.
    pub record: InferenceRecord,
    /// Set when a new conversation branches off another.
    pub parent_id: Option<String>,
    /// The keys a follow-up of this turn may present (hex): a chat
    /// history's, and for a Responses answer also its response id's.
    pub continuations: Vec<String>,
    /// The start of the first user message, for a new conversation.
    pub preview: String,
    /// The turn's quality signals; the store keeps `upstream_error` once
    /// set and works out `duplicate_of`.
    pub signals: ConversationSignals,
    /// What the record adds to its version's experiment tally.
    pub tally: Option<(TallyKey, VersionTally)>,
    content: Content,
}

/// A record's request and answer, as JSON.
#[derive(Debug, Clone)]
struct Content {
    request: Box<RawValue>,
    response: Box<RawValue>,
}

impl CapturedTurn {
    /// The turn of `record`, whose request and answer are written out as
    /// JSON and let go of here; what else the turn carries starts empty.
    pub fn new(mut record: InferenceRecord) -> Result<Self, serde_json::Error> {
        let content = Content {
            request: serde_json::value::to_raw_value(&std::mem::take(&mut record.request))?,
            response: serde_json::value::to_raw_value(&std::mem::take(&mut record.response))?,
        };
        Ok(Self {
            record,
            parent_id: None,
            continuations: Vec::new(),
            preview: String::new(),
            signals: ConversationSignals::default(),
            tally: None,
            content,
        })
    }

    /// Appends the whole record as JSON to `out`: what
    /// `serde_json::to_writer(out, &record)` writes of a record that still
    /// held its request and answer, with what the store has set since.
    pub fn write_record_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(out, &Stored::of(&self.record, &self.content))
    }

    /// [`Self::write_record_json`] into a new buffer.
    pub fn record_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = Vec::new();
        self.write_record_json(&mut out)?;
        Ok(out)
    }

    /// The whole record, as the store reads it back.
    #[cfg(any(test, fuzzing))]
    pub fn stored_record(&self) -> Result<InferenceRecord, serde_json::Error> {
        serde_json::from_slice(&self.record_json()?)
    }
}

/// An [`InferenceRecord`] as serialised, field for field and with the
/// same attributes, with its request and answer taken from the turn's
/// JSON. [`Stored::of`] names every field of the record, so a field added
/// there and not here does not compile.
#[derive(Serialize)]
struct Stored<'a> {
    id: &'a str,
    completion_id: &'a Option<String>,
    alias: &'a Option<String>,
    version: &'a Option<String>,
    provider_model: &'a str,
    request: &'a RawValue,
    response: &'a RawValue,
    streamed: bool,
    status: &'a str,
    http_status: u16,
    latency_ms: f64,
    first_byte_ms: Option<f64>,
    key_id: &'a str,
    user: &'a Option<String>,
    tags: &'a BTreeMap<String, String>,
    conversation_id: &'a str,
    created_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback_from: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow_of: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    turn: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sticky: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    opens: &'a Option<Opening>,
}

impl<'a> Stored<'a> {
    fn of(record: &'a InferenceRecord, content: &'a Content) -> Self {
        let InferenceRecord {
            id,
            completion_id,
            alias,
            version,
            provider_model,
            request: _,
            response: _,
            streamed,
            status,
            http_status,
            latency_ms,
            first_byte_ms,
            key_id,
            user,
            tags,
            conversation_id,
            created_at,
            fallback_from,
            shadow_of,
            turn,
            sticky,
            opens,
        } = record;
        Self {
            id,
            completion_id,
            alias,
            version,
            provider_model,
            request: &content.request,
            response: &content.response,
            streamed: *streamed,
            status,
            http_status: *http_status,
            latency_ms: *latency_ms,
            first_byte_ms: *first_byte_ms,
            key_id,
            user,
            tags,
            conversation_id,
            created_at,
            fallback_from,
            shadow_of,
            turn: *turn,
            sticky,
            opens,
        }
    }
}

#[cfg(test)]
impl CapturedTurn {
    /// The record as capture hands it over, without threading keys.
    pub fn plain(record: InferenceRecord) -> Self {
        Self::new(record).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Position;
    use serde_json::json;

    /// A record with every field set, and with every optional one unset.
    fn records() -> [InferenceRecord; 2] {
        let mut full = InferenceRecord::bare("inf_01JABCDEFGHJKMNPQRSTVWXYZ0", "conv_1");
        full.completion_id = Some("chatcmpl-1".into());
        full.alias = Some("triage".into());
        full.version = Some("v2".into());
        full.provider_model = "ft:gpt-4o-mini:soc:triage:1".into();
        full.request = json!({"messages": [{"role": "user", "content": "Alert: \"mimikatz\" ran\u{2028}"}], "params": {"temperature": 0.2}});
        full.response = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Threat type: credential_access"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3}, "error": null});
        full.streamed = true;
        full.http_status = 200;
        full.latency_ms = 12.5;
        full.first_byte_ms = Some(f64::NAN);
        full.user = Some("ana".into());
        full.tags.insert("team".into(), "soc".into());
        full.fallback_from = Some("v3".into());
        full.shadow_of = Some("inf_0".into());
        full.sticky = Some("key:key_1".into());
        let mut bare = InferenceRecord::bare("support-42", "conv_2");
        bare.first_byte_ms = None;
        [full, bare]
    }

    #[test]
    fn a_turn_stores_its_record_as_the_record_serialises() {
        for record in records() {
            let mut turn = CapturedTurn::plain(record.clone());
            assert!(turn.record.request.is_null() && turn.record.response.is_null());
            let mut expected = record;
            // What the store sets once the turn is in its conversation.
            for (at, opens) in [
                (None, None),
                (
                    Some(3),
                    Some(Opening {
                        position: Position(7, 2),
                        parent_id: Some("conv_0".into()),
                        signals: ConversationSignals {
                            text_hash: Some("ab".into()),
                            ..Default::default()
                        },
                    }),
                ),
            ] {
                (turn.record.turn, turn.record.opens) = (at, opens.clone());
                (expected.turn, expected.opens) = (at, opens);
                assert_eq!(
                    String::from_utf8(turn.record_json().unwrap()).unwrap(),
                    serde_json::to_string(&expected).unwrap()
                );
                let back = turn.stored_record().unwrap();
                assert_eq!(
                    serde_json::to_value(&back).unwrap(),
                    serde_json::to_value(&expected).unwrap()
                );
            }
        }
    }
}
