//! Implicit threading: a client that resends the whole history each turn
//! ends up with one conversation. When an answer completes, the key of
//! "request messages + answer" is registered with the conversation and
//! turn (see [`super::recent`], then the store); a new request whose
//! history (everything up to and including its last assistant message)
//! has that key continues the conversation — or, if the conversation has
//! moved on since (a regenerated or edited last turn), branches into a new
//! one that records its parent.
//!
//! A message contributes its role, its text and, so that tool-call loops
//! thread too, the tool calls an assistant made (id, function name and
//! arguments) and the call a tool message answers. Clients resend those
//! re-serialised (LangChain parses the arguments and dumps them again),
//! so arguments count by their JSON value, not their spelling.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// The text a message contributes to a thread key: string content as is,
/// the text parts of array content joined by newlines, nothing otherwise.
pub fn message_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// One tool call as it counts for threading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallKey {
    pub id: String,
    pub name: String,
    /// The arguments in canonical JSON (see [`canonical_arguments`]).
    pub arguments: String,
}

impl CallKey {
    pub fn new(id: &str, name: &str, arguments: &str) -> Self {
        Self {
            id: id.to_string(),
            name: name.to_string(),
            arguments: canonical_arguments(arguments).into_owned(),
        }
    }

    /// The calls of an assistant message (`tool_calls`, or the legacy
    /// `function_call`) as JSON.
    pub fn of_message(message: &Value) -> Vec<Self> {
        let mut calls: Vec<Self> = message["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                Self::new(
                    c["id"].as_str().unwrap_or(""),
                    c["function"]["name"].as_str().unwrap_or(""),
                    c["function"]["arguments"].as_str().unwrap_or(""),
                )
            })
            .collect();
        if let Some(f) = message["function_call"].as_object() {
            calls.push(Self::new(
                "",
                f.get("name").and_then(Value::as_str).unwrap_or(""),
                f.get("arguments").and_then(Value::as_str).unwrap_or(""),
            ));
        }
        calls
    }
}

/// Arguments as compact JSON with sorted keys, so `{"b": 1, "a": 2}` and
/// `{"a":2,"b":1}` count alike; text that is not JSON counts as written.
pub fn canonical_arguments(arguments: &str) -> Cow<'_, str> {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v) => Cow::Owned(v.to_string()),
        Err(_) => Cow::Borrowed(arguments),
    }
}

/// Tags that separate the optional parts of a message from what follows;
/// roles are ASCII letters, so neither can be mistaken for the next message.
const CALLS: u8 = 1;
const ANSWERS: u8 = 2;

/// A running thread key over messages, so the request's part is hashed
/// once and the answer added when it arrives.
#[derive(Clone, Default)]
pub struct ThreadHasher(Sha256);

impl std::fmt::Debug for ThreadHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ThreadHasher").field(&self.key()).finish()
    }
}

impl ThreadHasher {
    pub fn add(&mut self, role: &str, text: &str, calls: &[CallKey], answers_call: Option<&str>) {
        let h = &mut self.0;
        h.update(role.as_bytes());
        h.update([0]);
        field(h, text);
        if !calls.is_empty() {
            h.update([CALLS]);
            h.update((calls.len() as u64).to_le_bytes());
            for call in calls {
                field(h, &call.id);
                field(h, &call.name);
                field(h, &call.arguments);
            }
        }
        if let Some(id) = answers_call {
            h.update([ANSWERS]);
            field(h, id);
        }
    }

    /// Adds a message given as JSON (`role`, `content`, `tool_calls`,
    /// `tool_call_id`).
    pub fn add_value(&mut self, message: &Value) {
        self.add(
            message["role"].as_str().unwrap_or(""),
            &message_text(&message["content"]),
            &CallKey::of_message(message),
            message["tool_call_id"].as_str(),
        );
    }

    /// The key of the messages added so far.
    pub fn key(&self) -> String {
        hex::encode(&self.0.clone().finalize()[..16])
    }
}

fn field(h: &mut Sha256, text: &str) {
    h.update((text.len() as u64).to_le_bytes());
    h.update(text.as_bytes());
}

/// The key a follow-up turn will present: the request's messages (as JSON)
/// plus the answer.
pub fn continuation_key(request_messages: &Value, answer: &Value) -> Option<String> {
    let mut hasher = ThreadHasher::default();
    for m in request_messages.as_array()? {
        hasher.add_value(m);
    }
    hasher.add_value(answer);
    Some(hasher.key())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn history_key(messages: &[Value]) -> Option<String> {
        let last = messages.iter().rposition(|m| m["role"] == "assistant")?;
        let mut h = ThreadHasher::default();
        messages[..=last].iter().for_each(|m| h.add_value(m));
        Some(h.key())
    }

    #[test]
    fn a_follow_up_presents_the_key_its_predecessor_left() {
        let turn1 = json!([{"role": "system", "content": "triage"}, {"role": "user", "content": "alert A"}]);
        let answer = json!({"role": "assistant", "content": "Threat type: discovery"});
        let left = continuation_key(&turn1, &answer).unwrap();
        let mut turn2 = turn1.as_array().unwrap().clone();
        turn2.push(answer);
        turn2.push(json!({"role": "user", "content": "and now?"}));
        assert_eq!(history_key(&turn2), Some(left));
        assert_eq!(history_key(&turn2[..2]), None);
    }

    #[test]
    fn a_tool_call_answer_is_continued_by_the_tool_result_resent_with_it() {
        let request = json!([{"role": "user", "content": "look up host FS01"}]);
        let answer = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"host\":\"FS01\",\"deep\":true}"}}
        ]});
        let left = continuation_key(&request, &answer).unwrap();
        // LangChain resends the arguments dumped again: other spacing and order.
        let follow_up = [
            json!({"role": "user", "content": "look up host FS01"}),
            json!({"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"deep\": true, \"host\": \"FS01\"}"}}
            ]}),
            json!({"role": "tool", "tool_call_id": "call_1", "content": "FS01: file server"}),
        ];
        assert_eq!(history_key(&follow_up), Some(left));
        // Another call, or other arguments, is another history.
        let mut other = follow_up.clone();
        other[1]["tool_calls"][0]["function"]["arguments"] = json!("{\"host\":\"FS02\"}");
        assert_ne!(history_key(&other), history_key(&follow_up));
    }

    #[test]
    fn text_parts_and_strings_read_the_same() {
        assert_eq!(
            message_text(&json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])),
            "a\nb"
        );
        assert_eq!(message_text(&json!("a\nb")), "a\nb");
        let key = |messages: &[(&str, &str)]| {
            let mut h = ThreadHasher::default();
            messages.iter().for_each(|(r, t)| h.add(r, t, &[], None));
            h.key()
        };
        assert_ne!(
            key(&[("user", "ab"), ("user", "")]),
            key(&[("user", "a"), ("user", "b")])
        );
    }

    #[test]
    fn plain_messages_keep_the_key_earlier_releases_stored() {
        // Conversations threaded before tool calls counted must go on.
        let mut h = ThreadHasher::default();
        h.add("user", "alert A", &[], None);
        h.add("assistant", "Threat type: discovery", &[], None);
        let mut old = Sha256::new();
        for (role, text) in [("user", "alert A"), ("assistant", "Threat type: discovery")] {
            old.update(role.as_bytes());
            old.update([0]);
            old.update((text.len() as u64).to_le_bytes());
            old.update(text.as_bytes());
        }
        assert_eq!(h.key(), hex::encode(&old.finalize()[..16]));
    }
}
