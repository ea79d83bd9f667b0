//! The simulator driven through its router, as a client sees it: status,
//! headers and body on the wire, faults included. The Files API and
//! fine-tuning have their own files, beside this one.

use super::*;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

fn post(path: &str, body: &Value, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::post(path).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from(body.to_string())).unwrap()
}

fn triage(stream: bool) -> Value {
    json!({
        "model": "gpt-4o",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are a SOC analyst."},
            {"role": "user", "content": "Endpoint alert: LSASS memory dumped via comsvcs.dll MiniDump on WS-042."}
        ]
    })
}

async fn send(request: Request<Body>) -> (u16, axum::http::HeaderMap, String) {
    send_with(SimulatorConfig::default(), request).await
}

async fn send_with(
    config: SimulatorConfig,
    request: Request<Body>,
) -> (u16, axum::http::HeaderMap, String) {
    let response = router(config).oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// The `data:` payloads of an SSE body, checking its framing on the way.
fn sse(body: &str) -> Vec<&str> {
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    assert!(!body.contains("event:"));
    body.split_terminator("\n\n")
        .map(|event| event.strip_prefix("data: ").unwrap())
        .collect()
}

fn assert_error(status: u16, body: &str, expected: u16, kind: &str) -> Value {
    assert_eq!(status, expected, "{body}");
    let body: Value = serde_json::from_str(body).unwrap();
    let error = &body["error"];
    let mut keys: Vec<&String> = error.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["code", "message", "param", "type"]);
    assert_eq!(error["type"], kind);
    error.clone()
}

#[tokio::test]
async fn a_stream_is_data_events_ending_with_done() {
    let mut body = triage(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, headers, text) = send(post("/v1/chat/completions", &body, &[])).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert!(
        headers["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    assert!(headers.contains_key("openai-processing-ms"));
    let events = sse(&text);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["total_tokens"].as_u64(),
        Some(
            usage["usage"]["prompt_tokens"].as_u64().unwrap()
                + usage["usage"]["completion_tokens"].as_u64().unwrap()
        )
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();

    // The same answer, unary.
    let (status, _, unary) = send(post("/v1/chat/completions", &triage(false), &[])).await;
    assert_eq!(status, 200);
    let unary: Value = serde_json::from_str(&unary).unwrap();
    assert_eq!(unary["choices"][0]["message"]["content"], text);
    assert_eq!(
        unary["usage"]["completion_tokens"],
        usage["usage"]["completion_tokens"]
    );
}

#[tokio::test]
async fn a_streamed_tool_call_comes_in_fragments() {
    let mut body = triage(true);
    body["tools"] = json!([{"type": "function", "function": {"name": "isolate_host", "parameters": {"type": "object"}}}]);
    body["tool_choice"] = json!("required");
    let (status, _, text) = send(post("/v1/chat/completions", &body, &[])).await;
    assert_eq!(status, 200);
    let events = sse(&text);
    let fragments: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["tool_calls"][0]
                .as_object()
                .cloned()
                .map(Value::Object)
        })
        .collect();
    assert!(fragments.len() > 2);
    assert_eq!(fragments[0]["function"]["name"], "isolate_host");
    assert_eq!(fragments[0]["function"]["arguments"], "");
    assert!(fragments[1..].iter().all(|f| f.get("id").is_none()
        && f.get("type").is_none()
        && f["function"].get("name").is_none()
        && f["index"] == 0));
    let arguments: String = fragments
        .iter()
        .map(|f| f["function"]["arguments"].as_str().unwrap())
        .collect();
    let arguments: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(arguments["suspected_threat_type"], "credential_access");
    assert!(
        arguments["alert_excerpt"]
            .as_str()
            .unwrap()
            .contains("LSASS")
    );
}

#[tokio::test]
async fn bad_requests_answer_in_the_error_envelope() {
    let raw = Request::post("/v1/chat/completions")
        .body(Body::from("{\"model\":"))
        .unwrap();
    let (status, headers, body) = send(raw).await;
    assert_error(status, &body, 400, "invalid_request_error");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.contains_key("x-request-id"));

    let (status, _, body) = send(post("/v1/chat/completions", &json!({"messages": []}), &[])).await;
    assert_eq!(
        assert_error(status, &body, 400, "invalid_request_error")["param"],
        "model"
    );

    let mut unknown = triage(false);
    unknown["model"] = json!("x");
    let (status, _, body) = send(post("/v1/chat/completions", &unknown, &[])).await;
    let error = assert_error(status, &body, 404, "invalid_request_error");
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(
        error["message"],
        "The model `x` does not exist or you do not have access to it."
    );
    assert!(error["param"].is_null());

    let (status, _, body) = send(post("/v1/nope", &json!({}), &[])).await;
    assert_error(status, &body, 404, "invalid_request_error");
    let (status, headers, body) = send(
        Request::get("/v1/chat/completions")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_error(status, &body, 405, "invalid_request_error");
    assert!(headers.contains_key("openai-processing-ms"));
}

