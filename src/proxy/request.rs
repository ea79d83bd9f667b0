//! Reading a chat completion request just enough to route it: its model,
//! whether it streams, and that its shape is sound. The body itself is
//! forwarded as received, with only the model name spliced in.

use crate::capture::answer::calls_of;
use crate::capture::responses::{conversation_key, item_key, response_key};
use crate::capture::threading::{ThreadHasher, message_text};
use crate::exchange::Wire;
use crate::openai::{ApiError, parse_json};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::ops::Range;

#[derive(Debug)]
pub struct ChatRequest {
    /// The route it came through; a Responses-API request is routed and
    /// sent as a chat completion is, to the provider's `responses`.
    pub wire: Wire,
    pub model: String,
    pub stream: bool,
    /// The key of the history this request continues, for implicit threading.
    pub history_key: Option<String>,
    /// Every message hashed: the answer completes the key a follow-up of
    /// this request will present.
    pub thread_prefix: Option<ThreadHasher>,
    /// The key a Responses request in a conversation the provider keeps
    /// (`conversation`) both presents and leaves: its turns follow each
    /// other whatever they say.
    pub conversation_key: Option<String>,
    /// OpenAI's `user` field: the end user, when the app names one.
    pub user: Option<String>,
    /// Whether the body holds all it refers to. A Responses request that
    /// names a stored response (`previous_response_id`), stored items
    /// (`item_reference`), a stored conversation (`conversation`) or a
    /// prompt template (`prompt`) does not: only the provider that stored
    /// them can answer it, so no shadow copy is sent.
    pub self_contained: bool,
    /// Where the `model` value (with its quotes) sits in the body.
    model_span: Range<usize>,
}

#[derive(Deserialize)]
struct View<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<Vec<Message<'a>>>,
    stream: Option<bool>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    n: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    // Read only to check their types: a wrong type is a 400 naming the field.
    #[serde(rename = "stream_options")]
    _stream_options: Option<StreamOptions>,
    #[serde(rename = "max_tokens")]
    _max_tokens: Option<u32>,
    #[serde(rename = "max_completion_tokens")]
    _max_completion_tokens: Option<u32>,
    #[serde(rename = "tools", borrow)]
    _tools: Option<Vec<Tool<'a>>>,
}

/// The fields of a Responses-API request that routing and threading read;
/// the provider checks the rest.
#[derive(Deserialize)]
struct ResponsesView<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    instructions: Option<&'a RawValue>,
    stream: Option<bool>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    previous_response_id: Option<Cow<'a, str>>,
    /// A conversation object stored at the provider: its id, or
    /// `{"id": …}`.
    #[serde(borrow)]
    conversation: Option<&'a RawValue>,
    /// A prompt template stored at the provider: only whether one is
    /// named is read.
    prompt: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow, default)]
    function_call: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_call_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(rename = "include_usage")]
    _include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(rename = "type", borrow)]
    _kind: Cow<'a, str>,
    #[serde(rename = "function")]
    _function: Option<IgnoredAny>,
}

const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

impl ChatRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let view: View<'_> = parse_json(body)?;
        let (raw_model, model) = model_of(view.model)?;
        check_messages(view.messages.as_deref())?;
        check_ranges(&view)?;
        let start = raw_model.get().as_ptr() as usize - body.as_ptr() as usize;
        let (history_key, thread_prefix) = thread_keys(view.messages.as_deref().unwrap_or(&[]));
        Ok(Self {
            wire: Wire::Chat,
            model,
            stream: view.stream.unwrap_or(false),
            history_key,
            thread_prefix: Some(thread_prefix),
            conversation_key: None,
            user: end_user(view.user),
            self_contained: true,
            model_span: start..start + raw_model.get().len(),
        })
    }

    /// A `POST /v1/responses` body: its model, whether it streams, its
    /// end user, and the response it continues (`previous_response_id`),
    /// whose key is the history key that threads it.
    pub fn parse_responses(body: &[u8]) -> Result<Self, ApiError> {
        let view: ResponsesView<'_> = parse_json(body)?;
        let (raw_model, model) = model_of(view.model)?;
        match view.input.map(|raw| raw.get().as_bytes().first().copied()) {
            Some(Some(b'"' | b'[')) => {}
            _ => {
                return Err(ApiError::invalid(
                    "`input` must be a string or a list of input items",
                    Some("input"),
                ));
            }
        }
        let start = raw_model.get().as_ptr() as usize - body.as_ptr() as usize;
        let previous = view
            .previous_response_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty());
        let names_stored = view.conversation.is_some() || view.prompt.is_some();
        let conversation_key = view
            .conversation
            .and_then(conversation_id)
            .map(|id| conversation_key(&id));
        let (history_key, thread_prefix, self_contained) = match (previous, &conversation_key) {
            (Some(id), _) => (Some(response_key(id)), None, false),
            (None, Some(key)) => (Some(key.clone()), None, false),
            (None, None) => {
                let keys = responses_thread_keys(view.instructions, view.input);
                (
                    keys.history,
                    Some(keys.prefix),
                    !keys.references_stored && !names_stored,
                )
            }
        };
        Ok(Self {
            wire: Wire::Responses,
            model,
            stream: view.stream.unwrap_or(false),
            history_key,
            thread_prefix,
            conversation_key,
            user: end_user(view.user),
            self_contained,
            model_span: start..start + raw_model.get().len(),
        })
    }

    /// The body to send upstream: unchanged when the name is the same,
    /// otherwise with the `model` value replaced in place.
    pub fn body_for(&self, body: &Bytes, upstream_model: &str) -> Bytes {
        if upstream_model == self.model {
            return body.clone();
        }
        let quoted = serde_json::Value::from(upstream_model).to_string();
        let mut out = BytesMut::with_capacity(body.len() + quoted.len());
        out.extend_from_slice(&body[..self.model_span.start]);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(&body[self.model_span.end..]);
        out.freeze()
    }
}

