//! Retention: inferences older than `capture.retention_days` that nobody
//! labelled or approved are purged in the background, once an hour. Rated
//! but unlabelled ones go too; anything an analyst labelled stays.

use crate::review::forget_feedback;
use crate::service::{Lease, Next, Service, StepError, blocking, periodic};
use crate::store::{FeedbackRecord, InferenceRecord, SharedStore, StoreError};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Inferences looked at per store call, so a large purge never holds much.
const PAGE: usize = 500;

/// Feedback that makes an inference worth keeping.
fn labels(f: &FeedbackRecord) -> bool {
    f.threat_type.is_some()
        || f.severity.is_some()
        || f.quality_score.is_some()
        || f.correction.is_some()
        || f.approved_for_training == Some(true)
}

/// Kept: the inference carries labelling feedback, or its conversation
/// was labelled or approved in review.
fn curated(store: &SharedStore, record: &InferenceRecord) -> Result<bool, StoreError> {
    if store.feedback_for(&record.id)?.iter().any(labels) {
        return Ok(true);
    }
    Ok(store
        .conversation(&record.conversation_id)?
        .is_some_and(|c| c.review.is_curated()))
}

/// Purges once; returns how many inferences went.
pub fn purge_once(
    store: &SharedStore,
    retention: Duration,
    now: SystemTime,
) -> Result<usize, StoreError> {
    let cutoff = now.checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH);
    // Ids are `inf_` + a ULID: everything created before the cutoff sorts
    // before the ULID of the cutoff with no random bits.
    let before = format!(
        "inf_{}",
        ulid::Ulid::from_parts(crate::ids::unix_ms(cutoff), 0)
    );
    let mut purged = 0;
    let mut after: Option<String> = None;
    loop {
        let page = store.inferences_between(after.as_deref(), &before, PAGE)?;
        for record in &page {
            if !curated(store, record)? {
                store.delete_inference(record, &mut |c, gone| {
                    forget_feedback(&mut c.review, gone);
                })?;
                purged += 1;
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.id.clone()),
            _ => break,
        }
    }
    Ok(purged)
}

/// The service's step: [`purge_once`] off the async workers, of what is
/// older than `days` now.
pub async fn step(store: &SharedStore, days: u32) -> Result<Next, StepError<StoreError>> {
    let retention = Duration::from_secs(u64::from(days) * 86_400);
    let store = store.clone();
    let n = blocking(move || purge_once(&store, retention, SystemTime::now())).await?;
    metrics::counter!("flywheel_retention_purged_total").increment(n as u64);
    if n > 0 {
        tracing::info!(
            purged = n,
            days,
            "retention purged old unlabelled inferences"
        );
    }
    Ok(Next::Wait)
}