#[tokio::test]
async fn an_api_key_is_required_when_configured() {
    let config = || SimulatorConfig {
        api_key: Some("sk-sim-secret".into()),
        ..SimulatorConfig::default()
    };
    for auth in [
        None,
        Some("Bearer nope-nope-nope"),
        Some("Basic c2stc2ltLXNlY3JldA=="),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let (status, _, body) = send_with(
            config(),
            post("/v1/chat/completions", &triage(false), &headers),
        )
        .await;
        let error = assert_error(status, &body, 401, "invalid_request_error");
        assert_eq!(error["code"], "invalid_api_key");
        assert!(!body.contains("nope-nope-nope"), "the key is not echoed");
    }
    let ok = [("authorization", "Bearer sk-sim-secret")];
    let (status, _, _) =
        send_with(config(), post("/v1/chat/completions", &triage(false), &ok)).await;
    assert_eq!(status, 200);
    let models = Request::get("/v1/models").body(Body::empty()).unwrap();
    assert_eq!(send_with(config(), models).await.0, 401);
}

#[tokio::test]
async fn status_faults_follow_their_headers() {
    let headers = [("x-sim-status", "429"), ("x-sim-retry-after", "2")];
    let (status, response_headers, body) =
        send(post("/v1/chat/completions", &triage(false), &headers)).await;
    let error = assert_error(status, &body, 429, "requests");
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(response_headers["retry-after"], "2");
    let (status, _, body) = send(post(
        "/v1/chat/completions",
        &triage(true),
        &[("x-sim-status", "503")],
    ))
    .await;
    assert_error(status, &body, 503, "server_error");
    let (status, _, body) = send(post(
        "/v1/chat/completions",
        &triage(false),
        &[("x-sim-status", "400")],
    ))
    .await;
    assert_error(status, &body, 400, "invalid_request_error");

    // Only the first N requests with a fault id fail, on one router.
    let app = router(SimulatorConfig::default());
    let headers = [
        ("x-sim-status", "503"),
        ("x-sim-fail-times", "2"),
        ("x-sim-fault-id", "t1"),
    ];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = app
            .clone()
            .oneshot(post("/v1/chat/completions", &triage(false), &headers))
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [503, 503, 200]);
}

#[tokio::test]
async fn garbage_is_a_200_that_is_not_json() {
    let (status, headers, body) = send(post(
        "/v1/chat/completions",
        &triage(false),
        &[("x-sim-garbage", "1")],
    ))
    .await;
    assert_eq!((status, body.as_str()), (200, "upstream exploded"));
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
}

