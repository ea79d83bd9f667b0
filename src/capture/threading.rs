//! Implicit threading: a client that resends the whole history each turn
//! ends up with one conversation. After each answer, the key of "request
//! messages + answer" is recorded with the conversation and turn; a new
//! request whose history (everything up to the messages after the last
//! assistant message) has that key continues the conversation — or, if the
//! conversation has moved on since (a regenerated or edited last turn),
//! branches into a new one that records its parent.

use serde_json::Value;
use sha2::{Digest, Sha256};

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

/// A stable key for a sequence of (role, text) messages.
pub fn thread_key<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut hash = Sha256::new();
    for (role, text) in messages {
        hash.update(role.as_bytes());
        hash.update([0]);
        hash.update((text.len() as u64).to_le_bytes());
        hash.update(text.as_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

/// The history a request continues: its messages up to and including the
/// last assistant message. `None` for a first turn (no assistant message).
pub fn history_key(messages: &[(String, String)]) -> Option<String> {
    let last_assistant = messages.iter().rposition(|(role, _)| role == "assistant")?;
    Some(thread_key(
        messages[..=last_assistant]
            .iter()
            .map(|(r, t)| (r.as_str(), t.as_str())),
    ))
}

/// The key a follow-up turn will present: the request's messages plus the
/// answer.
pub fn continuation_key(request_messages: &Value, answer: &str) -> Option<String> {
    let messages = request_messages.as_array()?;
    let texts: Vec<(String, String)> = messages
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or("").to_string(),
                message_text(&m["content"]),
            )
        })
        .collect();
    let all = texts
        .iter()
        .map(|(r, t)| (r.as_str(), t.as_str()))
        .chain(std::iter::once(("assistant", answer)));
    Some(thread_key(all))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_follow_up_presents_the_key_its_predecessor_left() {
        let turn1 = json!([{"role": "system", "content": "triage"}, {"role": "user", "content": "alert A"}]);
        let left = continuation_key(&turn1, "Threat type: discovery").unwrap();
        let turn2 = [
            ("system".to_string(), "triage".to_string()),
            ("user".to_string(), "alert A".to_string()),
            (
                "assistant".to_string(),
                "Threat type: discovery".to_string(),
            ),
            ("user".to_string(), "and now?".to_string()),
        ];
        assert_eq!(history_key(&turn2), Some(left));
        assert_eq!(history_key(&turn2[..2]), None);
    }

    #[test]
    fn text_parts_and_strings_read_the_same() {
        assert_eq!(
            message_text(&json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])),
            "a\nb"
        );
        assert_eq!(message_text(&json!("a\nb")), "a\nb");
        assert_ne!(
            thread_key([("user", "ab"), ("user", "")]),
            thread_key([("user", "a"), ("user", "b")])
        );
    }
}
