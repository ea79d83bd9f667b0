//! Token usage for an answer whose upstream reported none (a stream from a
//! server that ignores `stream_options.include_usage`, as llama.cpp's and
//! some self-hosted servers do): counted from the captured request and
//! answer with the tokenizer of the provider's model — `o200k_base` for
//! the gpt-4o, gpt-4.1, gpt-5 and o-series families, `cl100k_base` for
//! everything else, which for a model of another vocabulary (Llama,
//! Mistral, Qwen …) is an estimate within a few tens of percent — framed
//! as OpenAI counts chat tokens (three per message, three priming the
//! reply). The figure says so: `"estimated": true` and the `tokenizer`
//! used, beside the usual `prompt_tokens`, `completion_tokens` and
//! `total_tokens`.

use crate::curation::Tokenizer;
use serde_json::{Value, json};

/// What OpenAI counts around each message, and once for the reply.
const PER_MESSAGE: usize = 3;
const REPLY_PRIMING: usize = 3;

/// The estimated usage of `messages` answered by `choices` (the captured
/// `[{index, message, finish_reason}]`), read by `model`'s tokenizer.
pub fn estimate(model: &str, messages: &Value, choices: &[Value]) -> Value {
    let tokenizer = Tokenizer::for_model(model);
    let prompt = messages
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            PER_MESSAGE
                + tokenizer.count(m["role"].as_str().unwrap_or(""))
                + message_tokens(m, tokenizer)
        })
        .sum::<usize>()
        + REPLY_PRIMING;
    let completion = choices
        .iter()
        .map(|c| message_tokens(&c["message"], tokenizer))
        .sum::<usize>();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "estimated": true,
        "tokenizer": tokenizer.name(),
    })
}

/// A message's content (a string or text parts) and its tool calls' names
/// and arguments.
fn message_tokens(message: &Value, tokenizer: Tokenizer) -> usize {
    let content = match &message["content"] {
        Value::String(text) => tokenizer.count(text),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .map(|t| tokenizer.count(t))
            .sum(),
        _ => 0,
    };
    let calls = message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let function = &c["function"];
            tokenizer.count(function["name"].as_str().unwrap_or(""))
                + tokenizer.count(function["arguments"].as_str().unwrap_or(""))
        })
        .sum::<usize>();
    content + calls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_messages_and_answers_with_the_model_tokenizer() {
        let messages = json!([
            {"role": "system", "content": "You are a SOC analyst."},
            {"role": "user", "content": [{"type": "text", "text": "whoami /all on WS-042"}]}
        ]);
        let choices = [json!({"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "Threat type: discovery"}})];
        let usage = estimate("gpt-4o-mini", &messages, &choices);
        assert_eq!(usage["estimated"], true);
        assert_eq!(usage["tokenizer"], "o200k_base");
        let prompt = usage["prompt_tokens"].as_u64().unwrap();
        let completion = usage["completion_tokens"].as_u64().unwrap();
        // 2 × (3 + role) + content + 3: well above the framing alone.
        assert!(prompt > 3 + 2 * 4 + 8, "{usage}");
        assert!((3..=8).contains(&completion), "{usage}");
        assert_eq!(usage["total_tokens"].as_u64(), Some(prompt + completion));
        let llama = estimate("llama-3.1-8b-instruct", &messages, &choices);
        assert_eq!(llama["tokenizer"], "cl100k_base");
    }

    #[test]
    fn tool_calls_count_as_completion() {
        let choices = [
            json!({"message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "isolate_host", "arguments": "{\"host\":\"WS-042\"}"}}]}}),
        ];
        let usage = estimate("gpt-4o", &json!([]), &choices);
        assert!(usage["completion_tokens"].as_u64().unwrap() >= 5, "{usage}");
        assert_eq!(usage["prompt_tokens"], 3);
    }
}