#[tokio::test]
async fn a_dropped_stream_ends_in_an_error_not_a_clean_end() {
    let response = router(SimulatorConfig::default())
        .oneshot(post(
            "/v1/chat/completions",
            &triage(true),
            &[("x-sim-drop-after", "3")],
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut frames = Vec::new();
    let outcome = loop {
        match body.frame().await {
            Some(Ok(frame)) => frames.push(frame.into_data().unwrap()),
            Some(Err(error)) => break Err(error),
            None => break Ok(()),
        }
    };
    assert!(outcome.is_err(), "the body must fail, not end");
    // The role chunk and three tokens, each its own frame.
    assert_eq!(frames.len(), 4);
    assert!(frames.iter().all(|f| f.starts_with(b"data: {")));

    let response = router(SimulatorConfig::default())
        .oneshot(post(
            "/v1/chat/completions",
            &triage(false),
            &[("x-sim-drop-after", "3")],
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.into_body().collect().await.is_err());
}

#[tokio::test]
async fn token_delays_pace_streamed_and_unary_answers() {
    for stream in [false, true] {
        let started = std::time::Instant::now();
        let (status, _, text) = send(post(
            "/v1/chat/completions",
            &triage(stream),
            &[("x-sim-token-delay-ms", "5"), ("x-sim-delay-ms", "50")],
        ))
        .await;
        assert_eq!(status, 200);
        let tokens = if stream {
            sse(&text).len() - 3 // role, finish, [DONE]
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["usage"]["completion_tokens"]
                .as_u64()
                .unwrap() as usize
        };
        let floor = Duration::from_millis(50 + 5 * tokens as u64);
        assert!(
            started.elapsed() >= floor,
            "stream={stream}: {:?} < {floor:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn models_are_listed_and_retrieved() {
    let (status, _, body) = send(Request::get("/v1/models").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, MODELS);
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["object"] == "model"
                && m["owned_by"] == "flywheel-simulator"
                && m["created"].is_u64())
    );
    let (status, _, body) = send(
        Request::get("/v1/models/sim-triage-large")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap()["id"].clone()
        ),
        (200, json!("sim-triage-large"))
    );
    let (status, _, body) = send(
        Request::get("/v1/models/gpt-9")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        assert_error(status, &body, 404, "invalid_request_error")["code"],
        "model_not_found"
    );
}

#[tokio::test]
async fn embeddings_come_as_floats_or_base64() {
    let request = json!({"model": "text-embedding-3-small", "input": ["mimikatz on DC01", "benign backup job"]});
    let (status, _, body) = send(post("/v1/embeddings", &request, &[])).await;
    assert_eq!(status, 200);
    let floats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["model"], "text-embedding-3-small");
    assert_eq!(floats["data"][1]["index"], 1);
    assert_eq!(floats["data"][0]["object"], "embedding");
    assert_eq!(floats["data"][0]["embedding"].as_array().unwrap().len(), 16);
    assert!(floats["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let mut request = request;
    request["encoding_format"] = json!("base64");
    let (_, _, body) = send(post("/v1/embeddings", &request, &[])).await;
    let encoded: Value = serde_json::from_str(&body).unwrap();
    // 16 f32s are 64 bytes, 88 base64 characters with padding.
    assert_eq!(encoded["data"][0]["embedding"].as_str().unwrap().len(), 88);

    let (status, _, body) = send(post("/v1/embeddings", &json!({"model": "m"}), &[])).await;
    assert_eq!(
        assert_error(status, &body, 400, "invalid_request_error")["param"],
        "input"
    );
}

/// Statuses of `count` requests for `model` on one router.
async fn statuses(app: &Router, model: &str, count: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    let mut body = triage(false);
    body["model"] = json!(model);
    let mut statuses = Vec::new();
    for _ in 0..count {
        let response = app
            .clone()
            .oneshot(post("/v1/chat/completions", &body, headers))
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn a_fail_rate_of_one_fails_only_its_model() {
    let app = router(SimulatorConfig {
        fail_rates: HashMap::from([("gpt-4o".to_string(), 1.0)]),
        ..SimulatorConfig::default()
    });
    assert!(
        statuses(&app, "gpt-4o", 20, &[])
            .await
            .iter()
            .all(|s| *s == 500)
    );
    assert!(
        statuses(&app, "gpt-4o-mini", 20, &[])
            .await
            .iter()
            .all(|s| *s == 200)
    );
    let (status, _, body) = send_with(
        SimulatorConfig {
            fail_rates: HashMap::from([("gpt-4o".to_string(), 1.0)]),
            ..SimulatorConfig::default()
        },
        post("/v1/chat/completions", &triage(true), &[]),
    )
    .await;
    let error = assert_error(status, &body, 500, "server_error");
    assert!(error["message"].as_str().unwrap().contains("gpt-4o"));

    // The header does the same per request, and overrides the setting.
    let plain = router(SimulatorConfig::default());
    let header = [("x-sim-fail-rate", "sim-triage-small=1, gpt-4o=0")];
    let small = statuses(&plain, "sim-triage-small", 20, &header).await;
    assert!(small.iter().all(|s| *s == 500));
    assert!(
        statuses(&plain, "sim-triage-large", 20, &header)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    assert!(
        statuses(&app, "gpt-4o", 20, &header)
            .await
            .iter()
            .all(|s| *s == 200)
    );
}

#[tokio::test]
async fn a_fail_rate_of_one_half_fails_about_half() {
    let app = router(SimulatorConfig::default());
    let header = [("x-sim-fail-rate", "gpt-4o=0.5")];
    let outcomes = statuses(&app, "gpt-4o", 400, &header).await;
    let failed = outcomes.iter().filter(|s| **s == 500).count();
    assert!(outcomes.iter().all(|s| *s == 500 || *s == 200));
    // Binomial(400, 0.5) has a standard deviation of 10: 140..=260 is six of them.
    assert!((140..=260).contains(&failed), "{failed} of 400 failed");
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// Sends one request to `app` (which keeps its state between calls).
async fn call(app: &Router, request: Request<Body>) -> (u16, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn call_json(app: &Router, request: Request<Body>) -> (u16, Value) {
    let (status, body) = call(app, request).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

mod azure;
mod files;
mod fine_tuning;
mod lora;

#[tokio::test]
async fn responses_are_created_streamed_retrieved_and_chained() {
    let sim = router(SimulatorConfig::default());
    let call = |request: Request<Body>| {
        let sim = sim.clone();
        async move {
            let response = sim.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, headers, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (status, _, text) = call(post(
        "/v1/responses",
        &json!({"model": "gpt-4o", "input": "mimikatz sekurlsa on WS-042"}),
        &[],
    ))
    .await;
    assert_eq!(status, 200, "{text}");
    let first: Value = serde_json::from_str(&text).unwrap();
    let id = first["id"].as_str().unwrap();
    let (status, _, text) = call(
        Request::get(format!("/v1/responses/{id}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), first);

    let (status, headers, text) = call(post(
        "/v1/responses",
        &json!({"model": "gpt-4o", "stream": true, "previous_response_id": id,
                "input": [{"role": "user", "content": "And the severity?"}]}),
        &[],
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert!(events[0].starts_with("event: response.created\ndata: {"));
    assert!(
        events
            .last()
            .unwrap()
            .starts_with("event: response.completed\n")
    );
    assert!(!text.contains("[DONE]"));

    let (status, _, text) = call(
        Request::get("/v1/responses/resp_missing")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_error(status, &text, 404, "invalid_request_error");
}