/// The key of the history the request continues (its messages up to the
/// last assistant message; none for a first turn) and the running key over
/// all of its messages.
fn thread_keys(messages: &[Message<'_>]) -> (Option<String>, ThreadHasher) {
    let last_assistant = messages.iter().rposition(|m| m.role == "assistant");
    let mut hasher = ThreadHasher::default();
    let mut history = None;
    for (i, m) in messages.iter().enumerate() {
        let calls = if m.role == "assistant" {
            calls_of(
                m.tool_calls.map(RawValue::get),
                m.function_call.map(RawValue::get),
            )
        } else {
            Vec::new()
        };
        hasher.add(
            &m.role,
            &content_text(m.content),
            &calls,
            m.tool_call_id.as_deref(),
        );
        if Some(i) == last_assistant {
            history = Some(hasher.key());
        }
    }
    (history, hasher)
}

/// The request's `model`, raw (where it sits in the body) and read.
fn model_of(raw: Option<&RawValue>) -> Result<(&RawValue, String), ApiError> {
    let raw =
        raw.ok_or_else(|| ApiError::invalid("you must provide a model parameter", Some("model")))?;
    let model: String = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::invalid("`model` must be a string", Some("model")))?;
    if model.trim().is_empty() {
        return Err(ApiError::invalid(
            "`model` must not be empty",
            Some("model"),
        ));
    }
    Ok((raw, model))
}

/// The body's `user`, trimmed and cut to 256 characters; none when blank.
fn end_user(user: Option<Cow<'_, str>>) -> Option<String> {
    user.map(|u| u.trim().chars().take(256).collect::<String>())
        .filter(|u| !u.is_empty())
}

/// What threads a Responses request that names no previous response.
struct ResponsesKeys {
    /// The history key: the input read as the chat messages capture stores
    /// it as (instructions first); when the history's last assistant item
    /// is an `item_reference`, that item's key.
    history: Option<String>,
    prefix: ThreadHasher,
    /// Whether any input item is an `item_reference` (stored at the
    /// provider).
    references_stored: bool,
}

