//! Promotion gating: with `evaluation.enabled` and
//! `evaluation.gate_promotion` (both on by default), a version may become
//! production only when its latest succeeded evaluation passes
//! `evaluation.promotion_requires` — it beats production on the same
//! dataset and split (higher accuracy, no lower macro-F1), it meets every
//! configured target, either, or both. A metric that could not be
//! measured (denominator 0) neither passes nor fails its target.
//!
//! [`verdict`] says where a version stands, with the figures an admin
//! decides on (both versions' accuracy and macro-F1, McNemar's p when one
//! run scored both). The promote handler refuses what it does not allow,
//! unless an admin forces it, which the registry audits as a forced
//! promotion.

use super::run::{score, summary_targets};
use crate::config::{EvaluationConfig, PromotionRule};
use crate::store::{EvaluationRecord, Store, StoreError};
use serde::Serialize;

/// Stored runs looked at for a version's latest evaluation.
const LOOK_AT: usize = 10_000;

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

/// Accuracy and macro-F1 of one version in one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub evaluation_id: String,
    pub accuracy: Option<f64>,
    pub macro_f1: Option<f64>,
    pub n: Option<u64>,
}

impl Figures {
    fn of(run: &EvaluationRecord, version: &str) -> Self {
        let results = run.results.as_ref();
        let get = |metric| results.and_then(|r| score(r, version, metric));
        Self {
            evaluation_id: run.id.clone(),
            accuracy: get("accuracy"),
            macro_f1: get("macro_f1"),
            n: results.and_then(|r| r.get(version)?.get("n")?.as_u64()),
        }
    }
}

/// Where a version stands for promotion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub alias: String,
    pub version: String,
    pub production: String,
    /// Whether promotions of this alias are gated at all.
    pub gated: bool,
    /// `evaluation.promotion_requires`.
    pub requires: &'static str,
    /// Whether a promotion would go through without forcing it.
    pub allowed: bool,
    /// In words, for the admin deciding.
    pub message: String,
    /// The version's latest succeeded evaluation: its dataset and split.
    pub dataset_id: Option<String>,
    pub split: Option<String>,
    /// The version's figures in that run…
    pub candidate: Option<Figures>,
    /// …and production's on the same dataset and split (the same run when
    /// it scored both, else production's latest run on them).
    pub production_figures: Option<Figures>,
    /// McNemar's paired test of the two, when one run scored both.
    pub mcnemar_p: Option<f64>,
    /// Higher accuracy than production and no lower macro-F1; `None`
    /// without figures for both.
    pub beats_production: Option<bool>,
    /// Every target met (unmeasured ones aside); `None` without an
    /// evaluation.
    pub meets_targets: Option<bool>,
    /// What keeps it back (empty when allowed, or when it has no
    /// evaluation at all).
    pub failing: Vec<Failing>,
}

/// Whether promotions are gated under `config`.
pub fn is_gated(config: &EvaluationConfig) -> bool {
    config.enabled && config.gate_promotion
}

