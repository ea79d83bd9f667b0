//! Conversations as the admin API shows them (docs/API.md, "Conversations").

use crate::feedback::feedback_view;
use crate::store::{ConversationRecord, FeedbackRecord, InferenceRecord, Store, StoreError};
use serde_json::{Value, json};

/// The list entry.
pub fn conversation_summary(c: &ConversationRecord) -> Value {
    let r = &c.review;
    json!({
        "id": c.id,
        "object": "conversation",
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "alias": c.alias,
        "versions": c.versions,
        "user": c.user,
        "turns": c.inference_ids.len(),
        "status": r.status.as_str(),
        "threat_type": r.threat_type,
        "severity": r.severity,
        "quality_score": r.quality_score,
        "mean_rating": r.mean_rating(),
        "feedback_count": r.feedback_count,
        "thumbs": {"up": r.thumbs_up, "down": r.thumbs_down},
        "reviewer": r.reviewer,
        "reviewed_at": r.reviewed_at,
        "parent_id": c.parent_id,
        "preview": c.preview,
        "signals": super::signals_view(c),
    })
}

/// The conversation's turns that are in the store, in order, each with
/// its feedback. A turn whose record was lost in a crash (at most the last
/// flush interval) is left out.
pub fn stored_turns(
    store: &dyn Store,
    c: &ConversationRecord,
) -> Result<Vec<(InferenceRecord, Vec<FeedbackRecord>)>, StoreError> {
    let mut turns = Vec::with_capacity(c.inference_ids.len());
    for id in &c.inference_ids {
        if let Some(record) = store.inference(id)? {
            turns.push((record, store.feedback_for(id)?));
        }
    }
    Ok(turns)
}

/// One turn as stored: its inference (absent if lost in a crash), its
/// feedback, and the shadow versions' answers to it.
pub struct TurnRecords {
    pub inference_id: String,
    pub inference: Option<InferenceRecord>,
    pub feedback: Vec<FeedbackRecord>,
    pub shadows: Vec<InferenceRecord>,
}

/// The summary plus notes, correction and every turn with its feedback.
/// A turn whose record was lost in a crash is listed by id only.
pub fn conversation_detail(c: &ConversationRecord, turns: &[TurnRecords]) -> Value {
    let mut v = conversation_summary(c);
    v["notes"] = json!(c.review.notes);
    v["correction"] = json!(c.review.correction);
    v["turns"] = turns.iter().map(turn).collect();
    v
}

fn turn(t: &TurnRecords) -> Value {
    let feedback: Vec<Value> = t.feedback.iter().map(feedback_view).collect();
    let Some(r) = &t.inference else {
        return json!({"inference_id": t.inference_id, "status": "missing", "feedback": feedback});
    };
    let mut v = inference_view(r);
    v["feedback"] = json!(feedback);
    v["shadows"] = t.shadows.iter().map(inference_view).collect();
    v
}

fn inference_view(r: &InferenceRecord) -> Value {
    let first = &r.response["choices"][0];
    json!({
        "inference_id": r.id,
        "completion_id": r.completion_id,
        "created_at": r.created_at,
        "alias": r.alias,
        "version": r.version,
        "provider_model": r.provider_model,
        "status": r.status,
        "http_status": r.http_status,
        "streamed": r.streamed,
        "latency_ms": r.latency_ms,
        "first_byte_ms": r.first_byte_ms,
        "user": r.user,
        "tags": r.tags,
        "request": r.request,
        "response": {
            "message": first.get("message"),
            "finish_reason": first.get("finish_reason"),
            "usage": r.response.get("usage"),
            "choices": r.response.get("choices"),
            "error": r.response.get("error"),
        },
        "fallback_from": r.fallback_from,
    })
}
