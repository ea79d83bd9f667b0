//! Fine-tuning data as OpenAI accepts it: JSONL whose every line is an SFT
//! example (`{"messages":[…]}` with at least one assistant message) or a DPO
//! example (`{"input":{"messages":[…]},"preferred_output":[…],
//! "non_preferred_output":[…]}`). An upload is checked line by line so the
//! error can name the line; a job reads the same lines as [`Example`]s.

use super::chat::{text_of, tokenize};
use super::targets::{self, Target};
use serde_json::Value;

/// The two shapes of a training example, which are also the two methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Supervised,
    Dpo,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Supervised => "supervised",
            Shape::Dpo => "dpo",
        }
    }
}

/// One example as the trainer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The text of every message that is not the model's: what the model
    /// is asked to judge.
    pub prompt: String,
    /// The last user message: what the base model's rules read.
    pub alert: String,
    /// What the example's (last) assistant message says, when it states a
    /// threat type.
    pub target: Option<Target>,
    /// Tokens in the whole example, answer included, as billing counts them.
    pub tokens: usize,
}

/// The lines that carry data, numbered from 1 as editors number them.
/// Whitespace-only lines (a trailing newline, say) are not examples.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, line)| !line.trim().is_empty())
}

/// Checks a `fine-tune` upload: UTF-8, at least one example, every line an
/// example of either shape. The error names the first bad line.
pub fn check(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "Invalid file format for fine-tuning: the file is not UTF-8 text.")?;
    let mut examples = 0;
    for (number, line) in lines(text) {
        shape(line)
            .map_err(|why| format!("Invalid file format for fine-tuning: line {number} {why}."))?;
        examples += 1;
    }
    if examples == 0 {
        return Err("Invalid file format for fine-tuning: the file has no examples.".into());
    }
    Ok(())
}

/// Reads a training file as examples of `method`'s shape.
pub fn examples(bytes: &[u8], method: Shape) -> Result<Vec<Example>, String> {
    check(bytes)?;
    let text = std::str::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text")?;
    lines(text)
        .map(|(number, line)| {
            let value: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            match (shape_of(&value)?, method) {
                (Shape::Supervised, Shape::Supervised) => Ok(supervised(&value)),
                (Shape::Dpo, Shape::Dpo) => Ok(dpo(&value)),
                (found, _) => Err(format!(
                    "line {number} is a {} example, but the job's method is {}",
                    found.name(),
                    method.name()
                )),
            }
        })
        .collect()
}

/// The shape of one line, or why it is neither.
fn shape(line: &str) -> Result<Shape, String> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| format!("is not valid JSON ({e})"))?;
    shape_of(&value)
}

fn shape_of(value: &Value) -> Result<Shape, String> {
    let Some(object) = value.as_object() else {
        return Err("is not a JSON object".into());
    };
    if object.contains_key("messages") {
        let messages = message_list(&value["messages"], "messages")?;
        if !messages.iter().any(|m| m["role"] == "assistant") {
            return Err("has no assistant message".into());
        }
        return Ok(Shape::Supervised);
    }
    if object.contains_key("input") {
        message_list(&value["input"]["messages"], "input.messages")?;
        for field in ["preferred_output", "non_preferred_output"] {
            let outputs = message_list(&value[field], field)?;
            if outputs.len() != 1 || outputs.iter().any(|m| m["role"] != "assistant") {
                return Err(format!(
                    "must have exactly one assistant message in {field}"
                ));
            }
        }
        return Ok(Shape::Dpo);
    }
    Err("has neither `messages` (supervised) nor `input` (DPO)".into())
}

/// A non-empty array of messages, each an object with a role.
fn message_list<'v>(value: &'v Value, field: &str) -> Result<&'v Vec<Value>, String> {
    let Some(messages) = value.as_array().filter(|m| !m.is_empty()) else {
        return Err(format!(
            "needs `{field}` to be a non-empty array of messages"
        ));
    };
    for (i, message) in messages.iter().enumerate() {
        if !message["role"].is_string() {
            return Err(format!("has no role in `{field}[{i}]`"));
        }
    }
    Ok(messages)
}

