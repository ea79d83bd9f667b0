//! Turning the bytes of one exchange into an [`InferenceRecord`]: the
//! request's messages and parameters, and the answer reassembled from a
//! unary body or from the stream's deltas.

use super::lenient;
use crate::exchange::{Exchange, Outcome, Wire};
use crate::store::InferenceRecord;
use serde_json::{Map, Value};

mod stream;

/// What the proxy knows of an exchange beyond its bytes.
#[derive(Debug, Clone, Default)]
pub struct CaptureMeta {
    pub conversation_id: String,
    /// Set when this exchange starts a branch of another conversation.
    pub parent_id: Option<String>,
    /// `x-flywheel-user`.
    pub user: Option<String>,
    /// `x-flywheel-tags`: `key=value, key=value`.
    pub tags: Vec<(String, String)>,
    /// False with `x-flywheel-no-capture: 1` or `capture.enabled = false`.
    pub enabled: bool,
    /// The key the version was assigned by; later turns reuse it.
    pub sticky: Option<String>,
    /// The keys a follow-up of this turn may present (request messages
    /// plus the answer; a response's id), worked out on the request path
    /// as it completed.
    pub continuations: Vec<String>,
    /// The candidate that failed before production served this exchange.
    pub fallback_from: Option<String>,
    /// Set on a shadow version's exchange: the live inference it mirrors.
    pub shadow_of: Option<String>,
    /// Items put into the provider's conversation since its last turn
    /// (Responses API): the model read them in front of this turn's input.
    pub conversation_items: Vec<serde_json::Value>,
}

impl CaptureMeta {
    /// Parses `x-flywheel-tags`; pairs without `=` are skipped.
    pub fn parse_tags(header: &str) -> Vec<(String, String)> {
        header
            .split(',')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                let (k, v) = (k.trim(), v.trim());
                (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
            })
            .take(32)
            .collect()
    }
}

/// What an exchange's bodies hold, as a record keeps them.
pub struct Content {
    /// The upstream's completion id, when it sent one.
    pub completion_id: Option<String>,
    /// `{messages, params}`, and `omitted` with its reason where the body
    /// was too deep to hold whole.
    pub request: Value,
    /// `{choices: [{index, message, finish_reason}], usage, error}`; usage
    /// estimated where the answer carried none.
    pub response: Value,
}

/// Reads the request and the answer of an exchange.
pub fn read_content(ex: &Exchange) -> Content {
    let (request, omitted) = match lenient::parse(&ex.request) {
        Some(parsed) => (parsed.value, parsed.omitted),
        None => (Value::Null, vec![".".to_string()]),
    };
    if !omitted.is_empty() {
        metrics::counter!("flywheel_capture_incomplete_total").increment(1);
    }
    // A Responses-API exchange is kept as the chat turn it amounts to.
    let request = match ex.wire {
        Wire::Chat => request,
        Wire::Responses => super::responses::request_as_chat(super::responses::with_items_first(
            request,
            &ex.meta.conversation_items,
        )),
    };
    let (messages, params) = match request {
        Value::Object(mut fields) => {
            let messages = fields.remove("messages").unwrap_or(Value::Null);
            fields.remove("model");
            (messages, fields)
        }
        _ => (Value::Null, Map::new()),
    };
    let mut answer = if ex.outcome == Outcome::UpstreamError {
        Answer::error(&ex.response)
    } else if ex.wire == Wire::Responses {
        Answer::from_body(&super::responses::answer_as_chat(&ex.response, ex.streamed))
    } else if ex.streamed {
        stream::reassemble(&ex.response)
    } else {
        Answer::from_body(&ex.response)
    };
    // An answer without usage (a stream whose server ignored
    // `include_usage`) gets an estimate that says it is one.
    if answer.usage.is_null() && !answer.choices.is_empty() {
        answer.usage = super::usage::estimate(&ex.route.upstream_model, &messages, &answer.choices);
    }
    Content {
        completion_id: answer.completion_id,
        request: if omitted.is_empty() {
            object([("messages", messages), ("params", Value::Object(params))])
        } else {
            // The turn says exactly what it could not hold, and why.
            object([
                ("messages", messages),
                ("params", Value::Object(params)),
                ("omitted", omitted.into()),
                ("omitted_reason", lenient::TOO_DEEP.into()),
            ])
        },
        response: {
            let mut response = object([
                ("choices", Value::Array(answer.choices)),
                ("usage", answer.usage),
                ("error", answer.error),
            ]);
            if !answer.output_items.is_null() {
                response["output_items"] = answer.output_items;
            }
            response
        },
    }
}

/// The exchange as an inference record; what the proxy knew of it moves
/// into the record rather than being copied.
pub fn build_record(ex: Exchange, created_at: String) -> InferenceRecord {
    let content = read_content(&ex);
    let meta = ex.meta;
    InferenceRecord {
        id: ex.inference_id,
        completion_id: content.completion_id,
        alias: ex.route.alias.as_deref().map(String::from),
        version: ex.route.version.as_deref().map(String::from),
        provider_model: ex.route.upstream_model.to_string(),
        request: content.request,
        response: content.response,
        streamed: ex.streamed,
        status: ex.outcome.as_str().to_string(),
        http_status: ex.status,
        latency_ms: ex.total.as_secs_f64() * 1000.0,
        first_byte_ms: ex.first_byte.map(|d| d.as_secs_f64() * 1000.0),
        key_id: ex.caller_id.to_string(),
        user: meta.user,
        tags: meta.tags.into_iter().collect(),
        conversation_id: meta.conversation_id,
        created_at,
        fallback_from: meta.fallback_from,
        shadow_of: meta.shadow_of,
        turn: None,
        sticky: meta.sticky,
        opens: None,
    }
}

