//! `POST /v1/chat/completions`: a triage verdict as text or as a tool call,
//! unary or streamed token by token, with the OpenAI wire details the SDKs
//! rely on (one role delta, tool-call names once, the usage chunk).

use super::faults::Faults;
use super::triage::classify;
use super::{MODELS, Sim, models, wire};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub async fn completions(State(sim): State<Sim>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let faults = Faults::from_headers(&headers);
    if let Some(delay) = faults.delay {
        tokio::time::sleep(delay).await;
    }
    if faults.fail_now(&sim.failures) {
        return fault(&faults);
    }
    if faults.garbage {
        return ([(header::CONTENT_TYPE, "text/plain")], "upstream exploded").into_response();
    }
    let plan = match Plan::from_request(&body) {
        Ok(plan) => plan,
        Err(response) => return *response,
    };
    let token_delay = faults.token_delay.unwrap_or(sim.config.token_delay);
    let response = if plan.stream {
        stream(plan, token_delay, faults.drop_after)
    } else {
        unary(plan, token_delay, faults.drop_after).await
    };
    let mut response = wire::with_request_id(response);
    if let Ok(ms) = HeaderValue::try_from(started.elapsed().as_millis().to_string()) {
        response.headers_mut().insert("openai-processing-ms", ms);
    }
    response
}

fn fault(faults: &Faults) -> Response {
    let status = faults.status.unwrap_or(500);
    let (kind, code, message) = match status {
        429 => (
            "requests",
            Some("rate_limit_exceeded"),
            "Rate limit reached (simulated).",
        ),
        s if s >= 500 => (
            "server_error",
            None,
            "The server had an error while processing your request (simulated).",
        ),
        _ => (
            "invalid_request_error",
            None,
            "Invalid request (simulated).",
        ),
    };
    let mut response = wire::error(status, kind, message, None, code);
    if let Some(v) = faults
        .retry_after
        .as_deref()
        .and_then(|v| HeaderValue::try_from(v).ok())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// What one choice says.
enum Reply {
    Text(Vec<String>),
    Tool {
        id: String,
        name: String,
        pieces: Vec<String>,
    },
}

impl Reply {
    fn tokens(&self) -> usize {
        match self {
            Reply::Text(t) => t.len(),
            Reply::Tool { pieces, .. } => pieces.len() + 1,
        }
    }

    fn finish_reason(&self, truncated: bool) -> &'static str {
        match self {
            Reply::Tool { .. } => "tool_calls",
            Reply::Text(_) if truncated => "length",
            Reply::Text(_) => "stop",
        }
    }
}

struct Plan {
    id: String,
    created: u64,
    model: String,
    stream: bool,
    include_usage: bool,
    choices: Vec<Reply>,
    truncated: bool,
    prompt_tokens: usize,
}

impl Plan {
    fn from_request(body: &[u8]) -> Result<Self, Box<Response>> {
        let invalid = |message: &str, param: Option<&str>| {
            Box::new(wire::error(
                400,
                "invalid_request_error",
                message,
                param,
                None,
            ))
        };
        let request: Value = serde_json::from_slice(body)
            .map_err(|_| invalid("We could not parse the JSON body of your request.", None))?;
        let model = request["model"]
            .as_str()
            .ok_or_else(|| invalid("you must provide a model parameter", Some("model")))?;
        let messages = request["messages"]
            .as_array()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| invalid("`messages` must be a non-empty array", Some("messages")))?;
        if !MODELS.contains(&model) {
            return Err(Box::new(models::model_not_found(model)));
        }
        let n = request["n"].as_u64().unwrap_or(1);
        if !(1..=8).contains(&n) {
            return Err(invalid("`n` must be between 1 and 8", Some("n")));
        }
        let large = !(model.contains("mini") || model.contains("small"));
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(text_of)
            .unwrap_or_default();
        let verdict = classify(&last_user, large);
        let tool = tool_to_call(&request, messages);
        let limit = request["max_completion_tokens"]
            .as_u64()
            .or_else(|| request["max_tokens"].as_u64())
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let mut truncated = false;
        let choices = (0..n)
            .map(|_| match &tool {
                Some(name) => {
                    let args = json!({"alert_excerpt": last_user.chars().take(120).collect::<String>(), "suspected_threat_type": verdict.threat_type}).to_string();
                    Reply::Tool {
                        id: format!("call_{}", ulid::Ulid::new().to_string().to_lowercase()),
                        name: name.clone(),
                        pieces: pieces(&args, 16),
                    }
                }
                None => {
                    let mut tokens = tokenize(&verdict.answer());
                    if tokens.len() > limit {
                        tokens.truncate(limit);
                        truncated = true;
                    }
                    Reply::Text(tokens)
                }
            })
            .collect();
        let prompt_tokens = messages
            .iter()
            .map(|m| text_of(m).split_whitespace().count() + 3)
            .sum();
        Ok(Plan {
            id: format!("chatcmpl-{}", ulid::Ulid::new().to_string().to_lowercase()),
            created: wire::now_unix(),
            model: model.to_string(),
            stream: request["stream"].as_bool().unwrap_or(false),
            include_usage: request["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false),
            choices,
            truncated,
            prompt_tokens,
        })
    }

