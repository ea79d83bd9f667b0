//! Whether fine-tuning helps, and from how many examples: the learning
//! curve of a simulated fine-tune on the labelled Sigma alerts. A fixed
//! fifth of every threat type is held out; fine-tunes of the small base
//! model on stratified samples of 25 to 800 of the rest, each drawn with
//! several seeds, are scored on it against the base, on accuracy and
//! macro-F1 as the admin API's evaluations define them (computed here, so
//! that the simulator depends on nothing of the proxy's). The data set sits
//! beside the project when it is there (it is not shipped with it, and
//! never read at run time).
//!
//! `cargo test -p flywheel-simulator learning_curve -- --nocapture` prints the table that
//! docs/BENCHMARKS.md quotes.

use super::dataset::{self, Shape, prompt_of};
use super::training::{Settings, SplitMix, train};
use super::triage::classify;
use super::tuned::Tuned;
use serde_json::{Value, json};
use std::collections::BTreeMap;

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/data/sigma-windows-alerts.jsonl"
);

const SYSTEM: &str = "You are a SOC analyst. Triage the alert.";

/// The base the fine-tunes adapt: the small model, which knows fewer
/// indicators and so has the most to learn.
const BASE: &str = "gpt-4o-mini";

const SIZES: [usize; 6] = [25, 50, 100, 200, 400, 800];
const SEEDS: [u64; 5] = [1, 2, 3, 4, 5];

struct Alert {
    text: String,
    threat_type: String,
    severity: String,
}

fn load() -> Option<Vec<Alert>> {
    let text = std::fs::read_to_string(DATA).ok()?;
    Some(
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|a| Alert {
                text: a["alert"].as_str().unwrap_or("").to_string(),
                threat_type: a["threat_type"].as_str().unwrap_or("").to_string(),
                severity: a["severity"].as_str().unwrap_or("").to_string(),
            })
            .collect(),
    )
}

/// The alerts by threat type, each list in file order.
fn by_class(alerts: &[Alert]) -> BTreeMap<&str, Vec<usize>> {
    let mut classes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, a) in alerts.iter().enumerate() {
        classes.entry(a.threat_type.as_str()).or_default().push(i);
    }
    classes
}

/// Every fifth alert of each threat type is held out; the rest is the pool
/// training samples are drawn from.
fn held_out_and_pool(alerts: &[Alert]) -> (Vec<usize>, Vec<usize>) {
    let (mut held_out, mut pool) = (Vec::new(), Vec::new());
    for members in by_class(alerts).values() {
        for (k, i) in members.iter().enumerate() {
            if k % 5 == 4 {
                held_out.push(*i);
            } else {
                pool.push(*i);
            }
        }
    }
    (held_out, pool)
}

/// `n` alerts of `pool`, each threat type in proportion to its share of
/// the pool (largest remainders get the rounding), drawn with `seed`.
fn stratified_sample(alerts: &[Alert], pool: &[usize], n: usize, seed: u64) -> Vec<usize> {
    let mut classes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for i in pool {
        classes
            .entry(alerts[*i].threat_type.as_str())
            .or_default()
            .push(*i);
    }
    let mut rng = SplitMix(seed);
    let mut quotas: Vec<(usize, f64, &str)> = classes
        .iter()
        .map(|(class, m)| {
            let exact = n as f64 * m.len() as f64 / pool.len() as f64;
            (exact.floor() as usize, exact.fract(), *class)
        })
        .collect();
    let short = n - quotas.iter().map(|q| q.0).sum::<usize>();
    let mut order: Vec<usize> = (0..quotas.len()).collect();
    order.sort_by(|a, b| quotas[*b].1.total_cmp(&quotas[*a].1).then(a.cmp(b)));
    for i in order.into_iter().take(short) {
        quotas[i].0 += 1;
    }
    let mut sample = Vec::with_capacity(n);
    for (quota, _, class) in quotas {
        let mut members = classes[class].clone();
        rng.shuffle(&mut members);
        sample.extend(members.into_iter().take(quota));
    }
    sample
}

/// A supervised example whose answer is the label, in the simulator's
/// own answer format.
fn example(alert: &Alert) -> Value {
    let answer = format!(
        "Threat type: {}\nSeverity: {}\nRationale: as labelled by an analyst.",
        alert.threat_type, alert.severity
    );
    json!({"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": alert.text},
        {"role": "assistant", "content": answer},
    ]})
}

fn fine_tune(alerts: &[Alert], sample: &[usize], seed: u64) -> Tuned {
    let jsonl: Vec<String> = sample
        .iter()
        .map(|i| example(&alerts[*i]).to_string())
        .collect();
    let examples = dataset::examples(jsonl.join("\n").as_bytes(), Shape::Supervised).unwrap();
    let settings = Settings {
        n_epochs: Settings::AUTO_EPOCHS,
        batch_size: Settings::auto_batch_size(examples.len()),
        learning_rate_multiplier: Settings::AUTO_LEARNING_RATE_MULTIPLIER,
        seed,
    };
    let run = train(&examples, &[], settings, BASE).unwrap();
    assert_eq!(run.learned, sample.len());
    Tuned::new("ft:gpt-4o-mini:flywheel-sim::curve", BASE, 0, run)
}

/// What a model is scored on: threat-type accuracy and macro-F1, and
/// severity accuracy.
#[derive(Debug, Clone, Copy)]
struct Scores {
    accuracy: f64,
    macro_f1: f64,
    severity: f64,
}

