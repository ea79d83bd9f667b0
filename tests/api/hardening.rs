//! What a hostile or merely unusual client could break, each through real
//! HTTP: tool-call loops and follow-ups under load keep their
//! conversation, connections that stop talking are closed, odd bodies are
//! captured whole, odd headers get clear errors.

use crate::helpers::*;
use axum::Json;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream whose answers follow a script: to a user message, two
/// parallel tool calls; to tool results, one more call until four tool
/// results are in; then text. Arguments are spelled with spaces and keys
/// out of order, as models write them.
async fn agent_upstream() -> SocketAddr {
    async fn answer(Json(body): Json<Value>) -> Json<Value> {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let tool_results = messages.iter().filter(|m| m["role"] == "tool").count();
        let last = messages
            .last()
            .map(|m| m["role"].clone())
            .unwrap_or_default();
        let call = |id: String, host: &str| {
            json!({"id": id, "type": "function", "function": {"name": "isolate_host",
                "arguments": format!("{{\"reason\": \"lateral movement\", \"host\": \"{host}\"}}")}})
        };
        let message = if last == "user" {
            json!({"role": "assistant", "content": null, "tool_calls": [
                call(format!("call_{}a", messages.len()), "WS-1"),
                call(format!("call_{}b", messages.len()), "WS-2")]})
        } else if tool_results < 4 {
            json!({"role": "assistant", "content": null, "tool_calls": [
                call(format!("call_{}", messages.len()), "DC-1")]})
        } else {
            json!({"role": "assistant", "content": "Threat type: lateral_movement\nSeverity: high\nAll hosts isolated."})
        };
        let finish = if message["tool_calls"].is_array() {
            "tool_calls"
        } else {
            "stop"
        };
        Json(json!({
            "id": format!("chatcmpl-{}", messages.len()), "object": "chat.completion", "created": 1,
            "model": body["model"], "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        }))
    }
    serve_upstream(axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer)))
        .await
}

async fn serve_upstream(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// The assistant message as a LangChain-style client resends it: the
/// arguments parsed and dumped again (other spacing, sorted keys).
fn resent(message: &Value) -> Value {
    let mut m = message.clone();
    for call in m["tool_calls"].as_array_mut().into_iter().flatten() {
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        call["function"]["arguments"] = json!(serde_json::to_string_pretty(&args).unwrap());
    }
    m
}

fn conversation_of(response: &reqwest::Response) -> String {
    response.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn parallel_tool_calls_in_a_multi_step_agent_loop_thread_into_one_conversation() {
    let app = spawn_app_with(Options {
        upstream: Some(agent_upstream().await),
        ..Options::default()
    })
    .await;
    let mut messages =
        vec![json!({"role": "user", "content": "Contain the intrusion on WS-1 and WS-2."})];
    let (mut conversations, mut answers) = (Vec::new(), Vec::new());
    loop {
        let response = app
            .post(
                "/v1/chat/completions",
                &json!({"model": "triage", "messages": messages}),
            )
            .await;
        assert_eq!(response.status(), 200);
        conversations.push(conversation_of(&response));
        let body: Value = response.json().await.unwrap();
        let message = body["choices"][0]["message"].clone();
        answers.push(message.clone());
        let Some(calls) = message["tool_calls"].as_array() else {
            break;
        };
        messages.push(resent(&message));
        for call in calls {
            messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "{\"isolated\":true}"}));
        }
    }
    assert_eq!(
        answers[0]["tool_calls"].as_array().unwrap().len(),
        2,
        "parallel calls"
    );
    assert_eq!(answers.len(), 4, "user → 2 calls → 1 call → 1 call → text");
    assert!(
        conversations.iter().all(|c| *c == conversations[0]),
        "{conversations:?}"
    );
    let detail = app.stored_turns(&conversations[0], 4).await;
    assert_eq!(detail["turns"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn a_streamed_tool_call_loop_threads_into_one_conversation() {
    let app = spawn_app().await;
    let tools = json!([{"type": "function", "function": {"name": "isolate_host",
        "parameters": {"type": "object", "properties": {"alert_excerpt": {"type": "string"}}}}}]);
    let mut messages = vec![json!({"role": "user", "content": "Endpoint alert: mimikatz on WS-7"})];
    let (mut conversations, mut tool_steps) = (Vec::new(), 0);
    for step in 0..4 {
        let request =
            json!({"model": "triage", "stream": true, "tools": tools, "messages": messages});
        let response = app.post("/v1/chat/completions", &request).await;
        conversations.push(conversation_of(&response));
        let body = response.text().await.unwrap();
        let (content, calls) = reassemble(&body);
        if calls.is_empty() {
            messages.push(json!({"role": "assistant", "content": content}));
            messages.push(json!({"role": "user", "content": "Isolate the next host as well."}));
            continue;
        }
        tool_steps += 1;
        messages.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
        for call in &calls {
            messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": format!("done {step}")}));
        }
    }
    assert!(tool_steps >= 2, "the loop made tool calls");
    assert!(
        conversations.iter().all(|c| *c == conversations[0]),
        "{conversations:?}"
    );
    app.stored_turns(&conversations[0], 4).await;
}

/// Content and tool calls of choice 0 of an SSE body, as an SDK
/// accumulates them.
fn reassemble(body: &str) -> (Option<String>, Vec<Value>) {
    let mut content: Option<String> = None;
    let mut calls: Vec<Value> = Vec::new();
    for data in sse_data(body) {
        let Ok(chunk) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        let delta = &chunk["choices"][0]["delta"];
        if let Some(text) = delta["content"].as_str() {
            content.get_or_insert_with(String::new).push_str(text);
        }
        for fragment in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = fragment["index"].as_u64().unwrap() as usize;
            if calls.len() <= index {
                calls.push(json!({"id": fragment["id"], "type": "function",
                    "function": {"name": fragment["function"]["name"], "arguments": ""}}));
            }
            let args = calls[index]["function"]["arguments"]
                .as_str()
                .unwrap()
                .to_string()
                + fragment["function"]["arguments"].as_str().unwrap_or("");
            calls[index]["function"]["arguments"] = json!(args);
        }
    }
    (content, calls)
}

/// Threading must not depend on the capture writer getting CPU: with every
/// core kept busy and the writer at background priority, each follow-up
/// sent the moment its answer ends continues its conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_sent_at_once_thread_while_every_core_is_busy() {
    let app = spawn_app_with(Options {
        extra: "[capture]\nwriter_priority = \"background\"".into(),
        ..Options::default()
    })
    .await;
    let busy = Arc::new(AtomicBool::new(true));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spinners: Vec<_> = (0..cores * 2)
        .map(|_| {
            let busy = busy.clone();
            std::thread::spawn(move || {
                // Bounded even if the test fails before it stops them.
                let until = Instant::now() + Duration::from_secs(120);
                let mut x = 0u64;
                while busy.load(Ordering::Relaxed) && Instant::now() < until {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                x
            })
        })
        .collect();
    let mut split = 0;
    for i in 0..40 {
        let opening = json!([{"role": "user", "content": format!("Endpoint alert #{i}: certutil -urlcache on WS-{i}")}]);
        let first = app
            .post(
                "/v1/chat/completions",
                &json!({"model": "triage", "messages": opening}),
            )
            .await;
        let conversation = conversation_of(&first);
        let body: Value = first.json().await.unwrap();
        let mut history = opening.as_array().unwrap().clone();
        history.push(body["choices"][0]["message"].clone());
        history.push(json!({"role": "user", "content": "Which process started it?"}));
        let second = app
            .post(
                "/v1/chat/completions",
                &json!({"model": "triage", "messages": history}),
            )
            .await;
        if conversation_of(&second) != conversation {
            split += 1;
        }
    }
    busy.store(false, Ordering::Relaxed);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    assert_eq!(
        split, 0,
        "{split} of 40 immediate follow-ups started a new conversation"
    );
}

fn timeouts() -> String {
    "header_read_timeout_s = 1\nidle_timeout_s = 2\nbody_read_timeout_s = 1\nmax_connections = 64"
        .into()
}

/// Reads until the peer closes (or `within` passes); true when it closed.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(within, read_all).await.is_ok();
    (closed, got)
}

async fn healthz_answers(app: &TestApp) {
    let started = Instant::now();
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "/healthz took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_slowloris_and_stalled_body_connections_are_closed_within_their_timeouts() {
    let app = spawn_app_with(Options {
        server_extra: timeouts(),
        ..Options::default()
    })
    .await;

    // An idle connection: closed after `idle_timeout_s`, not before.
    let opened = Instant::now();
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    // A slowloris: a header byte every 100 ms, never finishing the head.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-pad: ";
        slow.write_all(head).await.unwrap();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if slow.write_all(b"a").await.is_err() {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        started.elapsed()
    });
    // A body that stops after 8 of the 100 bytes it announced.
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled
        .write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\"", app.client_key).as_bytes())
        .await
        .unwrap();

    healthz_answers(&app).await;
    let (closed, answer) = closed_within(&mut stalled, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(closed, "the stalled body's connection stayed open");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout");

    let cut_after = tokio::time::timeout(Duration::from_secs(6), trickle)
        .await
        .unwrap()
        .unwrap();
    assert!(
        cut_after < Duration::from_secs(4),
        "the slowloris was held {cut_after:?}"
    );
    healthz_answers(&app).await;

    let (closed, _) = closed_within(&mut idle, Duration::from_secs(6)).await;
    assert!(closed, "the idle connection stayed open");
    assert!(
        opened.elapsed() >= Duration::from_secs(2),
        "closed before idle_timeout_s"
    );
    let timed_out = app.metric("flywheel_connections_timed_out_total").await;
    assert!(timed_out >= 3.0, "timeouts counted: {timed_out}");
}

