//! A finished run's figures from its stored per-example results: each
//! version's metrics (`evaluation::metrics`), McNemar's comparison when
//! two versions ran, the model-performance records, and the configured
//! targets against the numbers.

use crate::config::EvaluationTargets;
use crate::evaluation::metrics::{Labelled, PairedPrediction, VersionMetrics, evaluate, mcnemar};
use crate::store::{EvaluationRecord, ExampleResult, PerformanceRecord};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// The metrics kept as model-performance records, for charts over time.
pub const METRICS: [&str; 5] = [
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "precision_high_severity",
    "recall_critical",
];

#[derive(Debug, Clone)]
pub struct Summary {
    pub results: BTreeMap<String, VersionMetrics>,
    /// Examples whose upstream request failed, by version (scored as misses).
    pub errors: BTreeMap<String, u64>,
    pub comparison: Option<Value>,
}

pub fn summarise(versions: &[String], results: &[ExampleResult], labels: &[String]) -> Summary {
    let of = |version: &str| -> Vec<&ExampleResult> {
        results.iter().filter(|r| r.version == version).collect()
    };
    let mut summary = Summary {
        results: BTreeMap::new(),
        errors: BTreeMap::new(),
        comparison: None,
    };
    for version in versions {
        let mine = of(version);
        summary
            .results
            .insert(version.clone(), metrics_of(&mine, labels));
        let errors = mine.iter().filter(|r| r.error.is_some()).count() as u64;
        summary.errors.insert(version.clone(), errors);
    }
    if let [a, b] = versions {
        summary.comparison = Some(compare(a, &of(a), b, &of(b)));
    }
    summary
}

fn metrics_of(results: &[&ExampleResult], labels: &[String]) -> VersionMetrics {
    let threat: Vec<Labelled> = results
        .iter()
        .map(|r| Labelled {
            expected: &r.expected_threat_type,
            predicted: r.predicted_threat_type.as_deref(),
        })
        .collect();
    let severity: Vec<Labelled> = results
        .iter()
        .filter_map(|r| {
            Some(Labelled {
                expected: r.expected_severity.as_deref()?,
                predicted: r.predicted_severity.as_deref(),
            })
        })
        .collect();
    evaluate(&threat, &severity, labels)
}

/// McNemar over the examples both versions answered, and every example
/// whose predicted threat types differ.
fn compare(a: &str, of_a: &[&ExampleResult], b: &str, of_b: &[&ExampleResult]) -> Value {
    let by_index: HashMap<u64, &ExampleResult> = of_b.iter().map(|r| (r.index, *r)).collect();
    let pairs: Vec<(&ExampleResult, &ExampleResult)> = of_a
        .iter()
        .filter_map(|ra| Some((*ra, *by_index.get(&ra.index)?)))
        .collect();
    let paired: Vec<PairedPrediction> = pairs
        .iter()
        .map(|(ra, rb)| PairedPrediction {
            expected: &ra.expected_threat_type,
            a: ra.predicted_threat_type.as_deref(),
            b: rb.predicted_threat_type.as_deref(),
        })
        .collect();
    let test = mcnemar(&paired);
    let disagreements: Vec<Value> = test
        .disagreements
        .iter()
        .filter_map(|i| pairs.get(*i))
        .map(|(ra, rb)| {
            json!({
                "conversation_id": ra.conversation_id,
                "expected": ra.expected_threat_type,
                "predicted": {a: ra.predicted_threat_type, b: rb.predicted_threat_type},
            })
        })
        .collect();
    json!({
        "versions": [a, b],
        "n": paired.len(),
        "mcnemar_p": test.p_value,
        "exact": test.exact,
        "only_a_correct": test.only_a_correct,
        "only_b_correct": test.only_b_correct,
        "disagreements": disagreements,
    })
}