#[derive(Debug, Default, PartialEq)]
struct Answer {
    completion_id: Option<String>,
    /// `[{index, message, finish_reason}]`.
    choices: Vec<Value>,
    usage: Value,
    /// A Responses answer's output items, `[{id, type}]`; null for chat.
    output_items: Value,
    error: Value,
}

impl Answer {
    fn error(body: &[u8]) -> Self {
        let error = lenient::parse(body)
            .and_then(|v| v.value.get("error").cloned())
            .unwrap_or(Value::Null);
        Self {
            error,
            ..Self::default()
        }
    }

    fn from_body(body: &[u8]) -> Self {
        // What a completion's body usually is, read without building the
        // fields the record does not keep; anything else as a tree.
        if let Ok(unary) = serde_json::from_slice::<Unary>(&lenient::without_lone_surrogates(body))
        {
            return Self {
                completion_id: unary.id,
                choices: unary.choices.into_iter().map(UnaryChoice::kept).collect(),
                usage: unary.usage,
                output_items: unary.output_items,
                error: Value::Null,
            };
        }
        Self::from_tree(body)
    }

    fn from_tree(body: &[u8]) -> Self {
        let Some(Value::Object(mut v)) = lenient::parse(body).map(|p| p.value) else {
            return Self::default();
        };
        let take =
            |c: &mut Value, field: &str| c.get_mut(field).map(Value::take).unwrap_or(Value::Null);
        let choices = match v.remove("choices") {
            Some(Value::Array(cs)) => cs
                .into_iter()
                .map(|mut c| {
                    UnaryChoice {
                        index: take(&mut c, "index"),
                        message: take(&mut c, "message"),
                        finish_reason: take(&mut c, "finish_reason"),
                    }
                    .kept()
                })
                .collect(),
            _ => Vec::new(),
        };
        Self {
            completion_id: v.get("id").and_then(Value::as_str).map(String::from),
            choices,
            usage: v.remove("usage").unwrap_or(Value::Null),
            output_items: v.remove("output_items").unwrap_or(Value::Null),
            error: Value::Null,
        }
    }
}

/// The parts of a unary completion's body a record keeps.
#[derive(serde::Deserialize)]
struct Unary {
    id: Option<String>,
    #[serde(default)]
    choices: Vec<UnaryChoice>,
    #[serde(default)]
    usage: Value,
    #[serde(default)]
    output_items: Value,
}

#[derive(serde::Deserialize)]
struct UnaryChoice {
    #[serde(default)]
    index: Value,
    #[serde(default)]
    message: Value,
    #[serde(default)]
    finish_reason: Value,
}

impl UnaryChoice {
    fn kept(self) -> Value {
        object([
            ("index", self.index),
            ("message", self.message),
            ("finish_reason", self.finish_reason),
        ])
    }
}

/// A JSON object of `fields`, moved in (`json!` would copy each value).
/// Inserted one by one: collecting would first gather and sort them in a
/// vector of their own, which cost more than the few inserts.
fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    let mut object = Map::new();
    for (key, value) in fields {
        object.insert(key.to_string(), value);
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reassembled_choice_by_choice() {
        let sse = bytes::Bytes::from_static(concat!(
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Threat\"}},{\"index\":1,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\"}}]}}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" type\"},\"finish_reason\":\"stop\"},{\"index\":1,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
            "data: [DONE]\n\n"
        ).as_bytes());
        let a = stream::reassemble(&sse);
        assert_eq!(a.completion_id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(a.choices[0]["message"]["content"], "Threat type");
        assert_eq!(a.choices[0]["finish_reason"], "stop");
        let call = &a.choices[1]["message"]["tool_calls"][0];
        assert_eq!(
            (call["id"].as_str(), call["function"]["arguments"].as_str()),
            (Some("call_1"), Some("{\"a\":1}"))
        );
        assert_eq!(a.usage["total_tokens"], 5);
    }

    #[test]
    fn a_unary_body_reads_the_same_whichever_way_it_is_parsed() {
        let bodies = [
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"T \ud800","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5},"system_fingerprint":"fp"}"#,
            r#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}},{"index":1}]}"#,
            r#"{"id":7,"choices":[{"index":0,"message":{"content":"x"}}],"usage":null}"#,
            r#"{"id":"a","choices":[null,3]}"#,
            r#"{"id":"a","choices":{"0":{}}}"#,
            r#"{"error":{"message":"no"}}"#,
            r#"[1,2]"#,
            "not json",
        ];
        for body in bodies {
            let typed = Answer::from_body(body.as_bytes());
            assert_eq!(typed, Answer::from_tree(body.as_bytes()), "{body}");
        }
        let a = Answer::from_body(bodies[0].as_bytes());
        assert_eq!(a.choices[0]["message"]["content"], "T \u{fffd}");
        assert_eq!(
            a.choices[0].as_object().map(|o| o.len()),
            Some(3),
            "index, message, finish_reason"
        );
    }

    #[test]
    fn a_broken_stream_keeps_its_partial_content_and_the_error() {
        let sse = bytes::Bytes::from_static(
            b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Thr\"}}]}\n\ndata: {\"error\":{\"message\":\"broke\",\"type\":\"api_error\",\"param\":null,\"code\":\"upstream_unreachable\"}}\n\n",
        );
        let a = stream::reassemble(&sse);
        assert_eq!(a.choices[0]["message"]["content"], "Thr");
        assert_eq!(a.error["code"], "upstream_unreachable");
    }

    #[test]
    fn tags_are_key_value_pairs() {
        assert_eq!(
            CaptureMeta::parse_tags("team=soc, shift = night ,junk, =x"),
            [
                ("team".into(), "soc".into()),
                ("shift".into(), "night".into())
            ]
        );
    }
}