#[tokio::test]
async fn a_stream_longer_than_every_timeout_runs_to_its_end() {
    let app = spawn_app_with(Options {
        server_extra: timeouts(),
        ..Options::default()
    })
    .await;
    let mut request = triage_request(true);
    request["stream"] = json!(true);
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-token-delay-ms", "150")
        .json(&request)
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    let body = response.text().await.unwrap();
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "the stream outlasts idle_timeout_s"
    );
    assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn a_connection_over_the_limit_is_refused_with_an_error_object() {
    let app = spawn_app_with(Options {
        server_extra: "max_connections = 3".into(),
        ..Options::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        assert!(
            s.read(&mut buf).await.unwrap() > 0,
            "served within the limit"
        );
        held.push(s);
    }
    let mut extra = TcpStream::connect(app.addr).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (closed, answer) = closed_within(&mut extra, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(closed && answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server.max_connections")
    );
    drop(held);
    // Seats free up as connections close.
    eventually(
        "a seat after the held connections closed",
        Duration::from_secs(5),
        || async {
            let response = reqwest::get(app.url("/healthz")).await.ok()?;
            (response.status() == 200).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn oversized_and_malformed_request_heads_get_error_objects() {
    let app = spawn_app().await;
    let cases: [(Vec<u8>, &str); 3] = [
        (
            [
                b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec(),
                vec![b'a'; 500_000],
                b"\r\n\r\n".to_vec(),
            ]
            .concat(),
            "HTTP/1.1 431",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nbad header line\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (b"\x01\x02 nonsense\r\n\r\n".to_vec(), "HTTP/1.1 400"),
    ];
    for (request, status) in cases {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let _ = s.write_all(&request).await;
        let (_, answer) = closed_within(&mut s, Duration::from_secs(5)).await;
        let answer = String::from_utf8_lossy(&answer).to_string();
        assert!(answer.starts_with(status), "{status}: {answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        for key in ["message", "type", "param", "code"] {
            assert!(body["error"].get(key).is_some(), "{status}: {body}");
        }
    }
    healthz_answers(&app).await;
}

/// An upstream that answers every chat request alike without parsing it,
/// as a Python server does with bodies serde would refuse (its `json`
/// module reads lone surrogates).
async fn lenient_upstream() -> SocketAddr {
    async fn answer() -> Json<Value> {
        Json(
            json!({"id": "chatcmpl-lenient", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Threat type: benign"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}),
        )
    }
    serve_upstream(axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer)))
        .await
}

#[tokio::test]
async fn a_lone_surrogate_and_deep_nesting_are_captured_with_their_messages() {
    let app = spawn_app_with(Options {
        upstream: Some(lenient_upstream().await),
        ..Options::default()
    })
    .await;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let bodies = [
        r#"{"model":"triage","messages":[{"role":"user","content":"Endpoint alert: emoji cut in half \ud83d"}]}"#.to_string(),
        format!(r#"{{"model":"triage","messages":[{{"role":"user","content":"Endpoint alert: nested metadata"}}],"metadata_extra":{deep}}}"#),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let response = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.client_key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "body {i}");
        let conversation = conversation_of(&response);
        let stored = app.stored_turns(&conversation, 1).await;
        let messages = &stored["turns"][0]["request"]["messages"];
        let content = messages[0]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("body {i}: messages {messages}"));
        assert!(content.starts_with("Endpoint alert:"), "{content}");
        assert!(
            stored["preview"]
                .as_str()
                .unwrap()
                .starts_with("Endpoint alert:")
        );
        if i == 0 {
            assert!(content.ends_with('\u{fffd}'), "{content}");
        } else {
            let omitted = &stored["turns"][0]["request"]["omitted"];
            assert!(
                omitted[0].as_str().unwrap().starts_with("metadata_extra"),
                "{omitted}"
            );
        }
    }
}

#[tokio::test]
async fn an_overlong_or_unreadable_conversation_id_is_a_400_naming_the_header() {
    let app = spawn_app().await;
    for id in ["c".repeat(129), "caf\u{e9}".to_string()] {
        let response = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.client_key)
            .header(
                "x-flywheel-conversation-id",
                reqwest::header::HeaderValue::from_bytes(id.as_bytes()).unwrap(),
            )
            .json(&triage_request(false))
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(
            (status, error["param"].as_str()),
            (400, Some("x-flywheel-conversation-id"))
        );
    }
    let at_limit = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-flywheel-conversation-id", "c".repeat(128))
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(at_limit.status(), 200);
    assert_eq!(conversation_of(&at_limit), "c".repeat(128));
}

/// An upstream that, like llama.cpp's server, answers an empty 400 to any
/// `x-request-id` that is not a UUID.
async fn uuid_only_upstream() -> SocketAddr {
    async fn answer(headers: HeaderMap) -> axum::response::Response {
        use axum::response::IntoResponse;
        let id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let uuid = id.len() == 36
            && id.chars().enumerate().all(|(i, c)| {
                if [8, 13, 18, 23].contains(&i) {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit()
                }
            });
        if !id.is_empty() && !uuid {
            return axum::http::StatusCode::BAD_REQUEST.into_response();
        }
        Json(json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Threat type: benign"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
        .into_response()
    }
    serve_upstream(axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer)))
        .await
}

#[tokio::test]
async fn an_upstream_that_accepts_only_uuid_request_ids_is_served() {
    let app = spawn_app_with(Options {
        upstream: Some(uuid_only_upstream().await),
        ..Options::default()
    })
    .await;
    let response = app
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    assert_eq!(response.status(), 200);
    let ours = response.headers()["x-request-id"].to_str().unwrap();
    assert!(ours.starts_with("req_"), "{ours}");
    // A client's own id is echoed back and forwarded as it is.
    let theirs = "0190f2a4-5b6c-7d8e-9fa0-b1c2d3e4f506";
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-request-id", theirs)
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], theirs);
}

#[tokio::test]
async fn a_just_answered_turn_shows_as_writing_never_as_missing() {
    let app = spawn_app().await;
    let mut messages =
        vec![json!({"role": "user", "content": "Endpoint alert: wmic shadowcopy delete on FS02"})];
    let mut conversation = String::new();
    for _ in 0..15 {
        let response = app
            .post(
                "/v1/chat/completions",
                &json!({"model": "triage", "messages": messages}),
            )
            .await;
        conversation = conversation_of(&response);
        let body: Value = response.json().await.unwrap();
        let view = app
            .admin(
                reqwest::Method::GET,
                &format!("/admin/api/conversations/{conversation}"),
                None,
            )
            .await;
        let status = view.status();
        let view: Value = view.json().await.unwrap();
        if status == 200 {
            for turn in view["turns"].as_array().unwrap() {
                assert!(
                    ["ok", "writing"].contains(&turn["status"].as_str().unwrap()),
                    "{turn}"
                );
            }
        } else {
            assert_eq!(status, 404);
            assert!(
                view["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("being written"),
                "{view}"
            );
        }
        messages.push(body["choices"][0]["message"].clone());
        messages.push(json!({"role": "user", "content": "and then?"}));
    }
    let stored = app.stored_turns(&conversation, 15).await;
    assert_eq!(stored["turns"].as_array().unwrap().len(), 15);
}