impl Summary {
    /// The admin API's `results`: each version's metrics plus its errors.
    pub fn results_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (version, metrics) in &self.results {
            let mut value = json!(metrics);
            if let Some(object) = value.as_object_mut() {
                object.insert("errors".into(), json!(self.errors.get(version)));
            }
            out.insert(version.clone(), value);
        }
        Value::Object(out)
    }

    pub fn performance(&self, run: &EvaluationRecord, at: &str) -> Vec<PerformanceRecord> {
        let results = self.results_json();
        self.results
            .iter()
            .flat_map(|(version, metrics)| {
                METRICS.iter().map(|metric| PerformanceRecord {
                    at: at.to_string(),
                    alias: run.alias.clone(),
                    version: version.clone(),
                    dataset_id: run.dataset_id.clone(),
                    evaluation_id: run.id.clone(),
                    metric: (*metric).to_string(),
                    score: score(&results, version, metric),
                    n: metrics.threat_type.n,
                })
            })
            .collect()
    }
}

/// One metric of one version in stored `results`.
pub fn score(results: &Value, version: &str, metric: &str) -> Option<f64> {
    results.get(version)?.get(metric)?.as_f64()
}

/// The targets the config sets, by metric name.
pub fn targets(t: &EvaluationTargets) -> [(&'static str, f64); 3] {
    [
        ("accuracy", t.accuracy),
        ("precision_high_severity", t.precision_high_severity),
        ("recall_critical", t.recall_critical),
    ]
}

/// `{metric: {target, met, versions: {version: {value, met}}}}`: `met` is
/// true when every version meets the target, false when one misses it,
/// and null when no version could be measured on it (its denominator was
/// 0); an unmeasured version neither meets nor misses.
pub fn targets_view(results: &Value, versions: &[String], t: &EvaluationTargets) -> Value {
    let mut out = serde_json::Map::new();
    for (metric, target) in targets(t) {
        let values: Vec<(&String, Option<f64>)> = versions
            .iter()
            .map(|v| (v, score(results, v, metric)))
            .collect();
        let measured: Vec<bool> = values
            .iter()
            .filter_map(|(_, value)| value.map(|x| x >= target))
            .collect();
        let met = (!measured.is_empty()).then(|| measured.iter().all(|m| *m));
        let per_version: serde_json::Map<String, Value> = values
            .iter()
            .map(|(v, value)| {
                let met = value.map(|x| x >= target);
                ((*v).clone(), json!({"value": value, "met": met}))
            })
            .collect();
        out.insert(
            metric.into(),
            json!({"target": target, "met": met, "versions": per_version}),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(version: &str, index: u64, expected: &str, predicted: Option<&str>) -> ExampleResult {
        ExampleResult {
            evaluation_id: "eval_1".into(),
            version: version.into(),
            index,
            conversation_id: format!("conv_{index}"),
            expected_threat_type: expected.into(),
            expected_severity: Some("critical".into()),
            predicted_threat_type: predicted.map(String::from),
            predicted_severity: Some(
                if predicted == Some(expected) {
                    "critical"
                } else {
                    "low"
                }
                .into(),
            ),
            error: None,
            answered_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn two_versions_are_scored_and_compared_example_by_example() {
        let results = [
            result("a", 0, "malware", Some("malware")),
            result("a", 1, "phishing", Some("malware")),
            result("b", 0, "malware", Some("malware")),
            result("b", 1, "phishing", Some("phishing")),
        ];
        let versions = ["a".to_string(), "b".to_string()];
        let s = summarise(&versions, &results, &["malware".into(), "phishing".into()]);
        assert_eq!(s.results["a"].threat_type.accuracy, Some(0.5));
        assert_eq!(s.results["b"].threat_type.accuracy, Some(1.0));
        assert_eq!(s.results["a"].recall_critical, Some(0.5));
        let c = s.comparison.clone().unwrap();
        assert_eq!(c["disagreements"].as_array().unwrap().len(), 1);
        assert_eq!(c["disagreements"][0]["conversation_id"], "conv_1");
        assert_eq!(c["disagreements"][0]["predicted"]["a"], "malware");
        let view = targets_view(&s.results_json(), &versions, &EvaluationTargets::default());
        assert_eq!(view["accuracy"]["met"], false);
        assert_eq!(view["accuracy"]["versions"]["b"]["met"], true);
    }
}
