//! The answer template (`fine_tuning.answer_template`): how an example's
//! target is written from the answer (or its correction) and the analyst's
//! labels. Labels reach an example only through here, so only its target.

use serde::Serialize;

/// The `labelled` preset.
const LABELLED: &str = "Threat type: {threat_type}\nSeverity: {severity}\n{rationale}";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerTemplate {
    /// The answer or correction verbatim.
    Answer,
    /// `{"threat_type", "severity", "rationale"}` as one JSON object.
    Json,
    /// Text with placeholders; the `labelled` preset is one.
    Text(Vec<Piece>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    Field(Field),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    ThreatType,
    Severity,
    Answer,
    Rationale,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "`{{{0}}}` is no placeholder: use {{threat_type}}, {{severity}}, {{answer}} or {{rationale}} (write {{{{ and }}}} for braces), or a preset: answer, labelled, json"
    )]
    UnknownPlaceholder(String),
    #[error("a `{{` is never closed (write {{{{ for a brace)")]
    Unclosed,
    #[error("a `}}` closes nothing (write }}}} for a brace)")]
    Unopened,
    #[error(
        "uses no placeholder, so every target would be the same text; use a preset (answer, labelled, json) or {{answer}}, {{rationale}}, {{threat_type}}, {{severity}}"
    )]
    NoPlaceholder,
}

/// The analyst's labels of one conversation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Labels<'a> {
    pub threat_type: Option<&'a str>,
    pub severity: Option<&'a str>,
}

impl AnswerTemplate {
    /// A preset name or a template with placeholders.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        match text {
            "answer" => Ok(Self::Answer),
            "json" => Ok(Self::Json),
            "labelled" => parse_text(LABELLED).map(Self::Text),
            _ => parse_text(text).map(Self::Text),
        }
    }

    /// The target for `answer` (the answer or its correction). A
    /// conversation without labels keeps its answer verbatim; one that
    /// lacks a label the template needs gets the reason back.
    pub fn render(&self, labels: Labels<'_>, answer: &str) -> Result<String, String> {
        if labels.threat_type.is_none() && labels.severity.is_none() {
            return Ok(answer.to_string());
        }
        match self {
            Self::Answer => Ok(answer.to_string()),
            Self::Json => render_json(labels, answer),
            Self::Text(pieces) => render_text(pieces, labels, answer),
        }
    }
}

fn parse_text(text: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '}' => return Err(TemplateError::Unopened),
            '{' => {
                let field = placeholder(&mut chars)?;
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                pieces.push(Piece::Field(field));
            }
            c => literal.push(c),
        }
    }
    pieces.push(Piece::Literal(literal));
    pieces.retain(|p| !matches!(p, Piece::Literal(l) if l.is_empty()));
    if !pieces.iter().any(|p| matches!(p, Piece::Field(_))) {
        return Err(TemplateError::NoPlaceholder);
    }
    Ok(pieces)
}

/// Reads a placeholder's name up to its closing brace.
fn placeholder(chars: &mut impl Iterator<Item = char>) -> Result<Field, TemplateError> {
    let mut name = String::new();
    for c in chars {
        if c == '}' {
            return field(&name);
        }
        name.push(c);
    }
    Err(TemplateError::Unclosed)
}

fn field(name: &str) -> Result<Field, TemplateError> {
    match name {
        "threat_type" => Ok(Field::ThreatType),
        "severity" => Ok(Field::Severity),
        "answer" => Ok(Field::Answer),
        "rationale" => Ok(Field::Rationale),
        other => Err(TemplateError::UnknownPlaceholder(other.to_string())),
    }
}

fn render_text(pieces: &[Piece], labels: Labels<'_>, answer: &str) -> Result<String, String> {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Literal(text) => out.push_str(text),
            Piece::Field(Field::ThreatType) => out.push_str(threat_type(labels)?),
            Piece::Field(Field::Severity) => out.push_str(severity(labels)?),
            Piece::Field(Field::Answer) => out.push_str(answer),
            Piece::Field(Field::Rationale) => out.push_str(&rationale(answer)),
        }
    }
    Ok(out.trim().to_string())
}

