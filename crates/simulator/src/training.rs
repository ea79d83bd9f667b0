//! One simulated fine-tuning run: two adapters (threat type, severity, see
//! `classifier`) trained over the base model's answers to a job's
//! examples, in batches and epochs, with the metrics a real run reports.
//! Each step's loss and accuracy are measured on the batch *before* the
//! model learns it: the first batch meets the base model itself, the rest
//! of the first epoch is progressive validation (an honest estimate of how
//! well the model generalises), and later epochs meet batches they have
//! learned before, whose falling loss shows the fit tightening, as a real
//! run's does.

use super::classifier::{Adapter, Input, features};
use super::dataset::Example;
use super::rules::PRIORITY;
use super::triage::{SEVERITIES, classify, is_large};
use std::collections::BTreeSet;

/// The settings a run uses, with "auto" already resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub n_epochs: u32,
    pub batch_size: usize,
    /// How much each pass over an example adds to the weight of its
    /// votes: a third of it, so that the automatic settings (three epochs
    /// at 1) weigh each example 1.
    pub learning_rate_multiplier: f64,
    /// Orders the examples in each epoch.
    pub seed: u64,
}

impl Settings {
    pub const AUTO_EPOCHS: u32 = 3;
    pub const AUTO_LEARNING_RATE_MULTIPLIER: f64 = 1.0;

    /// About ten steps an epoch, as OpenAI's automatic batch size gives for
    /// small files, and never more than 256.
    pub fn auto_batch_size(examples: usize) -> usize {
        examples.div_ceil(10).clamp(1, 256)
    }
}

/// What one step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    pub step: usize,
    pub total_steps: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    /// On the validation file, after the last step of each epoch.
    pub valid: Option<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct Trained {
    pub threat: Adapter,
    pub severity: Adapter,
    /// Whether most examples answered in JSON.
    pub json: bool,
    pub metrics: Vec<Metric>,
    pub trained_tokens: u64,
    /// Examples with a threat type to learn from, and examples without.
    pub learned: usize,
    pub skipped: usize,
}

/// An example as the adapters read it, with its labels.
struct Labelled {
    threat_input: Input,
    severity_input: Input,
    threat: String,
    severity: Option<String>,
}

/// The examples that state a threat type, read against `base`'s answers.
fn labelled(examples: &[Example], base: &str) -> Vec<Labelled> {
    let large = is_large(base);
    examples
        .iter()
        .filter_map(|e| {
            let target = e.target.as_ref()?;
            let x = features(&e.prompt);
            let verdict = classify(&e.alert, large);
            Some(Labelled {
                threat_input: Input::new(&x, verdict.threat_type),
                severity_input: Input::new(&x, verdict.severity),
                threat: target.threat_type.clone(),
                severity: target.severity.clone(),
            })
        })
        .collect()
}

/// The labels a model may answer: every answer of the base, and every
/// label the examples teach.
fn labels<'a>(base: &[&'a str], taught: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    base.iter()
        .copied()
        .chain(taught)
        .map(String::from)
        .collect()
}

/// Fine-tunes `base` (a base model's name) on `examples`; fails when none
/// of them states a threat type.
pub fn train(
    examples: &[Example],
    validation: &[Example],
    settings: Settings,
    base: &str,
) -> Result<Trained, String> {
    let data = labelled(examples, base);
    if data.is_empty() {
        return Err("no example's assistant message states a threat type \
                    (`Threat type: …` or a JSON object with `threat_type`)"
            .into());
    }
    let valid = labelled(validation, base);
    let mut threat = Adapter::new(labels(PRIORITY, data.iter().map(|l| l.threat.as_str())));
    let mut severity = Adapter::new(labels(
        SEVERITIES,
        data.iter().filter_map(|l| l.severity.as_deref()),
    ));
    let batch = settings.batch_size.max(1);
    let per_epoch = data.len().div_ceil(batch);
    let total_steps = per_epoch * settings.n_epochs as usize;
    let mut metrics = Vec::with_capacity(total_steps);
    let mut rng = SplitMix(settings.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let rate = settings.learning_rate_multiplier / f64::from(Settings::AUTO_EPOCHS);
    for _ in 0..settings.n_epochs {
        rng.shuffle(&mut order);
        for chunk in order.chunks(batch) {
            let rows: Vec<(usize, &Labelled)> = chunk
                .iter()
                .filter_map(|i| Some((*i, data.get(*i)?)))
                .collect();
            let (train_loss, train_accuracy) = measure(&threat, rows.iter().map(|(_, r)| *r));
            let threats: Vec<(usize, &Input, &str)> = rows
                .iter()
                .map(|(i, r)| (*i, &r.threat_input, r.threat.as_str()))
                .collect();
            threat.learn(&threats, rate);
            let severities: Vec<(usize, &Input, &str)> = rows
                .iter()
                .filter_map(|(i, r)| Some((*i, &r.severity_input, r.severity.as_deref()?)))
                .collect();
            severity.learn(&severities, rate);
            let step = metrics.len() + 1;
            let epoch_end = step % per_epoch == 0;
            metrics.push(Metric {
                step,
                total_steps,
                train_loss,
                train_accuracy,
                valid: (epoch_end && !valid.is_empty()).then(|| measure(&threat, valid.iter())),
            });
        }
    }
    let json = examples
        .iter()
        .filter_map(|e| e.target.as_ref())
        .filter(|t| t.json)
        .count()
        * 2
        > data.len();
    let tokens: usize = examples.iter().map(|e| e.tokens).sum();
    Ok(Trained {
        threat,
        severity,
        json,
        metrics,
        trained_tokens: (tokens as u64).saturating_mul(u64::from(settings.n_epochs)),
        learned: data.len(),
        skipped: examples.len() - data.len(),
    })
}

/// Mean loss and accuracy of the threat-type model on `rows`.
fn measure<'r>(model: &Adapter, rows: impl Iterator<Item = &'r Labelled>) -> (f64, f64) {
    let (mut loss, mut right, mut n) = (0.0, 0usize, 0usize);
    for row in rows {
        let (l, answered) = model.score(&row.threat_input, &row.threat);
        loss += l;
        right += usize::from(answered);
        n += 1;
    }
    if n == 0 {
        return (0.0, 0.0);
    }
    (loss / n as f64, right as f64 / n as f64)
}

