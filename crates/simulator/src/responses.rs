//! The Responses API: `POST /v1/responses` and `GET /v1/responses/{id}`.
//!
//! A request is read into the chat-completions shape the models answer
//! (`instructions` as a system message; `input` items as messages —
//! `function_call` items as an assistant's tool calls, `function_call_output`
//! items as tool messages; the conversation of `previous_response_id` in
//! front), planned by the same `Completion` as a chat completion, so
//! `tools`/`tool_choice` (see `tools`) and `text.format` (see `schema`)
//! behave the same, and written back as a `response` object with
//! `message` or `function_call` output items and its usage. With
//! `stream`, typed server-sent events (`event: <type>` and `data:` lines,
//! numbered by `sequence_number`): `response.created`,
//! `response.in_progress`, per item `response.output_item.added`, for text
//! `response.content_part.added`, one `response.output_text.delta` per
//! token, `response.output_text.done`, `response.content_part.done`, for a
//! call one `response.function_call_arguments.delta` per piece and
//! `response.function_call_arguments.done`, then
//! `response.output_item.done`, and last `response.completed` (or
//! `response.incomplete` when `max_output_tokens` cut the answer).
//!
//! Responses made with `store` (the default) are kept in memory, the
//! newest 4096 (see `kept`), for `previous_response_id` and retrieval; a response
//! in a `conversation` reads and extends that conversation's items (see
//! `conversations`).

use super::MODELS;
use super::Sim;
use super::chat::{self, Completion, Reply};
use super::conversations::{self, Conversations};
use super::faults::{self, Pacing};
use super::kept::Newest;
use super::request::{
    ChatRequest, Format, boolean, choice_of, format_of, given, integer, invalid_type,
    json_mentioned, missing, number, parameters,
};
use super::stream::{self, Event};
use super::tools::{self, Tool};
use super::wire::{self, ApiError, kind_of};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The OpenAI floor for `max_output_tokens`.
const MIN_OUTPUT_TOKENS: i64 = 16;

/// Stored responses: the conversation each ends (for a follow-up) and
/// the object (for retrieval).
pub type Log = Newest<Stored>;

pub struct Stored {
    /// Input and output as chat messages, without `instructions` (a
    /// follow-up does not inherit them).
    messages: Vec<Value>,
    object: Value,
}

/// A valid request: what the models answer, and what the response echoes.
struct ResponsesRequest {
    chat: ChatRequest,
    /// The input turned into messages, with the previous conversation.
    history: Vec<Value>,
    /// The conversation object it is in, and what it adds to it.
    conversation: Option<String>,
    input: Vec<Value>,
    store: bool,
    echo: Value,
}

pub async fn create(
    State(sim): State<Sim>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            return ApiError::new(
                rejection.status(),
                "invalid_request_error",
                rejection.body_text(),
            )
            .into_response();
        }
    };
    let lookup = |model: &str| {
        (!MODELS.contains(&model))
            .then(|| sim.lab.state().model(model))
            .flatten()
    };
    let request = match parse(
        &body,
        &|model| lookup(model).is_some(),
        &sim.responses,
        &sim.conversations,
    ) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    if faults::model_fails(&headers, &sim.config.fail_rates, &request.chat.model) {
        return faults::model_failure(&request.chat.model);
    }
    let pacing = Pacing::from_headers(&headers);
    let token_delay = pacing.token_delay.unwrap_or(sim.config.token_delay);
    let tuned = lookup(&request.chat.model);
    let completion = Completion::plan(&request.chat, tuned.as_deref());
    let answer = Answer::new(&request, &completion);
    if request.store {
        let mut messages = request.history.clone();
        messages.push(answer.message.clone());
        let stored = Stored {
            messages,
            object: answer.object.clone(),
        };
        sim.responses.insert(answer.id.clone(), stored);
    }
    if let Some(id) = &request.conversation {
        let added = request.input.iter().cloned();
        sim.conversations
            .append(id, added.chain([answer.message.clone()]));
    }
    let tokens = completion.completion_tokens();
    if request.chat.stream {
        stream::send(answer.events(&request.echo), token_delay, pacing.drop_after)
    } else {
        chat::paced_json(answer.object, tokens, token_delay, pacing.drop_after).await
    }
}

