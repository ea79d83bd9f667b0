//! A strict checker of OpenAI's chat fine-tuning format, written apart
//! from the code under test so the files are held to what the provider
//! accepts, not to what we wrote.

use serde_json::{Value, json};
use std::collections::BTreeSet;

fn check_message(m: &Value, roles: &[&str]) -> Result<(), String> {
    let obj = m.as_object().ok_or("a message is not an object")?;
    let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    if !keys.is_subset(&BTreeSet::from(["role", "content", "weight"])) {
        return Err(format!("a message has the fields {keys:?}"));
    }
    let role = obj["role"].as_str().ok_or("a message has no role string")?;
    if !roles.contains(&role) {
        return Err(format!("role {role} is not allowed here"));
    }
    match obj.get("content") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(()),
        _ => Err("a message's content is not a non-empty string".into()),
    }
}

fn check_chat(messages: &Value) -> Result<&Vec<Value>, String> {
    let messages = messages.as_array().ok_or("messages is not an array")?;
    if messages.is_empty() {
        return Err("messages is empty".into());
    }
    for m in messages {
        check_message(m, &["system", "user", "assistant"])?;
    }
    Ok(messages)
}

fn only_keys(v: &Value, want: &[&str]) -> Result<(), String> {
    let have: BTreeSet<&str> = v
        .as_object()
        .ok_or("not an object")?
        .keys()
        .map(String::as_str)
        .collect();
    (have == want.iter().copied().collect())
        .then_some(())
        .ok_or(format!("fields {have:?}, want {want:?}"))
}

pub fn check_sft(line: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    only_keys(&v, &["messages"])?;
    let messages = check_chat(&v["messages"])?;
    if messages.last().map(|m| &m["role"]) != Some(&json!("assistant")) {
        return Err("the last message is not the assistant's".into());
    }
    if messages[0]["role"] != "system" {
        return Err("no system message first".into());
    }
    Ok(())
}

pub fn check_dpo(line: &str) -> Result<(), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    only_keys(&v, &["input", "preferred_output", "non_preferred_output"])?;
    only_keys(&v["input"], &["messages"])?;
    let input = check_chat(&v["input"]["messages"])?;
    if input.last().map(|m| &m["role"]) == Some(&json!("assistant")) {
        return Err("the input ends with an answer".into());
    }
    for key in ["preferred_output", "non_preferred_output"] {
        let out = v[key].as_array().ok_or(format!("{key} is not an array"))?;
        if out.len() != 1 {
            return Err(format!("{key} has {} messages, not one", out.len()));
        }
        check_message(&out[0], &["assistant"])?;
    }
    if v["preferred_output"] == v["non_preferred_output"] {
        return Err("both outputs are the same".into());
    }
    Ok(())
}

/// Every line passes `check`, the file ends in a newline; the line count.
pub fn check_jsonl(text: &str, check: fn(&str) -> Result<(), String>) -> usize {
    assert!(text.is_empty() || text.ends_with('\n'), "no final newline");
    for (i, line) in text.lines().enumerate() {
        if let Err(e) = check(line) {
            panic!("line {}: {e}: {line}", i + 1);
        }
    }
    text.lines().count()
}