    fn usage(&self) -> Value {
        let completion: usize = self.choices.iter().map(Reply::tokens).sum();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        })
    }

    fn chunk(&self, choices: Value) -> String {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_sim",
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        format!("data: {chunk}\n\n")
    }
}

/// Text of a message whose content is a string or an array of text parts.
fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The tool the model calls: the named one, else the first, unless tools are
/// off or the last message already is a tool result.
fn tool_to_call(request: &Value, messages: &[Value]) -> Option<String> {
    let tools = request["tools"].as_array().filter(|t| !t.is_empty())?;
    if request["tool_choice"] == "none" || messages.last().is_some_and(|m| m["role"] == "tool") {
        return None;
    }
    request["tool_choice"]["function"]["name"]
        .as_str()
        .or_else(|| tools[0]["function"]["name"].as_str())
        .map(String::from)
}

/// Words with their leading whitespace, so the tokens join back into the text.
fn tokenize(text: &str) -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    for c in text.chars() {
        if c.is_whitespace() && in_word {
            tokens.push(std::mem::take(&mut current));
            in_word = false;
        }
        in_word |= !c.is_whitespace();
        current.push(c);
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

fn pieces(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

async fn unary(plan: Plan, token_delay: Duration, drop_after: Option<usize>) -> Response {
    let tokens: usize = plan.choices.iter().map(Reply::tokens).sum();
    // Even a zero-length sleep waits for the timer's next 1 ms tick.
    if !token_delay.is_zero() {
        tokio::time::sleep(token_delay * u32::try_from(tokens).unwrap_or(u32::MAX)).await;
    }
    let choices: Vec<Value> = plan
        .choices
        .iter()
        .enumerate()
        .map(|(index, reply)| {
            let message = match reply {
                Reply::Text(t) => json!({"role": "assistant", "content": t.concat(), "refusal": null}),
                Reply::Tool { id, name, pieces } => json!({"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"id": id, "type": "function", "function": {"name": name, "arguments": pieces.concat()}}]}),
            };
            json!({"index": index, "message": message, "logprobs": null, "finish_reason": reply.finish_reason(plan.truncated)})
        })
        .collect();
    let body = json!({
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
        "usage": plan.usage(),
        "system_fingerprint": "fp_sim",
        "service_tier": "default",
    });
    if drop_after.is_some() {
        // Half a body, then the connection breaks.
        let text = body.to_string();
        let half = Bytes::from(text[..text.len() / 2].to_string());
        let parts = futures_util::stream::iter([
            Ok(half),
            Err(std::io::Error::other("dropped (simulated)")),
        ]);
        return (
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(parts),
        )
            .into_response();
    }
    Json(body).into_response()
}

/// One SSE event and the pause before it.
struct Event {
    delay: Duration,
    data: String,
    content: bool,
}

fn events(plan: &Plan, token_delay: Duration) -> Vec<Event> {
    let now = |data: String| Event {
        delay: Duration::ZERO,
        data,
        content: false,
    };
    let mut out = Vec::new();
    for (index, reply) in plan.choices.iter().enumerate() {
        let content = if matches!(reply, Reply::Tool { .. }) {
            Value::Null
        } else {
            json!("")
        };
        out.push(now(plan.chunk(json!([{"index": index, "delta": {"role": "assistant", "content": content, "refusal": null}, "logprobs": null, "finish_reason": null}]))));
    }
    let longest = plan.choices.iter().map(Reply::tokens).max().unwrap_or(0);
    for position in 0..longest {
        for (index, reply) in plan.choices.iter().enumerate() {
            let delta = match reply {
                Reply::Text(tokens) => tokens.get(position).map(|t| json!({"content": t})),
                Reply::Tool { id, name, pieces } => match position {
                    0 => Some(json!({"tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]})),
                    p => pieces.get(p - 1).map(|piece| json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})),
                },
            };
            if let Some(delta) = delta {
                out.push(Event {
                    delay: token_delay,
                    data: plan.chunk(json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}])),
                    content: true,
                });
            }
        }
    }
    for (index, reply) in plan.choices.iter().enumerate() {
        out.push(now(plan.chunk(json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reply.finish_reason(plan.truncated)}]))));
    }
    if plan.include_usage {
        let usage = json!({"id": plan.id, "object": "chat.completion.chunk", "created": plan.created, "model": plan.model,
            "system_fingerprint": "fp_sim", "choices": [], "usage": plan.usage()});
        out.push(now(format!("data: {usage}\n\n")));
    }
    out.push(now("data: [DONE]\n\n".to_string()));
    out
}

