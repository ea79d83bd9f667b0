//! A streamed answer reassembled from its chunks: content concatenated,
//! tool calls by index (id and name from their first fragment, arguments
//! concatenated), the last usage and finish reason kept, a stream error
//! event kept as the error.
//!
//! A stream holds a chunk per token, so each chunk of the usual shape is
//! read into borrowed fields rather than a JSON tree; a chunk of any
//! other shape (an error event, a field of an unexpected type, a lone
//! surrogate) is read as a tree, which gives the same answer for every
//! chunk both can read.

use super::{Answer, object};
use crate::capture::lenient;
use eventsource_stream::Eventsource;
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Reassembles the answer of a stream's bytes.
pub(super) fn reassemble(body: &bytes::Bytes) -> Answer {
    let source = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(body.clone())]);
    // The source is in memory and always ready, so one poll parses it
    // all; this runs on the capture writer's blocking thread.
    let events = source
        .eventsource()
        .collect::<Vec<_>>()
        .now_or_never()
        .unwrap_or_default();
    let mut answer = Assembly::default();
    for event in events.into_iter().flatten() {
        answer.absorb(&event.data);
    }
    answer.finish()
}

#[derive(Default)]
struct Assembly {
    answer: Answer,
    choices: BTreeMap<u64, Choice>,
}

impl Assembly {
    fn absorb(&mut self, data: &str) {
        match serde_json::from_str::<Chunk<'_>>(data) {
            Ok(chunk) if !chunk.error.0 => self.absorb_chunk(chunk),
            // An error event (rare) or a chunk of another shape.
            _ => {
                if let Some(tree) = lenient::parse(data.as_bytes()) {
                    self.absorb_tree(&tree.value);
                }
            }
        }
    }

    fn absorb_chunk(&mut self, chunk: Chunk<'_>) {
        if self.answer.completion_id.is_none() {
            self.answer.completion_id = chunk.id.map(Cow::into_owned);
        }
        if !chunk.usage.is_null() {
            self.answer.usage = chunk.usage;
        }
        for c in chunk.choices.into_iter().flatten() {
            let choice = self.choices.entry(c.index.unwrap_or(0)).or_default();
            if let Some(delta) = c.delta {
                choice.add_text(delta.content.as_deref());
                for call in delta.tool_calls.into_iter().flatten() {
                    let function = call.function.unwrap_or_default();
                    choice.add_call(
                        call.index.unwrap_or(0),
                        call.id,
                        function.name,
                        function.arguments.as_deref(),
                    );
                }
            }
            choice.finish(c.finish_reason);
        }
    }

    fn absorb_tree(&mut self, chunk: &Value) {
        if let Some(error) = chunk.get("error") {
            self.answer.error = error.clone();
            return;
        }
        if self.answer.completion_id.is_none() {
            self.answer.completion_id = chunk["id"].as_str().map(String::from);
        }
        if !chunk["usage"].is_null() {
            self.answer.usage = chunk["usage"].clone();
        }
        for c in chunk["choices"].as_array().into_iter().flatten() {
            let choice = self
                .choices
                .entry(c["index"].as_u64().unwrap_or(0))
                .or_default();
            let delta = &c["delta"];
            choice.add_text(delta["content"].as_str());
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let present = |v: &Value| (!v.is_null()).then(|| v.clone());
                choice.add_call(
                    call["index"].as_u64().unwrap_or(0),
                    present(&call["id"]),
                    present(&call["function"]["name"]),
                    call["function"]["arguments"].as_str(),
                );
            }
            choice.finish((!c["finish_reason"].is_null()).then(|| c["finish_reason"].clone()));
        }
    }

    fn finish(mut self) -> Answer {
        self.answer.choices = self
            .choices
            .into_iter()
            .map(|(i, c)| c.into_value(i))
            .collect();
        self.answer
    }
}

/// A chunk of the usual shape; any field of another type fails the read
/// and sends the chunk the tree's way.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Option<Vec<ChunkChoice<'a>>>,
    #[serde(default)]
    usage: Value,
    /// Whether the chunk names an error, even as `null`: an error event
    /// goes the tree's way.
    #[serde(default)]
    error: Named,
}

/// Whether a field is there, whatever its value.
#[derive(Default)]
struct Named(bool);

impl<'de> Deserialize<'de> for Named {
    fn deserialize<D: serde::Deserializer<'de>>(value: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(value).map(|_| Self(true))
    }
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    index: Option<u64>,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    finish_reason: Option<Value>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<CallFragment<'a>>>,
}

#[derive(Deserialize)]
struct CallFragment<'a> {
    index: Option<u64>,
    id: Option<Value>,
    #[serde(borrow)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize, Default)]
struct Function<'a> {
    name: Option<Value>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// One choice as its deltas built it so far.
