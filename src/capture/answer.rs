//! The first choice's answer as threading sees it — its text and tool
//! calls — read from a unary body or a stream's bytes. It runs on the
//! request path when an answer completes, so it reads only those fields,
//! borrowing from the bytes, and builds no record.

use super::threading::CallKey;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The answer's part of the continuation key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AnswerKey {
    pub text: String,
    pub calls: Vec<CallKey>,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    choices: Vec<BodyChoice<'a>>,
}

#[derive(Deserialize)]
struct BodyChoice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow)]
    message: Option<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Vec<Call<'a>>,
    #[serde(borrow)]
    function_call: Option<Function<'a>>,
}

#[derive(Deserialize, Default)]
struct Call<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize, Default)]
struct Function<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<ChunkChoice<'a>>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Vec<Call<'a>>,
}

/// The first choice of a unary chat completion body.
pub fn from_body(body: &[u8]) -> Option<AnswerKey> {
    let body: Body<'_> = serde_json::from_slice(body).ok()?;
    let message = body.choices.into_iter().find(|c| c.index == 0)?.message?;
    let mut calls: Vec<CallKey> = message.tool_calls.iter().map(call_key).collect();
    if let Some(f) = &message.function_call {
        calls.push(CallKey::new("", text(&f.name), text(&f.arguments)));
    }
    Some(AnswerKey {
        text: message.content.map(Cow::into_owned).unwrap_or_default(),
        calls,
    })
}

/// The first choice of a stream, reassembled from its deltas: content
/// concatenated, tool calls by index (id and name from their first
/// fragment, arguments concatenated).
pub fn from_stream(body: &[u8]) -> Option<AnswerKey> {
    let mut text = String::new();
    let mut calls: BTreeMap<u64, (String, String, String)> = BTreeMap::new();
    let mut seen = false;
    for data in sse_data(body) {
        let Ok(chunk) = serde_json::from_str::<Chunk<'_>>(&data) else {
            continue;
        };
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            seen = true;
            let Some(delta) = choice.delta else { continue };
            text.push_str(delta.content.as_deref().unwrap_or(""));
            for call in delta.tool_calls {
                let entry = calls.entry(call.index).or_default();
                if let Some(id) = call.id {
                    entry.0 = id.into_owned();
                }
                let function = call.function.unwrap_or_default();
                if let Some(name) = function.name {
                    entry.1 = name.into_owned();
                }
                entry
                    .2
                    .push_str(function.arguments.as_deref().unwrap_or(""));
            }
        }
    }
    seen.then(|| AnswerKey {
        text,
        calls: calls
            .into_values()
            .map(|(id, name, args)| CallKey::new(&id, &name, &args))
            .collect(),
    })
}

/// The calls of a request's assistant message, from the raw JSON of its
/// `tool_calls` and (legacy) `function_call`; malformed ones count as none.
pub fn calls_of(tool_calls: Option<&str>, function_call: Option<&str>) -> Vec<CallKey> {
    let mut calls: Vec<CallKey> = tool_calls
        .and_then(|raw| serde_json::from_str::<Vec<Call<'_>>>(raw).ok())
        .unwrap_or_default()
        .iter()
        .map(call_key)
        .collect();
    if let Some(f) = function_call.and_then(|raw| serde_json::from_str::<Function<'_>>(raw).ok()) {
        calls.push(CallKey::new("", text(&f.name), text(&f.arguments)));
    }
    calls
}

fn call_key(call: &Call<'_>) -> CallKey {
    let function = call.function.as_ref();
    CallKey::new(
        text(&call.id),
        function.map_or("", |f| text(&f.name)),
        function.map_or("", |f| text(&f.arguments)),
    )
}

fn text<'a>(value: &'a Option<Cow<'_, str>>) -> &'a str {
    value.as_deref().unwrap_or("")
}

/// The `data` of each server-sent event, multi-line data joined by `\n`
/// (the SSE rules; comments and other fields skipped). An event of one
/// `data` line, the usual kind, is borrowed from the body.
pub fn sse_data(body: &[u8]) -> impl Iterator<Item = Cow<'_, str>> {
    let events = match std::str::from_utf8(body) {
        Ok(text) => events_of(text),
        Err(_) => events_of(&String::from_utf8_lossy(body))
            .into_iter()
            .map(|data| Cow::Owned(data.into_owned()))
            .collect(),
    };
    events.into_iter()
}

fn events_of(text: &str) -> Vec<Cow<'_, str>> {
    let mut events = Vec::new();
    let mut data: Option<Cow<'_, str>> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            events.extend(data.take());
            continue;
        }
        let Some(value) = line.strip_prefix("data:") else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        data = Some(match data.take() {
            None => Cow::Borrowed(value),
            Some(joined) => {
                let mut joined = joined.into_owned();
                joined.push('\n');
                joined.push_str(value);
                Cow::Owned(joined)
            }
        });
    }
    events.extend(data);
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unary_tool_call_answer_reads_as_its_calls() {
        let body = br#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":null,
            "tool_calls":[{"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\"host\": \"FS01\"}"}}]},
            "finish_reason":"tool_calls"}]}"#;
        let a = from_body(body).unwrap();
        assert_eq!(a.text, "");
        assert_eq!(
            a.calls,
            [CallKey::new("call_1", "lookup", "{\"host\":\"FS01\"}")]
        );
    }

    #[test]
    fn a_stream_reassembles_the_first_choice_only() {
        let sse = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Thr\"}},{\"index\":1,\"delta\":{\"content\":\"other\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"eat\"}}]}\r\n\r\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\":1}\"}}]}}]}\n\n",
            ": keep-alive\n\n",
            "data: {\"choices\":[],\"usage\":{\"total_tokens\":5}}\n\n",
            "data: [DONE]\n\n"
        );
        let a = from_stream(sse.as_bytes()).unwrap();
        assert_eq!(a.text, "Threat");
        assert_eq!(a.calls, [CallKey::new("call_1", "f", "{\"a\":1}")]);
    }

    #[test]
    fn events_are_read_by_the_sse_rules() {
        let sse = b"data: one\n\n: comment\nevent: x\ndata:two\ndata: lines\r\n\r\ndata: \xff end\n\ndata: last";
        let events: Vec<_> = sse_data(sse).collect();
        assert_eq!(events, ["one", "two\nlines", "\u{fffd} end", "last"]);
        let events: Vec<_> = sse_data(b"data: a\n\ndata: b\n\n").collect();
        assert!(events.iter().all(|e| matches!(e, Cow::Borrowed(_))));
    }

    #[test]
    fn a_stream_without_choices_has_no_answer() {
        assert_eq!(
            from_stream(b"data: {\"error\":{\"message\":\"x\"}}\n\n"),
            None
        );
        assert_eq!(from_body(b"not json"), None);
    }
}
