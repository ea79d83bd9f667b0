//! Offline metrics of one model version over a labelled evaluation set, and
//! the paired comparison of two versions on the same examples. The metric
//! definitions are those of the admin API's evaluations: threat-type
//! classification figures plus two severity figures, each `None` where its
//! denominator is 0.

mod classification;
mod mcnemar;
mod severity;

pub use classification::{ClassMetrics, ClassificationReport, Confusion, MISSING, classify};
pub use mcnemar::{McNemar, PairedPrediction, mcnemar};
pub use severity::{precision_high_severity, recall_critical};

use serde::Serialize;

/// One example: the analyst's label and the model's answer, `None` when no
/// label could be read from the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Labelled<'a> {
    pub expected: &'a str,
    pub predicted: Option<&'a str>,
}

/// Everything the admin API reports for one version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionMetrics {
    #[serde(flatten)]
    pub threat_type: ClassificationReport,
    pub precision_high_severity: Option<f64>,
    pub recall_critical: Option<f64>,
}

/// The metrics of one version: threat types over `threat_types` (reported
/// in the order of `labels`, usually the taxonomy's), severities over the
/// examples that carry a severity label.
pub fn evaluate(
    threat_types: &[Labelled],
    severities: &[Labelled],
    labels: &[String],
) -> VersionMetrics {
    VersionMetrics {
        threat_type: classify(threat_types, labels),
        precision_high_severity: precision_high_severity(severities),
        recall_critical: recall_critical(severities),
    }
}

/// part / whole, `None` when whole is 0.
fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_serialises_with_every_admin_api_field() {
        let threat = [Labelled {
            expected: "malware",
            predicted: Some("malware"),
        }];
        let severity = [Labelled {
            expected: "critical",
            predicted: Some("high"),
        }];
        let json = serde_json::to_value(evaluate(&threat, &severity, &["malware".into()])).unwrap();
        for field in [
            "n",
            "accuracy",
            "macro_f1",
            "weighted_f1",
            "precision_high_severity",
            "recall_critical",
            "per_class",
            "confusion",
        ] {
            assert!(json.get(field).is_some(), "{field} is missing from {json}");
        }
        assert_eq!(json["precision_high_severity"], 1.0);
        assert_eq!(json["recall_critical"], 0.0);
    }
}
