//! `flywheel migrate-store`: every record of one store (the embedded sled
//! store of a single process) copied into PostgreSQL, then the counts
//! compared. Records already in the database are kept as they are, so
//! running it again copies only what is new.
//!
//! What is copied: keys, audit, the registry with its history, alerts and
//! the webhook deliveries still queued, datasets and their files,
//! fine-tuning jobs, evaluations with their results and performance, every
//! conversation with its turns, shadow answers and feedback, the tallies,
//! and the lookup entries kept beside the records: the continuation keys
//! of turns (so a follow-up to a conversation captured before the move
//! threads onto it) and feedback idempotency keys (so a retry of feedback
//! sent before the move is not stored twice).

use super::postgres::Counts;
use super::{
    ConversationTallies, EvaluationRecord, Lookup, PerformanceRecord, PgStore, Store, StoreError,
};
use std::collections::BTreeMap;

/// Listings are read this many records at a time.
const PAGE: usize = 500;

/// What was copied, and what the database holds afterwards.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub keys: usize,
    pub audit: usize,
    pub aliases: usize,
    pub alerts: usize,
    pub datasets: usize,
    pub jobs: usize,
    pub evaluations: usize,
    /// Alert deliveries still queued for the webhook.
    pub webhooks: usize,
    pub continuation_keys: usize,
    pub idempotency_keys: usize,
    /// In the source.
    pub source: Counts,
    /// In the database after the copy.
    pub target: Counts,
}

/// Copies everything `from` holds into `to` and checks the counts.
pub fn copy_into(from: &dyn Store, to: &PgStore) -> Result<Report, StoreError> {
    let mut report = Report::default();
    for key in from.keys()? {
        to.insert_key(&key)?;
        report.keys += 1;
    }
    let mut cursor = None;
    loop {
        let page = from.audit(cursor.as_deref(), PAGE)?;
        for a in &page {
            to.append_audit(a)?;
        }
        report.audit += page.len();
        match page.last() {
            Some(last) if page.len() == PAGE => cursor = Some(last.id.clone()),
            _ => break,
        }
    }
    let aliases = from.model_aliases()?;
    for alias in &aliases {
        let mut history = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = from.model_history(&alias.alias, cursor.as_deref(), PAGE)?;
            cursor = page.last().map(|h| h.id.clone());
            let full = page.len() == PAGE;
            history.extend(page);
            if !full {
                break;
            }
        }
        // Oldest first; each entry is written with the alias as it stands.
        for h in history.iter().rev() {
            to.put_model_alias(alias, h)?;
        }
        report.aliases += 1;
    }
    report.alerts = copy_pages(
        |c| from.alerts(c, PAGE, &|_| true),
        |a| to.put_alert(a),
        |a| a.id.clone(),
    )?;
    // Few wait at any time: a delivery is queued until sent or given up.
    for webhook in from.queued_webhooks(usize::MAX)? {
        to.requeue_webhook(&webhook)?;
        report.webhooks += 1;
    }
    report.datasets = copy_pages(
        |c| from.datasets(c, PAGE),
        |d| {
            let file = |split| {
                from.dataset_file(&d.id, split)
                    .map(Option::unwrap_or_default)
            };
            to.insert_dataset(
                d,
                &file(super::DatasetSplit::Train)?,
                &file(super::DatasetSplit::Validation)?,
            )
        },
        |d| d.id.clone(),
    )?;
    report.jobs = copy_pages(|c| from.jobs(c, PAGE), |j| to.put_job(j), |j| j.id.clone())?;
    let mut evaluations: BTreeMap<String, EvaluationRecord> = BTreeMap::new();
    report.evaluations = copy_pages(
        |c| from.evaluations(c, PAGE, &|_| true),
        |e| {
            for result in from.example_results(&e.id)? {
                to.put_example_result(&result, e)?;
            }
            evaluations.insert(e.id.clone(), e.clone());
            to.put_evaluation(e)
        },
        |e| e.id.clone(),
    )?;
    for alias in &aliases {
        let mut by_run: BTreeMap<String, Vec<PerformanceRecord>> = BTreeMap::new();
        for p in from.performance(&alias.alias)? {
            by_run.entry(p.evaluation_id.clone()).or_default().push(p);
        }
        for (run, figures) in by_run {
            if let Some(record) = evaluations.get(&run) {
                to.finish_evaluation(record, &figures)?;
            }
        }
    }

    let mut tallies = ConversationTallies::default();
    let mut source = Counts::default();
    from.for_each_conversation(&mut |c| {
        let mut inferences = Vec::new();
        let mut feedback = Vec::new();
        for id in &c.inference_ids {
            // A turn lost in a crash before its batch was written is not
            // there to copy.
            if let Some(r) = from.inference(id)? {
                inferences.push(r);
            }
            inferences.extend(from.shadows_of(id)?);
            feedback.extend(from.feedback_for(id)?);
        }
        source.conversations += 1;
        source.inferences += inferences.len() as i64;
        source.feedback += feedback.len() as i64;
        tallies.count(&c, 1);
        to.import_conversation(&c, &inferences, &feedback)
    })?;
    let mut versions = Vec::new();
    for alias in &aliases {
        versions.extend(from.version_tallies(&alias.alias)?);
    }
    to.import_tallies(&tallies, &versions)?;
    // After the turns: a continuation key points at one.
    let mut batch = Vec::with_capacity(PAGE);
    from.for_each_lookup(&mut |lookup| {
        match &lookup {
            Lookup::Thread { .. } => report.continuation_keys += 1,
            Lookup::Idempotency { .. } => report.idempotency_keys += 1,
        }
        batch.push(lookup);
        if batch.len() == PAGE {
            to.import_lookups(&std::mem::take(&mut batch))?;
        }
        Ok(())
    })?;
    to.import_lookups(&batch)?;
    report.source = source;
    report.target = to.counts()?;
    if report.target != report.source {
        return Err(StoreError::Corrupt {
            what: "copy",
            detail: format!(
                "the database holds {:?} after the copy, the source {:?}; if replicas already wrote to the database, compare by hand",
                report.target, report.source
            ),
        });
    }
    Ok(report)
}

/// Copies a newest-first listing page by page; how many records.
fn copy_pages<T>(
    mut page: impl FnMut(Option<&str>) -> Result<Vec<T>, StoreError>,
    mut put: impl FnMut(&T) -> Result<(), StoreError>,
    id: impl Fn(&T) -> String,
) -> Result<usize, StoreError> {
    let mut cursor: Option<String> = None;
    let mut copied = 0;
    loop {
        let records = page(cursor.as_deref())?;
        for r in &records {
            put(r)?;
        }
        copied += records.len();
        match records.last() {
            Some(last) if records.len() == PAGE => cursor = Some(id(last)),
            _ => return Ok(copied),
        }
    }
}