/// What a model is asked: the text of every message that is not its own.
pub fn prompt_of<'m>(messages: impl Iterator<Item = &'m Value>) -> String {
    messages
        .filter(|m| m["role"] != "assistant")
        .map(text_of)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The text of the last user message, as the base models read it.
pub fn alert_of<'m>(messages: impl DoubleEndedIterator<Item = &'m Value>) -> String {
    messages
        .rev()
        .find(|m| m["role"] == "user")
        .map(text_of)
        .unwrap_or_default()
}

fn tokens_of<'m>(messages: impl Iterator<Item = &'m Value>) -> usize {
    messages.map(|m| tokenize(&text_of(m)).len()).sum()
}

fn supervised(value: &Value) -> Example {
    let messages = value["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let answer = messages.iter().rev().find(|m| m["role"] == "assistant");
    Example {
        prompt: prompt_of(messages.iter()),
        alert: alert_of(messages.iter()),
        target: answer.and_then(|m| targets::parse(&text_of(m))),
        tokens: tokens_of(messages.iter()),
    }
}

/// A DPO example teaches the preferred answer.
fn dpo(value: &Value) -> Example {
    let input = value["input"]["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let preferred = value["preferred_output"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    Example {
        prompt: prompt_of(input.iter()),
        alert: alert_of(input.iter()),
        target: preferred.last().and_then(|m| targets::parse(&text_of(m))),
        tokens: tokens_of(input.iter().chain(preferred)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SFT: &str = r#"{"messages":[{"role":"system","content":"Triage."},{"role":"user","content":"mimikatz on DC01"},{"role":"assistant","content":"Threat type: credential_access\nSeverity: high\nRationale: x"}]}"#;
    const DPO: &str = r#"{"input":{"messages":[{"role":"user","content":"whoami /all"}]},"preferred_output":[{"role":"assistant","content":"{\"threat_type\":\"discovery\",\"severity\":\"low\"}"}],"non_preferred_output":[{"role":"assistant","content":"Threat type: benign"}]}"#;

    #[test]
    fn both_shapes_pass_and_bad_lines_are_named() {
        assert_eq!(check(format!("{SFT}\n{DPO}\n\n").as_bytes()), Ok(()));
        for (line, why) in [
            ("[1]", "line 2 is not a JSON object"),
            ("{\"messages\":", "line 2 is not valid JSON"),
            (
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
                "line 2 has no assistant message",
            ),
            (r#"{"messages":[]}"#, "line 2 needs `messages`"),
            (r#"{"prompt":"x"}"#, "line 2 has neither"),
            (
                r#"{"input":{"messages":[{"role":"user"}]},"preferred_output":[],"non_preferred_output":[]}"#,
                "line 2 needs `preferred_output`",
            ),
        ] {
            let error = check(format!("{SFT}\n{line}\n").as_bytes()).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
        assert!(check(b"\n  \n").unwrap_err().contains("no examples"));
        assert!(check(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn examples_take_the_prompt_and_the_last_answer() {
        let sft = examples(SFT.as_bytes(), Shape::Supervised).unwrap();
        assert_eq!(sft[0].prompt, "Triage.\nmimikatz on DC01");
        assert_eq!(sft[0].alert, "mimikatz on DC01");
        let target = sft[0].target.clone().unwrap();
        assert_eq!(target.threat_type, "credential_access");
        assert!(!target.json);
        assert_eq!(sft[0].tokens, 1 + 3 + 7);

        let dpo = examples(DPO.as_bytes(), Shape::Dpo).unwrap();
        assert_eq!(dpo[0].prompt, "whoami /all");
        assert_eq!(dpo[0].alert, "whoami /all");
        let target = dpo[0].target.clone().unwrap();
        assert_eq!(
            (target.threat_type.as_str(), target.json),
            ("discovery", true)
        );

        let error = examples(DPO.as_bytes(), Shape::Supervised).unwrap_err();
        assert_eq!(
            error,
            "line 1 is a dpo example, but the job's method is supervised"
        );
        let no_target = json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "no idea"}]});
        let parsed = examples(no_target.to_string().as_bytes(), Shape::Supervised).unwrap();
        assert_eq!(parsed[0].target, None);
    }
}
