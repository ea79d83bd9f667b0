//! A fine-tuned model: the classifiers a job trained, answering chat
//! completions in the format its training answers used (the simulator's
//! `Threat type: …` text, or JSON) with a rationale naming the words that
//! weighed most. When none of the prompt's words were seen in training it
//! has learned nothing about the prompt, so the base model's rules decide,
//! and the rationale says so.

use super::classifier::{NaiveBayes, features};
use super::training::Trained;
use super::triage::{classify, is_large};
use serde_json::Value;

#[derive(Debug)]
pub struct Tuned {
    pub name: String,
    pub base: String,
    pub created: u64,
    threat: NaiveBayes,
    severity: Option<NaiveBayes>,
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
        let Some(threat) = self.threat.predict(&x) else {
            let rules = base.answer();
            let why = rules.split_once("Rationale: ").map_or("", |(_, why)| why);
            let rationale = format!(
                "None of the alert's words were seen in fine-tuning, so {}'s rules decided. {why}",
                self.base
            );
            return self.say(base.threat_type, base.severity, &rationale);
        };
        let named: Vec<String> = threat.strongest.iter().map(|f| format!("'{f}'")).collect();
        let evidence = if named.is_empty() {
            format!("the words it knows weigh most for {}", threat.label)
        } else {
            format!(
                "{} point most strongly to {}",
                named.join(", "),
                threat.label
            )
        };
        let (severity, severity_reason) = match self.severity.as_ref().and_then(|m| m.predict(&x)) {
            Some(s) => {
                let reason = format!(
                    "as in the examples most like it ({} sure)",
                    percent(s.probability)
                );
                (s.label, reason)
            }
            None => (
                base.severity.to_string(),
                format!("by {}'s rules", self.base),
            ),
        };
        let rationale = format!(
            "Learned from {} fine-tuning examples: {evidence} ({} sure). Severity is {severity} {severity_reason}.",
            self.examples,
            percent(threat.probability)
        );
        self.say(&threat.label, &severity, &rationale)
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
    use crate::simulate::dataset::Example;
    use crate::simulate::targets::{self, Target};
    use crate::simulate::training::{Settings, train};

    fn tuned(json: bool) -> Tuned {
        let examples: Vec<Example> = (0..10)
            .flat_map(|i| {
                [
                    ("zorblax beacon seen", "command_and_control", "critical"),
                    ("quux listing of shares", "discovery", "low"),
                ]
                .map(|(text, threat, severity)| Example {
                    prompt: format!("{text} on host{i}"),
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
            n_epochs: 1,
            batch_size: 4,
            learning_rate_multiplier: 1.0,
            seed: 3,
        };
        Tuned::new(
            "ft:gpt-4o-mini:o::x",
            "gpt-4o-mini",
            0,
            train(&examples, &[], settings).unwrap(),
        )
    }

    #[test]
    fn it_answers_with_what_it_learned_in_the_examples_format() {
        let said = tuned(false).answer("zorblax on WS-9", "zorblax on WS-9");
        assert_eq!(
            (said.threat_type.as_str(), said.severity.as_str()),
            ("command_and_control", "critical")
        );
        assert!(
            said.text.starts_with(
                "Threat type: command_and_control\nSeverity: critical\nRationale: Learned from 20"
            ),
            "{}",
            said.text
        );
        assert!(said.text.contains("'zorblax'"), "{}", said.text);
        let target = targets::parse(&said.text).unwrap();
        assert_eq!(
            (target.threat_type.as_str(), target.json),
            ("command_and_control", false)
        );

        let said = tuned(true).answer("quux", "quux");
        let value: Value = serde_json::from_str(&said.text).unwrap();
        assert_eq!(value["threat_type"], "discovery");
        assert_eq!(value["severity"], "low");
        assert!(targets::parse(&said.text).unwrap().json);
    }

    #[test]
    fn unseen_words_fall_back_to_the_base_rules() {
        let alert = "mimikatz sekurlsa::logonpasswords";
        let said = tuned(false).answer(alert, alert);
        let base = classify(alert, false);
        assert_eq!(said.threat_type, base.threat_type);
        assert!(said.text.contains("None of the alert's words were seen in fine-tuning, so gpt-4o-mini's rules decided."), "{}", said.text);
    }
}
