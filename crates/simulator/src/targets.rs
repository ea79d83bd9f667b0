//! What a training example teaches: the threat type and severity its
//! assistant message states, either in the simulator's own answer format
//! (`Threat type: X\nSeverity: Y\n…`) or as a JSON object with
//! `threat_type` and `severity` fields, possibly inside other text. A
//! fine-tuned model answers in the format its examples used.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub threat_type: String,
    pub severity: Option<String>,
    /// Whether the example said it as JSON.
    pub json: bool,
}

/// The target an answer states, if it states a threat type.
pub fn parse(answer: &str) -> Option<Target> {
    from_json(answer).or_else(|| from_text(answer))
}

/// A label as the models say them: lower case, spaces as underscores, no
/// surrounding punctuation.
fn label(text: &str) -> Option<String> {
    let trimmed = text
        .trim()
        .trim_matches(|c: char| !(c.is_alphanumeric() || c == '_'));
    let label = trimmed.to_lowercase().replace([' ', '-'], "_");
    (!label.is_empty()).then_some(label)
}

/// The first JSON object in the text that has a string `threat_type`.
fn from_json(answer: &str) -> Option<Target> {
    answer.match_indices('{').find_map(|(at, _)| {
        let rest = answer.get(at..)?;
        let value: Value = serde_json::Deserializer::from_str(rest)
            .into_iter::<Value>()
            .next()?
            .ok()?;
        Some(Target {
            threat_type: label(value.get("threat_type")?.as_str()?)?,
            severity: value
                .get("severity")
                .and_then(Value::as_str)
                .and_then(label),
            json: true,
        })
    })
}

/// `Threat type: X` and `Severity: Y` lines, in any case.
fn from_text(answer: &str) -> Option<Target> {
    let field = |name: &str| {
        answer.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            let key = key
                .trim()
                .trim_start_matches(['*', '-', '#', ' '])
                .trim_end_matches('*');
            if key.eq_ignore_ascii_case(name) {
                label(value)
            } else {
                None
            }
        })
    };
    Some(Target {
        threat_type: field("threat type")?,
        severity: field("severity"),
        json: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulators_own_format_is_read() {
        let answer = "Threat type: credential_access\nSeverity: high\nRationale: The alert mentions 'lsass'.";
        assert_eq!(
            parse(answer),
            Some(Target {
                threat_type: "credential_access".into(),
                severity: Some("high".into()),
                json: false
            })
        );
        let loose = "**Threat type:** Lateral Movement.\nseverity: Critical";
        let target = parse(loose).unwrap();
        assert_eq!(target.threat_type, "lateral_movement");
        assert_eq!(target.severity.as_deref(), Some("critical"));
        assert_eq!(parse("Threat type: discovery").unwrap().severity, None);
    }

    #[test]
    fn json_is_found_inside_other_text() {
        let answer = "Here you go: {\"threat_type\": \"discovery\", \"severity\": \"low\", \"rationale\": \"whoami {x}\"} hope it helps";
        let target = parse(answer).unwrap();
        assert_eq!(
            (
                target.threat_type.as_str(),
                target.severity.as_deref(),
                target.json
            ),
            ("discovery", Some("low"), true)
        );
        let nested_first = "{\"a\": {\"b\": 1}, \"threat_type\": \"execution\"}";
        assert_eq!(parse(nested_first).unwrap().threat_type, "execution");
        assert_eq!(parse("{\"severity\": \"low\"}"), None);
        assert_eq!(parse("I cannot tell."), None);
        assert_eq!(parse("Threat type: \nSeverity: low"), None);
    }
}
