//! A fine-tuned model: its base model's keyword rules with the adapters a
//! job trained on top (see `classifier`), answering chat completions in
//! the format its training answers used (the simulator's `Threat type: …`
//! text, or JSON). Where the adapters keep the base's answer, it answers
//! as its base would, rationale and all; where the examples taught it
//! otherwise, the rationale names the words that weighed most and what
//! the base would have said.

use super::classifier::{Adapter, Input, features};
use super::training::Trained;
use super::triage::{classify, is_large};
use serde_json::Value;

#[derive(Debug)]
pub struct Tuned {
    pub name: String,
    pub base: String,
    pub created: u64,
    threat: Adapter,
    severity: Adapter,
    json: bool,
    examples: usize,
}

/// What the model says: the labels (for tool-call arguments) and the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Said {
    pub threat_type: String,
    pub severity: String,
    pub text: String,
}

fn percent(p: f64) -> String {
    format!("{:.0}%", p * 100.0)
}

impl Tuned {
    pub fn new(name: &str, base: &str, created: u64, run: Trained) -> Self {
        Self {
            name: name.to_string(),
            base: base.to_string(),
            created,
            threat: run.threat,
            severity: run.severity,
            json: run.json,
            examples: run.learned,
        }
    }

    /// The answer to a request whose non-assistant messages read `prompt`
    /// (what training saw) and whose last user message is `alert` (what the
    /// base rules read).
    pub fn answer(&self, prompt: &str, alert: &str) -> Said {
        let x = features(prompt);
        let base = classify(alert, is_large(&self.base));
        let threat = self.threat.predict(&Input::new(&x, base.threat_type));
        let severity = self.severity.predict(&Input::new(&x, base.severity));
        let (threat_type, severity_label) = (
            threat
                .as_ref()
                .map_or(base.threat_type, |p| p.label.as_str()),
            severity
                .as_ref()
                .map_or(base.severity, |p| p.label.as_str()),
        );
        let threat_sentence = match &threat {
            Some(p) if !p.agrees_with_base => {
                let named: Vec<String> = p.strongest.iter().map(|f| format!("'{f}'")).collect();
                let evidence = if named.is_empty() {
                    "the words it shares with them".to_string()
                } else {
                    named.join(", ")
                };
                format!(
                    "Learned from {} fine-tuning examples: {evidence} point to {} ({} sure), where {}'s rules said {}.",
                    self.examples,
                    p.label,
                    percent(p.probability),
                    self.base,
                    base.threat_type
                )
            }
            // The examples kept the base's verdict: so does its reason.
            _ => base.threat_sentence(),
        };
        let severity_sentence = match &severity {
            Some(p) if !p.agrees_with_base => format!(
                "Severity is {severity_label}, as in the fine-tuning examples most like it ({} sure).",
                percent(p.probability)
            ),
            _ => base.severity_sentence(),
        };
        let rationale = format!("{threat_sentence} {severity_sentence}");
        self.say(threat_type, severity_label, &rationale)
    }

    fn say(&self, threat_type: &str, severity: &str, rationale: &str) -> Said {
        let text = if self.json {
            let quote = |s: &str| Value::String(s.to_string()).to_string();
            format!(
                "{{\"threat_type\": {}, \"severity\": {}, \"rationale\": {}}}",
                quote(threat_type),
                quote(severity),
                quote(rationale)
            )
        } else {
            format!("Threat type: {threat_type}\nSeverity: {severity}\nRationale: {rationale}")
        };
        Said {
            threat_type: threat_type.to_string(),
            severity: severity.to_string(),
            text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Example;
    use crate::targets::{self, Target};
    use crate::training::{Settings, train};

    fn tuned(json: bool) -> Tuned {
        let examples: Vec<Example> = (0..10)
            .flat_map(|i| {
                [
                    ("zorblax pinged", "command_and_control", "critical"),
                    ("quux frobnicated the shares", "discovery", "low"),
                ]
                .map(|(text, threat, severity)| Example {
                    prompt: format!("{text} on host{i}"),
                    alert: format!("{text} on host{i}"),
                    target: Some(Target {
                        threat_type: threat.into(),
                        severity: Some(severity.into()),
                        json,
                    }),
                    tokens: 5,
                })
            })
            .collect();
        let settings = Settings {
            n_epochs: 3,
            batch_size: 4,
            learning_rate_multiplier: 1.0,
            seed: 3,
        };
        Tuned::new(
            "ft:gpt-4o-mini:o::x",
            "gpt-4o-mini",
            0,
            train(&examples, &[], settings, "gpt-4o-mini").unwrap(),
        )
    }

    #[test]
    fn it_answers_with_what_it_learned_in_the_examples_format() {
        let alert = "zorblax pinged on WS-9";
        let said = tuned(false).answer(alert, alert);
        assert_eq!(
            (said.threat_type.as_str(), said.severity.as_str()),
            ("command_and_control", "critical")
        );
        assert!(
            said.text.starts_with(
                "Threat type: command_and_control\nSeverity: critical\nRationale: Learned from 20 fine-tuning examples: 'zorblax'"
            ),
            "{}",
            said.text
        );
        assert!(
            said.text
                .contains("where gpt-4o-mini's rules said suspicious_activity"),
            "{}",
            said.text
        );
        let target = targets::parse(&said.text).unwrap();
        assert_eq!(
            (target.threat_type.as_str(), target.json),
            ("command_and_control", false)
        );

        let said = tuned(true).answer("quux frobnicated", "quux frobnicated");
        let value: Value = serde_json::from_str(&said.text).unwrap();
        assert_eq!(value["threat_type"], "discovery");
        assert_eq!(value["severity"], "low");
        assert!(targets::parse(&said.text).unwrap().json);
    }

    #[test]
    fn where_nothing_it_learned_applies_it_answers_as_its_base() {
        let alert = "mimikatz sekurlsa::logonpasswords on DC01";
        let said = tuned(false).answer(alert, alert);
        assert_eq!(said.text, classify(alert, false).answer());
    }
}
