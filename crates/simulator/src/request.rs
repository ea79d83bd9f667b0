//! Validation of a chat-completions request as OpenAI does it: the same
//! statuses, the same `param` paths (`messages[1].content`), much the same
//! wording, so the proxy and its tests meet the errors a provider really
//! returns. What passes becomes a [`ChatRequest`].

use super::MODELS;
use super::tools::{self, Choice, Tool};
use super::wire::{self, ApiError, kind_of};
use serde_json::{Map, Value, json};

/// The highest `n` the simulator accepts.
pub const MAX_N: i64 = 8;

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// A valid request, reduced to what shapes the answer.
#[derive(Debug)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Value>,
    pub stream: bool,
    pub include_usage: bool,
    pub n: usize,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<usize>,
    /// The function to call instead of answering in text (see `tools`).
    pub tool: Option<Tool>,
    /// How the text answer is written.
    pub format: Format,
}

/// `response_format` (chat) or `text.format` (Responses API).
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Text,
    /// Any JSON object: the verdict as `threat_type`, `severity`,
    /// `rationale`.
    JsonObject,
    /// An instance of this schema (see `schema`).
    JsonSchema(Value),
}

/// Parses a request for one of the base models only.
#[cfg(test)]
pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
    parse_for(body, &|_| false)
}

/// Parses a request for a base model or one `tuned` says exists.
pub fn parse_for(body: &[u8], tuned: &dyn Fn(&str) -> bool) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        ApiError::invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you \
             aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
             but what was sent was not valid JSON.)",
        )
    })?;
    let Value::Object(request) = value else {
        return Err(ApiError::invalid(format!(
            "Invalid type for request body: expected an object, but got {} instead.",
            kind_of(&value)
        )));
    };
    let model = model(&request)?;
    let messages = messages(&request)?;
    let stream = boolean(&request, "stream", "stream")?.unwrap_or(false);
    let include_usage = stream_options(&request, stream)?;
    let n = integer(&request, "n", 1, MAX_N)?.unwrap_or(1);
    number(&request, "temperature", 0.0, 2.0)?;
    number(&request, "top_p", 0.0, 1.0)?;
    number(&request, "presence_penalty", -2.0, 2.0)?;
    number(&request, "frequency_penalty", -2.0, 2.0)?;
    let max_tokens = match integer(&request, "max_completion_tokens", 1, i64::MAX)? {
        Some(limit) => Some(limit),
        None => integer(&request, "max_tokens", 1, i64::MAX)?,
    };
    let offered = tools(&request)?;
    let choice = tool_choice(&request, &offered)?;
    let tool = tools::decide(&choice, &offered, &messages).cloned();
    let format = response_format(&request, &messages)?;
    if !MODELS.contains(&model.as_str()) && !tuned(&model) {
        return Err(wire::model_not_found(&model));
    }
    Ok(ChatRequest {
        model,
        messages,
        stream,
        include_usage,
        n: usize::try_from(n).unwrap_or(1),
        max_tokens: max_tokens.map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
        tool,
        format,
    })
}

pub fn invalid_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(format!(
        "Invalid type for '{param}': expected {expected}, but got {} instead.",
        kind_of(got)
    ))
    .param(param)
    .code("invalid_type")
}

pub fn missing(param: &str) -> ApiError {
    ApiError::invalid(format!("Missing required parameter: '{param}'."))
        .param(param)
        .code("missing_required_parameter")
}

/// A field that is absent or `null` counts as not given, as OpenAI has it.
pub fn given<'r>(request: &'r Map<String, Value>, field: &str) -> Option<&'r Value> {
    request.get(field).filter(|v| !v.is_null())
}

fn model(request: &Map<String, Value>) -> Result<String, ApiError> {
    match given(request, "model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        None | Some(Value::String(_)) => {
            Err(ApiError::invalid("you must provide a model parameter").param("model"))
        }
        Some(other) => Err(invalid_type("model", "a string", other)),
    }
}