/// Purges at start and then every hour until shutdown.
pub async fn run_retention(
    store: SharedStore,
    days: u32,
    lease: Option<Lease>,
    shutdown: CancellationToken,
) {
    let service = Service::every("retention", Duration::from_secs(3600)).leased(lease);
    periodic(service, shutdown, || {
        let store = store.clone();
        async move { step(&store, days).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::apply_feedback;
    use crate::store::{FeedbackRecord, InferenceRecord};

    fn inference(id: String, conversation: &str) -> InferenceRecord {
        InferenceRecord {
            id,
            completion_id: None,
            alias: None,
            version: None,
            provider_model: "m".into(),
            request: serde_json::Value::Null,
            response: serde_json::Value::Null,
            streamed: false,
            status: "ok".into(),
            http_status: 200,
            latency_ms: 1.0,
            first_byte_ms: None,
            key_id: "k".into(),
            user: None,
            tags: Default::default(),
            conversation_id: conversation.into(),
            created_at: String::new(),
            fallback_from: None,
            shadow_of: None,
            turn: None,
            sticky: None,
            opens: None,
        }
    }

    fn feedback(inference_id: &str, conversation: &str, labelled: bool) -> FeedbackRecord {
        FeedbackRecord {
            id: crate::ids::new_id("fb"),
            inference_id: inference_id.into(),
            conversation_id: conversation.into(),
            author: "a".into(),
            rating: Some(3),
            thumbs: None,
            threat_type: labelled.then(|| "malware".into()),
            severity: None,
            quality_score: None,
            notes: None,
            correction: None,
            approved_for_training: None,
            created_at: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_step_purges_what_is_older_than_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).unwrap();
        let at = |age_days: u64| {
            let t = SystemTime::now() - Duration::from_secs(age_days * 86_400);
            format!("inf_{}", ulid::Ulid::from_parts(crate::ids::unix_ms(t), 0))
        };
        let (old, recent) = (at(10), at(1));
        let mut batch: Vec<crate::store::CapturedTurn> = [&old, &recent]
            .into_iter()
            .map(|id| crate::store::CapturedTurn::plain(inference(id.clone(), "conv")))
            .collect();
        store.store_captured(&mut batch).unwrap();
        assert_eq!(step(&store, 7).await.unwrap(), Next::Wait);
        assert!(store.inference(&old).unwrap().is_none(), "old goes");
        assert!(store.inference(&recent).unwrap().is_some(), "recent stays");
    }

    #[test]
    fn old_unlabelled_inferences_go_and_labelled_or_recent_ones_stay() {
        // Turns 6 and 7 form a conversation an analyst labelled (through
        // turn 7): both stay. The others are one unlabelled conversation.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).unwrap();
        let now = SystemTime::now();
        let id_at = |age_days: u64, n: u128| {
            let t = now - Duration::from_secs(age_days * 86_400);
            format!("inf_{}", ulid::Ulid::from_parts(crate::ids::unix_ms(t), n))
        };
        let old: Vec<String> = (0..1200).map(|n| id_at(40, n)).collect();
        let recent = id_at(1, 0);
        let mut records: Vec<InferenceRecord> = old
            .iter()
            .enumerate()
            .map(|(n, id)| {
                let conversation = if n == 6 || n == 7 {
                    "conv_labelled"
                } else {
                    "conv_old"
                };
                inference(id.clone(), conversation)
            })
            .collect();
        records.push(inference(recent.clone(), "conv_new"));
        let mut batch: Vec<crate::store::CapturedTurn> = records
            .into_iter()
            .map(crate::store::CapturedTurn::plain)
            .collect();
        store.store_captured(&mut batch).unwrap();
        let f = feedback(&old[7], "conv_labelled", true);
        store
            .insert_feedback(&f, None, &mut |c| apply_feedback(&mut c.review, &f), None)
            .unwrap();
        let f = feedback(&old[8], "conv_old", false);
        store
            .insert_feedback(&f, None, &mut |c| apply_feedback(&mut c.review, &f), None)
            .unwrap();

        let purged = purge_once(&store, Duration::from_secs(30 * 86_400), now).unwrap();
        assert_eq!(purged, 1198);
        assert!(
            store.inference(&old[7]).unwrap().is_some(),
            "labelled stays"
        );
        assert!(
            store.inference(&old[8]).unwrap().is_none(),
            "rated only goes"
        );
        assert!(store.feedback_for(&old[8]).unwrap().is_empty());
        assert!(store.inference(&recent).unwrap().is_some(), "recent stays");
        assert!(
            store.inference(&old[6]).unwrap().is_some(),
            "an unlabelled turn of a labelled conversation stays"
        );
        assert!(store.conversation("conv_old").unwrap().is_none());
        let tallies = store.tallies().unwrap();
        assert_eq!((tallies.conversations, tallies.turns), (2, 3));
        assert_eq!(
            (tallies.rating_count, tallies.rating_sum),
            (1, 3),
            "the purged rating is no longer counted"
        );
        assert_eq!(
            purge_once(&store, Duration::from_secs(30 * 86_400), now).unwrap(),
            0
        );
    }
}
