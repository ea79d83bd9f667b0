//! Streaming chat completions: server-sent events exactly as OpenAI sends
//! them — `data: <chunk>\n\n` lines, never `event:` lines, one role delta per
//! choice, one chunk per token after the token delay, a finish chunk, the
//! usage chunk when asked for, then `data: [DONE]`. Each token is its own
//! HTTP chunk, written when it is due, never buffered.

use super::chat::{Completion, Reply};
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::time::Duration;

/// One SSE event of the answer.
#[derive(Debug)]
pub struct Event {
    pub data: Bytes,
    /// A content token (text or argument piece): paced by the token delay
    /// and counted by `x-sim-drop-after`.
    pub token: bool,
}

/// The events of a completion in sending order; for n > 1 the choices'
/// tokens interleave, as OpenAI's do.
pub fn events(completion: &Completion) -> Vec<Event> {
    let event = |payload: Value, token: bool| Event {
        data: Bytes::from(format!("data: {payload}\n\n")),
        token,
    };
    let chunk = |index: usize, delta: Value, finish_reason: Option<&str>| {
        let mut chunk = json!({
            "id": completion.id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
            "system_fingerprint": "fp_sim",
            "service_tier": "default",
            "choices": [{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        });
        if completion.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let mut out = Vec::new();
    for (index, choice) in completion.choices.iter().enumerate() {
        // A tool call opens with its id, type and name, once; later pieces
        // carry only arguments, as the SDKs' accumulators expect.
        let delta = match &choice.reply {
            Reply::Text(_) => json!({"role": "assistant", "content": "", "refusal": null}),
            Reply::Tool { id, name, .. } => json!({
                "role": "assistant",
                "content": null,
                "refusal": null,
                "tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}],
            }),
        };
        out.push(event(chunk(index, delta, None), false));
    }
    let longest = completion
        .choices
        .iter()
        .map(|c| c.reply.tokens().len())
        .max()
        .unwrap_or(0);
    for position in 0..longest {
        for (index, choice) in completion.choices.iter().enumerate() {
            let Some(token) = choice.reply.tokens().get(position) else {
                continue;
            };
            let delta = match choice.reply {
                Reply::Text(_) => json!({"content": token}),
                Reply::Tool { .. } => {
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": token}}]})
                }
            };
            out.push(event(chunk(index, delta, None), true));
        }
    }
    for (index, choice) in completion.choices.iter().enumerate() {
        out.push(event(
            chunk(index, json!({}), Some(choice.finish_reason)),
            false,
        ));
    }
    if completion.include_usage {
        let usage = json!({
            "id": completion.id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
            "system_fingerprint": "fp_sim",
            "service_tier": "default",
            "choices": [],
            "usage": completion.usage(),
        });
        out.push(event(usage, false));
    }
    out.push(Event {
        data: Bytes::from_static(b"data: [DONE]\n\n"),
        token: false,
    });
    out
}

/// The streamed response. With `drop_after`, the body yields an error in
/// place of the next token after that many: hyper then aborts the chunked
/// body without its terminating chunk, as a dropped connection looks.
pub fn respond(
    completion: Completion,
    token_delay: Duration,
    drop_after: Option<usize>,
) -> Response {
    send(events(&completion), token_delay, drop_after)
}

/// Any list of events as an SSE body, paced and dropped as `respond` says.
pub fn send(events: Vec<Event>, token_delay: Duration, drop_after: Option<usize>) -> Response {
    let events = events.into_iter();
    let body =
        futures_util::stream::unfold((events, 0usize), move |(mut events, sent)| async move {
            let event = events.next()?;
            if !event.token {
                return Some((Ok(event.data), (events, sent)));
            }
            if !token_delay.is_zero() {
                tokio::time::sleep(token_delay).await;
            }
            if drop_after.is_some_and(|n| sent >= n) {
                let error = std::io::Error::other("connection dropped (simulated)");
                return Some((Err(error), (Vec::new().into_iter(), sent)));
            }
            Some((Ok(event.data), (events, sent + 1)))
        });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request;

    fn chunks(body: Value) -> (Vec<Value>, Vec<Event>) {
        let request = request::parse(body.to_string().as_bytes()).unwrap();
        let events = events(&Completion::plan(&request, None));
        let json = events
            .iter()
            .filter_map(|e| {
                let text = std::str::from_utf8(&e.data).unwrap();
                assert!(
                    text.starts_with("data: ") && text.ends_with("\n\n"),
                    "{text}"
                );
                serde_json::from_str(text.trim_end().strip_prefix("data: ")?).ok()
            })
            .collect();
        (json, events)
    }

    #[test]
    fn streamed_events_follow_the_openai_shape() {
        let (chunks, events) = chunks(json!({"model": "gpt-4o", "stream": true, "n": 2,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "mimikatz sekurlsa"}]}));
        assert_eq!(&events.last().unwrap().data[..], b"data: [DONE]\n\n");
        assert_eq!(chunks.len(), events.len() - 1, "every other event is JSON");
        let id = &chunks[0]["id"];
        assert!(
            chunks
                .iter()
                .all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk")
        );
        assert!(
            chunks
                .iter()
                .all(|c| c["created"] == chunks[0]["created"] && c["model"] == "gpt-4o")
        );
        // One role delta per choice, first.
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": "", "refusal": null})
        );
        assert_eq!(chunks[1]["choices"][0]["index"], 1);
        let roles = chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"].get("role").is_some())
            .count();
        assert_eq!(roles, 2);
        // Tokens interleave between the choices.
        assert_eq!(chunks[2]["choices"][0]["index"], 0);
        assert_eq!(chunks[3]["choices"][0]["index"], 1);
        let text: String = chunks
            .iter()
            .filter(|c| c["choices"][0]["index"] == 0)
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(text.starts_with("Threat type: credential_access\n"));
        // Finish chunks, then usage with no choices.
        let n = chunks.len();
        for c in &chunks[n - 3..n - 1] {
            assert_eq!(c["choices"][0]["delta"], json!({}));
            assert_eq!(c["choices"][0]["finish_reason"], "stop");
        }
        let usage = &chunks[n - 1];
        assert_eq!(usage["choices"], json!([]));
        assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        assert!(
            chunks[..n - 1]
                .iter()
                .all(|c| c.get("usage") == Some(&Value::Null))
        );
    }

    #[test]
    fn without_include_usage_there_is_no_usage_key() {
        let (chunks, _) = chunks(json!({"model": "gpt-4o-mini", "stream": true,
            "messages": [{"role": "user", "content": "whoami"}]}));
        assert!(
            chunks
                .iter()
                .all(|c| c.get("usage").is_none() && !c["choices"].as_array().unwrap().is_empty())
        );
    }

    #[test]
    fn streamed_tool_calls_name_the_function_once() {
        let (chunks, _) = chunks(json!({"model": "gpt-4o", "stream": true,
            "tools": [{"type": "function", "function": {"name": "isolate"}}],
            "messages": [{"role": "user", "content": "psexec to DC01, isolate it"}]}));
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
            .collect();
        assert_eq!(calls[0]["index"], 0);
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(
            calls[0]["function"],
            json!({"name": "isolate", "arguments": ""})
        );
        for call in &calls[1..] {
            assert_eq!(
                call.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["function", "index"]
            );
            assert_eq!(
                call["function"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .collect::<Vec<_>>(),
                ["arguments"]
            );
        }
        let roles = chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"].get("role").is_some())
            .count();
        assert_eq!(roles, 1);
        let args: String = calls
            .iter()
            .filter_map(|c| c["function"]["arguments"].as_str())
            .collect();
        let args: Value = serde_json::from_str(&args).unwrap();
        assert_eq!(args["suspected_threat_type"], "lateral_movement");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }
}
