//! Validating and storing one piece of feedback.

use super::Context;
use crate::auth::{Caller, Role};
use crate::ids::{new_id, now_rfc3339};
use crate::openai::{ApiError, blocking};
use crate::review::{
    MAX_CORRECTION, MAX_NOTES, apply_feedback, check_score, check_taxonomy, check_text,
};
use crate::store::{FeedbackRecord, InferenceRecord, SharedStore};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// The feedback fields (docs/API.md, `POST /v1/feedback`), from the JSON
/// body or the header.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    pub inference_id: Option<String>,
    pub completion_id: Option<String>,
    pub rating: Option<u8>,
    pub thumbs: Option<String>,
    pub threat_type: Option<String>,
    pub severity: Option<String>,
    pub quality_score: Option<u8>,
    pub notes: Option<String>,
    pub correction: Option<String>,
    pub approved_for_training: Option<bool>,
}

impl FeedbackRequest {
    fn has_analyst_fields(&self) -> bool {
        self.threat_type.is_some()
            || self.severity.is_some()
            || self.quality_score.is_some()
            || self.notes.is_some()
            || self.correction.is_some()
            || self.approved_for_training.is_some()
    }

    fn validate(&self, app: &Context) -> Result<(), ApiError> {
        if self.inference_id.is_some() == self.completion_id.is_some() {
            return Err(ApiError::invalid(
                "give exactly one of `inference_id` and `completion_id`",
                Some("inference_id"),
            ));
        }
        if self.rating.is_none() && self.thumbs.is_none() && !self.has_analyst_fields() {
            return Err(ApiError::invalid("the feedback carries no field", None));
        }
        check_score("rating", self.rating)?;
        check_score("quality_score", self.quality_score)?;
        if self
            .thumbs
            .as_deref()
            .is_some_and(|t| t != "up" && t != "down")
        {
            return Err(ApiError::invalid(
                "`thumbs` must be \"up\" or \"down\"",
                Some("thumbs"),
            ));
        }
        let taxonomy = &app.taxonomy;
        check_taxonomy(taxonomy, "threat_type", self.threat_type.as_deref())?;
        check_taxonomy(taxonomy, "severity", self.severity.as_deref())?;
        check_text("notes", self.notes.as_deref(), MAX_NOTES)?;
        check_text("correction", self.correction.as_deref(), MAX_CORRECTION)?;
        Ok(())
    }
}

/// Validates, checks the author's rights, finds the inference and stores
/// the feedback durably. With an idempotency key already used by this
/// caller, returns the feedback that key produced and stores nothing.
pub async fn submit(
    app: &Context,
    caller: &Caller,
    request: FeedbackRequest,
    idempotency: Option<&str>,
) -> Result<FeedbackRecord, ApiError> {
    request.validate(app)?;
    if request.has_analyst_fields() {
        caller.require(Role::Analyst)?;
    }
    let scoped_key = idempotency.map(|k| format!("{}:{k}", caller.id));
    if let Some(key) = scoped_key.clone() {
        let store = app.store.clone();
        if let Some(first) = blocking(move || store.feedback_by_idempotency(&key)).await? {
            return Ok(first);
        }
    }
    let inference = find_inference(app, &request).await?;
    if inference.key_id != *caller.id {
        caller.require(Role::Analyst).map_err(|_| {
            ApiError::Forbidden(
                "only the key that made an inference, or an analyst, may rate it".into(),
            )
        })?;
    }
    let record = FeedbackRecord {
        id: new_id("fb"),
        inference_id: inference.id.clone(),
        conversation_id: inference.conversation_id.clone(),
        author: caller.id.to_string(),
        rating: request.rating,
        thumbs: request.thumbs,
        threat_type: request.threat_type,
        severity: request.severity,
        quality_score: request.quality_score,
        notes: request.notes,
        correction: request.correction,
        approved_for_training: request.approved_for_training,
        created_at: now_rfc3339(),
    };
    let tally = crate::experiment::tally::of_feedback(&inference, &record, &app.extractor);
    let store = app.store.clone();
    let stored = record.clone();
    blocking(move || {
        store.insert_feedback(
            &stored,
            scoped_key.as_deref(),
            &mut |c| {
                apply_feedback(&mut c.review, &stored);
            },
            tally.as_ref(),
        )
    })
    .await?;
    metrics::counter!("flywheel_feedback_total").increment(1);
    Ok(record)
}

/// How many capture flush intervals a lookup always waits for an inference
/// that may still be on its way to the store.
const LOOKUP_ATTEMPTS: usize = 10;

/// How long a lookup goes on waiting while capture still has exchanges on
/// their way to the store (a busy machine can hold the writer back).
const LOOKUP_PATIENCE: Duration = Duration::from_secs(30);

/// The longest a lookup sleeps between two looks: `flush_every_ms` may be
/// minutes, and a full batch is stored without waiting for it.
const LOOKUP_EVERY_AT_MOST: Duration = Duration::from_secs(1);

/// The inference by either id. Capture writes in batches, so one that
/// finished a moment ago may not be stored yet: look again each flush
/// interval (at most a second) — at least ten times, and on while capture
/// has exchanges in flight, up to [`LOOKUP_PATIENCE`]; an id nothing is on
/// its way for is a 404 soon.
async fn find_inference(
    app: &Context,
    request: &FeedbackRequest,
) -> Result<InferenceRecord, ApiError> {
    let lookup = || {
        let store: SharedStore = app.store.clone();
        let (id, completion) = (request.inference_id.clone(), request.completion_id.clone());
        blocking(move || match (id, completion) {
            (Some(id), _) => store.inference(&id),
            (None, Some(c)) => store.inference_by_completion(&c),
            (None, None) => Ok(None),
        })
    };
    let interval = app
        .flush_every
        .clamp(Duration::from_millis(10), LOOKUP_EVERY_AT_MOST);
    let in_flight = app.in_flight.clone();
    let started = tokio::time::Instant::now();
    let mut attempts = 0;
    while attempts < LOOKUP_ATTEMPTS
        || (in_flight.count() > 0 && started.elapsed() < LOOKUP_PATIENCE)
    {
        if let Some(found) = lookup().await? {
            return Ok(found);
        }
        // A failed store holds capture back: the inference may be on its
        // way, and the feedback could not be stored anyway.
        if !app.store.is_healthy() {
            return Err(ApiError::Unavailable(
                "the store cannot take writes now (see /readyz); retry shortly".into(),
            ));
        }
        tokio::time::sleep(interval).await;
        attempts += 1;
    }
    lookup().await?.ok_or_else(|| {
        let (param, id) = match (&request.inference_id, &request.completion_id) {
            (Some(id), _) => ("inference_id", id.as_str()),
            (None, Some(c)) => ("completion_id", c.as_str()),
            (None, None) => ("inference_id", ""),
        };
        ApiError::NotFound {
            message: format!("no inference with {param} `{id}`"),
            param: Some(param.into()),
            code: "not_found",
        }
    })
}

/// The feedback as the API returns it.
pub fn feedback_view(r: &FeedbackRecord) -> Value {
    json!({
        "id": r.id,
        "object": "feedback",
        "inference_id": r.inference_id,
        "conversation_id": r.conversation_id,
        "author": r.author,
        "rating": r.rating,
        "thumbs": r.thumbs,
        "threat_type": r.threat_type,
        "severity": r.severity,
        "quality_score": r.quality_score,
        "notes": r.notes,
        "correction": r.correction,
        "approved_for_training": r.approved_for_training,
        "created_at": r.created_at,
    })
}
