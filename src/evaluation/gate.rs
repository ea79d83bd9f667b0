//! Promotion gating (`evaluation.gate_promotion`): a version may become
//! production only when its latest succeeded evaluation meets the
//! configured targets and, with `evaluation.require_beats_production`,
//! its accuracy is above production's on the same dataset and split. A
//! metric that could not be measured (denominator 0) neither passes nor
//! fails its target.

use super::run::{score, summary_targets};
use crate::config::EvaluationConfig;
use crate::store::{EvaluationRecord, Store, StoreError};
use serde::Serialize;

/// Stored runs looked at for a version's latest evaluation.
const LOOK_AT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum Gated {
    /// The promotion is refused; `failing` says on what.
    #[error("{message}")]
    Refused {
        message: String,
        failing: Vec<Failing>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One metric that keeps the version from production.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failing {
    pub metric: String,
    pub value: Option<f64>,
    /// The configured target, or production's value (`None` when
    /// production has no evaluation on the same dataset).
    pub target: Option<f64>,
    /// `target` or `production`.
    pub against: &'static str,
    pub evaluation_id: String,
}

/// `Ok` when `version` may be promoted in `alias`.
pub fn check(
    store: &dyn Store,
    config: &EvaluationConfig,
    alias: &str,
    version: &str,
) -> Result<(), Gated> {
    if !config.gate_promotion {
        return Ok(());
    }
    let production = store
        .model_aliases()?
        .into_iter()
        .find(|a| a.alias == alias)
        .map(|a| a.production);
    if production.as_deref() == Some(version) {
        return Ok(());
    }
    let Some(latest) = latest_succeeded(store, alias, version, None)? else {
        return Err(Gated::Refused {
            message: format!(
                "promotion gated: `{version}` has no succeeded evaluation; run one with POST /admin/api/evaluations"
            ),
            failing: Vec::new(),
        });
    };
    let mut failing = under_targets(&latest, version, config);
    if config.require_beats_production
        && let Some(production) = production
    {
        failing.extend(against_production(
            store,
            &latest,
            alias,
            version,
            &production,
        )?);
    }
    if failing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = failing.iter().map(|f| f.metric.as_str()).collect();
    Err(Gated::Refused {
        message: format!(
            "promotion gated: `{version}`'s latest evaluation ({}) does not pass on {}",
            latest.id,
            names.join(", ")
        ),
        failing,
    })
}

/// The newest succeeded run of `alias` that evaluated `version` (on
/// `dataset`'s same split, when given).
fn latest_succeeded(
    store: &dyn Store,
    alias: &str,
    version: &str,
    dataset: Option<(&str, &str)>,
) -> Result<Option<EvaluationRecord>, StoreError> {
    let keep = |r: &EvaluationRecord| {
        r.alias == alias
            && r.status == "succeeded"
            && r.versions.iter().any(|v| v == version)
            && dataset.is_none_or(|(id, split)| r.dataset_id == id && r.split == split)
    };
    Ok(store.evaluations(None, LOOK_AT, &keep)?.into_iter().next())
}

fn under_targets(run: &EvaluationRecord, version: &str, config: &EvaluationConfig) -> Vec<Failing> {
    let results = run.results.clone().unwrap_or_default();
    summary_targets(&config.targets)
        .into_iter()
        .filter_map(|(metric, target)| {
            let value = score(&results, version, metric)?;
            (value < target).then(|| Failing {
                metric: metric.to_string(),
                value: Some(value),
                target: Some(target),
                against: "target",
                evaluation_id: run.id.clone(),
            })
        })
        .collect()
}

fn against_production(
    store: &dyn Store,
    latest: &EvaluationRecord,
    alias: &str,
    version: &str,
    production: &str,
) -> Result<Option<Failing>, StoreError> {
    let theirs = if latest.versions.iter().any(|v| v == production) {
        Some(latest.clone())
    } else {
        latest_succeeded(
            store,
            alias,
            production,
            Some((&latest.dataset_id, &latest.split)),
        )?
    };
    let value = latest
        .results
        .as_ref()
        .and_then(|r| score(r, version, "accuracy"));
    let Some(theirs) = theirs else {
        return Ok(Some(Failing {
            metric: "accuracy".into(),
            value,
            target: None,
            against: "production",
            evaluation_id: latest.id.clone(),
        }));
    };
    let target = theirs
        .results
        .as_ref()
        .and_then(|r| score(r, production, "accuracy"))
        .unwrap_or(0.0);
    let beats = value.is_some_and(|v| v > target);
    Ok((!beats).then(|| Failing {
        metric: "accuracy".into(),
        value,
        target: Some(target),
        against: "production",
        evaluation_id: theirs.id,
    }))
}
