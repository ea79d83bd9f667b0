//! Asking for an evaluation: the alias, versions, dataset and split are
//! checked, the examples counted, and the run stored as `queued` for the
//! runner to pick up.

use super::{EvalError, load_examples};
use crate::evaluation::Context;
use crate::ids::{new_id, now_rfc3339};
use crate::store::EvaluationRecord;
use serde::Deserialize;

/// Most versions one run compares.
const MAX_VERSIONS: usize = 8;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEvaluation {
    pub alias: String,
    pub versions: Vec<String>,
    pub dataset_id: String,
    /// `validation` (the default) or `all`.
    pub split: Option<String>,
}

/// Stores the run as queued and wakes the runner; `actor` is a key id or
/// `scheduler`.
pub fn create(
    app: &Context,
    new: NewEvaluation,
    actor: &str,
) -> Result<EvaluationRecord, EvalError> {
    let split = new.split.unwrap_or_else(|| "validation".into());
    if !matches!(split.as_str(), "validation" | "all") {
        return Err(EvalError::Invalid(format!(
            "`split` must be `validation` or `all`, not `{split}`"
        )));
    }
    check_versions(app, &new.alias, &new.versions)?;
    let (examples, skipped) = load_examples(app.store.as_ref(), &new.dataset_id, &split)?;
    if examples.is_empty() {
        return Err(EvalError::Invalid(format!(
            "dataset `{}` has no labelled examples in split `{split}`",
            new.dataset_id
        )));
    }
    let record = EvaluationRecord {
        id: new_id("eval"),
        total: (examples.len() * new.versions.len()) as u64,
        alias: new.alias,
        versions: new.versions,
        dataset_id: new.dataset_id,
        split,
        status: "queued".into(),
        done: 0,
        skipped,
        created_by: actor.to_string(),
        created_at: now_rfc3339(),
        started_at: None,
        finished_at: None,
        error: None,
        results: None,
        comparison: None,
    };
    app.store.put_evaluation(&record)?;
    app.runner.wake();
    Ok(record)
}

fn check_versions(app: &Context, alias: &str, versions: &[String]) -> Result<(), EvalError> {
    let record = app
        .registry
        .alias(alias)
        .ok_or_else(|| EvalError::UnknownAlias(alias.to_string()))?;
    if versions.is_empty() || versions.len() > MAX_VERSIONS {
        return Err(EvalError::Invalid(format!(
            "`versions` must name 1 to {MAX_VERSIONS} versions"
        )));
    }
    for (i, version) in versions.iter().enumerate() {
        if record.version(version).is_none() {
            return Err(EvalError::UnknownVersion {
                alias: alias.to_string(),
                version: version.clone(),
            });
        }
        if versions[..i].contains(version) {
            return Err(EvalError::Invalid(format!(
                "`versions` names `{version}` twice"
            )));
        }
    }
    Ok(())
}
