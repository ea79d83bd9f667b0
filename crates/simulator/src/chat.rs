//! `POST /v1/chat/completions`: plans the answer — a triage verdict as text,
//! or a call to one of the request's tools — then sends it whole or, with
//! `stream`, token by token (see `stream`). Tokens are whitespace-delimited
//! words with their leading whitespace, and the per-token delay applies
//! either way, so latency grows with the answer as a model's does.

use super::dataset;
use super::faults::{self, Pacing};
use super::request::{self, ChatRequest, Format};
use super::schema::{self, Facts};
use super::stream;
use super::triage::{classify, is_large};
use super::tuned::{Said, Tuned};
use super::wire::{self, ApiError};
use super::{MODELS, Sim};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::time::Duration;

/// Tokens OpenAI counts per message for its role and separators, and once
/// for priming the reply.
const TOKENS_PER_MESSAGE: usize = 3;
const REPLY_PRIMING: usize = 3;

/// How much of the alert a tool call or a JSON field quotes back.
const EXCERPT_CHARS: usize = 200;

pub async fn completions(
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
    // Only names that are no base model (fine-tuned models, adapters)
    // touch the lab, so the base models' hot path takes no lock.
    let lookup = |model: &str| {
        (!MODELS.contains(&model))
            .then(|| sim.lab.state().model(model))
            .flatten()
    };
    let request = match request::parse_for(&body, &|model| lookup(model).is_some()) {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    let tuned = lookup(&request.model);
    if faults::model_fails(&headers, &sim.config.fail_rates, &request.model) {
        return faults::model_failure(&request.model);
    }
    let pacing = Pacing::from_headers(&headers);
    let token_delay = pacing.token_delay.unwrap_or(sim.config.token_delay);
    let completion = Completion::plan(&request, tuned.as_deref());
    if request.stream {
        stream::respond(completion, token_delay, pacing.drop_after)
    } else {
        unary(completion, token_delay, pacing.drop_after).await
    }
}

/// The whole answer, decided before the first byte so that streamed and
/// unary answers to the same request are the same.
pub struct Completion {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
    pub choices: Vec<Choice>,
    pub prompt_tokens: usize,
}

pub struct Choice {
    pub reply: Reply,
    pub finish_reason: &'static str,
}

/// What one choice says, as the tokens it is sent in.
pub enum Reply {
    Text(Vec<String>),
    Tool {
        id: String,
        name: String,
        arguments: Vec<String>,
    },
}

impl Reply {
    pub fn tokens(&self) -> &[String] {
        match self {
            Reply::Text(tokens) => tokens,
            Reply::Tool { arguments, .. } => arguments,
        }
    }
}

impl Completion {
    /// The answer of the base model `request` names, or of `tuned`.
    pub fn plan(request: &ChatRequest, tuned: Option<&Tuned>) -> Self {
        let alert = dataset::alert_of(request.messages.iter());
        let verdict = match tuned {
            Some(model) => model.answer(&dataset::prompt_of(request.messages.iter()), &alert),
            None => {
                let verdict = classify(&alert, is_large(&request.model));
                Said {
                    threat_type: verdict.threat_type.to_string(),
                    severity: verdict.severity.to_string(),
                    text: verdict.answer(),
                }
            }
        };
        let limit = request.max_tokens.unwrap_or(usize::MAX);
        let facts = |open_object| Facts {
            threat_type: verdict.threat_type.clone(),
            severity: verdict.severity.clone(),
            rationale: rationale_of(&verdict.text),
            excerpt: alert.trim().chars().take(EXCERPT_CHARS).collect(),
            open_object,
        };
        let choices = (0..request.n)
            .map(|_| {
                let (reply, finished) = match &request.tool {
                    Some(tool) => {
                        // A schema that names no fields gets the triage
                        // the model would hand a tool.
                        let open = json!({
                            "alert_excerpt": alert.trim().chars().take(EXCERPT_CHARS).collect::<String>(),
                            "suspected_threat_type": verdict.threat_type,
                            "suspected_severity": verdict.severity,
                        });
                        let arguments = schema::instance(&tool.parameters, &facts(open)).to_string();
                        let reply = |arguments| Reply::Tool {
                            id: wire::random_id("call_"),
                            name: tool.name.clone(),
                            arguments,
                        };
                        match truncate(json_pieces(&arguments), limit) {
                            (tokens, true) => (reply(tokens), "tool_calls"),
                            (tokens, false) => (reply(tokens), "length"),
                        }
                    }
                    None => {
                        let open = json!({
                            "threat_type": verdict.threat_type,
                            "severity": verdict.severity,
                            "rationale": rationale_of(&verdict.text),
                        });
                        let tokens = match &request.format {
                            Format::Text => tokenize(&verdict.text),
                            Format::JsonObject => json_pieces(&open.to_string()),
                            Format::JsonSchema(spec) => {
                                json_pieces(&schema::instance(spec, &facts(open)).to_string())
                            }
                        };
                        match truncate(tokens, limit) {
                            (tokens, true) => (Reply::Text(tokens), "stop"),
                            (tokens, false) => (Reply::Text(tokens), "length"),
                        }
                    }
                };
                Choice {
                    reply,
                    finish_reason: finished,
                }
            })
            .collect();
        let prompt_tokens = REPLY_PRIMING
            + request
                .messages
                .iter()
                .map(|m| TOKENS_PER_MESSAGE + tokenize(&text_of(m)).len())
                .sum::<usize>();
        Completion {
            id: format!("chatcmpl-{}", ulid::Ulid::new()),
            created: wire::now_unix(),
            model: request.model.clone(),
            include_usage: request.include_usage,
            choices,
            prompt_tokens,
        }
    }

    pub fn completion_tokens(&self) -> usize {
        self.choices.iter().map(|c| c.reply.tokens().len()).sum()
    }

    pub fn usage(&self) -> Value {
        let completion = self.completion_tokens();
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        })
    }

    /// The `chat.completion` object.
    fn body(&self) -> Value {
        let choices: Vec<Value> = self
            .choices
            .iter()
            .enumerate()
            .map(|(index, choice)| {
                let message = match &choice.reply {
                    Reply::Text(tokens) => {
                        json!({"role": "assistant", "content": tokens.concat(), "refusal": null, "annotations": []})
                    }
                    Reply::Tool { id, name, arguments } => json!({
                        "role": "assistant",
                        "content": null,
                        "refusal": null,
                        "annotations": [],
                        "tool_calls": [{
                            "id": id,
                            "type": "function",
                            "function": {"name": name, "arguments": arguments.concat()},
                        }],
                    }),
                };
                json!({"index": index, "message": message, "logprobs": null, "finish_reason": choice.finish_reason})
            })
            .collect();
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
            "system_fingerprint": "fp_sim",
            "service_tier": "default",
        })
    }
}

