//! Threat-type classification figures: accuracy, per-class precision,
//! recall and F1, their macro and weighted means, and the confusion matrix.

use super::{Labelled, ratio};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The confusion matrix's label for "no label could be read from the
/// answer". It is added only when some prediction is missing, so a taxonomy
/// should not use it as a label of its own.
pub const MISSING: &str = "none";

/// Rows are expected labels, columns predicted labels, both in the order of
/// `labels`. When some prediction is missing, `labels` ends with
/// [`MISSING`]: its column counts the missing predictions and its row is
/// all zeros (no example is labelled so), which keeps the matrix square.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// `None` when the class was never predicted.
    pub precision: Option<f64>,
    /// `None` when no example has the class.
    pub recall: Option<f64>,
    /// 2·TP / (2·TP + FP + FN): 0 for a class that has examples but is
    /// never predicted right, `None` only for a class that is neither
    /// expected nor predicted.
    pub f1: Option<f64>,
    /// How many examples have the class.
    pub support: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationReport {
    pub n: u64,
    /// The share of examples predicted right; a missing prediction is wrong.
    pub accuracy: Option<f64>,
    /// The mean F1 of the classes that are expected or predicted at least once.
    pub macro_f1: Option<f64>,
    /// The mean F1 weighted by support.
    pub weighted_f1: Option<f64>,
    pub per_class: BTreeMap<String, ClassMetrics>,
    pub confusion: Confusion,
}

/// The figures over `examples`. Classes are reported in the order of
/// `labels`, followed by any other label that occurs, sorted; a class of
/// `labels` that never occurs is reported with zero support.
pub fn classify(examples: &[Labelled], labels: &[String]) -> ClassificationReport {
    let any_missing = examples.iter().any(|e| e.predicted.is_none());
    let confusion = confusion(examples, labels, any_missing);
    let per_class: BTreeMap<String, ClassMetrics> = class_labels(&confusion, any_missing)
        .map(|(i, label)| (label.clone(), class_metrics(&confusion.matrix, i)))
        .collect();
    let correct: u64 = (0..confusion.labels.len())
        .map(|i| cell(&confusion.matrix, i, i))
        .sum();
    let n = examples.len() as u64;
    ClassificationReport {
        n,
        accuracy: ratio(correct, n),
        macro_f1: macro_f1(per_class.values()),
        weighted_f1: weighted_f1(per_class.values()),
        per_class,
        confusion,
    }
}

fn confusion(examples: &[Labelled], labels: &[String], any_missing: bool) -> Confusion {
    let mut labels: Vec<String> = labels.iter().fold(Vec::new(), |mut kept, l| {
        if !kept.contains(l) {
            kept.push(l.clone());
        }
        kept
    });
    let others: BTreeSet<&str> = examples
        .iter()
        .flat_map(|e| [Some(e.expected), e.predicted])
        .flatten()
        .filter(|l| !labels.iter().any(|k| k == l))
        .collect();
    labels.extend(others.into_iter().map(String::from));
    // Missing predictions go to the last column by position, never by name.
    let missing_column = labels.len();
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let size = labels.len() + usize::from(any_missing);
    let mut matrix = vec![vec![0; size]; size];
    for e in examples {
        let column = e
            .predicted
            .map_or(Some(missing_column), |p| index.get(p).copied());
        if let Some(slot) = index
            .get(e.expected)
            .zip(column)
            .and_then(|(r, c)| matrix.get_mut(*r)?.get_mut(c))
        {
            *slot += 1;
        }
    }
    if any_missing {
        labels.push(MISSING.to_string());
    }
    Confusion { labels, matrix }
}

/// The labels that are classes: all but the trailing missing column.
fn class_labels(
    confusion: &Confusion,
    any_missing: bool,
) -> impl Iterator<Item = (usize, &String)> {
    let classes = confusion
        .labels
        .len()
        .saturating_sub(usize::from(any_missing));
    confusion.labels.iter().enumerate().take(classes)
}

fn cell(matrix: &[Vec<u64>], row: usize, column: usize) -> u64 {
    matrix
        .get(row)
        .and_then(|r| r.get(column))
        .copied()
        .unwrap_or(0)
}

fn class_metrics(matrix: &[Vec<u64>], i: usize) -> ClassMetrics {
    let tp = cell(matrix, i, i);
    let support: u64 = matrix.get(i).map_or(0, |row| row.iter().sum());
    let predicted: u64 = matrix
        .iter()
        .map(|row| row.get(i).copied().unwrap_or(0))
        .sum();
    ClassMetrics {
        precision: ratio(tp, predicted),
        recall: ratio(tp, support),
        f1: ratio(2 * tp, support + predicted),
        support,
    }
}

fn macro_f1<'a>(classes: impl Iterator<Item = &'a ClassMetrics>) -> Option<f64> {
    let f1s: Vec<f64> = classes.filter_map(|c| c.f1).collect();
    (!f1s.is_empty()).then(|| f1s.iter().sum::<f64>() / f1s.len() as f64)
}