/// Where `version` of `alias` stands for promotion; `production` is the
/// alias's production version.
pub fn verdict(
    store: &dyn Store,
    config: &EvaluationConfig,
    alias: &str,
    version: &str,
    production: &str,
) -> Result<Verdict, StoreError> {
    let gated = is_gated(config);
    let rule = config.promotion_requires;
    let mut v = Verdict {
        alias: alias.to_string(),
        version: version.to_string(),
        production: production.to_string(),
        gated,
        requires: rule.name(),
        allowed: true,
        message: String::new(),
        dataset_id: None,
        split: None,
        candidate: None,
        production_figures: None,
        mcnemar_p: None,
        beats_production: None,
        meets_targets: None,
        failing: Vec::new(),
    };
    if version == production {
        v.message = format!("`{version}` is already production.");
        return Ok(v);
    }
    let Some(latest) = latest_succeeded(store, alias, version, None)? else {
        v.allowed = !gated;
        v.message = format!(
            "`{version}` has no succeeded evaluation; run one against {production} with POST /admin/api/evaluations."
        );
        return Ok(v);
    };
    v.dataset_id = Some(latest.dataset_id.clone());
    v.split = Some(latest.split.clone());
    v.candidate = Some(Figures::of(&latest, version));
    let theirs = if latest.versions.iter().any(|x| x == production) {
        v.mcnemar_p = mcnemar_p(&latest, version, production);
        Some(latest.clone())
    } else {
        latest_succeeded(
            store,
            alias,
            production,
            Some((&latest.dataset_id, &latest.split)),
        )?
    };
    v.production_figures = theirs.as_ref().map(|run| Figures::of(run, production));
    let under = under_targets(&latest, version, config);
    v.meets_targets = Some(under.is_empty());
    let behind = against_production(&latest, version, theirs.as_ref(), production);
    let comparable = v.production_figures.is_some()
        && v.candidate.as_ref().is_some_and(|c| c.accuracy.is_some());
    v.beats_production = comparable.then_some(behind.is_empty());
    let beats = v.beats_production == Some(true);
    let meets = under.is_empty();
    let passes = match rule {
        PromotionRule::BeatsProduction => beats,
        PromotionRule::MeetsTargets => meets,
        PromotionRule::Either => beats || meets,
        PromotionRule::Both => beats && meets,
    };
    v.allowed = passes || !gated;
    if !passes {
        v.failing = match rule {
            PromotionRule::BeatsProduction => behind,
            PromotionRule::MeetsTargets => under,
            PromotionRule::Either | PromotionRule::Both => {
                let mut all = under;
                all.extend(if beats { Vec::new() } else { behind });
                all
            }
        };
    }
    v.message = describe(&v, rule, passes, &latest.id);
    Ok(v)
}

fn describe(v: &Verdict, rule: PromotionRule, passes: bool, run: &str) -> String {
    let needs = match rule {
        PromotionRule::BeatsProduction => format!("to beat {}", v.production),
        PromotionRule::MeetsTargets => "to meet the targets".to_string(),
        PromotionRule::Either => format!("to beat {} or meet the targets", v.production),
        PromotionRule::Both => format!("to beat {} and meet the targets", v.production),
    };
    if passes {
        return format!(
            "`{}`'s latest evaluation ({run}) passes: it needed {needs}.",
            v.version
        );
    }
    let names: Vec<String> = v
        .failing
        .iter()
        .map(|f| format!("{} against {}", f.metric, f.against))
        .collect();
    format!(
        "`{}`'s latest evaluation ({run}) does not pass: it needs {needs} (failing: {}).",
        v.version,
        if names.is_empty() {
            "no figures to compare".to_string()
        } else {
            names.join(", ")
        }
    )
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

/// The run's McNemar p when it compared exactly these two versions.
fn mcnemar_p(run: &EvaluationRecord, a: &str, b: &str) -> Option<f64> {
    let comparison = run.comparison.as_ref()?;
    let versions: Vec<&str> = comparison
        .get("versions")?
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    (versions.contains(&a) && versions.contains(&b))
        .then(|| comparison.get("mcnemar_p")?.as_f64())
        .flatten()
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

/// What keeps `version` from beating production: accuracy not above
/// production's, macro-F1 below it; both, with no target, when production
/// has no run on the same dataset and split.
fn against_production(
    latest: &EvaluationRecord,
    version: &str,
    theirs: Option<&EvaluationRecord>,
    production: &str,
) -> Vec<Failing> {
    let mine = |metric| {
        latest
            .results
            .as_ref()
            .and_then(|r| score(r, version, metric))
    };
    let Some(theirs) = theirs else {
        return vec![Failing {
            metric: "accuracy".into(),
            value: mine("accuracy"),
            target: None,
            against: "production",
            evaluation_id: latest.id.clone(),
        }];
    };
    let production_score = |metric| {
        theirs
            .results
            .as_ref()
            .and_then(|r| score(r, production, metric))
    };
    let mut failing = Vec::new();
    for (metric, strictly) in [("accuracy", true), ("macro_f1", false)] {
        let (value, target) = (mine(metric), production_score(metric));
        let passes = match (value, target) {
            (Some(v), Some(t)) if strictly => v > t,
            (Some(v), Some(t)) => v >= t,
            // Production unmeasured: nothing to beat on this metric.
            (_, None) => true,
            (None, Some(_)) => false,
        };
        if !passes {
            failing.push(Failing {
                metric: metric.to_string(),
                value,
                target,
                against: "production",
                evaluation_id: theirs.id.clone(),
            });
        }
    }
    failing
}