pub async fn retrieve(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    match sim.responses.read(&id, |stored| stored.object.clone()) {
        Some(object) => axum::Json(object).into_response(),
        None => not_found(&id).into_response(),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("Response with id '{id}' not found."),
    )
}

fn parse(
    body: &[u8],
    tuned: &dyn Fn(&str) -> bool,
    log: &Log,
    conversations: &Conversations,
) -> Result<ResponsesRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::invalid("We could not parse the JSON body of your request."))?;
    let Value::Object(request) = value else {
        return Err(ApiError::invalid(format!(
            "Invalid type for request body: expected an object, but got {} instead.",
            kind_of(&value)
        )));
    };
    let model = match given(&request, "model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        None | Some(Value::String(_)) => return Err(missing("model")),
        Some(other) => return Err(invalid_type("model", "a string", other)),
    };
    let instructions = match given(&request, "instructions") {
        None => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => return Err(invalid_type("instructions", "a string", other)),
    };
    let previous = match given(&request, "previous_response_id") {
        None => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(other) => return Err(invalid_type("previous_response_id", "a string", other)),
    };
    let conversation = conversation_of(&request)?;
    let mut history = match (&previous, &conversation) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "Mutually exclusive parameters: Ensure you are only providing one of: 'previous_response_id' or 'conversation'.",
            )
            .param("conversation")
            .code("mutually_exclusive_parameters"));
        }
        (Some(id), None) => log
            .read(id, |stored| stored.messages.clone())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    format!("Previous response with id '{id}' not found."),
                )
                .param("previous_response_id")
            })?,
        (None, Some(id)) => conversations
            .messages(id)
            .ok_or_else(|| conversations::not_found(id).param("conversation"))?,
        (None, None) => Vec::new(),
    };
    let input = input_messages(given(&request, "input"), "input")?;
    history.extend(input.iter().cloned());
    let stream = boolean(&request, "stream", "stream")?.unwrap_or(false);
    let store = boolean(&request, "store", "store")?.unwrap_or(true);
    number(&request, "temperature", 0.0, 2.0)?;
    number(&request, "top_p", 0.0, 1.0)?;
    let max_tokens = integer(&request, "max_output_tokens", MIN_OUTPUT_TOKENS, i64::MAX)?;
    let offered = functions(&request)?;
    let choice = choice_of(
        given(&request, "tool_choice"),
        &offered,
        |choice| choice.get("name")?.as_str(),
        "tool_choice.name",
    )?;
    let format = match given(&request, "text").and_then(|t| t.get("format")) {
        None | Some(Value::Null) => Format::Text,
        Some(Value::Object(fields)) => format_of(fields, "text.format", Ok)?,
        Some(other) => return Err(invalid_type("text.format", "an object", other)),
    };
    let mut messages: Vec<Value> = instructions
        .iter()
        .map(|text| json!({"role": "system", "content": text}))
        .collect();
    messages.extend(history.iter().cloned());
    if format == Format::JsonObject {
        json_mentioned(messages.iter().map(chat::text_of), "input", "text.format")?;
    }
    if !MODELS.contains(&model.as_str()) && !tuned(&model) {
        return Err(wire::model_not_found(&model));
    }
    let tool = tools::decide(&choice, &offered, &messages).cloned();
    let echo = json!({
        "instructions": instructions,
        "max_output_tokens": max_tokens,
        "metadata": given(&request, "metadata").cloned().unwrap_or_else(|| json!({})),
        "model": model,
        "parallel_tool_calls": given(&request, "parallel_tool_calls").cloned().unwrap_or(json!(true)),
        "previous_response_id": previous,
        "conversation": conversation.as_ref().map(|id| json!({"id": id})),
        "reasoning": {"effort": null, "summary": null},
        "store": store,
        "temperature": given(&request, "temperature").cloned().unwrap_or(json!(1.0)),
        "text": {"format": given(&request, "text").and_then(|t| t.get("format")).cloned().unwrap_or(json!({"type": "text"}))},
        "tool_choice": given(&request, "tool_choice").cloned().unwrap_or(json!("auto")),
        "tools": given(&request, "tools").cloned().unwrap_or(json!([])),
        "top_p": given(&request, "top_p").cloned().unwrap_or(json!(1.0)),
        "truncation": given(&request, "truncation").cloned().unwrap_or(json!("disabled")),
        "user": given(&request, "user").cloned(),
    });
    Ok(ResponsesRequest {
        chat: ChatRequest {
            model,
            messages,
            stream,
            include_usage: true,
            n: 1,
            max_tokens: max_tokens.map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
            tool,
            format,
        },
        history,
        conversation,
        input,
        store,
        echo,
    })
}