/// The id of a `conversation` value, a string or `{"id": …}`; any other
/// shape is the provider's to refuse.
fn conversation_id(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        id: Cow<'a, str>,
    }
    let id = serde_json::from_str::<Cow<'_, str>>(raw.get())
        .or_else(|_| serde_json::from_str::<Named<'_>>(raw.get()).map(|n| n.id))
        .ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

fn responses_thread_keys(
    instructions: Option<&RawValue>,
    input: Option<&RawValue>,
) -> ResponsesKeys {
    // Only the two fields that make the history are read into values, not
    // the whole body again.
    let value = |raw: Option<&RawValue>| {
        raw.and_then(|r| serde_json::from_str::<serde_json::Value>(r.get()).ok())
            .unwrap_or_default()
    };
    let request = serde_json::json!({"instructions": value(instructions), "input": value(input)});
    let referenced = last_assistant_item(&request["input"])
        .filter(|item| item["type"] == "item_reference")
        .and_then(|item| item["id"].as_str())
        .map(item_key);
    let references_stored = request["input"]
        .as_array()
        .is_some_and(|items| items.iter().any(|item| item["type"] == "item_reference"));
    let chat = crate::capture::responses::request_as_chat(request);
    // A reference stands for an item whose text the request does not
    // hold; the item's own key threads it (`referenced`).
    let messages: Vec<&serde_json::Value> = chat["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m.get("item_reference").is_none())
        .collect();
    let last_assistant = messages.iter().rposition(|m| m["role"] == "assistant");
    let mut hasher = ThreadHasher::default();
    let mut history = None;
    for (i, message) in messages.into_iter().enumerate() {
        hasher.add_value(message);
        if Some(i) == last_assistant {
            history = Some(hasher.key());
        }
    }
    ResponsesKeys {
        history: referenced.or(history),
        prefix: hasher,
        references_stored,
    }
}

/// The last input item the model wrote: an assistant message, a function
/// call, or a reference to a stored one.
fn last_assistant_item(input: &serde_json::Value) -> Option<&serde_json::Value> {
    input.as_array()?.iter().rev().find(|item| {
        item["role"] == "assistant"
            || matches!(
                item["type"].as_str(),
                Some("function_call" | "item_reference")
            )
    })
}

/// A message's text, read from its raw JSON: a string without escapes is
/// borrowed; text that does not decode (a lone surrogate) counts as written.
fn content_text<'a>(content: Option<&'a RawValue>) -> Cow<'a, str> {
    let Some(raw) = content.map(RawValue::get) else {
        return Cow::Borrowed("");
    };
    match raw.as_bytes().first() {
        // Without a backslash the text is the raw string between its quotes.
        Some(b'"') if !raw.contains('\\') => raw
            .get(1..raw.len() - 1)
            .map_or(Cow::Borrowed(raw), Cow::Borrowed),
        Some(b'"') => serde_json::from_str::<String>(raw)
            .map(Cow::Owned)
            .unwrap_or(Cow::Borrowed(raw)),
        Some(b'[') => serde_json::from_str::<serde_json::Value>(raw)
            .map(|v| Cow::Owned(message_text(&v)))
            .unwrap_or(Cow::Borrowed(raw)),
        _ => Cow::Borrowed(""),
    }
}

fn check_messages(messages: Option<&[Message<'_>]>) -> Result<(), ApiError> {
    let messages = messages
        .ok_or_else(|| ApiError::invalid("`messages` is a required property", Some("messages")))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must contain at least one message",
            Some("messages"),
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_ref()) {
            return Err(ApiError::invalid(
                format!("`messages[{i}].role` must be one of {}", ROLES.join(", ")),
                Some(&format!("messages[{i}].role")),
            ));
        }
        let content_ok = m
            .content
            .is_none_or(|c| matches!(c.get().as_bytes().first(), Some(b'"' | b'[' | b'n')));
        if !content_ok {
            return Err(ApiError::invalid(
                format!("`messages[{i}].content` must be a string, an array of parts or null"),
                Some(&format!("messages[{i}].content")),
            ));
        }
    }
    Ok(())
}

