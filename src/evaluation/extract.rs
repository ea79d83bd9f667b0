//! Reading the predicted threat type and severity from a model's answer,
//! as configured in `evaluation.extractor`: JSON fields and regexes, tried
//! in the configured order until one yields a value of the taxonomy.
//! Built once at start-up; the regexes are compiled there, so a bad one is
//! a configuration error naming its key.

mod json;

use crate::config::{ExtractorConfig, ExtractorSource, TaxonomyConfig};
use regex::Regex;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A setting the extractor cannot be built from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {problem}")]
pub struct ExtractorError {
    pub key: &'static str,
    pub problem: String,
}

/// What was read from one answer; `None` when no reader found a taxonomy
/// value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    pub threat_type: Option<String>,
    pub severity: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Extractor {
    order: Vec<ExtractorSource>,
    threat_type: Field,
    severity: Field,
}

/// How one field is read, and the values it may take.
#[derive(Debug, Clone)]
struct Field {
    json_path: Vec<String>,
    regex: Regex,
    /// Normalised spelling → the taxonomy's own spelling.
    allowed: HashMap<String, String>,
}

impl Extractor {
    pub fn new(
        config: &ExtractorConfig,
        taxonomy: &TaxonomyConfig,
    ) -> Result<Self, ExtractorError> {
        if config.order.is_empty() {
            return Err(ExtractorError {
                key: "evaluation.extractor.order",
                problem: "must name at least one of \"json\", \"regex\"".into(),
            });
        }
        Ok(Self {
            order: config.order.clone(),
            threat_type: Field {
                json_path: json_path(
                    "evaluation.extractor.json_threat_type_field",
                    &config.json_threat_type_field,
                )?,
                regex: compile(
                    "evaluation.extractor.threat_type_regex",
                    &config.threat_type_regex,
                )?,
                allowed: allowed(&taxonomy.threat_types),
            },
            severity: Field {
                json_path: json_path(
                    "evaluation.extractor.json_severity_field",
                    &config.json_severity_field,
                )?,
                regex: compile(
                    "evaluation.extractor.severity_regex",
                    &config.severity_regex,
                )?,
                allowed: allowed(&taxonomy.severities),
            },
        })
    }

    pub fn extract(&self, answer: &str) -> Extracted {
        // Parsed at most once, and only when a JSON reader is configured.
        let object = self
            .order
            .contains(&ExtractorSource::Json)
            .then(|| json::find_object(answer))
            .flatten();
        Extracted {
            threat_type: self.read(&self.threat_type, answer, object.as_ref()),
            severity: self.read(&self.severity, answer, object.as_ref()),
        }
    }

    fn read(
        &self,
        field: &Field,
        answer: &str,
        object: Option<&Map<String, Value>>,
    ) -> Option<String> {
        self.order.iter().find_map(|source| {
            let raw = match source {
                ExtractorSource::Json => object.and_then(|o| json::string_at(o, &field.json_path)),
                ExtractorSource::Regex => field
                    .regex
                    .captures(answer)
                    .and_then(|c| c.get(1))
                    .map(|m| m.as_str()),
            }?;
            field.allowed.get(&normalise(raw)).cloned()
        })
    }
}