/// The conversation object named by `conversation`: its id, or
/// `{"id": …}`.
fn conversation_of(request: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let id = match given(request, "conversation") {
        None => return Ok(None),
        Some(Value::String(id)) => id,
        Some(Value::Object(fields)) => match given(fields, "id") {
            Some(Value::String(id)) => id,
            None => return Err(missing("conversation.id")),
            Some(other) => return Err(invalid_type("conversation.id", "a string", other)),
        },
        Some(other) => return Err(invalid_type("conversation", "a string or object", other)),
    };
    Ok(Some(id.clone()))
}

/// The function tools (flat: `{"type":"function","name","parameters"}`).
fn functions(request: &Map<String, Value>) -> Result<Vec<Tool>, ApiError> {
    let tools = match given(request, "tools") {
        None => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(other) => return Err(invalid_type("tools", "an array", other)),
    };
    tools
        .iter()
        .enumerate()
        .map(|(i, tool)| {
            let at = format!("tools[{i}]");
            let Value::Object(fields) = tool else {
                return Err(invalid_type(&at, "an object", tool));
            };
            match given(fields, "type") {
                Some(Value::String(t)) if t == "function" => {}
                None => return Err(missing(&format!("{at}.type"))),
                Some(other) => {
                    return Err(ApiError::invalid(format!(
                        "Invalid value: {other}. The simulator supports only 'function' tools."
                    ))
                    .param(format!("{at}.type"))
                    .code("invalid_value"));
                }
            }
            let name = match given(fields, "name") {
                Some(Value::String(name)) if !name.is_empty() => name.clone(),
                None => return Err(missing(&format!("{at}.name"))),
                Some(other) => return Err(invalid_type(&format!("{at}.name"), "a string", other)),
            };
            let parameters = parameters(given(fields, "parameters"), &format!("{at}.parameters"))?;
            Ok(Tool { name, parameters })
        })
        .collect()
}

/// `input` (or a conversation's `items`, as `name` says) as chat
/// messages: a string is one user message; items are
/// messages (`role` and `content`, string or parts), function calls and
/// their outputs. Reasoning items and references carry nothing the
/// simulator reads.
pub fn input_messages(input: Option<&Value>, name: &str) -> Result<Vec<Value>, ApiError> {
    let items = match input {
        None => return Err(missing(name)),
        Some(Value::String(text)) => return Ok(vec![json!({"role": "user", "content": text})]),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(invalid_type(name, "a string or array", other)),
    };
    let mut messages: Vec<Value> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{name}[{i}]");
        let Value::Object(fields) = item else {
            return Err(invalid_type(&at, "an object", item));
        };
        let field = |name: &str| -> Result<String, ApiError> {
            match given(fields, name) {
                Some(Value::String(s)) => Ok(s.clone()),
                None => Err(missing(&format!("{at}.{name}"))),
                Some(other) => Err(invalid_type(&format!("{at}.{name}"), "a string", other)),
            }
        };
        match given(fields, "type").and_then(Value::as_str) {
            None | Some("message") => {
                let role = field("role")?;
                if !matches!(role.as_str(), "user" | "assistant" | "system" | "developer") {
                    return Err(ApiError::invalid(format!(
                        "Invalid value: '{role}'. Supported values are: 'assistant', 'system', 'developer', and 'user'."
                    ))
                    .param(format!("{at}.role"))
                    .code("invalid_value"));
                }
                let content = match given(fields, "content") {
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    None => return Err(missing(&format!("{at}.content"))),
                    Some(other) => {
                        return Err(invalid_type(
                            &format!("{at}.content"),
                            "a string or array",
                            other,
                        ));
                    }
                };
                messages.push(json!({"role": role, "content": content}));
            }
            Some("function_call") => {
                let call = json!({"id": field("call_id")?, "type": "function",
                    "function": {"name": field("name")?, "arguments": field("arguments")?}});
                // Calls made together are one assistant turn.
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" && last["tool_calls"].is_array() => {
                        if let Some(calls) = last["tool_calls"].as_array_mut() {
                            calls.push(call);
                        }
                    }
                    _ => messages
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let output = match given(fields, "output") {
                    Some(Value::String(text)) => text.clone(),
                    Some(other) => other.to_string(),
                    None => return Err(missing(&format!("{at}.output"))),
                };
                messages.push(
                    json!({"role": "tool", "tool_call_id": field("call_id")?, "content": output}),
                );
            }
            Some("reasoning" | "item_reference") => {}
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "Invalid value: '{other}'. The simulator reads 'message', 'function_call' and 'function_call_output' items."
                ))
                .param(format!("{at}.type"))
                .code("invalid_value"));
            }
        }
    }
    Ok(messages)
}

