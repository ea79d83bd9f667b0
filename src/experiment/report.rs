//! The experiment view of one alias: each version's online figures with
//! their intervals, and every candidate (or shadow) compared against
//! production with an always-valid sequential test, so the verdict may be
//! read at any moment without inflating false alarms.

use crate::evaluation::online::{
    Comparison, MeanStat, Proportion, SequentialTest, Verdict, compare_means, compare_proportions,
};
use crate::store::{ModelAliasRecord, TallyKey, VersionTally};
use serde_json::{Value, json};

/// The metrics compared, and whether higher is better for each.
pub const METRICS: [(&str, bool); 5] = [
    ("error_rate", false),
    ("negative_feedback_rate", false),
    ("thumbs_up_rate", true),
    ("mean_rating", true),
    ("label_agreement", true),
];

/// One candidate-against-production comparison.
#[derive(Debug, Clone)]
pub struct MetricComparison {
    pub alias: String,
    pub candidate: String,
    pub shadow: bool,
    pub production: String,
    pub metric: &'static str,
    pub candidate_value: Option<f64>,
    pub production_value: Option<f64>,
    pub result: Comparison,
}

fn error_rate(t: &VersionTally) -> Proportion {
    Proportion::new(t.errors, t.requests.saturating_sub(t.cancelled))
}

/// Compares `candidate` with `production` on one metric.
pub fn compare(
    metric: &'static str,
    candidate: &VersionTally,
    production: &VersionTally,
    alpha: f64,
) -> Option<(Option<f64>, Option<f64>, Comparison)> {
    let higher_is_better = METRICS.iter().find(|(m, _)| *m == metric)?.1;
    let rates = |c: Proportion, p: Proportion| {
        let test = SequentialTest {
            alpha,
            ..SequentialTest::for_rate(higher_is_better)
        };
        (c.rate(), p.rate(), compare_proportions(&c, &p, &test))
    };
    let means = |c: &MeanStat, p: &MeanStat| {
        let test = SequentialTest {
            alpha,
            ..SequentialTest::for_rating()
        };
        (c.mean(), p.mean(), compare_means(c, p, &test))
    };
    Some(match metric {
        "error_rate" => rates(error_rate(candidate), error_rate(production)),
        "negative_feedback_rate" => rates(candidate.negative, production.negative),
        "thumbs_up_rate" => rates(candidate.thumbs, production.thumbs),
        "mean_rating" => means(&candidate.ratings, &production.ratings),
        _ => rates(candidate.label_agreement, production.label_agreement),
    })
}

/// Every version but production that has data or traffic, against
/// production, on every metric.
pub fn comparisons(
    record: &ModelAliasRecord,
    tallies: &[(TallyKey, VersionTally)],
    alpha: f64,
) -> Vec<MetricComparison> {
    let empty = VersionTally::default();
    let production = tallies
        .iter()
        .find(|(k, _)| !k.shadow && k.version == record.production)
        .map_or(&empty, |(_, t)| t);
    let mut out = Vec::new();
    for (key, tally) in tallies {
        if key.version == record.production && !key.shadow {
            continue;
        }
        for (metric, _) in METRICS {
            if let Some((c, p, result)) = compare(metric, tally, production, alpha) {
                out.push(MetricComparison {
                    alias: record.alias.clone(),
                    candidate: key.version.clone(),
                    shadow: key.shadow,
                    production: record.production.clone(),
                    metric,
                    candidate_value: c,
                    production_value: p,
                    result,
                });
            }
        }
    }
    out
}

/// `GET /admin/api/models/{alias}/experiment`.
pub fn experiment_view(
    record: &ModelAliasRecord,
    tallies: &[(TallyKey, VersionTally)],
    alpha: f64,
) -> Value {
    let mut versions: Vec<Value> = Vec::new();
    for v in &record.versions {
        let live = tallies
            .iter()
            .find(|(k, _)| !k.shadow && k.version == v.name);
        let empty = VersionTally::default();
        versions.push(figures(
            &v.name,
            v.state.as_str(),
            v.weight,
            false,
            live.map_or(&empty, |(_, t)| t),
        ));
        if let Some((_, t)) = tallies
            .iter()
            .find(|(k, _)| k.shadow && k.version == v.name)
        {
            versions.push(figures(&v.name, v.state.as_str(), v.weight, true, t));
        }
    }
    let comparisons: Vec<Value> = comparisons(record, tallies, alpha)
        .iter()
        .map(comparison_view)
        .collect();
    json!({
        "object": "experiment",
        "alias": record.alias,
        "production": record.production,
        "revision": record.revision,
        "alpha": alpha,
        "versions": versions,
        "comparisons": comparisons,
    })
}

fn figures(name: &str, state: &str, weight: f64, shadow: bool, t: &VersionTally) -> Value {
    let errors = error_rate(t);
    json!({
        "name": name,
        "state": state,
        "weight": weight,
        "shadow": shadow,
        "requests": t.requests,
        "errors": t.errors,
        "error_rate": errors.rate(),
        "error_rate_ci95": errors.wilson95(),
        "fallbacks": t.fallbacks,
        "cancelled": t.cancelled,
        "latency_ms": {
            "n": t.latency.count(),
            "p50": t.latency.quantile(0.5),
            "p95": t.latency.quantile(0.95),
        },
        "tokens": t.prompt_tokens + t.completion_tokens,
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.completion_tokens,
        "ratings": {"n": t.ratings.n, "mean": t.ratings.mean(), "ci95": t.ratings.ci95()},
        "thumbs": {
            "up": t.thumbs.hits,
            "down": t.thumbs.n - t.thumbs.hits,
            "up_rate": t.thumbs.rate(),
            "up_rate_ci95": t.thumbs.wilson95(),
        },
        "negative_feedback": {"n": t.negative.n, "rate": t.negative.rate(), "ci95": t.negative.wilson95()},
        "label_agreement": t.label_agreement.rate(),
        "label_agreement_n": t.label_agreement.n,
        "label_agreement_ci95": t.label_agreement.wilson95(),
    })
}

fn comparison_view(c: &MetricComparison) -> Value {
    let verdict = match c.result.verdict {
        Verdict::Better => "better",
        Verdict::Worse => "worse",
        Verdict::Inconclusive => "inconclusive",
    };
    json!({
        "candidate": c.candidate,
        "shadow": c.shadow,
        "production": c.production,
        "metric": c.metric,
        "verdict": verdict,
        "candidate_value": c.candidate_value,
        "production_value": c.production_value,
        "difference": c.result.difference,
        "statistic": c.result.statistic,
        "p_value": c.result.p_value,
    })
}
