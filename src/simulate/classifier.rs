//! The learner behind a simulated fine-tune: multinomial naive Bayes over
//! lower-cased word unigrams and bigrams, with add-one smoothing. Small,
//! exact and deterministic, yet it really learns: a model trained on an
//! analyst's labels predicts what those labels say about words the
//! keyword rules never heard of.

use std::collections::{BTreeSet, HashMap};

/// Additive smoothing of the word counts.
const ALPHA: f64 = 1.0;

/// How many features a rationale names.
const STRONGEST: usize = 3;

/// The features of a text: its words (letters, digits, `_`), lower-cased,
/// and each pair of neighbouring words on the same line — messages are
/// joined by line breaks, and a pair across two messages means nothing.
pub fn features(text: &str) -> Vec<String> {
    let mut unigrams = Vec::new();
    let mut bigrams = Vec::new();
    for line in text.lines() {
        let words: Vec<String> = line
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        bigrams.extend(words.windows(2).filter_map(|pair| match pair {
            [a, b] => Some(format!("{a} {b}")),
            _ => None,
        }));
        unigrams.extend(words);
    }
    unigrams.extend(bigrams);
    unigrams
}

#[derive(Debug, Clone)]
pub struct NaiveBayes {
    /// Sorted, so ties always go the same way.
    labels: Vec<String>,
    /// Weighted examples per label.
    docs: Vec<f64>,
    /// Feature → weighted occurrences per label.
    counts: HashMap<String, Vec<f64>>,
    /// Weighted occurrences of all features per label.
    totals: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub label: String,
    pub probability: f64,
    /// The input's features that training had seen, strongest evidence for
    /// `label` first (at most a few).
    pub strongest: Vec<String>,
}

impl NaiveBayes {
    /// A model that can predict any of `labels`, knowing nothing yet.
    pub fn new(labels: BTreeSet<String>) -> Self {
        let labels: Vec<String> = labels.into_iter().collect();
        let n = labels.len();
        Self {
            labels,
            docs: vec![0.0; n],
            counts: HashMap::new(),
            totals: vec![0.0; n],
        }
    }

    /// Counts one example of `label`, `weight` times over. A label not given
    /// to `new` is ignored: the model cannot predict it.
    pub fn learn(&mut self, features: &[String], label: &str, weight: f64) {
        let Some(index) = self.labels.iter().position(|l| l == label) else {
            return;
        };
        let n = self.labels.len();
        for feature in features {
            let counts = self
                .counts
                .entry(feature.clone())
                .or_insert_with(|| vec![0.0; n]);
            if let Some(count) = counts.get_mut(index) {
                *count += weight;
            }
        }
        if let (Some(docs), Some(total)) = (self.docs.get_mut(index), self.totals.get_mut(index)) {
            *docs += weight;
            *total += weight * features.len() as f64;
        }
    }

    /// Whether training saw any of these features.
    pub fn knows_any(&self, features: &[String]) -> bool {
        features.iter().any(|f| self.counts.contains_key(f))
    }

    /// ln P(feature | label index), smoothed.
    fn log_likelihood(&self, counts: &[f64], index: usize) -> f64 {
        let vocabulary = self.counts.len() as f64;
        let count = counts.get(index).copied().unwrap_or(0.0);
        let total = self.totals.get(index).copied().unwrap_or(0.0);
        ((count + ALPHA) / (total + ALPHA * vocabulary)).ln()
    }

    /// The posterior probability of each label (in `labels` order). Features
    /// training never saw carry no evidence and are skipped; with none
    /// known, this is the prior.
    pub fn probabilities(&self, features: &[String]) -> Vec<f64> {
        let all_docs: f64 = self.docs.iter().sum();
        let n = self.labels.len() as f64;
        let mut scores: Vec<f64> = self
            .docs
            .iter()
            .map(|d| ((d + 1.0) / (all_docs + n)).ln())
            .collect();
        for counts in features.iter().filter_map(|f| self.counts.get(f)) {
            for (index, score) in scores.iter_mut().enumerate() {
                *score += self.log_likelihood(counts, index);
            }
        }
        // Log-sum-exp, so hundreds of features do not underflow to zero.
        let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
        let sum: f64 = exp.iter().sum();
        exp.into_iter().map(|e| e / sum).collect()
    }

    /// The most probable label's index and probability (the first of equals).
    fn best(&self, features: &[String]) -> Option<(usize, f64)> {
        self.probabilities(features)
            .into_iter()
            .enumerate()
            .fold(None, |best, (i, p)| match best {
                Some((_, q)) if q >= p => best,
                _ => Some((i, p)),
            })
    }