/// Trimmed, lower-case, spaces and hyphens as underscores: "Command and
/// Control" and "command-and-control" both become `command_and_control`.
pub fn normalise(value: &str) -> String {
    value
        .trim()
        .to_lowercase()
        .split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

fn allowed(values: &[String]) -> HashMap<String, String> {
    values.iter().map(|v| (normalise(v), v.clone())).collect()
}

fn json_path(key: &'static str, field: &str) -> Result<Vec<String>, ExtractorError> {
    let path: Vec<String> = field.split('.').map(String::from).collect();
    if path.iter().any(|part| part.trim().is_empty()) {
        return Err(ExtractorError {
            key,
            problem: format!("`{field}` is not a field name or dotted path"),
        });
    }
    Ok(path)
}

fn compile(key: &'static str, pattern: &str) -> Result<Regex, ExtractorError> {
    let regex = Regex::new(pattern).map_err(|e| ExtractorError {
        key,
        problem: format!("is not a valid regex: {e}"),
    })?;
    if regex.captures_len() < 2 {
        return Err(ExtractorError {
            key,
            problem: "has no capture group (the first group is the value)".into(),
        });
    }
    Ok(regex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extractor(config: ExtractorConfig) -> Extractor {
        Extractor::new(&config, &TaxonomyConfig::default()).unwrap()
    }

    fn read(answer: &str) -> (Option<String>, Option<String>) {
        let e = extractor(ExtractorConfig::default()).extract(answer);
        (e.threat_type, e.severity)
    }

    fn both(threat_type: &str, severity: &str) -> (Option<String>, Option<String>) {
        (Some(threat_type.into()), Some(severity.into()))
    }

    #[test]
    fn the_simulators_answers_are_read() {
        let answer = "Threat type: credential_access\nSeverity: high\nRationale: The alert \
            mentions 'mimikatz', an indicator of credential access. Severity is high because \
            credentials were dumped.";
        assert_eq!(read(answer), both("credential_access", "high"));
    }

    #[test]
    fn free_text_lines_are_normalised() {
        let answer = "**Threat Type:** Command and Control\n- **Severity**: Critical.\n";
        assert_eq!(read(answer), both("command_and_control", "critical"));
        assert_eq!(
            read("threat-type: False-Positive\nseverity:  LOW"),
            both("false_positive", "low")
        );
    }

    #[test]
    fn json_answers_whole_embedded_and_fenced() {
        let whole = r#"{"threat_type": "Ransomware", "severity": "critical"}"#;
        assert_eq!(read(whole), both("ransomware", "critical"));
        let embedded =
            r#"My verdict is {"threat_type": "lateral movement", "severity": "medium"}."#;
        assert_eq!(read(embedded), both("lateral_movement", "medium"));
        let fenced =
            "Verdict:\n```json\n{\"threat_type\": \"phishing\",\n \"severity\": \"low\"}\n```";
        assert_eq!(read(fenced), both("phishing", "low"));
    }

    #[test]
    fn the_configured_order_decides_and_falls_through_per_field() {
        let answer = "{\"threat_type\": \"malware\"}\nThreat type: phishing\nSeverity: low";
        // JSON first: its threat type wins; it has no severity, so the regex gives it.
        assert_eq!(read(answer), both("malware", "low"));
        let regex_first = extractor(ExtractorConfig {
            order: vec![ExtractorSource::Regex, ExtractorSource::Json],
            ..ExtractorConfig::default()
        });
        assert_eq!(
            regex_first.extract(answer).threat_type.as_deref(),
            Some("phishing")
        );
        let json_only = extractor(ExtractorConfig {
            order: vec![ExtractorSource::Json],
            ..ExtractorConfig::default()
        });
        assert_eq!(json_only.extract(answer).severity, None);
    }

    #[test]
    fn values_outside_the_taxonomy_are_rejected() {
        assert_eq!(
            read("Threat type: space_aliens\nSeverity: apocalyptic"),
            (None, None)
        );
        // A JSON value outside the taxonomy gives way to the next reader.
        let answer = "{\"threat_type\": \"unknown\", \"severity\": 4}\nThreat type: impact";
        assert_eq!(read(answer), (Some("impact".into()), None));
        assert_eq!(read(""), (None, None));
    }

    #[test]
    fn nested_json_fields_and_a_custom_taxonomy() {
        let config = ExtractorConfig {
            json_threat_type_field: "verdict.category".into(),
            ..ExtractorConfig::default()
        };
        let taxonomy = TaxonomyConfig {
            threat_types: vec!["Data Theft".into()],
            severities: vec!["sev1".into()],
        };
        let e = Extractor::new(&config, &taxonomy).unwrap();
        let got = e.extract(r#"{"verdict": {"category": "data-theft"}, "severity": "SEV1"}"#);
        // The taxonomy's own spelling comes back.
        assert_eq!(got.threat_type.as_deref(), Some("Data Theft"));
        assert_eq!(got.severity.as_deref(), Some("sev1"));
    }

    #[test]
    fn bad_settings_name_their_key() {
        let build = |config: ExtractorConfig| {
            Extractor::new(&config, &TaxonomyConfig::default()).unwrap_err()
        };
        let e = build(ExtractorConfig {
            threat_type_regex: "(unclosed".into(),
            ..ExtractorConfig::default()
        });
        assert_eq!(e.key, "evaluation.extractor.threat_type_regex");
        assert!(e.problem.contains("not a valid regex"), "{}", e.problem);
        let e = build(ExtractorConfig {
            severity_regex: "severity: [a-z]+".into(),
            ..ExtractorConfig::default()
        });
        assert_eq!(e.key, "evaluation.extractor.severity_regex");
        assert!(e.problem.contains("capture group"), "{}", e.problem);
        let e = build(ExtractorConfig {
            json_severity_field: "a..b".into(),
            ..ExtractorConfig::default()
        });
        assert_eq!(e.key, "evaluation.extractor.json_severity_field");
        let e = build(ExtractorConfig {
            order: vec![],
            ..ExtractorConfig::default()
        });
        assert_eq!(e.key, "evaluation.extractor.order");
    }

    #[test]
    fn start_up_validation_reports_the_key() {
        let toml = |extra: &str| {
            format!(
                "[[providers]]\nname = \"sim\"\nbase_url = \"http://127.0.0.1:9\"\n\
                 [[models]]\nname = \"triage\"\nmodel_type = \"threat_detection\"\n\
                 [[models.versions]]\nname = \"base\"\nprovider = \"sim\"\nmodel = \"m\"\n\
                 [evaluation.extractor]\n{extra}\n"
            )
        };
        let load = |extra: &str| crate::config::Config::from_toml_str(&toml(extra), "t", []);
        let config = load("order = [\"regex\"]").unwrap();
        assert_eq!(
            config.evaluation.extractor.order,
            vec![ExtractorSource::Regex]
        );
        // The defaults survive `check-config`'s rendering and a reload.
        let shown = load("").unwrap().to_toml();
        let again = crate::config::Config::from_toml_str(&shown, "shown", []).unwrap();
        let defaults = ExtractorConfig::default();
        assert_eq!(
            again.evaluation.extractor.threat_type_regex,
            defaults.threat_type_regex
        );
        assert_eq!(
            again.evaluation.extractor.severity_regex,
            defaults.severity_regex
        );
        let e = load("threat_type_regex = \"no group\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("evaluation.extractor.threat_type_regex"), "{e}");
        assert!(e.contains("capture group"), "{e}");
        let e = load("severity_regex = \"(\"").unwrap_err().to_string();
        assert!(e.contains("evaluation.extractor.severity_regex"), "{e}");
        let e = load("threat_type_field = \"x\"").unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
    }
}
