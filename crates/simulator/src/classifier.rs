//! The learner behind a simulated fine-tune: an adapter over the base
//! model's answer, as a real fine-tune adjusts a pretrained model rather
//! than starting from nothing.
//!
//! Before training, the model is its base: the base's answer gets a head
//! start of [`TRUST`] votes and nothing else counts. Training remembers
//! each example — the features of its text (lower-cased words and word
//! pairs), what the base answered, what the example says instead — and an
//! answer then weighs two kinds of evidence against the head start:
//!
//! - the base's track record: the examples the base answered the same way
//!   vote for their own labels, together [`TRACK_RECORD`] × √n for n of
//!   them, so a systematic confusion ("the rules say persistence, analysts
//!   say privilege escalation") wins once it has been seen often enough;
//! - the neighbours: the [`NEIGHBOURS`] examples most like the input (TF-IDF
//!   cosine over the features) vote for their labels, each with
//!   [`NEIGHBOUR`] × its similarity.
//!
//! Votes weigh more the more often an example was learned (epochs) and the
//! larger the learning-rate multiplier. So the model departs from its base
//! only where the examples outweigh its head start: a lone, loosely similar
//! example changes nothing, consistent or close evidence does, and the
//! confidence grows with the evidence. The model is the same whatever order
//! the examples came in; the seed only orders the batches a run reports.
//!
//! The constants were chosen on the learning curve that `accuracy.rs`
//! measures (see docs/BENCHMARKS.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The base's head start, in votes.
pub const TRUST: f64 = 2.0;

/// What the base's track record weighs: √n examples' worth for n.
pub const TRACK_RECORD: f64 = 1.0;

/// How many of the most similar examples vote.
pub const NEIGHBOURS: usize = 10;

/// A neighbour's vote per unit of cosine similarity.
pub const NEIGHBOUR: f64 = 8.0;

/// What every label gets, so no probability is 0 and every loss finite.
const FLOOR: f64 = 0.1;

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

/// One input as the adapter reads it: the distinct features of its text
/// and what the base answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    words: Vec<String>,
    base: String,
}

impl Input {
    pub fn new(features: &[String], base: &str) -> Self {
        let words: BTreeSet<&String> = features.iter().collect();
        Self {
            words: words.into_iter().cloned().collect(),
            base: base.to_string(),
        }
    }
}

/// An example the adapter learned.
#[derive(Debug, Clone)]
struct Remembered {
    /// The caller's id for it, which orders equally similar examples, so
    /// the order they were learned in never matters.
    id: usize,
    input: Input,
    label: String,
    /// How much its votes weigh: the learning rate of each time it was
    /// learned, summed.
    weight: f64,
    /// Length of its TF-IDF vector, as of the last change to the memory.
    norm: f64,
}

#[derive(Debug, Clone)]
pub struct Adapter {
    /// Every label the model may answer, sorted.
    labels: BTreeSet<String>,
    examples: Vec<Remembered>,
    /// Caller's example id → its place in `examples`.
    ids: HashMap<usize, usize>,
    /// Feature → the examples that have it.
    postings: HashMap<String, Vec<usize>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub label: String,
    /// The label's share of all the votes.
    pub probability: f64,
    /// Whether the label is the base's own answer.
    pub agrees_with_base: bool,
    /// Where the label is not the base's: the input's features that its
    /// voting neighbours share most (at most a few).
    pub strongest: Vec<String>,
}

impl Adapter {
    /// The untrained model: its base, able to answer any of `labels`.
    pub fn new(labels: BTreeSet<String>) -> Self {
        Self {
            labels,
            examples: Vec::new(),
            ids: HashMap::new(),
            postings: HashMap::new(),
        }
    }

    /// How many distinct examples the model learned.
    #[cfg(test)]
    pub fn examples(&self) -> usize {
        self.examples.len()
    }