/// Field order as the preset promises it.
#[derive(Serialize)]
struct JsonTarget<'a> {
    threat_type: &'a str,
    severity: &'a str,
    rationale: String,
}

fn render_json(labels: Labels<'_>, answer: &str) -> Result<String, String> {
    let target = JsonTarget {
        threat_type: threat_type(labels)?,
        severity: severity(labels)?,
        rationale: rationale(answer),
    };
    serde_json::to_string(&target).map_err(|e| format!("cannot write the JSON target: {e}"))
}

fn threat_type<'a>(labels: Labels<'a>) -> Result<&'a str, String> {
    labels.threat_type.ok_or_else(|| {
        "the answer template needs a threat type, but the conversation is labelled with a severity only".to_string()
    })
}

fn severity<'a>(labels: Labels<'a>) -> Result<&'a str, String> {
    labels.severity.ok_or_else(|| {
        "the answer template needs a severity, but the conversation is labelled with a threat type only".to_string()
    })
}

/// The answer without what it says of its own threat type or severity —
/// lines such as `Threat type: X` or `**Severity**: Y`, and sentences
/// opening with "Severity is …" — so the target cannot contradict the
/// analyst's labels put beside it.
pub fn rationale(answer: &str) -> String {
    let lines: Vec<String> = answer
        .lines()
        .filter(|line| !states_label(line))
        // A line that was only label sentences goes; blank lines stay.
        .filter_map(|line| {
            let kept = without_label_sentences(line);
            (kept.trim().is_empty() == line.trim().is_empty()).then_some(kept)
        })
        .collect();
    lines.join("\n").trim().to_string()
}

const LABEL_NAMES: [&str; 4] = ["threat type", "threat_type", "threat-type", "severity"];

/// `Threat type: X`, `- severity = high`, `**Severity** — low`, …
fn states_label(line: &str) -> bool {
    let lower = line.to_lowercase();
    let rest = lower.trim_start_matches(|c: char| c.is_whitespace() || "#>*_-•".contains(c));
    LABEL_NAMES.iter().any(|name| {
        rest.strip_prefix(name).is_some_and(|after| {
            let after = after.trim_start_matches(|c: char| c.is_whitespace() || "*_".contains(c));
            let mut rest = after.chars();
            match rest.next() {
                Some(':' | '=') => true,
                // A dash only as a separator: "Severity - high", not "Severity-based".
                Some('-' | '–' | '—') => rest.next().is_none_or(char::is_whitespace),
                _ => false,
            }
        })
    })
}

fn without_label_sentences(line: &str) -> String {
    let kept: String = sentences(line).filter(|s| !opens_with_label(s)).collect();
    kept.trim_end().to_string()
}

/// `line` cut after each `.`, `!` or `?` that whitespace follows, each
/// piece keeping its trailing whitespace so they rejoin as they were.
fn sentences(line: &str) -> impl Iterator<Item = &str> {
    let mut cuts = Vec::new();
    let (mut stopped, mut spaced) = (false, false);
    for (i, c) in line.char_indices() {
        if c.is_whitespace() {
            spaced = stopped;
            continue;
        }
        // A stop inside a word (`evil.exe`) ends no sentence.
        if spaced {
            cuts.push(i);
        }
        stopped = matches!(c, '.' | '!' | '?');
        spaced = false;
    }
    let ends = cuts.clone().into_iter().chain([line.len()]);
    [0].into_iter()
        .chain(cuts)
        .zip(ends)
        .map(move |(start, end)| &line[start..end])
}