    /// The label most probable for `features`, whether or not any of them
    /// was seen (for measuring training progress).
    pub fn guess(&self, features: &[String]) -> Option<&str> {
        let (index, _) = self.best(features)?;
        self.labels.get(index).map(String::as_str)
    }

    /// -ln P(label | features): the loss of one example.
    pub fn loss(&self, features: &[String], label: &str) -> f64 {
        let p = self
            .labels
            .iter()
            .position(|l| l == label)
            .and_then(|i| self.probabilities(features).get(i).copied())
            .unwrap_or(0.0);
        -p.max(f64::MIN_POSITIVE).ln()
    }

    /// The prediction, or `None` when training saw none of the features (the
    /// model has nothing to go on but its prior).
    pub fn predict(&self, features: &[String]) -> Option<Prediction> {
        if !self.knows_any(features) {
            return None;
        }
        let (index, probability) = self.best(features)?;
        Some(Prediction {
            label: self.labels.get(index)?.clone(),
            probability,
            strongest: self.strongest(features, index),
        })
    }

    /// The known features that favour the label at `index` most over its
    /// closest rival: the words a rationale should name.
    fn strongest(&self, features: &[String], index: usize) -> Vec<String> {
        let unique: BTreeSet<&String> = features.iter().collect();
        let mut lifts: Vec<(f64, &String)> = unique
            .into_iter()
            .filter_map(|f| {
                let counts = self.counts.get(f)?;
                let own = self.log_likelihood(counts, index);
                let rival = (0..self.labels.len())
                    .filter(|i| *i != index)
                    .map(|i| self.log_likelihood(counts, i))
                    .fold(f64::NEG_INFINITY, f64::max);
                let lift = own - rival;
                (lift > 0.0).then_some((lift, f))
            })
            .collect();
        // Equal evidence: a word before a pair (which repeats its words),
        // a longer, more specific word before a shorter one.
        lifts.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| a.1.contains(' ').cmp(&b.1.contains(' ')))
                .then_with(|| b.1.len().cmp(&a.1.len()))
                .then_with(|| a.1.cmp(b.1))
        });
        lifts
            .into_iter()
            .take(STRONGEST)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn trained() -> NaiveBayes {
        let mut model = NaiveBayes::new(labels(&["credential_access", "discovery"]));
        for (text, label) in [
            ("lsass memory dump by procdump", "credential_access"),
            ("mimikatz sekurlsa logonpasswords", "credential_access"),
            ("whoami all groups", "discovery"),
            ("net group domain admins listing", "discovery"),
        ] {
            model.learn(&features(text), label, 1.0);
        }
        model
    }

    #[test]
    fn features_are_lowercased_words_and_bigrams() {
        assert_eq!(
            features("LSASS dump, by-rundll32"),
            [
                "lsass",
                "dump",
                "by",
                "rundll32",
                "lsass dump",
                "dump by",
                "by rundll32"
            ]
        );
        assert!(features(" .. ").is_empty());
        assert_eq!(features("a b\nc"), ["a", "b", "c", "a b"]);
    }

    #[test]
    fn it_predicts_from_learned_words_and_names_them() {
        let model = trained();
        let p = model
            .predict(&features("procdump of LSASS on WS-1"))
            .unwrap();
        assert_eq!(p.label, "credential_access");
        assert!(p.probability > 0.5 && p.probability <= 1.0);
        assert!(p.strongest.contains(&"lsass".to_string()), "{p:?}");
        assert!(
            !p.strongest.iter().any(|f| f == "ws"),
            "unseen words carry no evidence"
        );
        let p = model.predict(&features("whoami /groups")).unwrap();
        assert_eq!(p.label, "discovery");
        assert_eq!(model.predict(&features("completely novel text")), None);
    }

    #[test]
    fn probabilities_sum_to_one_and_loss_falls_with_training() {
        let mut model = NaiveBayes::new(labels(&["a", "b", "c"]));
        let x = features("alpha beta");
        let before = model.loss(&x, "a");
        assert!((before - 3f64.ln()).abs() < 1e-9, "uniform prior");
        model.learn(&x, "a", 1.0);
        model.learn(&features("gamma"), "b", 1.0);
        let sum: f64 = model.probabilities(&x).iter().sum();
        assert!((sum - 1.0).abs() < 1e-9);
        assert!(model.loss(&x, "a") < before);
        assert_eq!(model.guess(&x), Some("a"));
        model.learn(&x, "unknown-label", 5.0);
        assert_eq!(model.guess(&x), Some("a"));
    }

    #[test]
    fn ties_go_to_the_first_label() {
        let model = NaiveBayes::new(labels(&["b", "a"]));
        assert_eq!(model.guess(&features("x")), Some("a"));
    }
}