/// The tokens up to `limit`, and whether they all fit.
fn truncate(mut tokens: Vec<String>, limit: usize) -> (Vec<String>, bool) {
    let whole = tokens.len() <= limit;
    tokens.truncate(limit);
    (tokens, whole)
}

/// The text of a message: its content as a string or its text parts, and the
/// arguments of any tool calls it made (they count as prompt too).
pub fn text_of(message: &Value) -> String {
    let mut text = match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        if let Some(arguments) = call["function"]["arguments"].as_str() {
            text.push(' ');
            text.push_str(arguments);
        }
    }
    text
}

/// The rationale of an answer: what follows `Rationale:`, or a JSON
/// answer's `rationale`, else the whole answer.
fn rationale_of(text: &str) -> String {
    if let Some((_, rest)) = text.split_once("Rationale:") {
        return rest.trim().to_string();
    }
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["rationale"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.to_string())
}

/// JSON text as tokens: words, each also cut after a `,` or `:`, so a
/// stream sends keys and values apart as a model's does.
pub fn json_pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    for word in tokenize(text) {
        let mut current = String::new();
        for c in word.chars() {
            current.push(c);
            if matches!(c, ',' | ':') {
                pieces.push(std::mem::take(&mut current));
            }
        }
        if !current.is_empty() {
            pieces.push(current);
        }
    }
    pieces
}

/// Words with their leading whitespace, so the tokens join back into the
/// text exactly.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
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

/// The whole answer after `token_delay` per token.
async fn unary(
    completion: Completion,
    token_delay: Duration,
    drop_after: Option<usize>,
) -> Response {
    let tokens = completion.completion_tokens();
    paced_json(completion.body(), tokens, token_delay, drop_after).await
}