    /// Learns each `(id, input, label)` of `batch` with `rate`: a new id
    /// is remembered, a known one (a later epoch) weighs `rate` more.
    pub fn learn(&mut self, batch: &[(usize, &Input, &str)], rate: f64) {
        for (id, input, label) in batch {
            if let Some(at) = self.ids.get(id) {
                if let Some(e) = self.examples.get_mut(*at) {
                    e.weight += rate;
                }
                continue;
            }
            let at = self.examples.len();
            for word in &input.words {
                self.postings.entry(word.clone()).or_default().push(at);
            }
            self.labels.insert((*label).to_string());
            self.examples.push(Remembered {
                id: *id,
                input: (*input).clone(),
                label: (*label).to_string(),
                weight: rate,
                norm: 0.0,
            });
            self.ids.insert(*id, at);
        }
        // Every new example changes how rare each feature is.
        let norms: Vec<f64> = self
            .examples
            .iter()
            .map(|e| self.norm(&e.input.words))
            .collect();
        for (e, norm) in self.examples.iter_mut().zip(norms) {
            e.norm = norm;
        }
    }

    /// ln((n + 1) / (df + 1)): a feature every example has weighs nothing;
    /// one no example has weighs most.
    fn idf(&self, word: &str) -> f64 {
        let n = self.examples.len() as f64;
        let df = self.postings.get(word).map_or(0, Vec::len) as f64;
        ((n + 1.0) / (df + 1.0)).ln()
    }