fn weighted_f1<'a>(classes: impl Iterator<Item = &'a ClassMetrics> + Clone) -> Option<f64> {
    let support: u64 = classes.clone().map(|c| c.support).sum();
    let weighted: f64 = classes
        .map(|c| c.support as f64 * c.f1.unwrap_or(0.0))
        .sum();
    (support > 0).then(|| weighted / support as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(expected: &'static str, predicted: Option<&'static str>) -> Labelled<'static> {
        Labelled {
            expected,
            predicted,
        }
    }

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: Option<f64>, b: f64) {
        let a = a.unwrap_or(f64::NAN);
        assert!((a - b).abs() < 1e-12, "{a} is not {b}");
    }

    /// Seven examples over four classes: ransomware occurs nowhere, benign
    /// is never predicted, and one benign answer could not be read.
    fn worked_example() -> ClassificationReport {
        let examples = [
            ex("malware", Some("malware")),
            ex("malware", Some("malware")),
            ex("malware", Some("phishing")),
            ex("phishing", Some("phishing")),
            ex("phishing", Some("malware")),
            ex("benign", None),
            ex("benign", Some("phishing")),
        ];
        classify(
            &examples,
            &labels(&["malware", "phishing", "benign", "ransomware"]),
        )
    }

    #[test]
    fn the_confusion_matrix_worked_by_hand() {
        let r = worked_example();
        assert_eq!(
            r.confusion.labels,
            labels(&["malware", "phishing", "benign", "ransomware", "none"])
        );
        assert_eq!(
            r.confusion.matrix,
            vec![
                vec![2, 1, 0, 0, 0],
                vec![1, 1, 0, 0, 0],
                vec![0, 1, 0, 0, 1],
                vec![0, 0, 0, 0, 0],
                vec![0, 0, 0, 0, 0],
            ]
        );
        assert_eq!(r.n, 7);
        close(r.accuracy, 3.0 / 7.0);
    }

    #[test]
    fn per_class_figures_worked_by_hand() {
        let r = worked_example();
        let malware = r.per_class["malware"];
        close(malware.precision, 2.0 / 3.0);
        close(malware.recall, 2.0 / 3.0);
        close(malware.f1, 2.0 / 3.0);
        assert_eq!(malware.support, 3);
        let phishing = r.per_class["phishing"];
        close(phishing.precision, 1.0 / 3.0);
        close(phishing.recall, 0.5);
        close(phishing.f1, 0.4);
        // Never predicted: precision undefined, recall and F1 zero.
        let benign = r.per_class["benign"];
        assert_eq!(benign.precision, None);
        close(benign.recall, 0.0);
        close(benign.f1, 0.0);
        // Empty: nothing is defined and it takes no part in the means.
        let ransomware = r.per_class["ransomware"];
        assert_eq!(
            (ransomware.precision, ransomware.recall, ransomware.f1),
            (None, None, None)
        );
        assert_eq!(ransomware.support, 0);
        assert!(!r.per_class.contains_key(MISSING));
        // Macro: (2/3 + 0.4 + 0) / 3; weighted: (3·2/3 + 2·0.4 + 2·0) / 7.
        close(r.macro_f1, (2.0 / 3.0 + 0.4) / 3.0);
        close(r.weighted_f1, 0.4);
    }

    #[test]
    fn no_missing_prediction_means_no_none_column() {
        let r = classify(
            &[
                ex("malware", Some("malware")),
                ex("phishing", Some("malware")),
            ],
            &labels(&["malware", "phishing"]),
        );
        assert_eq!(r.confusion.labels, labels(&["malware", "phishing"]));
        assert_eq!(r.confusion.matrix, vec![vec![1, 0], vec![1, 0]]);
        close(r.per_class["malware"].precision, 0.5);
    }

    #[test]
    fn labels_outside_the_list_are_appended_sorted() {
        let r = classify(
            &[
                ex("malware", Some("exfiltration")),
                ex("discovery", Some("malware")),
            ],
            &labels(&["malware", "malware"]),
        );
        assert_eq!(
            r.confusion.labels,
            labels(&["malware", "discovery", "exfiltration"])
        );
        assert_eq!(
            r.confusion.matrix,
            vec![vec![0, 0, 1], vec![1, 0, 0], vec![0, 0, 0]]
        );
        close(r.accuracy, 0.0);
        assert_eq!(r.per_class["exfiltration"].recall, None);
    }

    #[test]
    fn no_examples_gives_none_never_nan() {
        let r = classify(&[], &labels(&["malware"]));
        assert_eq!(
            (r.n, r.accuracy, r.macro_f1, r.weighted_f1),
            (0, None, None, None)
        );
        assert_eq!(r.confusion.matrix, vec![vec![0]]);
    }

    #[test]
    fn serialises_in_the_admin_api_shape() {
        let json = serde_json::to_value(worked_example()).unwrap();
        assert_eq!(
            json["per_class"]["ransomware"]["f1"],
            serde_json::Value::Null
        );
        assert_eq!(json["per_class"]["malware"]["support"], 3);
        assert_eq!(
            json["confusion"]["matrix"][2],
            serde_json::json!([0, 1, 0, 0, 1])
        );
    }
}
