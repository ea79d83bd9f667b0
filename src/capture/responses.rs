//! The Responses API (`POST /v1/responses`) read as the chat turn it
//! amounts to, so that review, datasets and evaluation see one shape:
//! `instructions` become the system message, `input` (a string, or a list
//! of message, `function_call` and `function_call_output` items) the
//! messages, and the `output` items (message text, function calls) the
//! assistant's answer; `usage` is renamed to the chat names. A streamed
//! response is read from its `response.completed` event, or, when the
//! stream stopped short of it, from the text deltas that arrived.
//!
//! A response's `id` threads its follow-up: [`response_key`] is the
//! continuation key the answer leaves and the history key a request with
//! `previous_response_id` presents, in the same lookup as chat's keys.
//! Its last output item's id does the same for a follow-up that names
//! that item in an `item_reference` instead of writing it out
//! ([`item_key`]), and a conversation object's id for the turns held in
//! it ([`conversation_key`]).

use super::answer::AnswerKey;
use super::threading::{CallKey, ThreadHasher};
use bytes::Bytes;
use serde_json::{Map, Value, json};

/// The thread key of a response id: a follow-up naming it as its
/// `previous_response_id` continues the turn that answered it.
pub fn response_key(id: &str) -> String {
    let mut hasher = ThreadHasher::default();
    hasher.add("response", id, &[], None);
    hasher.key()
}

/// The thread key of a conversation object kept by the provider: each
/// of its turns presents it and leaves it, so they follow each other in
/// the order they are answered.
pub fn conversation_key(id: &str) -> String {
    let mut hasher = ThreadHasher::default();
    hasher.add("conversation", id, &[], None);
    hasher.key()
}

/// The thread key of an output item id: a follow-up whose history's last
/// assistant item is an `item_reference` to it continues the turn.
pub fn item_key(id: &str) -> String {
    let mut hasher = ThreadHasher::default();
    hasher.add("item", id, &[], None);
    hasher.key()
}

/// What a follow-up of an answered response may name, read in one pass.
pub struct Answered {
    pub id: Option<String>,
    /// The id of its last output item.
    pub last_item: Option<String>,
    /// The answer's part of a thread key, as a chat answer's.
    pub answer: AnswerKey,
}

pub fn answered(body: &[u8], streamed: bool) -> Answered {
    let response = response_of(body, streamed);
    let id_of = |v: &Value| v["id"].as_str().map(String::from);
    let message = &completion_of(&response)["choices"][0]["message"];
    Answered {
        id: id_of(&response),
        last_item: response["output"]
            .as_array()
            .and_then(|items| items.last())
            .and_then(id_of),
        answer: AnswerKey {
            text: message["content"].as_str().unwrap_or_default().to_string(),
            calls: CallKey::of_message(message),
        },
    }
}

/// The request with `items` in front of its input: what the model read
/// of a conversation the provider keeps, when they were added since its
/// last turn.
pub fn with_items_first(mut request: Value, items: &[Value]) -> Value {
    if items.is_empty() {
        return request;
    }
    let Some(fields) = request.as_object_mut() else {
        return request;
    };
    let mut input = items.to_vec();
    match fields.remove("input") {
        Some(Value::String(text)) => input.push(json!({"role": "user", "content": text})),
        Some(Value::Array(own)) => input.extend(own),
        _ => {}
    }
    fields.insert("input".into(), Value::Array(input));
    request
}

/// The request as a chat request: `{messages, …params}` without `model`,
/// `input` and `instructions`.
pub fn request_as_chat(request: Value) -> Value {
    let Value::Object(mut fields) = request else {
        return Value::Null;
    };
    fields.remove("model");
    let mut messages = Vec::new();
    if let Some(instructions) = fields.remove("instructions").filter(|i| !i.is_null()) {
        messages.push(json!({"role": "system", "content": text_of(&instructions)}));
    }
    match fields.remove("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => items.iter().for_each(|item| push_item(&mut messages, item)),
        _ => {}
    }
    let mut chat = Map::new();
    chat.insert("messages".into(), Value::Array(messages));
    chat.extend(fields);
    Value::Object(chat)
}