/// The planned answer as a response: its output item and the whole object.
struct Answer {
    id: String,
    created_at: u64,
    item: Value,
    /// The item's text or arguments, in the pieces a stream sends.
    pieces: Vec<String>,
    incomplete: bool,
    usage: Value,
    /// The output as a chat message, for the stored conversation.
    message: Value,
    object: Value,
}

impl Answer {
    fn new(request: &ResponsesRequest, completion: &Completion) -> Self {
        let id = wire::random_id("resp_");
        let created_at = wire::now_unix();
        let (item, pieces, incomplete, message) = match completion.choices.first() {
            Some(choice) => {
                let incomplete = choice.finish_reason == "length";
                let status = if incomplete {
                    "incomplete"
                } else {
                    "completed"
                };
                match &choice.reply {
                    Reply::Text(tokens) => {
                        let text = tokens.concat();
                        let item = json!({
                            "id": wire::random_id("msg_"),
                            "type": "message",
                            "status": status,
                            "role": "assistant",
                            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
                        });
                        let message = json!({"role": "assistant", "content": text});
                        (item, tokens.clone(), incomplete, message)
                    }
                    Reply::Tool {
                        id: call_id,
                        name,
                        arguments,
                    } => {
                        let arguments_text = arguments.concat();
                        let item = json!({
                            "id": wire::random_id("fc_"),
                            "type": "function_call",
                            "status": status,
                            "call_id": call_id,
                            "name": name,
                            "arguments": arguments_text,
                        });
                        let message = json!({"role": "assistant", "content": null, "tool_calls": [
                            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments_text}}]});
                        (item, arguments.clone(), incomplete, message)
                    }
                }
            }
            None => (
                Value::Null,
                Vec::new(),
                false,
                json!({"role": "assistant", "content": ""}),
            ),
        };
        let output_tokens = completion.completion_tokens();
        let usage = json!({
            "input_tokens": completion.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": completion.prompt_tokens + output_tokens,
        });
        let mut answer = Answer {
            id,
            created_at,
            item,
            pieces,
            incomplete,
            usage,
            message,
            object: Value::Null,
        };
        answer.object = answer.response(&request.echo, true);
        answer
    }

    /// The `response` object, finished or (for the first events) still in
    /// progress with no output.
    fn response(&self, echo: &Value, finished: bool) -> Value {
        let mut object = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "in_progress",
            "background": false,
            "error": null,
            "incomplete_details": null,
            "output": [],
            "service_tier": "default",
            "usage": null,
        });
        if let (Value::Object(fields), Value::Object(echoed)) = (&mut object, echo) {
            for (key, value) in echoed {
                fields.insert(key.clone(), value.clone());
            }
        }
        if finished {
            object["status"] = json!(if self.incomplete {
                "incomplete"
            } else {
                "completed"
            });
            if self.incomplete {
                object["incomplete_details"] = json!({"reason": "max_output_tokens"});
            }
            object["output"] = json!([self.item]);
            object["usage"] = self.usage.clone();
        }
        object
    }

    /// The typed events of a streamed response, in order.
    fn events(&self, echo: &Value) -> Vec<Event> {
        let mut events = Vec::new();
        let mut push = |kind: &str, mut payload: Value, token: bool| {
            payload["type"] = json!(kind);
            payload["sequence_number"] = json!(events.len());
            events.push(Event {
                data: Bytes::from(format!("event: {kind}\ndata: {payload}\n\n")),
                token,
            });
        };
        let started = self.response(echo, false);
        push("response.created", json!({"response": started}), false);
        push("response.in_progress", json!({"response": started}), false);
        let item_id = self.item["id"].clone();
        let mut opened = self.item.clone();
        opened["status"] = json!("in_progress");
        let at = |extra: Value| {
            let mut payload = json!({"item_id": item_id, "output_index": 0});
            if let (Value::Object(fields), Value::Object(extra)) = (&mut payload, extra) {
                fields.extend(extra);
            }
            payload
        };
        if self.item["type"] == "message" {
            opened["content"] = json!([]);
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": opened}),
                false,
            );
            let empty =
                json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
            push(
                "response.content_part.added",
                at(json!({"content_index": 0, "part": empty})),
                false,
            );
            for piece in &self.pieces {
                push(
                    "response.output_text.delta",
                    at(json!({"content_index": 0, "delta": piece, "logprobs": []})),
                    true,
                );
            }
            let text = self.pieces.concat();
            push(
                "response.output_text.done",
                at(json!({"content_index": 0, "text": text, "logprobs": []})),
                false,
            );
            push(
                "response.content_part.done",
                at(json!({"content_index": 0, "part": self.item["content"][0]})),
                false,
            );
        } else if self.item["type"] == "function_call" {
            opened["arguments"] = json!("");
            push(
                "response.output_item.added",
                json!({"output_index": 0, "item": opened}),
                false,
            );
            for piece in &self.pieces {
                push(
                    "response.function_call_arguments.delta",
                    at(json!({"delta": piece})),
                    true,
                );
            }
            push(
                "response.function_call_arguments.done",
                at(json!({"name": self.item["name"], "arguments": self.pieces.concat()})),
                false,
            );
        }
        if !self.item.is_null() {
            push(
                "response.output_item.done",
                json!({"output_index": 0, "item": self.item}),
                false,
            );
        }
        let finished = if self.incomplete {
            "response.incomplete"
        } else {
            "response.completed"
        };
        push(
            finished,
            json!({"response": self.response(echo, true)}),
            false,
        );
        events
    }
}

