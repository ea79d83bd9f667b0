//! One simulated fine-tuning run: two classifiers (threat type, severity)
//! trained on a job's examples, in batches and epochs, with the metrics a
//! real run reports. Each step's loss and accuracy are measured on the
//! batch *before* the model learns it: in the first epoch that is
//! progressive validation, an honest estimate of how well the model
//! generalises; later epochs meet batches they have learned before, and
//! their falling loss shows the fit tightening, as a real run's does.

use super::classifier::{NaiveBayes, features};
use super::dataset::Example;
use std::collections::BTreeSet;

/// The settings a run uses, with "auto" already resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub n_epochs: u32,
    pub batch_size: usize,
    /// How much each example counts: a larger multiplier lets the examples
    /// outweigh the smoothing sooner, as a larger step size would.
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
    pub threat: NaiveBayes,
    /// `None` when no example stated a severity.
    pub severity: Option<NaiveBayes>,
    /// Whether most examples answered in JSON.
    pub json: bool,
    pub metrics: Vec<Metric>,
    pub trained_tokens: u64,
    /// Examples with a threat type to learn from, and examples without.
    pub learned: usize,
    pub skipped: usize,
}

/// An example's features and labels, ready to learn.
struct Labelled {
    features: Vec<String>,
    threat: String,
    severity: Option<String>,
}

fn labelled(examples: &[Example]) -> Vec<Labelled> {
    examples
        .iter()
        .filter_map(|e| {
            let target = e.target.as_ref()?;
            Some(Labelled {
                features: features(&e.prompt),
                threat: target.threat_type.clone(),
                severity: target.severity.clone(),
            })
        })
        .collect()
}

/// Trains on `examples`; fails when none of them states a threat type.
pub fn train(
    examples: &[Example],
    validation: &[Example],
    settings: Settings,
) -> Result<Trained, String> {
    let data = labelled(examples);
    if data.is_empty() {
        return Err("no example's assistant message states a threat type \
                    (`Threat type: …` or a JSON object with `threat_type`)"
            .into());
    }
    let valid = labelled(validation);
    let threats: BTreeSet<String> = data.iter().map(|l| l.threat.clone()).collect();
    let severities: BTreeSet<String> = data.iter().filter_map(|l| l.severity.clone()).collect();
    let mut threat = NaiveBayes::new(threats);
    let mut severity = (!severities.is_empty()).then(|| NaiveBayes::new(severities));
    let batch = settings.batch_size.max(1);
    let per_epoch = data.len().div_ceil(batch);
    let total_steps = per_epoch * settings.n_epochs as usize;
    let mut metrics = Vec::with_capacity(total_steps);
    let mut rng = SplitMix(settings.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    for _ in 0..settings.n_epochs {
        rng.shuffle(&mut order);
        for chunk in order.chunks(batch) {
            let rows: Vec<&Labelled> = chunk.iter().filter_map(|i| data.get(*i)).collect();
            let (train_loss, train_accuracy) = measure(&threat, rows.iter().copied());
            for row in &rows {
                threat.learn(
                    &row.features,
                    &row.threat,
                    settings.learning_rate_multiplier,
                );
                if let (Some(model), Some(label)) = (severity.as_mut(), &row.severity) {
                    model.learn(&row.features, label, settings.learning_rate_multiplier);
                }
            }
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
fn measure<'r>(model: &NaiveBayes, rows: impl Iterator<Item = &'r Labelled>) -> (f64, f64) {
    let (mut loss, mut right, mut n) = (0.0, 0usize, 0usize);
    for row in rows {
        loss += model.loss(&row.features, &row.threat);
        right += usize::from(model.guess(&row.features) == Some(row.threat.as_str()));
        n += 1;
    }
    if n == 0 {
        return (0.0, 0.0);
    }
    (loss / n as f64, right as f64 / n as f64)
}

/// SplitMix64: a tiny generator whose sequence for a seed never changes
/// with a dependency's version, so a seed reproduces a run exactly.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fisher–Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = usize::try_from(self.next() % (i as u64 + 1)).unwrap_or(0);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::targets::Target;

    fn example(prompt: &str, threat: &str, severity: &str, json: bool) -> Example {
        Example {
            prompt: prompt.into(),
            target: Some(Target {
                threat_type: threat.into(),
                severity: Some(severity.into()),
                json,
            }),
            tokens: 10,
        }
    }

    fn examples() -> Vec<Example> {
        let mut out = Vec::new();
        for i in 0..20 {
            out.push(example(
                &format!("lsass dump host{i}"),
                "credential_access",
                "high",
                false,
            ));
            out.push(example(
                &format!("whoami groups host{i}"),
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
    fn a_run_learns_and_reports_falling_loss() {
        let mut data = examples();
        data.push(Example {
            prompt: "no label".into(),
            target: None,
            tokens: 3,
        });
        let run = train(&data, &examples()[..4], settings(7)).unwrap();
        assert_eq!((run.learned, run.skipped), (40, 1));
        assert_eq!(run.trained_tokens, (40 * 10 + 3) * 2);
        assert!(!run.json);
        assert_eq!(run.metrics.len(), 2 * 5);
        assert!(run.metrics.iter().all(|m| m.total_steps == 10));
        let first = run.metrics[0];
        let last = run.metrics[9];
        assert!(
            (first.train_loss - 2f64.ln()).abs() < 1e-9,
            "the first batch meets a blank model"
        );
        assert!(
            last.train_loss < first.train_loss / 4.0,
            "{first:?} {last:?}"
        );
        assert_eq!(last.train_accuracy, 1.0);
        assert!(run.metrics[4].valid.is_some() && run.metrics[3].valid.is_none());
        let sev = run.severity.unwrap();
        assert_eq!(sev.guess(&features("lsass dump")), Some("high"));
    }

    #[test]
    fn the_seed_makes_a_run_reproducible() {
        let a = train(&examples(), &[], settings(1)).unwrap().metrics;
        let b = train(&examples(), &[], settings(1)).unwrap().metrics;
        let c = train(&examples(), &[], settings(2)).unwrap().metrics;
        assert_eq!(a, b);
        assert_ne!(a, c, "another seed, another batch order");
    }

    #[test]
    fn nothing_to_learn_is_an_error_and_json_targets_are_noticed() {
        let unlabelled = [Example {
            prompt: "x".into(),
            target: None,
            tokens: 1,
        }];
        assert!(
            train(&unlabelled, &[], settings(0))
                .unwrap_err()
                .contains("threat type")
        );
        let json = [
            example("a", "x", "low", true),
            example("b", "y", "low", true),
        ];
        assert!(train(&json, &[], settings(0)).unwrap().json);
    }
}