/// One input item added to the chat messages: a function call joins the
/// assistant message before it, when there is one.
fn push_item(messages: &mut Vec<Value>, item: &Value) {
    match item["type"].as_str() {
        Some("function_call") => {
            let call = json!({"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]}});
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    if let Some(calls) = last["tool_calls"].as_array_mut() {
                        calls.push(call);
                    } else {
                        last["tool_calls"] = json!([call]);
                    }
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        Some("function_call_output") => messages.push(json!({"role": "tool",
            "tool_call_id": item["call_id"], "content": text_of(&item["output"])})),
        // An earlier output named by its id: kept as a marker, so that a
        // dataset can put the answer it names in its place.
        Some("item_reference") => messages.push(json!({"role": "assistant", "content": null,
            "item_reference": item["id"]})),
        Some("message") | None if item.get("role").is_some() => {
            messages.push(json!({"role": item["role"], "content": text_of(&item["content"])}));
        }
        // Reasoning and other items carry nothing a chat turn holds.
        _ => {}
    }
}

/// A content value's text: a string, or its parts' `text` joined.
fn text_of(content: &Value) -> Value {
    match content {
        Value::String(_) => content.clone(),
        Value::Array(parts) => Value::String(
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => Value::Null,
    }
}

/// The answer as a chat completion body (`id`, one choice, `usage`), for
/// capture's reader of chat answers, with the id and type of each output
/// item (`output_items`): a later turn may name them in an
/// `item_reference` instead of writing them out.
pub fn answer_as_chat(body: &[u8], streamed: bool) -> Bytes {
    Bytes::from(completion_of(&response_of(body, streamed)).to_string())
}

fn response_of(body: &[u8], streamed: bool) -> Value {
    if streamed {
        from_stream(body)
    } else {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    }
}

/// The response object of a stream: the one `response.completed` (or
/// `.incomplete`, `.failed`) carries, else one rebuilt from the deltas.
fn from_stream(body: &[u8]) -> Value {
    let mut id = Value::Null;
    let mut text = String::new();
    for event in events(body) {
        match event["type"].as_str() {
            Some("response.completed" | "response.incomplete" | "response.failed") => {
                return event["response"].clone();
            }
            Some("response.output_text.delta") => {
                text.push_str(event["delta"].as_str().unwrap_or(""));
            }
            _ => {}
        }
        if id.is_null() {
            id = event["response"]["id"].clone();
        }
    }
    json!({"id": id, "output": [{"type": "message", "role": "assistant",
        "content": [{"type": "output_text", "text": text}]}]})
}

/// The chat completion a response object amounts to.
fn completion_of(response: &Value) -> Value {
    let mut content: Option<String> = None;
    let mut calls = Vec::new();
    let mut items = Vec::new();
    for item in response["output"].as_array().into_iter().flatten() {
        if item["id"].is_string() {
            items.push(json!({"id": item["id"], "type": item["type"]}));
        }
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    if let Some(t) = part["text"]
                        .as_str()
                        .filter(|_| part["type"] == "output_text")
                    {
                        content.get_or_insert_with(String::new).push_str(t);
                    }
                }
            }
            Some("function_call") => calls.push(json!({"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]}})),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": content});
    let finish_reason = if calls.is_empty() {
        "stop"
    } else {
        message["tool_calls"] = Value::Array(calls);
        "tool_calls"
    };
    let usage = &response["usage"];
    let usage = if usage.is_object() {
        json!({"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"],
            "total_tokens": usage["total_tokens"]})
    } else {
        Value::Null
    };
    json!({"id": response["id"], "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage, "output_items": items})
}

/// The JSON payloads of a stream's `data:` lines (the Responses API sends
/// each event's payload on one line).
fn events(body: &[u8]) -> impl Iterator<Item = Value> + '_ {
    body.split(|b| *b == b'\n').filter_map(|line| {
        let data = line.strip_prefix(b"data:")?;
        serde_json::from_slice(data.trim_ascii()).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_put_into_the_conversation_come_before_the_input() {
        let alert =
            json!({"type": "message", "role": "user", "content": "Endpoint alert: mimikatz"});
        let as_messages = |input: Value| {
            let request = json!({"model": "triage", "instructions": "Be brief.", "input": input});
            request_as_chat(with_items_first(request, std::slice::from_ref(&alert)))["messages"]
                .clone()
        };
        let expected = |last: &str| {
            json!([{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Endpoint alert: mimikatz"},
                   {"role": "user", "content": last}])
        };
        assert_eq!(as_messages(json!("Triage it.")), expected("Triage it."));
        assert_eq!(
            as_messages(json!([{"role": "user", "content": "Triage it."}])),
            expected("Triage it.")
        );
        let unchanged = json!({"model": "triage", "input": "Triage it."});
        assert_eq!(with_items_first(unchanged.clone(), &[]), unchanged);
    }

    #[test]
    fn input_items_and_instructions_become_chat_messages() {
        let chat = request_as_chat(json!({"model": "triage", "instructions": "Be brief.",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Alert"}]},
                {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "clean"},
                {"type": "item_reference", "id": "msg_1"}],
            "temperature": 0.2}));
        assert_eq!(
            chat["messages"],
            json!([{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Alert"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "lookup", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "clean"},
                {"role": "assistant", "content": null, "item_reference": "msg_1"}])
        );
        assert_eq!(chat["temperature"], 0.2);
        assert!(chat.get("input").is_none() && chat.get("model").is_none());
    }

    #[test]
    fn a_streamed_answer_is_read_from_its_completed_event() {
        let done = json!({"type": "response.completed", "response": {"id": "resp_1",
            "output": [{"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "id": "msg_1", "content": [{"type": "output_text", "text": "Hi"}]},
                {"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f", "arguments": "{\"a\":1}"}],
            "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}}});
        let body = format!(
            "event: response.created\ndata: {}\n\nevent: response.completed\ndata: {done}\n\n",
            json!({"type": "response.created", "response": {"id": "resp_1"}})
        );
        assert_eq!(
            answered(body.as_bytes(), true).id.as_deref(),
            Some("resp_1")
        );
        let chat: Value = serde_json::from_slice(&answer_as_chat(body.as_bytes(), true)).unwrap();
        assert_eq!(chat["id"], "resp_1");
        assert_eq!(chat["choices"][0]["message"]["content"], "Hi");
        assert_eq!(
            chat["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(chat["usage"]["prompt_tokens"], 5);
        assert_eq!(chat["usage"]["completion_tokens"], 2);
        assert_eq!(
            chat["output_items"],
            json!([{"id": "rs_1", "type": "reasoning"}, {"id": "msg_1", "type": "message"},
                {"id": "fc_1", "type": "function_call"}])
        );
    }

    #[test]
    fn a_stream_cut_short_keeps_its_text_deltas() {
        let body = "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_2\"}}\n\n\
            data: {\"type\":\"response.output_text.delta\",\"delta\":\"Par\"}\n\n\
            data: {\"type\":\"response.output_text.delta\",\"delta\":\"tial\"}\n\n";
        let chat: Value = serde_json::from_slice(&answer_as_chat(body.as_bytes(), true)).unwrap();
        assert_eq!(chat["id"], "resp_2");
        assert_eq!(chat["choices"][0]["message"]["content"], "Partial");
    }
}
