//! A strict checker of OpenAI's fine-tuning file formats, so the tests hold
//! the files to what the provider accepts rather than to what we wrote.

use serde_json::Value;
use std::collections::BTreeSet;

const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

fn check_message(m: &Value, roles: &[&str]) -> Result<(), String> {
    let obj = m.as_object().ok_or("a message is not an object")?;
    if let Some(k) = obj
        .keys()
        .find(|k| !["role", "content", "weight"].contains(&k.as_str()))
    {
        return Err(format!("a message has the field {k}"));
    }
    let role = obj
        .get("role")
        .and_then(Value::as_str)
        .ok_or("a message has no role string")?;
    if !roles.contains(&role) {
        return Err(format!("role {role} is not allowed here"));
    }
    match obj.get("content") {
        Some(Value::String(s)) if !s.is_empty() => Ok(()),
        _ => Err("a message's content is not a non-empty string".into()),
    }
}

fn check_keys(obj: &serde_json::Map<String, Value>, want: &[&str]) -> Result<(), String> {
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = want.iter().copied().collect();
    (keys == want)
        .then_some(())
        .ok_or(format!("fields {keys:?}, want {want:?}"))
}

fn check_messages_array(v: Option<&Value>) -> Result<&Vec<Value>, String> {
    let messages = v
        .and_then(Value::as_array)
        .ok_or("messages is not an array")?;
    if messages.is_empty() {
        return Err("messages is empty".into());
    }
    for m in messages {
        check_message(m, &ROLES)?;
    }
    Ok(messages)
}

pub(crate) fn check_sft_line(line: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("a line is not an object")?;
    check_keys(obj, &["messages"])?;
    let messages = check_messages_array(obj.get("messages"))?;
    if !messages.iter().any(|m| m["role"] == "assistant") {
        return Err("no assistant message".into());
    }
    Ok(())
}

fn check_output(v: Option<&Value>) -> Result<(), String> {
    let items = v
        .and_then(Value::as_array)
        .ok_or("an output is not an array")?;
    if items.len() != 1 {
        return Err(format!(
            "an output has {} items, not exactly one",
            items.len()
        ));
    }
    items
        .iter()
        .try_for_each(|m| check_message(m, &["assistant"]))
}

pub(crate) fn check_dpo_line(line: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("a line is not an object")?;
    check_keys(obj, &["input", "preferred_output", "non_preferred_output"])?;
    let input = obj["input"].as_object().ok_or("input is not an object")?;
    check_keys(input, &["messages"])?;
    let messages = check_messages_array(input.get("messages"))?;
    if messages.last().is_some_and(|m| m["role"] == "assistant") {
        return Err("the input ends with the answer it should leave out".into());
    }
    check_output(obj.get("preferred_output"))?;
    check_output(obj.get("non_preferred_output"))
}

/// Every line ends in a newline and passes `check`.
pub(crate) fn check_jsonl(
    text: &str,
    check: fn(&str) -> Result<(), String>,
) -> Result<usize, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the file does not end with a newline".into());
    }
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        check(line).map_err(|e| format!("line {}: {e}", i + 1))?;
    }
    Ok(lines.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_refuses_what_openai_refuses() {
        assert!(check_sft_line(r#"{"messages":[{"role":"user","content":"hi"}]}"#).is_err());
        assert!(check_sft_line(r#"{"messages":[{"role":"assistant","content":1}]}"#).is_err());
        assert!(
            check_sft_line(
                r#"{"messages":[{"role":"boss","content":"x"},{"role":"assistant","content":"y"}]}"#
            )
            .is_err()
        );
        assert!(check_sft_line("{\"messages\":[]}").is_err());
        assert!(check_sft_line("not json").is_err());
        let two = r#"{"input":{"messages":[{"role":"user","content":"q"}]},"preferred_output":[{"role":"assistant","content":"a"},{"role":"assistant","content":"b"}],"non_preferred_output":[{"role":"assistant","content":"c"}]}"#;
        assert!(check_dpo_line(two).unwrap_err().contains("exactly one"));
        assert!(
            check_jsonl(
                "{\"messages\":[{\"role\":\"assistant\",\"content\":\"a\"}]}",
                check_sft_line
            )
            .is_err()
        );
    }
}