fn opens_with_label(sentence: &str) -> bool {
    let lower = sentence.trim_start().to_lowercase();
    let rest = lower.strip_prefix("the ").unwrap_or(&lower);
    LABEL_NAMES.iter().any(|name| {
        rest.strip_prefix(name).is_some_and(|after| {
            ["is ", "was ", "would be ", "should be "]
                .iter()
                .any(|verb| after.trim_start().starts_with(verb))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: Labels<'static> = Labels {
        threat_type: Some("ransomware"),
        severity: Some("critical"),
    };

    /// The simulator's answer format.
    const SIMULATED: &str = "Threat type: malware\nSeverity: high\nRationale: The alert mentions 'evil.exe', an indicator of malware. Severity is high because 'evil.exe' is a known high-risk indicator.";

    #[test]
    fn presets_parse_and_unknown_names_are_errors() {
        assert_eq!(AnswerTemplate::parse("answer"), Ok(AnswerTemplate::Answer));
        assert_eq!(AnswerTemplate::parse("json"), Ok(AnswerTemplate::Json));
        assert!(matches!(
            AnswerTemplate::parse("labelled"),
            Ok(AnswerTemplate::Text(_))
        ));
        assert_eq!(
            AnswerTemplate::parse("Verdict: {verdict}"),
            Err(TemplateError::UnknownPlaceholder("verdict".into()))
        );
        assert_eq!(
            AnswerTemplate::parse("labeled"),
            Err(TemplateError::NoPlaceholder)
        );
        assert_eq!(
            AnswerTemplate::parse("{answer} {answer"),
            Err(TemplateError::Unclosed)
        );
        assert_eq!(
            AnswerTemplate::parse("{answer} }"),
            Err(TemplateError::Unopened)
        );
        let e = TemplateError::UnknownPlaceholder("verdict".into()).to_string();
        assert!(e.starts_with("`{verdict}` is no placeholder"), "{e}");
    }

    #[test]
    fn labelled_puts_the_analysts_labels_over_the_answers_own() {
        let t = AnswerTemplate::parse("labelled").unwrap();
        assert_eq!(
            t.render(LABELS, SIMULATED).unwrap(),
            "Threat type: ransomware\nSeverity: critical\nRationale: The alert mentions 'evil.exe', an indicator of malware."
        );
    }

    #[test]
    fn json_is_one_escaped_object_in_field_order() {
        let t = AnswerTemplate::Json;
        let out = t
            .render(LABELS, "Threat type: x\nSaw \"quoted\"\tthings")
            .unwrap();
        assert_eq!(
            out,
            r#"{"threat_type":"ransomware","severity":"critical","rationale":"Saw \"quoted\"\tthings"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["rationale"], "Saw \"quoted\"\tthings");
    }

    #[test]
    fn custom_templates_fill_every_placeholder_and_keep_escaped_braces() {
        let t = AnswerTemplate::parse("{{{severity}}} {threat_type}: {answer}").unwrap();
        assert_eq!(
            t.render(LABELS, "as said").unwrap(),
            "{critical} ransomware: as said"
        );
    }

    #[test]
    fn unlabelled_conversations_keep_their_answer_verbatim() {
        let t = AnswerTemplate::parse("labelled").unwrap();
        assert_eq!(t.render(Labels::default(), SIMULATED).unwrap(), SIMULATED);
    }

    #[test]
    fn a_missing_label_the_template_needs_is_a_reason() {
        let only_type = Labels {
            threat_type: Some("phishing"),
            severity: None,
        };
        let e = AnswerTemplate::Json.render(only_type, "x").unwrap_err();
        assert!(e.contains("needs a severity"), "{e}");
        let t = AnswerTemplate::parse("{threat_type}: {answer}").unwrap();
        assert_eq!(t.render(only_type, "x").unwrap(), "phishing: x");
    }

    #[test]
    fn rationale_drops_label_lines_in_their_usual_spellings() {
        let answer = "**Threat type**: malware\n- severity - high\nthreat_type = x\nSeverity is high. The severity was low!\nThe severity here is debatable.\nSeverity of this is unclear: keep.\nSeverity-based triage applies.";
        assert_eq!(
            rationale(answer),
            "The severity here is debatable.\nSeverity of this is unclear: keep.\nSeverity-based triage applies."
        );
    }
}