/// The scores of `predict` (threat type, severity) on the held-out alerts.
fn measure(
    alerts: &[Alert],
    held_out: &[usize],
    predict: impl Fn(&Alert) -> (String, String),
) -> Scores {
    let predicted: Vec<(String, String)> = held_out.iter().map(|i| predict(&alerts[*i])).collect();
    let pairs: Vec<(&str, &str)> = held_out
        .iter()
        .zip(&predicted)
        .map(|(i, (threat, _))| (alerts[*i].threat_type.as_str(), threat.as_str()))
        .collect();
    let (accuracy, macro_f1) = accuracy_and_macro_f1(&pairs);
    let severity = held_out
        .iter()
        .zip(&predicted)
        .filter(|(i, (_, severity))| alerts[**i].severity == *severity)
        .count();
    Scores {
        accuracy,
        macro_f1,
        severity: severity as f64 / held_out.len() as f64,
    }
}

/// Accuracy and macro-F1 of (expected, predicted) pairs, defined as the
/// proxy's offline evaluations define them for answers that all name a
/// threat type: a class's F1 is 2·TP / (expected + predicted), macro-F1
/// the mean over every class that is expected or predicted, summed in
/// the classes' sorted order as there, so the figures agree to the bit.
fn accuracy_and_macro_f1(pairs: &[(&str, &str)]) -> (f64, f64) {
    #[derive(Default)]
    struct Count {
        right: u64,
        expected: u64,
        predicted: u64,
    }
    let mut classes: BTreeMap<&str, Count> = BTreeMap::new();
    for (expected, predicted) in pairs {
        let class = classes.entry(expected).or_default();
        class.expected += 1;
        class.right += u64::from(expected == predicted);
        classes.entry(predicted).or_default().predicted += 1;
    }
    let right: u64 = classes.values().map(|c| c.right).sum();
    let f1: Vec<f64> = classes
        .values()
        .map(|c| (2 * c.right) as f64 / (c.expected + c.predicted) as f64)
        .collect();
    (
        right as f64 / pairs.len() as f64,
        f1.iter().sum::<f64>() / f1.len() as f64,
    )
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn sd(xs: &[f64]) -> f64 {
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Differences smaller than this are noise: one held-out alert in 337 is
/// 0.003 of accuracy, and a handful of alerts of a small class move its F1
/// by more.
const NOISE: f64 = 0.01;

#[test]
fn learning_curve_of_a_fine_tune_against_its_base() {
    let Some(alerts) = load() else {
        eprintln!("skipped: {DATA} not found");
        return;
    };
    assert_eq!(alerts.len(), 1704);
    let (held_out, pool) = held_out_and_pool(&alerts);
    let base = measure(&alerts, &held_out, |a| {
        let verdict = classify(&a.text, false);
        (
            verdict.threat_type.to_string(),
            verdict.severity.to_string(),
        )
    });
    eprintln!(
        "Fine-tunes of {BASE} on stratified samples of the labelled Sigma alerts, scored on {} \
         held-out alerts, {} seeds per size. Base: accuracy {:.3}, macro-F1 {:.3}, severity accuracy {:.3}.\n",
        held_out.len(),
        SEEDS.len(),
        base.accuracy,
        base.macro_f1,
        base.severity
    );
    eprintln!(
        "| examples | accuracy: mean ± sd | lowest | macro-F1: mean ± sd | lowest | severity accuracy |"
    );
    eprintln!("|---:|---:|---:|---:|---:|---:|");
    eprintln!(
        "| 0 (base) | {:.3} | | {:.3} | | {:.3} |",
        base.accuracy, base.macro_f1, base.severity
    );
    let mut curve = BTreeMap::new();
    for n in SIZES {
        let runs: Vec<Scores> = SEEDS
            .iter()
            .map(|seed| {
                let sample = stratified_sample(&alerts, &pool, n, *seed);
                assert_eq!(sample.len(), n);
                let tuned = fine_tune(&alerts, &sample, *seed);
                measure(&alerts, &held_out, |alert| {
                    let messages = [
                        json!({"role": "system", "content": SYSTEM}),
                        json!({"role": "user", "content": alert.text}),
                    ];
                    let said = tuned.answer(&prompt_of(messages.iter()), &alert.text);
                    (said.threat_type, said.severity)
                })
            })
            .collect();
        let accuracy: Vec<f64> = runs.iter().map(|r| r.accuracy).collect();
        let f1: Vec<f64> = runs.iter().map(|r| r.macro_f1).collect();
        let severity: Vec<f64> = runs.iter().map(|r| r.severity).collect();
        eprintln!(
            "| {n} | {:.3} ± {:.3} | {:.3} | {:.3} ± {:.3} | {:.3} | {:.3} |",
            mean(&accuracy),
            sd(&accuracy),
            min(&accuracy),
            mean(&f1),
            sd(&f1),
            min(&f1),
            mean(&severity),
        );
        curve.insert(n, (accuracy, f1));
    }
    // Never worse than the base beyond noise, from 50 examples on.
    for (n, (accuracy, f1)) in curve.range(50..) {
        assert!(
            min(accuracy) >= base.accuracy - NOISE && min(f1) >= base.macro_f1 - NOISE,
            "{n} examples: a fine-tune fell below its base ({accuracy:?}, {f1:?})"
        );
    }
    // Clearly better from 100: every seed above the base, and on average
    // by more than noise.
    let (accuracy, f1) = &curve[&100];
    assert!(
        min(accuracy) > base.accuracy && min(f1) > base.macro_f1,
        "100 examples: {accuracy:?}, {f1:?} against {base:?}"
    );
    assert!(
        mean(accuracy) >= base.accuracy + 5.0 * NOISE && mean(f1) >= base.macro_f1 + 3.0 * NOISE,
        "100 examples: {accuracy:?}, {f1:?} against {base:?}"
    );
}
