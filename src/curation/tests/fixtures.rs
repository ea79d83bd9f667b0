//! Candidates and options for the curation tests: approved, labelled
//! one-turn conversations in the simulator's answer format.

use crate::config::{ExtractorConfig, FineTuningConfig, TaxonomyConfig};
use crate::curation::{AnswerTemplate, BuildOptions, Candidate, DatasetFormat, Limits};
use crate::evaluation::extract::Extractor;
use crate::store::{ConversationRecord, FeedbackRecord, InferenceRecord, Review, ReviewStatus};
use serde_json::{Value, json};

/// An approved conversation of one turn, labelled `threat_type`/`high`,
/// whose alert names `id` (so conversations differ) and whose answer is in
/// the simulator's format.
pub(crate) fn candidate(id: &str, threat_type: &str) -> Candidate {
    let conversation = ConversationRecord {
        id: id.into(),
        inference_ids: vec![format!("inf_{id}")],
        parent_id: None,
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        alias: Some("triage".into()),
        versions: vec!["base".into()],
        user: None,
        preview: String::new(),
        fine_tuned_turns: 0,
        review: Review {
            status: ReviewStatus::Approved,
            threat_type: Some(threat_type.into()),
            severity: Some("high".into()),
            ..Review::default()
        },
        signals: Default::default(),
        position: None,
    };
    let mut turn = InferenceRecord {
        id: format!("inf_{id}"),
        completion_id: Some("chatcmpl-1".into()),
        alias: Some("triage".into()),
        version: Some("base".into()),
        provider_model: "gpt-4o-mini".into(),
        request: json!({"messages": [
            {"role": "user", "content": format!("Alert {id}: evil.exe ran on host-7 from a temp folder")}
        ], "params": {}}),
        response: Value::Null,
        streamed: false,
        status: "ok".into(),
        http_status: 200,
        latency_ms: 12.0,
        first_byte_ms: Some(5.0),
        key_id: "key_1".into(),
        user: None,
        tags: Default::default(),
        conversation_id: id.into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        fallback_from: None,
        shadow_of: None,
        turn: None,
        sticky: None,
        opens: None,
    };
    let answer = format!(
        "Threat type: {threat_type}\nSeverity: high\nRationale: The alert mentions 'evil.exe', an indicator of {threat_type}."
    );
    with_answer(&mut turn, &answer, "stop");
    Candidate {
        conversation,
        turns: vec![(turn, Vec::new())],
    }
}

/// Sets the turn's first choice.
pub(crate) fn with_answer(turn: &mut InferenceRecord, content: &str, finish_reason: &str) {
    turn.response = json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 30, "total_tokens": 50},
        "error": null,
    });
}

pub(crate) fn feedback(id: &str, at: &str, correction: Option<&str>) -> FeedbackRecord {
    FeedbackRecord {
        id: id.into(),
        inference_id: "inf_x".into(),
        conversation_id: "conv_x".into(),
        author: "key_analyst".into(),
        rating: None,
        thumbs: None,
        threat_type: None,
        severity: None,
        quality_score: None,
        notes: None,
        correction: correction.map(String::from),
        approved_for_training: None,
        created_at: at.into(),
    }
}

/// The default extractor over the default taxonomy.
pub(crate) fn extractor() -> Extractor {
    Extractor::new(&ExtractorConfig::default(), &TaxonomyConfig::default()).unwrap()
}

pub(crate) fn options(format: DatasetFormat) -> BuildOptions {
    let f = FineTuningConfig::default();
    BuildOptions {
        format,
        validation_split: 0.2,
        system_prompt: f.system_prompt.clone(),
        template: AnswerTemplate::parse(&f.answer_template).unwrap(),
        extractor: extractor(),
        limits: Limits::from_config(&f, "gpt-4o-mini-2024-07-18"),
        min_examples: 10,
        max_examples: 100,
        taxonomy: TaxonomyConfig::default(),
    }
}

/// `n` conversations of each threat type, ids ordered.
pub(crate) fn many(classes: &[(&str, usize)]) -> Vec<Candidate> {
    classes
        .iter()
        .flat_map(|(t, n)| (0..*n).map(move |i| candidate(&format!("conv_{t}_{i:03}"), t)))
        .collect()
}