    fn norm(&self, words: &[String]) -> f64 {
        words
            .iter()
            .map(|w| self.idf(w).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    /// The examples most like `input`, most similar first, with their
    /// cosine similarity (only those that share a weighing feature).
    fn neighbours(&self, input: &Input) -> Vec<(usize, f64)> {
        let norm = self.norm(&input.words);
        if norm == 0.0 {
            return Vec::new();
        }
        let mut dot = vec![0.0; self.examples.len()];
        for word in &input.words {
            let Some(examples) = self.postings.get(word) else {
                continue;
            };
            let w = self.idf(word).powi(2);
            // A feature every example has tells them apart not at all.
            if w == 0.0 {
                continue;
            }
            for e in examples {
                if let Some(d) = dot.get_mut(*e) {
                    *d += w;
                }
            }
        }
        let mut similar: Vec<(usize, f64)> = dot
            .into_iter()
            .zip(&self.examples)
            .enumerate()
            .filter(|(_, (dot, e))| *dot > 0.0 && e.norm > 0.0)
            .map(|(i, (dot, e))| (i, dot / (norm * e.norm)))
            .collect();
        let id = |i: usize| self.examples.get(i).map_or(usize::MAX, |e| e.id);
        let order = |a: &(usize, f64), b: &(usize, f64)| {
            b.1.total_cmp(&a.1).then_with(|| id(a.0).cmp(&id(b.0)))
        };
        if similar.len() > NEIGHBOURS {
            similar.select_nth_unstable_by(NEIGHBOURS, order);
            similar.truncate(NEIGHBOURS);
        }
        similar.sort_by(order);
        similar
    }

    /// The votes for each label, and the neighbours that cast theirs.
    fn votes<'a>(&'a self, input: &'a Input) -> (BTreeMap<&'a str, f64>, Vec<(usize, f64)>) {
        let mut votes: BTreeMap<&str, f64> =
            self.labels.iter().map(|l| (l.as_str(), 0.0)).collect();
        *votes.entry(input.base.as_str()).or_default() += TRUST;
        let record: Vec<&Remembered> = self
            .examples
            .iter()
            .filter(|e| e.input.base == input.base)
            .collect();
        let share = TRACK_RECORD / (record.len().max(1) as f64).sqrt();
        for e in &record {
            *votes.entry(e.label.as_str()).or_default() += share * e.weight;
        }
        let neighbours = self.neighbours(input);
        for (e, similarity) in &neighbours {
            if let Some(e) = self.examples.get(*e) {
                *votes.entry(e.label.as_str()).or_default() += NEIGHBOUR * e.weight * similarity;
            }
        }
        (votes, neighbours)
    }

    /// The probability of each label: its share of the votes.
    #[cfg(test)]
    pub fn probabilities(&self, input: &Input) -> BTreeMap<String, f64> {
        let (votes, _) = self.votes(input);
        let total: f64 = votes.values().map(|v| v + FLOOR).sum();
        votes
            .into_iter()
            .map(|(l, v)| (l.to_string(), (v + FLOOR) / total))
            .collect()
    }

    /// -ln P(label | input): the loss of one example, and whether the
    /// model's answer is `label`.
    pub fn score(&self, input: &Input, label: &str) -> (f64, bool) {
        let (votes, _) = self.votes(input);
        let total: f64 = votes.values().map(|v| v + FLOOR).sum();
        let p = votes.get(label).map_or(0.0, |v| (v + FLOOR) / total);
        let (answer, _) = choose(&votes, &input.base);
        (-p.max(f64::MIN_POSITIVE).ln(), answer == label)
    }

    /// The label with the most votes, its share, and what moved it off the
    /// base.
    pub fn predict(&self, input: &Input) -> Option<Prediction> {
        let (votes, neighbours) = self.votes(input);
        let total: f64 = votes.values().map(|v| v + FLOOR).sum();
        let (label, top) = choose(&votes, &input.base);
        let agrees_with_base = label == input.base;
        Some(Prediction {
            label: label.to_string(),
            probability: (top + FLOOR) / total,
            agrees_with_base,
            strongest: if agrees_with_base {
                Vec::new()
            } else {
                self.strongest(input, label, &neighbours)
            },
        })
    }

    /// The input's features that weigh most in its similarity to the
    /// neighbours labelled `label`.
    fn strongest(&self, input: &Input, label: &str, neighbours: &[(usize, f64)]) -> Vec<String> {
        let voters: Vec<&Remembered> = neighbours
            .iter()
            .filter_map(|(e, _)| self.examples.get(*e))
            .filter(|e| e.label == label)
            .collect();
        let mut shared: Vec<(f64, &String)> = input
            .words
            .iter()
            .filter_map(|word| {
                let idf = self.idf(word);
                let weight: f64 = voters
                    .iter()
                    .filter(|e| e.input.words.binary_search(word).is_ok())
                    .map(|e| e.weight * idf * idf / e.norm.max(f64::MIN_POSITIVE))
                    .sum();
                (weight > 0.0).then_some((weight, word))
            })
            .collect();
        // Equal weight: a word before a pair (which repeats its words), a
        // longer, more specific word before a shorter one.
        shared.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| a.1.contains(' ').cmp(&b.1.contains(' ')))
                .then_with(|| b.1.len().cmp(&a.1.len()))
                .then_with(|| a.1.cmp(b.1))
        });
        shared
            .into_iter()
            .take(STRONGEST)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// The label with the most votes and its votes: the base's answer wins a