fn stream(plan: Plan, token_delay: Duration, drop_after: Option<usize>) -> Response {
    let events = events(&plan, token_delay);
    let state = (events.into_iter(), 0usize, false);
    let body =
        futures_util::stream::unfold(state, move |(mut events, mut sent, dropped)| async move {
            if dropped {
                return None;
            }
            let event = events.next()?;
            if event.content && drop_after.is_some_and(|n| sent >= n) {
                let error = std::io::Error::other("connection dropped (simulated)");
                return Some((Err(error), (events, sent, true)));
            }
            if !event.delay.is_zero() {
                tokio::time::sleep(event.delay).await;
            }
            sent += usize::from(event.content);
            Some((
                Ok::<_, std::io::Error>(Bytes::from(event.data)),
                (events, sent, false),
            ))
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

    #[test]
    fn tokens_join_back_into_the_text() {
        let text = "Threat type: x\nSeverity: high\nRationale: a  b.";
        let tokens = tokenize(text);
        assert_eq!(tokens.concat(), text);
        assert_eq!(tokens[0], "Threat");
        assert_eq!(tokens[1], " type:");
    }

    #[test]
    fn streamed_events_follow_the_openai_shape() {
        let body =
            br#"{"model":"gpt-4o","stream":true,"n":2,"stream_options":{"include_usage":true},
            "messages":[{"role":"user","content":"mimikatz sekurlsa"}]}"#;
        let plan = Plan::from_request(body).unwrap_or_else(|_| panic!("valid request"));
        let events = events(&plan, Duration::ZERO);
        let data: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e.data.trim().strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        assert_eq!(events.last().unwrap().data, "data: [DONE]\n\n");
        let roles = data
            .iter()
            .filter(|c| c["choices"][0]["delta"].get("role").is_some())
            .count();
        assert_eq!(roles, 2, "one role delta per choice");
        let usage = data.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        assert!(data[..data.len() - 1].iter().all(|c| c["usage"].is_null()));
    }

    #[test]
    fn streamed_tool_calls_name_the_function_once() {
        let body = br#"{"model":"gpt-4o","stream":true,"tools":[{"type":"function","function":{"name":"isolate"}}],
            "messages":[{"role":"user","content":"psexec to DC01"}]}"#;
        let plan = Plan::from_request(body).unwrap_or_else(|_| panic!("valid request"));
        let calls: Vec<Value> = events(&plan, Duration::ZERO)
            .iter()
            .filter_map(|e| {
                serde_json::from_str::<Value>(e.data.trim().strip_prefix("data: ")?).ok()
            })
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
            .collect();
        assert_eq!(
            calls
                .iter()
                .filter(|c| c["function"].get("name").is_some())
                .count(),
            1
        );
        assert!(
            calls[1..]
                .iter()
                .all(|c| c.get("id").is_none() && c.get("type").is_none())
        );
        let args: String = calls
            .iter()
            .filter_map(|c| c["function"]["arguments"].as_str())
            .collect();
        let args: Value = serde_json::from_str(&args).unwrap();
        assert_eq!(args["suspected_threat_type"], "lateral_movement");
    }
}