/// What the base models read of a Responses request: for tests.
#[cfg(test)]
fn alert(request: &ResponsesRequest) -> String {
    super::dataset::alert_of(request.chat.messages.iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(body: Value, log: &Log) -> ResponsesRequest {
        parse(
            body.to_string().as_bytes(),
            &|_| false,
            log,
            &Conversations::default(),
        )
        .unwrap()
    }

    fn answer(body: Value, log: &Log) -> (ResponsesRequest, Answer) {
        let request = parse_ok(body, log);
        let completion = Completion::plan(&request.chat, None);
        let answer = Answer::new(&request, &completion);
        (request, answer)
    }

    fn sse(events: &[Event]) -> Vec<(String, Value)> {
        events
            .iter()
            .map(|e| {
                let text = std::str::from_utf8(&e.data).unwrap();
                let (event, data) = text.trim_end().split_once('\n').unwrap();
                let kind = event.strip_prefix("event: ").unwrap().to_string();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], kind.as_str());
                (kind, data)
            })
            .collect()
    }

    #[test]
    fn a_text_answer_has_the_response_shape() {
        let log = Log::default();
        let (request, answer) = answer(
            json!({"model": "gpt-4o", "instructions": "You triage alerts.",
                   "input": "mimikatz sekurlsa on WS-042", "metadata": {"ticket": "7"}}),
            &log,
        );
        assert_eq!(alert(&request), "mimikatz sekurlsa on WS-042");
        let object = &answer.object;
        assert!(object["id"].as_str().unwrap().starts_with("resp_"));
        assert_eq!(object["object"], "response");
        assert_eq!(object["status"], "completed");
        assert_eq!(object["instructions"], "You triage alerts.");
        assert_eq!(object["metadata"]["ticket"], "7");
        let item = &object["output"][0];
        assert_eq!(item["type"], "message");
        assert_eq!(item["role"], "assistant");
        assert!(item["id"].as_str().unwrap().starts_with("msg_"));
        let text = item["content"][0]["text"].as_str().unwrap();
        assert!(text.starts_with("Threat type: credential_access"));
        assert_eq!(item["content"][0]["type"], "output_text");
        let usage = &object["usage"];
        assert!(usage["input_tokens"].as_u64().unwrap() > 0);
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["input_tokens"].as_u64().unwrap() + usage["output_tokens"].as_u64().unwrap()
            )
        );
    }

    #[test]
    fn streamed_events_come_typed_and_numbered() {
        let log = Log::default();
        let (request, answer) = answer(
            json!({"model": "gpt-4o", "stream": true, "input": "whoami /all"}),
            &log,
        );
        let events = sse(&answer.events(&request.echo));
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        let deltas = kinds
            .iter()
            .filter(|k| **k == "response.output_text.delta")
            .count();
        assert!(deltas > 2);
        let mut expected = vec![
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
        ];
        expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
        expected.extend([
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]);
        assert_eq!(kinds, expected);
        for (i, (_, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], i);
        }
        assert_eq!(events[0].1["response"]["status"], "in_progress");
        assert_eq!(events[0].1["response"]["output"], json!([]));
        let text: String = events
            .iter()
            .filter(|(k, _)| k == "response.output_text.delta")
            .map(|(_, d)| d["delta"].as_str().unwrap())
            .collect();
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["output"][0]["content"][0]["text"], text.as_str());
        assert_eq!(done["status"], "completed");
        assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0);
        let item_id = &done["output"][0]["id"];
        assert!(
            events[3..events.len() - 1]
                .iter()
                .all(|(_, d)| &d["item_id"] == item_id || &d["item"]["id"] == item_id)
        );
    }

    #[test]
    fn function_calls_stream_their_arguments_and_follow_ups_answer_in_text() {
        let log = Log::default();
        let tools = json!([{"type": "function", "name": "lookup_host", "strict": true,
            "parameters": {"type": "object", "additionalProperties": false, "required": ["host"],
                           "properties": {"host": {"type": "string"}}}}]);
        let (request, answer) = answer(
            json!({"model": "gpt-4o", "stream": true, "tools": tools,
                   "input": [{"role": "user", "content": [{"type": "input_text", "text": "Look up host WS-042"}]}]}),
            &log,
        );
        let events = sse(&answer.events(&request.echo));
        let (_, added) = &events[2];
        assert_eq!(added["item"]["type"], "function_call");
        assert_eq!(added["item"]["name"], "lookup_host");
        assert_eq!(added["item"]["arguments"], "");
        let arguments: String = events
            .iter()
            .filter(|(k, _)| k == "response.function_call_arguments.delta")
            .map(|(_, d)| d["delta"].as_str().unwrap())
            .collect();
        let parsed: Value = serde_json::from_str(&arguments).unwrap();
        assert!(parsed["host"].is_string());
        let call_id = answer.item["call_id"].as_str().unwrap().to_string();
        assert!(call_id.starts_with("call_"));
        log.insert(
            answer.id.clone(),
            Stored {
                messages: {
                    let mut m = request.history.clone();
                    m.push(answer.message.clone());
                    m
                },
                object: answer.object.clone(),
            },
        );
        // The follow-up sends only the call's output.
        let (follow_up, second) = self::answer(
            json!({"model": "gpt-4o", "tools": tools, "previous_response_id": answer.id,
                   "input": [{"type": "function_call_output", "call_id": call_id, "output": "{\"owner\":\"bob\"}"}]}),
            &log,
        );
        assert_eq!(follow_up.chat.messages.len(), 3);
        assert_eq!(second.item["type"], "message");
        assert_eq!(second.object["previous_response_id"], answer.id.as_str());
    }

    #[test]
    fn text_format_and_limits_are_honoured() {
        let log = Log::default();
        let schema = json!({"type": "object", "required": ["threat_type", "severity"],
            "additionalProperties": false,
            "properties": {"threat_type": {"type": "string"}, "severity": {"type": "string"}}});
        let (_, answer) = answer(
            json!({"model": "gpt-4o", "input": "psexec to DC01",
                   "text": {"format": {"type": "json_schema", "name": "triage", "strict": true, "schema": schema}}}),
            &log,
        );
        let text = answer.object["output"][0]["content"][0]["text"]
            .as_str()
            .unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            value,
            json!({"threat_type": "lateral_movement", "severity": "high"})
        );

        let (_, cut) = self::answer(
            json!({"model": "gpt-4o", "input": "psexec to DC01", "max_output_tokens": 16}),
            &log,
        );
        assert_eq!(cut.object["status"], "incomplete");
        assert_eq!(
            cut.object["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert_eq!(cut.object["usage"]["output_tokens"], 16);
    }

    #[test]
    fn a_conversation_is_read_in_front_of_the_input_without_instructions() {
        let conversations = Conversations::default();
        let id = "conv_1";
        conversations.insert_empty(id);
        let text = "Alert: mimikatz ran on DC-01";
        let parse = |body: Value| {
            parse(
                body.to_string().as_bytes(),
                &|_| false,
                &Log::default(),
                &conversations,
            )
            .unwrap()
        };
        let first = parse(
            json!({"model": "gpt-4o", "instructions": "Triage.", "input": text,
            "conversation": id}),
        );
        assert_eq!(first.conversation.as_deref(), Some(id));
        assert_eq!(first.echo["conversation"], json!({"id": id}));
        let answer = Answer::new(&first, &Completion::plan(&first.chat, None));
        conversations.append(
            id,
            first.input.iter().cloned().chain([answer.message.clone()]),
        );
        let second = parse(json!({"model": "gpt-4o", "input": "and?",
            "conversation": {"id": id}}));
        let roles: Vec<&str> = second
            .chat
            .messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(second.chat.messages[0]["content"], text);
        assert_eq!(second.input, [json!({"role": "user", "content": "and?"})]);
    }

    #[test]
    fn bad_requests_name_the_param() {
        let log = Log::default();
        let param = |body: Value| {
            parse(
                body.to_string().as_bytes(),
                &|_| false,
                &log,
                &Conversations::default(),
            )
            .err()
            .map(|e| (e.status.as_u16(), e.param))
        };
        let p = |s: &str| Some(s.to_string());
        assert_eq!(param(json!({"input": "x"})), Some((400, p("model"))));
        assert_eq!(param(json!({"model": "gpt-4o"})), Some((400, p("input"))));
        assert_eq!(
            param(json!({"model": "gpt-4o", "input": [{"type": "web_search_call"}]})),
            Some((400, p("input[0].type")))
        );
        assert_eq!(
            param(json!({"model": "gpt-4o", "input": "x", "previous_response_id": "resp_nope"})),
            Some((404, p("previous_response_id")))
        );
        assert_eq!(
            param(json!({"model": "gpt-4o", "input": "x", "conversation": "conv_nope"})),
            Some((404, p("conversation")))
        );
        assert_eq!(
            param(json!({"model": "gpt-4o", "input": "x", "conversation": {"id": 1}})),
            Some((400, p("conversation.id")))
        );
        assert_eq!(
            param(
                json!({"model": "gpt-4o", "input": "x", "conversation": "conv_1",
                "previous_response_id": "resp_1"})
            ),
            Some((400, p("conversation")))
        );
        assert_eq!(
            param(json!({"model": "gpt-4o", "input": "x", "max_output_tokens": 5})),
            Some((400, p("max_output_tokens")))
        );
        assert_eq!(
            param(json!({"model": "gpt-4o", "input": "x", "tools": [{"type": "web_search"}]})),
            Some((400, p("tools[0].type")))
        );
        assert_eq!(
            param(
                json!({"model": "gpt-4o", "input": "x", "text": {"format": {"type": "json_object"}}})
            ),
            Some((400, p("input")))
        );
        assert_eq!(
            param(json!({"model": "nope", "input": "x"})),
            Some((404, None))
        );
    }
}