fn messages(request: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let messages = match given(request, "messages") {
        None => return Err(missing("messages")),
        Some(Value::Array(m)) => m,
        Some(other) => return Err(invalid_type("messages", "an array of objects", other)),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        )
        .param("messages")
        .code("empty_array"));
    }
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(fields) = message else {
            return Err(invalid_type(&at, "an object", message));
        };
        let role = match given(fields, "role") {
            None => return Err(missing(&format!("{at}.role"))),
            Some(Value::String(r)) => r.as_str(),
            Some(other) => return Err(invalid_type(&format!("{at}.role"), "a string", other)),
        };
        if !ROLES.contains(&role) {
            return Err(ApiError::invalid(format!(
                "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
            ))
            .param(format!("{at}.role"))
            .code("invalid_value"));
        }
        // An assistant turn that called tools may have no content.
        let optional = matches!(role, "assistant" | "function");
        let content = format!("{at}.content");
        match given(fields, "content") {
            None if optional => {}
            None => return Err(missing(&content)),
            Some(Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    if !part.is_object() {
                        return Err(invalid_type(&format!("{content}[{j}]"), "an object", part));
                    }
                }
            }
            Some(other) => {
                return Err(invalid_type(
                    &content,
                    "one of a string or array of objects",
                    other,
                ));
            }
        }
        if role == "tool" && !matches!(given(fields, "tool_call_id"), Some(Value::String(_))) {
            return Err(missing(&format!("{at}.tool_call_id")));
        }
    }
    Ok(messages.clone())
}

pub fn boolean(
    request: &Map<String, Value>,
    field: &str,
    param: &str,
) -> Result<Option<bool>, ApiError> {
    match given(request, field) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid_type(param, "a boolean", other)),
    }
}

/// `stream_options.include_usage`; the options only go with a stream.
fn stream_options(request: &Map<String, Value>, stream: bool) -> Result<bool, ApiError> {
    match given(request, "stream_options") {
        None => Ok(false),
        Some(_) if !stream => Err(ApiError::invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        )
        .param("stream_options")),
        Some(Value::Object(options)) => {
            Ok(boolean(options, "include_usage", "stream_options.include_usage")?.unwrap_or(false))
        }
        Some(other) => Err(invalid_type("stream_options", "an object", other)),
    }
}

/// An integer field within `min..=max`; whole decimals (`2.0`) count.
pub fn integer(
    request: &Map<String, Value>,
    field: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    let Some(value) = given(request, field) else {
        return Ok(None);
    };
    let Some(n) = value.as_number() else {
        return Err(invalid_type(field, "an integer", value));
    };
    // Out of i64's range is out of ours; say on which side.
    let whole = n.as_i64().map(i128::from).or_else(|| {
        if n.as_u64().is_some() {
            return Some(i128::MAX);
        }
        let f = n.as_f64()?;
        if f.fract() != 0.0 || !f.is_finite() {
            None
        } else if f >= i64::MAX as f64 {
            Some(i128::MAX)
        } else if f <= i64::MIN as f64 {
            Some(i128::MIN)
        } else {
            Some(f as i128)
        }
    });
    let Some(whole) = whole else {
        return Err(invalid_type(field, "an integer", value));
    };
    if whole < i128::from(min) {
        return Err(ApiError::invalid(format!(
            "Invalid '{field}': integer below minimum value. Expected a value >= {min}, but got {n} instead."
        ))
        .param(field)
        .code("integer_below_min_value"));
    }
    if whole > i128::from(max) {
        return Err(ApiError::invalid(format!(
            "Invalid '{field}': integer above maximum value. Expected a value <= {max}, but got {n} instead."
        ))
        .param(field)
        .code("integer_above_max_value"));
    }
    Ok(i64::try_from(whole).ok())
}

/// A number field within `min..=max`; the simulator ignores its value, but
/// a provider would refuse it out of range.
pub fn number(
    request: &Map<String, Value>,
    field: &str,
    min: f64,
    max: f64,
) -> Result<(), ApiError> {
    let Some(value) = given(request, field) else {
        return Ok(());
    };
    let Some(x) = value.as_f64() else {
        return Err(invalid_type(field, "a number", value));
    };
    if x < min {
        return Err(ApiError::invalid(format!(
            "Invalid '{field}': decimal below minimum value. Expected a value >= {min}, but got {x} instead."
        ))
        .param(field)
        .code("decimal_below_min_value"));
    }
    if x > max {
        return Err(ApiError::invalid(format!(
            "Invalid '{field}': decimal above maximum value. Expected a value <= {max}, but got {x} instead."
        ))
        .param(field)
        .code("decimal_above_max_value"));
    }
    Ok(())
}