/// `body` after `token_delay` for each of its `tokens`; with `drop_after`
/// below the token count, the body breaks off after that many tokens' time.
pub async fn paced_json(
    body: Value,
    tokens: usize,
    token_delay: Duration,
    drop_after: Option<usize>,
) -> Response {
    let dropped = drop_after.filter(|n| *n < tokens);
    let paced = dropped.unwrap_or(tokens);
    if !token_delay.is_zero() {
        let paced = u32::try_from(paced).unwrap_or(u32::MAX);
        tokio::time::sleep(token_delay.saturating_mul(paced)).await;
    }
    if dropped.is_none() {
        return Json(body).into_response();
    }
    // Half a body, then an error: hyper aborts the response without its
    // terminating chunk, and the client sees a broken message.
    let text = Bytes::from(body.to_string());
    let half = text.slice(..text.len() / 2);
    let parts = futures_util::stream::iter([
        Ok(half),
        Err(std::io::Error::other("connection dropped (simulated)")),
    ]);
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(parts),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(body: Value) -> Completion {
        Completion::plan(&request::parse(body.to_string().as_bytes()).unwrap(), None)
    }

    #[test]
    fn tokens_join_back_into_the_text() {
        let text = "Threat type: x\nSeverity: high\nRationale: a  b.";
        let tokens = tokenize(text);
        assert_eq!(tokens.concat(), text);
        assert_eq!(tokens[..2], ["Threat", " type:"]);
        assert_eq!(tokenize(""), Vec::<String>::new());
    }

    #[test]
    fn unary_body_has_the_openai_shape() {
        let c = plan(json!({"model": "gpt-4o", "n": 2, "messages": [
            {"role": "system", "content": "You are a SOC analyst."},
            {"role": "user", "content": [{"type": "text", "text": "mimikatz sekurlsa on WS-042"}]}
        ]}));
        let body = c.body();
        assert_eq!(body["object"], "chat.completion");
        assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(body["system_fingerprint"], "fp_sim");
        assert_eq!(body["service_tier"], "default");
        for (i, choice) in body["choices"].as_array().unwrap().iter().enumerate() {
            assert_eq!(choice["index"], i);
            assert_eq!(choice["finish_reason"], "stop");
            assert!(choice["logprobs"].is_null() && choice["message"]["refusal"].is_null());
            let content = choice["message"]["content"].as_str().unwrap();
            assert!(
                content.starts_with("Threat type: credential_access\nSeverity: high\nRationale: ")
            );
        }
        let usage = &body["usage"];
        assert_eq!(usage["prompt_tokens"], 3 + (3 + 5) + (3 + 4));
        assert_eq!(
            usage["total_tokens"].as_u64(),
            Some(
                usage["prompt_tokens"].as_u64().unwrap()
                    + usage["completion_tokens"].as_u64().unwrap()
            )
        );
    }

    #[test]
    fn max_tokens_truncates_with_finish_reason_length() {
        let c = plan(json!({"model": "gpt-4o-mini", "max_tokens": 3,
            "messages": [{"role": "user", "content": "whoami"}]}));
        let body = c.body();
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "Threat type: discovery"
        );
        assert_eq!(body["usage"]["completion_tokens"], 3);
    }

    #[test]
    fn tool_calls_carry_json_arguments() {
        let c = plan(
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "psexec to DC01"}],
            "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "isolate_host"}}]}),
        );
        let body = c.body();
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert!(choice["message"]["content"].is_null());
        let call = &choice["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "isolate_host");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["alert_excerpt"], "psexec to DC01");
        assert_eq!(args["suspected_threat_type"], "lateral_movement");
    }

    #[test]
    fn json_modes_answer_with_the_verdict() {
        let c = plan(
            json!({"model": "gpt-4o", "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": "Reply in JSON. mimikatz sekurlsa on WS-042"}]}),
        );
        let content = c.body()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        let answer: Value = serde_json::from_str(&content).unwrap();
        assert_eq!(answer["threat_type"], "credential_access");
        assert_eq!(answer["severity"], "high");
        assert!(answer["rationale"].as_str().unwrap().contains("mimikatz"));

        let schema = json!({"type": "object", "additionalProperties": false,
            "required": ["category", "priority", "iocs"],
            "properties": {"category": {"type": "string", "enum": ["malware", "credential_access"]},
                           "priority": {"type": "integer", "minimum": 1, "maximum": 5},
                           "iocs": {"type": "array", "items": {"type": "string"}}}});
        let c = plan(
            json!({"model": "gpt-4o", "response_format": {"type": "json_schema",
            "json_schema": {"name": "triage", "strict": true, "schema": schema}},
            "messages": [{"role": "user", "content": "mimikatz sekurlsa on WS-042"}]}),
        );
        let body = c.body();
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        let answer: Value =
            serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap())
                .unwrap();
        assert_eq!(answer["category"], "credential_access");
        assert_eq!(answer["priority"], 4);
        assert!(answer["iocs"][0].as_str().unwrap().contains("mimikatz"));
    }

    #[test]
    fn tool_arguments_follow_the_tool_schema() {
        let c = plan(json!({"model": "gpt-4o",
            "messages": [{"role": "user", "content": "Isolate host WS-042, it ran mimikatz"}],
            "tools": [{"type": "function", "function": {"name": "isolate_host", "parameters": {
                "type": "object", "required": ["hostname", "severity", "notify"],
                "properties": {"hostname": {"type": "string"},
                               "severity": {"type": "string", "enum": ["low", "high"]},
                               "notify": {"type": "boolean"}}}}}]}));
        let body = c.body();
        let call = &body["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "isolate_host");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args.as_object().unwrap().len(), 3);
        assert_eq!(args["severity"], "high");
        assert_eq!(args["notify"], true);
        assert!(args["hostname"].is_string());
    }

    #[test]
    fn json_pieces_join_back() {
        let text = r#"{"a":"b c","d":[1,2]}"#;
        let pieces = json_pieces(text);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.len() > 4);
    }
}
