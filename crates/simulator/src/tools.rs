//! Which function the model calls, if any: the rule the simulator follows
//! for `tools` and `tool_choice`, in chat completions and the Responses
//! API alike.
//!
//! - `none` (or no tools): the model answers in text.
//! - a named function (`{"type":"function","function":{"name":…}}`, or
//!   `{"type":"function","name":…}` in the Responses API): it calls that
//!   function, every time.
//! - `auto` (the default): after a tool's result (the last message is a
//!   `tool` message) it answers in text. Otherwise it calls the first tool
//!   the newest user message asks for — one that names it (`isolate_host`
//!   is named by "isolate_host", "isolate host", "isolate the host" or
//!   "IsolateHost": every word of the name, in any order, or the name with
//!   its separators dropped) — or the first tool when the message asks for
//!   a tool in general ("use a tool", "use the tools", "call a tool", "look
//!   up", "look it up"). Anything else is answered in text.
//! - `required`: it calls a function even where `auto` would not: the one
//!   the user asks for, else the first not yet called since the newest
//!   user message (so an agent forced to call tools moves on to its final
//!   tool), else the first.
//!
//! One call per answer: the simulator never makes parallel calls.

use serde_json::Value;

/// A function offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    /// Its `parameters` schema; `{"type":"object"}` when none was given.
    pub parameters: Value,
}

/// The request's `tool_choice`.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// Phrases that ask for a tool without naming one.
const ASKS_FOR_A_TOOL: &[&str] = &[
    "use a tool",
    "use the tool",
    "use your tool",
    "use tools",
    "call a tool",
    "call the tool",
    "look up",
    "look it up",
    "look them up",
];

/// The function the model calls for `messages` (chat-completions shaped).
pub fn decide<'t>(choice: &Choice, tools: &'t [Tool], messages: &[Value]) -> Option<&'t Tool> {
    let asked = || {
        let text = newest_user_text(messages);
        tools
            .iter()
            .find(|t| names(&text, &t.name))
            .or_else(|| asks_for_a_tool(&text).then(|| tools.first()).flatten())
    };
    match choice {
        Choice::None => None,
        Choice::Named(name) => tools.iter().find(|t| &t.name == name),
        Choice::Auto if answered(messages) => None,
        Choice::Auto => asked(),
        Choice::Required => {
            let called = called_since_user(messages);
            asked()
                .filter(|t| !called.contains(&t.name.as_str()))
                .or_else(|| tools.iter().find(|t| !called.contains(&t.name.as_str())))
                .or_else(asked)
                .or(tools.first())
        }
    }
}

/// Whether the last message is a tool's result.
fn answered(messages: &[Value]) -> bool {
    messages
        .last()
        .is_some_and(|m| matches!(m["role"].as_str(), Some("tool" | "function")))
}

/// The text of the newest user message.
fn newest_user_text(messages: &[Value]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        })
        .unwrap_or_default()
}

/// The functions called after the newest user message.
fn called_since_user(messages: &[Value]) -> Vec<&str> {
    let start = messages
        .iter()
        .rposition(|m| m["role"] == "user")
        .map_or(0, |i| i + 1);
    messages
        .get(start..)
        .unwrap_or(&[])
        .iter()
        .flat_map(|m| m["tool_calls"].as_array().into_iter().flatten())
        .filter_map(|c| c["function"]["name"].as_str())
        .collect()
}

fn asks_for_a_tool(text: &str) -> bool {
    let lower = text.to_lowercase();
    ASKS_FOR_A_TOOL.iter().any(|p| lower.contains(p))
}

/// Lower-case words of a text or a name: split at anything not a letter
/// or digit, and at a lower-to-upper case change (`lookupHost`).
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut lower_before = false;
    for c in text.chars() {
        if (!c.is_alphanumeric() || (c.is_uppercase() && lower_before)) && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        lower_before = c.is_lowercase() || c.is_ascii_digit();
        if c.is_alphanumeric() {
            current.extend(c.to_lowercase());
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Whether `text` names the function `name` (see the module's rule).
fn names(text: &str, name: &str) -> bool {
    let name_words = words(name);
    if name_words.is_empty() {
        return false;
    }
    let text_words = words(text);
    let squashed = |w: &[String]| w.concat();
    if squashed(&text_words).contains(&squashed(&name_words)) {
        return true;
    }
    name_words.iter().all(|n| text_words.iter().any(|t| t == n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Vec<Tool> {
        ["lookup_host", "isolateHost", "final_result"]
            .iter()
            .map(|n| Tool {
                name: n.to_string(),
                parameters: json!({"type": "object"}),
            })
            .collect()
    }

    fn user(text: &str) -> Vec<Value> {
        vec![json!({"role": "user", "content": text})]
    }

    fn name(tool: Option<&Tool>) -> Option<&str> {
        tool.map(|t| t.name.as_str())
    }

    #[test]
    fn auto_calls_only_what_the_user_asks_for() {
        let tools = tools();
        let decide = |text: &str| name(decide(&Choice::Auto, &tools, &user(text)));
        assert_eq!(decide("mimikatz on WS-042"), None);
        assert_eq!(decide("Please look up host WS-042"), Some("lookup_host"));
        assert_eq!(decide("lookup_host WS-042"), Some("lookup_host"));
        assert_eq!(decide("Isolate the host now"), Some("isolateHost"));
        assert_eq!(decide("Use a tool for this"), Some("lookup_host"));
        assert_eq!(decide("the host is fine"), None);
    }

    #[test]
    fn a_tool_result_is_answered_in_text_unless_forced() {
        let tools = tools();
        let mut messages = user("isolate host WS-1");
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "isolateHost", "arguments": "{}"}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": "call_1", "content": "done"}));
        assert_eq!(name(decide(&Choice::Auto, &tools, &messages)), None);
        assert_eq!(
            name(decide(
                &Choice::Named("isolateHost".into()),
                &tools,
                &messages
            )),
            Some("isolateHost")
        );
        // Required moves on to a tool not yet called.
        assert_eq!(
            name(decide(&Choice::Required, &tools, &messages)),
            Some("lookup_host")
        );
        assert_eq!(name(decide(&Choice::None, &tools, &messages)), None);
    }

    #[test]
    fn required_prefers_the_asked_tool() {
        let tools = tools();
        assert_eq!(
            name(decide(
                &Choice::Required,
                &tools,
                &user("final result please")
            )),
            Some("final_result")
        );
        assert_eq!(
            name(decide(&Choice::Required, &tools, &user("whoami"))),
            Some("lookup_host")
        );
    }
}