/// The functions offered in `tools`, each with its parameters schema.
fn tools(request: &Map<String, Value>) -> Result<Vec<Tool>, ApiError> {
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
                        "Invalid value: {other}. Supported values are: 'function'."
                    ))
                    .param(format!("{at}.type"))
                    .code("invalid_value"));
                }
            }
            let function = given(fields, "function").and_then(Value::as_object);
            let name = match function.and_then(|f| given(f, "name")) {
                Some(Value::String(name)) if !name.is_empty() => name.clone(),
                Some(other) => {
                    return Err(invalid_type(
                        &format!("{at}.function.name"),
                        "a string",
                        other,
                    ));
                }
                None => return Err(missing(&format!("{at}.function.name"))),
            };
            let parameters = parameters(
                function.and_then(|f| given(f, "parameters")),
                &format!("{at}.function.parameters"),
            )?;
            Ok(Tool { name, parameters })
        })
        .collect()
}

/// A function's `parameters`: an object schema, `{"type":"object"}` when
/// absent.
pub fn parameters(given: Option<&Value>, param: &str) -> Result<Value, ApiError> {
    match given {
        None => Ok(json!({"type": "object"})),
        Some(schema @ Value::Object(_)) => Ok(schema.clone()),
        Some(other) => Err(invalid_type(param, "an object", other)),
    }
}

/// `tool_choice`: a mode, or a function that must be one of the tools.
/// `named` reads a choice object's function name (the chat and the
/// Responses API put it in different places).
pub fn choice_of(
    given: Option<&Value>,
    tools: &[Tool],
    named: fn(&Map<String, Value>) -> Option<&str>,
    name_param: &str,
) -> Result<Choice, ApiError> {
    let without_tools = || {
        ApiError::invalid(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
        )
        .param("tool_choice")
    };
    match given {
        None => Ok(Choice::Auto),
        Some(Value::String(choice)) => match choice.as_str() {
            "none" => Ok(Choice::None),
            "auto" | "required" if tools.is_empty() => Err(without_tools()),
            "auto" => Ok(Choice::Auto),
            "required" => Ok(Choice::Required),
            other => Err(ApiError::invalid(format!(
                "Invalid value: '{other}'. Supported values are: 'none', 'auto', and 'required'."
            ))
            .param("tool_choice")
            .code("invalid_value")),
        },
        Some(Value::Object(choice)) => {
            let name = named(choice).ok_or_else(|| missing(name_param))?;
            if tools.is_empty() {
                return Err(without_tools());
            }
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(format!(
                    "Invalid value for 'tool_choice': function '{name}' is not one of the 'tools'."
                ))
                .param("tool_choice"));
            }
            Ok(Choice::Named(name.to_string()))
        }
        Some(other) => Err(invalid_type("tool_choice", "a string or object", other)),
    }
}

fn tool_choice(request: &Map<String, Value>, tools: &[Tool]) -> Result<Choice, ApiError> {
    choice_of(
        given(request, "tool_choice"),
        tools,
        |choice| choice.get("function")?.get("name")?.as_str(),
        "tool_choice.function.name",
    )
}

/// `response_format`; `json_object` needs the word "json" somewhere in the
/// messages, as OpenAI requires.
fn response_format(request: &Map<String, Value>, messages: &[Value]) -> Result<Format, ApiError> {
    let Some(format) = given(request, "response_format") else {
        return Ok(Format::Text);
    };
    let Value::Object(fields) = format else {
        return Err(invalid_type("response_format", "an object", format));
    };
    let format = format_of(fields, "response_format", |f| {
        let Some(spec) = given(f, "json_schema") else {
            return Err(missing("response_format.json_schema"));
        };
        let Value::Object(spec) = spec else {
            return Err(invalid_type(
                "response_format.json_schema",
                "an object",
                spec,
            ));
        };
        Ok(spec)
    })?;
    if format == Format::JsonObject {
        json_mentioned(
            messages.iter().map(super::chat::text_of),
            "messages",
            "response_format",
        )?;
    }
    Ok(format)
}