#[derive(Default)]
struct Choice {
    content: Option<String>,
    /// By index: id, name, arguments.
    tool_calls: BTreeMap<u64, (Value, Value, String)>,
    finish_reason: Value,
}

impl Choice {
    fn add_text(&mut self, text: Option<&str>) {
        if let Some(text) = text {
            self.content.get_or_insert_with(String::new).push_str(text);
        }
    }

    fn add_call(
        &mut self,
        index: u64,
        id: Option<Value>,
        name: Option<Value>,
        arguments: Option<&str>,
    ) {
        let entry = self
            .tool_calls
            .entry(index)
            .or_insert_with(|| (Value::Null, Value::Null, String::new()));
        if let Some(id) = id {
            entry.0 = id;
        }
        if let Some(name) = name {
            entry.1 = name;
        }
        entry.2.push_str(arguments.unwrap_or(""));
    }

    fn finish(&mut self, reason: Option<Value>) {
        if let Some(reason) = reason {
            self.finish_reason = reason;
        }
    }

    fn into_value(self, index: u64) -> Value {
        let mut message = object([
            ("role", "assistant".into()),
            ("content", self.content.into()),
        ]);
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .into_values()
                .map(|(id, name, arguments)| {
                    let function = object([("name", name), ("arguments", arguments.into())]);
                    object([
                        ("id", id),
                        ("type", "function".into()),
                        ("function", function),
                    ])
                })
                .collect();
            message["tool_calls"] = Value::Array(calls);
        }
        object([
            ("index", index.into()),
            ("message", message),
            ("finish_reason", self.finish_reason),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer each way: every chunk read typed where it can be, and
    /// every chunk read as a tree.
    fn both_ways(chunks: &[&str]) -> (Answer, Answer) {
        let mut typed = Assembly::default();
        let mut tree = Assembly::default();
        for data in chunks {
            typed.absorb(data);
            if let Some(parsed) = lenient::parse(data.as_bytes()) {
                tree.absorb_tree(&parsed.value);
            }
        }
        (typed.finish(), tree.finish())
    }

    #[test]
    fn a_chunk_reads_the_same_typed_or_as_a_tree() {
        let streams: &[&[&str]] = &[
            &[
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}"#,
                r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"Threat \"type\""}}]}"#,
                r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
                r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
                "[DONE]",
            ],
            &[
                r#"{"id":"c","choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a"}}]}}]}"#,
                r#"{"id":"c","choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"id":null,"function":{"name":null,"arguments":"\":1}"}},{"index":1,"id":7,"function":{"name":["g"]}}]},"finish_reason":"tool_calls"}]}"#,
            ],
            // Shapes only the tree reads: every one must still agree.
            &[
                r#"{"id":7,"choices":[{"index":"0","delta":{"content":"a"}}]}"#,
                r#"{"id":"x","choices":{"0":{}}}"#,
                r#"{"choices":[{"index":-1,"delta":{"content":["a"]},"finish_reason":3}]}"#,
                r#"{"choices":[{"delta":null},null,{"delta":{"tool_calls":{"0":1}}}]}"#,
                r#"{"choices":[{"delta":{"tool_calls":[{"function":"f"},{"index":2.5,"function":{"arguments":7}}]}}]}"#,
                r#"{"choices":[{"delta":{"content":"lone \ud800"}}]}"#,
                r#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
                r#"{"id":"y","choices":[{"delta":{"content":"partial"}}]}"#,
                r#"{"\u0065rror":{"message":"escaped"},"choices":[{"delta":{"content":"skipped"}}]}"#,
                r#"{"error":null,"choices":[{"delta":{"content":"skipped"}}]}"#,
                r#"{"error":{"message":"broke","code":"upstream_unreachable"}}"#,
                r#"{"choices":[{"delta":{"content":"the \"error\" field"}}]}"#,
                r#"[1,2]"#,
                "not json",
            ],
        ];
        // The usual shapes are read typed, not handed to the tree.
        for data in streams[..2]
            .iter()
            .copied()
            .flatten()
            .filter(|d| **d != "[DONE]")
        {
            let chunk = serde_json::from_str::<Chunk<'_>>(data);
            assert!(chunk.is_ok_and(|c| !c.error.0), "{data}");
        }
        for chunks in streams {
            let (typed, tree) = both_ways(chunks);
            assert_eq!(typed, tree, "{chunks:?}");
        }
        let (answer, _) = both_ways(streams[0]);
        assert_eq!(answer.choices[0]["message"]["content"], "Threat \"type\"");
        assert_eq!(answer.usage["total_tokens"], 5);
        let (answer, _) = both_ways(streams[2]);
        assert_eq!(answer.error["code"], "upstream_unreachable");
    }
}