/// tie, then the first label in order.
fn choose<'v>(votes: &BTreeMap<&'v str, f64>, base: &'v str) -> (&'v str, f64) {
    let start = (base, votes.get(base).copied().unwrap_or(0.0));
    votes.iter().fold(
        start,
        |best, (l, v)| if *v > best.1 { (*l, *v) } else { best },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const LABELS: &[&str] = &["command_and_control", "discovery", "suspicious_activity"];

    /// `n` examples the base called suspicious activity that analysts
    /// labelled command and control, and `n` it got right as discovery.
    fn trained(n: usize) -> Adapter {
        let mut model = Adapter::new(labels(LABELS));
        let rows: Vec<(Input, &str)> = (0..n)
            .flat_map(|i| {
                [
                    (
                        Input::new(
                            &features(&format!("zorblax beacon from host{i}")),
                            "suspicious_activity",
                        ),
                        "command_and_control",
                    ),
                    (
                        Input::new(
                            &features(&format!("quux listing of shares on host{i}")),
                            "discovery",
                        ),
                        "discovery",
                    ),
                ]
            })
            .collect();
        let batch: Vec<(usize, &Input, &str)> = rows
            .iter()
            .enumerate()
            .map(|(i, (x, l))| (i, x, *l))
            .collect();
        model.learn(&batch, 1.0);
        model
    }

    fn ask(model: &Adapter, text: &str, base: &str) -> Prediction {
        model.predict(&Input::new(&features(text), base)).unwrap()
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
    fn untrained_it_is_its_base() {
        let model = Adapter::new(labels(LABELS));
        let p = ask(&model, "zorblax beacon", "discovery");
        assert_eq!(p.label, "discovery");
        assert!(p.agrees_with_base && p.strongest.is_empty());
        // The head start's share: 2 votes, and a floor of 0.1 for each of
        // the three labels.
        assert!((p.probability - 2.1 / 2.3).abs() < 1e-9, "{p:?}");
        let (loss, right) = model.score(&Input::new(&features("x"), "discovery"), "discovery");
        assert!(right && (loss - (2.3f64 / 2.1).ln()).abs() < 1e-9);
    }

    #[test]
    fn a_lone_loosely_similar_example_does_not_overturn_the_base_but_close_or_consistent_ones_do() {
        let one = trained(1);
        let loose = "a beacon to an unknown domain was seen by the proxy";
        let p = ask(&one, loose, "suspicious_activity");
        assert!(
            p.agrees_with_base && p.label == "suspicious_activity",
            "{p:?}"
        );
        let p = ask(&one, "zorblax beacon from host7", "suspicious_activity");
        assert_eq!(p.label, "command_and_control", "a near copy: {p:?}");

        let four = trained(4);
        let p4 = ask(&four, "zorblax beacon from host7", "suspicious_activity");
        assert_eq!(p4.label, "command_and_control", "{p4:?}");
        assert!(!p4.agrees_with_base);
        assert_eq!(
            p4.strongest.first().map(String::as_str),
            Some("zorblax"),
            "{p4:?}"
        );

        let twelve = trained(12);
        let p12 = ask(&twelve, "zorblax beacon from host7", "suspicious_activity");
        assert_eq!(p12.label, "command_and_control");
        // Twelve times the base said "suspicious activity" where analysts
        // said "command and control": its track record alone now outweighs
        // its head start, even for an alert like none of the examples.
        let p = ask(&twelve, loose, "suspicious_activity");
        assert_eq!(p.label, "command_and_control", "{p:?}");
        assert!(
            p12.probability > p4.probability,
            "confidence grows with the evidence: {p4:?} {p12:?}"
        );
        // Where the examples agree with the base, so does the model.
        let p = ask(&twelve, "quux listing of shares on dc1", "discovery");
        assert!(p.agrees_with_base && p.label == "discovery", "{p:?}");
    }

    #[test]
    fn a_later_epoch_strengthens_an_example_and_order_does_not_matter() {
        let x = Input::new(&features("zorblax beacon"), "suspicious_activity");
        let y = Input::new(&features("quux shares"), "discovery");
        let mut forwards = Adapter::new(labels(LABELS));
        forwards.learn(&[(1, &x, "command_and_control"), (2, &y, "discovery")], 0.5);
        let mut backwards = Adapter::new(labels(LABELS));
        backwards.learn(&[(2, &y, "discovery"), (1, &x, "command_and_control")], 0.5);
        assert_eq!(forwards.probabilities(&x), backwards.probabilities(&x));
        let before = forwards.probabilities(&x)["command_and_control"];
        forwards.learn(&[(1, &x, "command_and_control")], 0.5);
        assert_eq!(forwards.examples(), 2, "the same example, learned again");
        assert!(forwards.probabilities(&x)["command_and_control"] > before);
    }

    #[test]
    fn a_taught_label_outside_the_given_ones_can_be_answered() {
        let mut model = Adapter::new(labels(&["discovery"]));
        let x = Input::new(&features("brand new thing"), "discovery");
        let rows: Vec<(usize, &Input, &str)> = (0..9).map(|i| (i, &x, "novel_label")).collect();
        model.learn(&rows, 1.0);
        assert_eq!(
            ask(&model, "brand new thing", "discovery").label,
            "novel_label"
        );
    }
}