/// A format object (`{"type": …}`); `schema_holder` finds the object with
/// `name` and `schema` (nested in chat, the format itself in the
/// Responses API).
pub fn format_of<'f>(
    fields: &'f Map<String, Value>,
    param: &str,
    schema_holder: impl Fn(&'f Map<String, Value>) -> Result<&'f Map<String, Value>, ApiError>,
) -> Result<Format, ApiError> {
    match given(fields, "type") {
        None => Err(missing(&format!("{param}.type"))),
        Some(Value::String(kind)) => match kind.as_str() {
            "text" => Ok(Format::Text),
            "json_object" => Ok(Format::JsonObject),
            "json_schema" => {
                let holder = schema_holder(fields)?;
                let holder_param = if std::ptr::eq(holder, fields) {
                    param.to_string()
                } else {
                    format!("{param}.json_schema")
                };
                match given(holder, "name") {
                    Some(Value::String(name)) if !name.is_empty() => {}
                    None => return Err(missing(&format!("{holder_param}.name"))),
                    Some(other) => {
                        return Err(invalid_type(
                            &format!("{holder_param}.name"),
                            "a string",
                            other,
                        ));
                    }
                }
                match given(holder, "schema") {
                    None => Ok(Format::JsonSchema(json!({}))),
                    Some(schema @ Value::Object(_)) => Ok(Format::JsonSchema(schema.clone())),
                    Some(other) => Err(invalid_type(
                        &format!("{holder_param}.schema"),
                        "an object",
                        other,
                    )),
                }
            }
            other => Err(ApiError::invalid(format!(
                "Invalid value: '{other}'. Supported values are: 'text', 'json_object', and 'json_schema'."
            ))
            .param(format!("{param}.type"))
            .code("invalid_value")),
        },
        Some(other) => Err(invalid_type(&format!("{param}.type"), "a string", other)),
    }
}

