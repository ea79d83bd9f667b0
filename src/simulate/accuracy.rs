//! Whether fine-tuning really helps: a model tuned on four fifths of the
//! labelled Sigma alerts, measured on the fifth it never saw, against the
//! base model it was tuned from. The data set sits beside the project when
//! it is there (it is not shipped with it, and never read at run time).

use super::dataset::{self, Shape, prompt_of};
use super::training::{Settings, train};
use super::triage::classify;
use super::tuned::Tuned;
use serde_json::{Value, json};

const DATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/sigma-windows-alerts.jsonl"
);

const SYSTEM: &str = "You are a SOC analyst. Triage the alert.";

/// A supervised example whose answer is the label, in the simulator's
/// own answer format.
fn example(alert: &Value) -> Value {
    let answer = format!(
        "Threat type: {}\nSeverity: {}\nRationale: as labelled by an analyst.",
        alert["threat_type"].as_str().unwrap(),
        alert["severity"].as_str().unwrap()
    );
    json!({"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": alert["alert"]},
        {"role": "assistant", "content": answer},
    ]})
}

#[test]
fn a_tuned_model_beats_its_base_on_alerts_it_never_saw() {
    let Ok(text) = std::fs::read_to_string(DATA) else {
        eprintln!("skipped: {DATA} not found");
        return;
    };
    let alerts: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // Every fifth alert is held out; the rest are the training file.
    let held_out: Vec<&Value> = alerts.iter().skip(4).step_by(5).collect();
    let training: Vec<&Value> = alerts
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 4)
        .map(|(_, a)| a)
        .collect();
    let jsonl: Vec<String> = training.iter().map(|a| example(a).to_string()).collect();
    let examples = dataset::examples(jsonl.join("\n").as_bytes(), Shape::Supervised).unwrap();
    let settings = Settings {
        n_epochs: Settings::AUTO_EPOCHS,
        batch_size: Settings::auto_batch_size(examples.len()),
        learning_rate_multiplier: Settings::AUTO_LEARNING_RATE_MULTIPLIER,
        seed: 42,
    };
    let run = train(&examples, &[], settings).unwrap();
    assert_eq!(run.learned, training.len());
    let tuned = Tuned::new("ft:gpt-4o-mini:flywheel-sim::test", "gpt-4o-mini", 0, run);

    let (mut tuned_right, mut base_right, mut tuned_severity, mut base_severity) = (0, 0, 0, 0);
    for alert in &held_out {
        let text = alert["alert"].as_str().unwrap();
        let messages = [
            json!({"role": "system", "content": SYSTEM}),
            json!({"role": "user", "content": text}),
        ];
        let said = tuned.answer(&prompt_of(messages.iter()), text);
        let base = classify(text, false);
        tuned_right += usize::from(alert["threat_type"] == said.threat_type.as_str());
        base_right += usize::from(alert["threat_type"] == base.threat_type);
        tuned_severity += usize::from(alert["severity"] == said.severity.as_str());
        base_severity += usize::from(alert["severity"] == base.severity);
    }
    let n = held_out.len() as f64;
    let share = |right: usize| right as f64 / n;
    eprintln!(
        "trained on {}, tested on {} held-out alerts: threat type ft {:.3} vs base gpt-4o-mini {:.3}; \
         severity ft {:.3} vs base {:.3}",
        training.len(),
        held_out.len(),
        share(tuned_right),
        share(base_right),
        share(tuned_severity),
        share(base_severity)
    );
    assert!(
        share(tuned_right) > share(base_right),
        "the tuned model should know more than its base"
    );
}
