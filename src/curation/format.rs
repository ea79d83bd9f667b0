//! The JSONL lines OpenAI's fine-tuning reads: chat examples for
//! supervised fine-tuning, and preference pairs for DPO built from
//! analysts' corrections (the target — the correction, verbatim unless a
//! template preset rewrites it — preferred over the model's original
//! answer, verbatim).

use super::example::{Example, Message};
use super::signals::normalised_hash;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// `{"messages": [...]}`.
    Sft,
    /// `{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`.
    Dpo,
}

/// One example as its format writes it, with what must be checked of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The JSONL line, without its newline.
    pub json: String,
    /// Each chat the line trains on, with a name for it in reasons (empty
    /// when the line has only one): SFT has one, DPO the input followed by
    /// either output.
    pub chats: Vec<(&'static str, Vec<Message>)>,
    /// [`normalised_hash`] of the input and the target, for dropping
    /// near-verbatim duplicates.
    pub hash: String,
}

impl DatasetFormat {
    pub fn line(self, example: &Example) -> Result<Line, String> {
        match self {
            Self::Sft => sft_line(example),
            Self::Dpo => dpo_line(example),
        }
    }
}

#[derive(Serialize)]
struct SftLine<'a> {
    messages: Vec<SftMessage<'a>>,
}

/// A message of an SFT line. An assistant message before the target has
/// `weight: 0`: it is what the model said in an earlier turn, which no
/// analyst reviewed (only the last answer is the example's target), so
/// the model sees it as context and is not trained to say it.
#[derive(Serialize)]
struct SftMessage<'a> {
    role: &'a str,
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    weight: Option<u8>,
}

/// The input followed by the target as the assistant's message.
pub fn sft_line(example: &Example) -> Result<Line, String> {
    let mut messages = example.input.clone();
    messages.push(Message::new("assistant", &example.target));
    let (target, input) = messages.split_last().ok_or("has no messages")?;
    let written = input
        .iter()
        .map(|m| SftMessage {
            role: &m.role,
            content: &m.content,
            weight: (m.role == "assistant").then_some(0),
        })
        .chain([SftMessage {
            role: &target.role,
            content: &target.content,
            weight: None,
        }])
        .collect();
    Ok(Line {
        json: to_json(&SftLine { messages: written })?,
        hash: normalised_hash(&messages),
        chats: vec![("", messages)],
    })
}

/// The DPO line's input: its messages as they are.
#[derive(Serialize)]
struct DpoInput<'a> {
    messages: &'a [Message],
}

#[derive(Serialize)]
struct DpoLine<'a> {
    input: DpoInput<'a>,
    preferred_output: [&'a Message; 1],
    non_preferred_output: [&'a Message; 1],
}

/// The target (the correction, as the SFT line would teach it) preferred
/// over the original answer, verbatim; a conversation without a correction
/// has no preference to teach.
pub fn dpo_line(example: &Example) -> Result<Line, String> {
    if example.correction.is_none() {
        return Err(
            "has no analyst correction, so there is no preferred answer for a DPO dataset".into(),
        );
    }
    let answer = example
        .answer
        .as_deref()
        .ok_or("its last turn has no answer for the correction to be preferred over")?;
    let preferred = Message::new("assistant", &example.target);
    let rejected = Message::new("assistant", answer);
    let with = |output: &Message| [example.input.clone(), vec![output.clone()]].concat();
    let hash = normalised_hash(&with(&preferred));
    if hash == normalised_hash(&with(&rejected)) {
        return Err(
            "its correction is the same text as the answer, so there is no preference to learn"
                .into(),
        );
    }
    let json = to_json(&DpoLine {
        input: DpoInput {
            messages: &example.input,
        },
        preferred_output: [&preferred],
        non_preferred_output: [&rejected],
    })?;
    Ok(Line {
        json,
        hash,
        chats: vec![
            ("the preferred output", with(&preferred)),
            ("the non-preferred output", with(&rejected)),
        ],
    })
}

fn to_json(line: &impl Serialize) -> Result<String, String> {
    serde_json::to_string(line).map_err(|e| format!("cannot be written as JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example() -> Example {
        Example {
            conversation_id: "conv_1".into(),
            threat_type: Some("malware".into()),
            severity: Some("high".into()),
            input: vec![
                Message::new("system", "You are a security analyst."),
                Message::new("user", "Alert: \"evil.exe\"\nran"),
            ],
            answer: Some("Threat type: benign".into()),
            correction: Some("Threat type: malware".into()),
            target: "Threat type: malware".into(),
        }
    }

    #[test]
    fn sft_is_the_input_then_the_target() {
        let mut example = example();
        example.target = "Threat type: malware\nSeverity: high".into();
        let line = sft_line(&example).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line.json).unwrap();
        assert_eq!(
            v,
            json!({"messages": [
                {"role": "system", "content": "You are a security analyst."},
                {"role": "user", "content": "Alert: \"evil.exe\"\nran"},
                {"role": "assistant", "content": "Threat type: malware\nSeverity: high"},
            ]})
        );
        assert!(!line.json.contains('\n'));
        assert_eq!(line.chats.len(), 1);
    }

    #[test]
    fn earlier_answers_are_context_not_targets() {
        let mut example = example();
        example.input.extend([
            Message::new("assistant", "Threat type: benign"),
            Message::new("user", "Look again: it ran from %TEMP%."),
        ]);
        let v: serde_json::Value = serde_json::from_str(&sft_line(&example).unwrap().json).unwrap();
        let weights: Vec<&serde_json::Value> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["weight"])
            .collect();
        let none = &serde_json::Value::Null;
        assert_eq!(weights, [none, none, &json!(0), none, none]);
        let dpo: serde_json::Value =
            serde_json::from_str(&dpo_line(&example).unwrap().json).unwrap();
        assert!(dpo["input"]["messages"][2].get("weight").is_none());
    }

    #[test]
    fn dpo_prefers_the_target_as_written_over_the_answer() {
        let mut ex = example();
        ex.target = "Threat type: malware\nSeverity: high\nA preset wrote this.".into();
        let v: serde_json::Value = serde_json::from_str(&dpo_line(&ex).unwrap().json).unwrap();
        assert_eq!(v["preferred_output"][0]["content"], ex.target.as_str());
        assert_eq!(
            v["non_preferred_output"][0]["content"],
            "Threat type: benign"
        );
    }

    #[test]
    fn dpo_prefers_the_correction_over_the_answer() {
        let line = dpo_line(&example()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line.json).unwrap();
        assert_eq!(v["input"]["messages"].as_array().unwrap().len(), 2);
        assert_eq!(
            v["preferred_output"],
            json!([{"role": "assistant", "content": "Threat type: malware"}])
        );
        assert_eq!(
            v["non_preferred_output"],
            json!([{"role": "assistant", "content": "Threat type: benign"}])
        );
        assert_eq!(
            line.chats[1].1.last().unwrap().content,
            "Threat type: benign"
        );
    }

    #[test]
    fn dpo_needs_a_correction_that_differs_from_the_answer() {
        let mut ex = example();
        ex.correction = None;
        let e = dpo_line(&ex).unwrap_err();
        assert_eq!(
            e,
            "has no analyst correction, so there is no preferred answer for a DPO dataset"
        );
        ex.correction = Some("threat type:   BENIGN".into());
        ex.target = "threat type:   BENIGN".into();
        let e = dpo_line(&ex).unwrap_err();
        assert!(e.contains("same text as the answer"), "{e}");
        ex.answer = None;
        let e = dpo_line(&ex).unwrap_err();
        assert!(e.contains("no answer"), "{e}");
    }
}