/// OpenAI refuses JSON mode unless the prompt asks for JSON.
pub fn json_mentioned(
    mut texts: impl Iterator<Item = String>,
    param: &str,
    format: &str,
) -> Result<(), ApiError> {
    if texts.any(|t| t.to_lowercase().contains("json")) {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "'{param}' must contain the word 'json' in some form, to use '{format}' of type 'json_object'."
    ))
    .param(param))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error_of(body: Value) -> (u16, Option<String>) {
        let error = parse(body.to_string().as_bytes()).unwrap_err();
        (error.status.as_u16(), error.param)
    }

    const USER: &str = r#"[{"role":"user","content":"whoami /all"}]"#;

    fn with(field: &str, value: Value) -> Value {
        let mut body =
            json!({"model": "gpt-4o", "messages": serde_json::from_str::<Value>(USER).unwrap()});
        body[field] = value;
        body
    }

    #[test]
    fn malformed_requests_name_the_param() {
        assert_eq!(parse(b"{\"model\":").unwrap_err().param, None);
        assert_eq!(parse(b"[1,2]").unwrap_err().status, 400);
        let p = |s: &str| Some(s.to_string());
        for (body, expected) in [
            (json!({"messages": []}), (400, p("model"))),
            (json!({"model": 5}), (400, p("model"))),
            (json!({"model": "gpt-4o"}), (400, p("messages"))),
            (
                json!({"model": "gpt-4o", "messages": "hi"}),
                (400, p("messages")),
            ),
            (
                json!({"model": "gpt-4o", "messages": []}),
                (400, p("messages")),
            ),
            (
                json!({"model": "gpt-4o", "messages": [5]}),
                (400, p("messages[0]")),
            ),
            (
                json!({"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]}),
                (400, p("messages[0].role")),
            ),
            (
                json!({"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]}),
                (400, p("messages[0].content")),
            ),
            (with("n", json!(0)), (400, p("n"))),
            (with("n", json!(9)), (400, p("n"))),
            (with("n", json!(1e30)), (400, p("n"))),
            (with("n", json!(1.5)), (400, p("n"))),
            (with("stream", json!("yes")), (400, p("stream"))),
            (
                with("stream_options", json!({"include_usage": true})),
                (400, p("stream_options")),
            ),
            (with("temperature", json!(3)), (400, p("temperature"))),
            (with("max_tokens", json!(-5)), (400, p("max_tokens"))),
            (with("tools", json!("isolate_host")), (400, p("tools"))),
            (with("tool_choice", json!("auto")), (400, p("tool_choice"))),
            (with("model", json!("no-such-model")), (404, None)),
        ] {
            assert_eq!(error_of(body.clone()), expected, "{body}");
        }
        let mut body = with("stream", json!(true));
        body["stream_options"] = json!({"include_usage": 1});
        assert_eq!(error_of(body), (400, p("stream_options.include_usage")));
    }

    #[test]
    fn tool_choice_decides_the_call() {
        let tools = json!([{"type": "function", "function": {"name": "isolate",
                              "parameters": {"type": "object", "properties": {"host": {"type": "string"}}}}},
                           {"type": "function", "function": {"name": "ticket"}}]);
        let mut body = with("tools", tools);
        let tool = |body: &Value| parse(body.to_string().as_bytes()).unwrap().tool;
        // auto, and the prompt asks for neither.
        assert_eq!(tool(&body), None);
        body["tool_choice"] = json!("required");
        let called = tool(&body).unwrap();
        assert_eq!(called.name, "isolate");
        assert_eq!(called.parameters["properties"]["host"]["type"], "string");
        body["tool_choice"] = json!({"type": "function", "function": {"name": "ticket"}});
        let called = tool(&body).unwrap();
        assert_eq!(
            (called.name.as_str(), &called.parameters),
            ("ticket", &json!({"type": "object"}))
        );
        body["tool_choice"] = json!("none");
        assert_eq!(tool(&body), None);
        body["tool_choice"] = json!("auto");
        body["messages"] = json!([{"role": "user", "content": "Open a ticket for whoami"}]);
        assert_eq!(tool(&body).unwrap().name, "ticket");
        body["messages"] = json!([
            {"role": "user", "content": "Open a ticket for whoami"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "ticket", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"}
        ]);
        assert_eq!(tool(&body), None);
        body["tool_choice"] = json!({"type": "function", "function": {"name": "nope"}});
        assert_eq!(error_of(body), (400, Some("tool_choice".to_string())));
    }

    #[test]
    fn response_formats_are_read_and_checked() {
        let format = |value: Value| parse(with("response_format", value).to_string().as_bytes());
        assert_eq!(
            format(json!({"type": "text"})).unwrap().format,
            Format::Text
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        assert_eq!(
            format(json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": schema}}))
                .unwrap()
                .format,
            Format::JsonSchema(schema)
        );
        let param = |value: Value| format(value).unwrap_err().param;
        // The prompt does not say JSON.
        assert_eq!(
            param(json!({"type": "json_object"})).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param(json!({"type": "json_schema"})).as_deref(),
            Some("response_format.json_schema")
        );
        assert_eq!(
            param(json!({"type": "json_schema", "json_schema": {"schema": {}}})).as_deref(),
            Some("response_format.json_schema.name")
        );
        assert_eq!(
            param(json!({"type": "yaml"})).as_deref(),
            Some("response_format.type")
        );
        assert_eq!(param(json!("json")).as_deref(), Some("response_format"));
        let mut body = with("response_format", json!({"type": "json_object"}));
        body["messages"] = json!([{"role": "user", "content": "Answer in JSON: whoami"}]);
        assert_eq!(
            parse(body.to_string().as_bytes()).unwrap().format,
            Format::JsonObject
        );
    }

    #[test]
    fn limits_and_options_are_read() {
        let mut body = with("stream", json!(true));
        body["stream_options"] = json!({"include_usage": true});
        body["n"] = json!(3);
        body["max_tokens"] = json!(7);
        body["max_completion_tokens"] = json!(5);
        let request = parse(body.to_string().as_bytes()).unwrap();
        assert!(request.stream && request.include_usage);
        assert_eq!((request.n, request.max_tokens), (3, Some(5)));
    }
}