fn check_ranges(view: &View<'_>) -> Result<(), ApiError> {
    if view.n == Some(0) {
        return Err(ApiError::invalid("`n` must be at least 1", Some("n")));
    }
    if view.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(ApiError::invalid(
            "`temperature` must be between 0 and 2",
            Some("temperature"),
        ));
    }
    if view.top_p.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
        return Err(ApiError::invalid(
            "`top_p` must be between 0 and 1",
            Some("top_p"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param(body: &str) -> Option<String> {
        match ChatRequest::parse(body.as_bytes()) {
            Err(ApiError::InvalidRequest { param, .. }) => param,
            other => panic!("expected a 400 for {body}, got {other:?}"),
        }
    }

    #[test]
    fn the_model_is_spliced_and_nothing_else_changes() {
        let body = Bytes::from_static(
            br#"{ "model" : "triage", "messages":[{"role":"user","content":"hi \"x\""}], "stream":true}"#,
        );
        let r = ChatRequest::parse(&body).unwrap();
        assert!(r.stream);
        let out = r.body_for(&body, "gpt-4o-mini");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "model" : "gpt-4o-mini", "messages":[{"role":"user","content":"hi \"x\""}], "stream":true}"#
        );
        assert_eq!(r.body_for(&body, "triage").as_ptr(), body.as_ptr());
    }

    #[test]
    fn escaped_model_names_are_read_and_replaced_whole() {
        let body = Bytes::from_static(
            br#"{"model":"tri\u0061ge","messages":[{"role":"user","content":"x"}]}"#,
        );
        let r = ChatRequest::parse(&body).unwrap();
        assert_eq!(r.model, "triage");
        let out = r.body_for(&body, "m\"q");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"m\"q","messages":[{"role":"user","content":"x"}]}"#
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (r#"{"messages":[{"role":"user","content":"x"}]}"#, "model"),
            (r#"{"model":5,"messages":[]}"#, "model"),
            (r#"{"model":"m"}"#, "messages"),
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (r#"{"model":"m","messages":{"role":"user"}}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"content":"x"}]}"#,
                "messages[0]",
            ),
            (
                r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#,
                "stream",
            ),
            (r#"{"model":"m","messages":[{"role":"user"}],"n":-1}"#, "n"),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"tools":[{"function":{}}]}"#,
                "tools[0]",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}],"stream_options":{"include_usage":1}}"#,
                "stream_options.include_usage",
            ),
        ];
        for (body, expected) in cases {
            let got = param(body);
            assert!(
                got.as_deref().is_some_and(|p| p.starts_with(expected)),
                "{body}: param {got:?}, expected {expected}"
            );
        }
    }

    #[test]
    fn only_a_request_that_names_nothing_stored_is_self_contained() {
        let parse = |body: serde_json::Value| {
            ChatRequest::parse_responses(body.to_string().as_bytes())
                .unwrap()
                .self_contained
        };
        assert!(parse(json!({"model": "m", "input": "alert"})));
        assert!(parse(json!({"model": "m", "input": [
            {"role": "user", "content": "alert"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]},
            {"role": "user", "content": "and?"}]})));
        assert!(!parse(
            json!({"model": "m", "input": "and?", "previous_response_id": "resp_1"})
        ));
        assert!(!parse(
            json!({"model": "m", "input": "and?", "conversation": "conv_1"})
        ));
        assert!(!parse(
            json!({"model": "m", "input": "alert", "prompt": {"id": "pmpt_1"}})
        ));
        assert!(!parse(json!({"model": "m", "input": [
            {"role": "user", "content": "alert"},
            {"type": "item_reference", "id": "msg_1"},
            {"role": "user", "content": "and?"}]})));
        let chat = json!({"model": "m", "messages": [{"role": "user", "content": "alert"}]});
        assert!(
            ChatRequest::parse(chat.to_string().as_bytes())
                .unwrap()
                .self_contained
        );
    }

    #[test]
    fn a_conversation_objects_turns_present_and_leave_its_key() {
        let parse = |body: serde_json::Value| {
            ChatRequest::parse_responses(body.to_string().as_bytes()).unwrap()
        };
        let by_id = parse(json!({"model": "m", "input": "alert", "conversation": "conv_1"}));
        let key = Some(conversation_key("conv_1"));
        assert_eq!(by_id.conversation_key, key);
        assert_eq!(by_id.history_key, key);
        assert!(
            by_id.thread_prefix.is_none(),
            "its input is not the history"
        );
        let by_object = parse(
            json!({"model": "m", "input": [{"role": "user", "content": "and?"}],
            "conversation": {"id": " conv_1 "}}),
        );
        assert_eq!(by_object.conversation_key, key);
        assert_eq!(by_object.history_key, key);
        // A named response is what the turn follows; the provider refuses
        // both at once, and nothing blank or odd is a conversation.
        let both = parse(
            json!({"model": "m", "input": "and?", "conversation": "conv_1",
            "previous_response_id": "resp_1"}),
        );
        assert_eq!(both.history_key, Some(response_key("resp_1")));
        for odd in [json!(""), json!({"id": 7}), json!(7), json!(null)] {
            let request = parse(json!({"model": "m", "input": "alert", "conversation": odd}));
            assert_eq!(request.conversation_key, None, "{odd}");
            assert!(request.thread_prefix.is_some(), "{odd}");
        }
        let chat = json!({"model": "m", "messages": [{"role": "user", "content": "alert"}]});
        let chat = ChatRequest::parse(chat.to_string().as_bytes()).unwrap();
        assert_eq!(chat.conversation_key, None);
    }

    #[test]
    fn malformed_json_is_a_400_without_a_param() {
        for body in ["", "{", "[1]", "null", "{\"model\":\"m\"} trailing"] {
            assert!(
                matches!(
                    ChatRequest::parse(body.as_bytes()),
                    Err(ApiError::InvalidRequest { .. })
                ),
                "{body}"
            );
        }
    }
}
