//! How feedback and review edits change a conversation's review.

use super::checks::{MAX_CORRECTION, MAX_NOTES, check_score, check_taxonomy, check_text};
use crate::config::TaxonomyConfig;
use crate::openai::ApiError;
use crate::store::{FeedbackRecord, Review, ReviewStatus};
use serde::{Deserialize, Deserializer};

/// Folds one feedback into the review: ratings and thumbs add up; an
/// analyst's labels, score, notes and correction replace the previous
/// ones; `approved_for_training` approves or rejects.
pub fn apply_feedback(review: &mut Review, f: &FeedbackRecord) {
    review.feedback_count += 1;
    if let Some(r) = f.rating {
        review.rating_sum += u32::from(r);
        review.rating_count += 1;
    }
    match f.thumbs.as_deref() {
        Some("up") => review.thumbs_up += 1,
        Some("down") => review.thumbs_down += 1,
        _ => {}
    }
    let mut reviewed = false;
    for (field, value) in [
        (&mut review.threat_type, &f.threat_type),
        (&mut review.severity, &f.severity),
        (&mut review.notes, &f.notes),
        (&mut review.correction, &f.correction),
    ] {
        if value.is_some() {
            field.clone_from(value);
            reviewed = true;
        }
    }
    if f.quality_score.is_some() {
        review.quality_score = f.quality_score;
        reviewed = true;
    }
    if let Some(approved) = f.approved_for_training {
        review.status = if approved {
            ReviewStatus::Approved
        } else {
            ReviewStatus::Rejected
        };
        reviewed = true;
    }
    if reviewed {
        review.reviewer = Some(f.author.clone());
        review.reviewed_at = Some(f.created_at.clone());
    }
}

/// Takes deleted feedback back out of the running counts; labels it set
/// stay, as the conversation's review owns them once given.
pub fn forget_feedback(review: &mut Review, gone: &[FeedbackRecord]) {
    for f in gone {
        review.feedback_count = review.feedback_count.saturating_sub(1);
        if let Some(r) = f.rating {
            review.rating_sum = review.rating_sum.saturating_sub(u32::from(r));
            review.rating_count = review.rating_count.saturating_sub(1);
        }
        match f.thumbs.as_deref() {
            Some("up") => review.thumbs_up = review.thumbs_up.saturating_sub(1),
            Some("down") => review.thumbs_down = review.thumbs_down.saturating_sub(1),
            _ => {}
        }
    }
}

/// `PATCH /admin/api/conversations/{id}`: an absent field is left as is,
/// `null` clears it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewPatch {
    #[serde(default, deserialize_with = "present")]
    pub threat_type: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub severity: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub quality_score: Option<Option<u8>>,
    #[serde(default, deserialize_with = "present")]
    pub notes: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub correction: Option<Option<String>>,
    pub status: Option<ReviewStatus>,
}

fn flat(v: &Option<Option<String>>) -> Option<&str> {
    v.as_ref().and_then(|v| v.as_deref())
}

/// Tells a field sent as `null` (`Some(None)`) from one not sent (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl ReviewPatch {
    pub fn validate(&self, taxonomy: &TaxonomyConfig) -> Result<(), ApiError> {
        check_taxonomy(taxonomy, "threat_type", flat(&self.threat_type))?;
        check_taxonomy(taxonomy, "severity", flat(&self.severity))?;
        check_score("quality_score", self.quality_score.flatten())?;
        check_text("notes", flat(&self.notes), MAX_NOTES)?;
        check_text("correction", flat(&self.correction), MAX_CORRECTION)?;
        if self.changed_fields().is_empty() {
            return Err(ApiError::invalid("the patch changes no field", None));
        }
        Ok(())
    }

    /// The names of the fields the patch sets, for the audit log.
    pub fn changed_fields(&self) -> Vec<&'static str> {
        [
            ("threat_type", self.threat_type.is_some()),
            ("severity", self.severity.is_some()),
            ("quality_score", self.quality_score.is_some()),
            ("notes", self.notes.is_some()),
            ("correction", self.correction.is_some()),
            ("status", self.status.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

/// Applies a validated patch on behalf of `reviewer`.
pub fn apply_patch(review: &mut Review, patch: &ReviewPatch, reviewer: &str, at: &str) {
    if let Some(v) = &patch.threat_type {
        review.threat_type.clone_from(v);
    }
    if let Some(v) = &patch.severity {
        review.severity.clone_from(v);
    }
    if let Some(v) = patch.quality_score {
        review.quality_score = v;
    }
    if let Some(v) = &patch.notes {
        review.notes.clone_from(v);
    }
    if let Some(v) = &patch.correction {
        review.correction.clone_from(v);
    }
    if let Some(status) = patch.status {
        review.status = status;
    }
    review.reviewer = Some(reviewer.to_string());
    review.reviewed_at = Some(at.to_string());
}

/// `POST /admin/api/conversations/bulk`'s action.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BulkAction {
    Approve,
    Reject,
}

impl BulkAction {
    pub fn status(self) -> ReviewStatus {
        match self {
            Self::Approve => ReviewStatus::Approved,
            Self::Reject => ReviewStatus::Rejected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feedback(
        rating: Option<u8>,
        threat: Option<&str>,
        approved: Option<bool>,
    ) -> FeedbackRecord {
        FeedbackRecord {
            id: "fb_1".into(),
            inference_id: "inf_1".into(),
            conversation_id: "conv_1".into(),
            author: "key_a".into(),
            rating,
            thumbs: Some("up".into()),
            threat_type: threat.map(String::from),
            severity: None,
            quality_score: None,
            notes: None,
            correction: None,
            approved_for_training: approved,
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn ratings_add_up_and_labels_replace_and_forgetting_undoes_the_counts() {
        let mut review = Review::default();
        let first = feedback(Some(4), Some("malware"), None);
        let second = feedback(Some(2), Some("phishing"), Some(true));
        apply_feedback(&mut review, &first);
        assert_eq!(review.reviewer.as_deref(), Some("key_a"));
        apply_feedback(&mut review, &second);
        assert_eq!(review.mean_rating(), Some(3.0));
        assert_eq!(review.threat_type.as_deref(), Some("phishing"));
        assert_eq!(review.status, ReviewStatus::Approved);
        assert_eq!((review.feedback_count, review.thumbs_up), (2, 2));
        forget_feedback(&mut review, &[first]);
        assert_eq!(review.mean_rating(), Some(2.0));
        assert_eq!((review.feedback_count, review.thumbs_up), (1, 1));
    }

    #[test]
    fn a_rating_alone_does_not_make_a_reviewer() {
        let mut review = Review::default();
        apply_feedback(&mut review, &feedback(Some(5), None, None));
        assert_eq!(review.reviewer, None);
        assert_eq!(review.status, ReviewStatus::Pending);
    }

    #[test]
    fn a_patch_tells_null_from_absent() {
        let patch: ReviewPatch =
            serde_json::from_str(r#"{"notes": null, "quality_score": 5}"#).unwrap();
        let mut review = Review {
            notes: Some("old".into()),
            threat_type: Some("malware".into()),
            ..Review::default()
        };
        apply_patch(&mut review, &patch, "key_b", "t");
        assert_eq!(review.notes, None);
        assert_eq!(review.threat_type.as_deref(), Some("malware"));
        assert_eq!(review.quality_score, Some(5));
        assert_eq!(patch.changed_fields(), ["quality_score", "notes"]);
    }
}