/// SplitMix64: a tiny generator whose sequence for a seed never changes
/// with a dependency's version, so a seed reproduces a run exactly.
pub struct SplitMix(pub u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.next() % (i as u64 + 1)).unwrap_or(0);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::Target;

    fn example(prompt: &str, threat: &str, severity: &str, json: bool) -> Example {
        Example {
            prompt: prompt.into(),
            alert: prompt.into(),
            target: Some(Target {
                threat_type: threat.into(),
                severity: Some(severity.into()),
                json,
            }),
            tokens: 10,
        }
    }

    /// Alerts whose words the small model's rules do not know (so it calls
    /// them suspicious activity), labelled otherwise.
    fn examples() -> Vec<Example> {
        let mut out = Vec::new();
        for i in 0..20 {
            out.push(example(
                &format!("zorblax pinged from host{i}"),
                "command_and_control",
                "high",
                false,
            ));
            out.push(example(
                &format!("quux frobnicated on host{i}"),
                "discovery",
                "low",
                false,
            ));
        }
        out
    }

    fn settings(seed: u64) -> Settings {
        Settings {
            n_epochs: 2,
            batch_size: 8,
            learning_rate_multiplier: 1.0,
            seed,
        }
    }

    #[test]
    fn a_run_starts_from_the_base_and_reports_falling_loss() {
        let mut data = examples();
        data.push(Example {
            prompt: "no label".into(),
            alert: "no label".into(),
            target: None,
            tokens: 3,
        });
        let run = train(&data, &examples()[..4], settings(7), "gpt-4o-mini").unwrap();
        assert_eq!((run.learned, run.skipped), (40, 1));
        assert_eq!(run.trained_tokens, (40 * 10 + 3) * 2);
        assert!(!run.json);
        assert_eq!(run.metrics.len(), 2 * 5);
        assert!(run.metrics.iter().all(|m| m.total_steps == 10));
        let first = run.metrics[0];
        let last = run.metrics[9];
        // The first batch meets the base, which answers none of them right:
        // its head start of 2 votes against a floor of 0.1 for each of the
        // sixteen threat types.
        assert_eq!(first.train_accuracy, 0.0);
        assert!(
            (first.train_loss - (3.6f64 / 0.1).ln()).abs() < 1e-9,
            "{first:?}"
        );
        assert!(
            last.train_loss < first.train_loss / 4.0,
            "{first:?} {last:?}"
        );
        assert_eq!(last.train_accuracy, 1.0);
        assert!(run.metrics[4].valid.is_some() && run.metrics[3].valid.is_none());
        let severity = run
            .severity
            .predict(&Input::new(
                &features("zorblax pinged from host99"),
                "medium",
            ))
            .unwrap();
        assert_eq!(severity.label, "high");
    }

    #[test]
    fn the_seed_orders_the_batches_not_the_model() {
        let a = train(&examples(), &[], settings(1), "gpt-4o-mini").unwrap();
        let b = train(&examples(), &[], settings(1), "gpt-4o-mini").unwrap();
        let c = train(&examples(), &[], settings(2), "gpt-4o-mini").unwrap();
        assert_eq!(a.metrics, b.metrics);
        assert_ne!(a.metrics, c.metrics, "another seed, another batch order");
        let x = Input::new(&features("zorblax on WS-9"), "suspicious_activity");
        assert_eq!(a.threat.probabilities(&x), c.threat.probabilities(&x));
    }

    #[test]
    fn more_epochs_or_a_larger_multiplier_depart_further_from_the_base() {
        let x = Input::new(&features("zorblax was seen"), "suspicious_activity");
        let p = |epochs, rate| {
            let settings = Settings {
                n_epochs: epochs,
                batch_size: 8,
                learning_rate_multiplier: rate,
                seed: 1,
            };
            let run = train(&examples(), &[], settings, "gpt-4o-mini").unwrap();
            run.threat.probabilities(&x)["command_and_control"]
        };
        assert!(p(1, 1.0) < p(3, 1.0) && p(3, 1.0) < p(3, 2.0));
    }

    #[test]
    fn nothing_to_learn_is_an_error_and_json_targets_are_noticed() {
        let unlabelled = [Example {
            prompt: "x".into(),
            alert: "x".into(),
            target: None,
            tokens: 1,
        }];
        assert!(
            train(&unlabelled, &[], settings(0), "gpt-4o-mini")
                .unwrap_err()
                .contains("threat type")
        );
        let json = [
            example("a", "x", "low", true),
            example("b", "y", "low", true),
        ];
        assert!(train(&json, &[], settings(0), "gpt-4o-mini").unwrap().json);
    }
}
