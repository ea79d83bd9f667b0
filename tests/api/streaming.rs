//! Streaming: events forwarded as they arrive, usage chunks, mid-stream
//! failures, client disconnects.

use crate::helpers::*;
use axum::body::Body;
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[tokio::test]
async fn every_event_reaches_the_client_as_soon_as_the_upstream_sends_it() {
    let app = spawn_app().await;
    let delay = Duration::from_millis(150);
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-token-delay-ms", delay.as_millis().to_string())
        .json(&triage_request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = response.bytes_stream();
    let mut body = String::new();
    let mut first_content_at = None;
    while let Some(chunk) = stream.next().await {
        body.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if first_content_at.is_none() && content_tokens(&body) > 0 {
            first_content_at = Some(Instant::now());
        }
    }
    let finished_at = Instant::now();
    let events = sse_data(&body);
    let tokens = content_tokens(&body);
    assert!(tokens >= 8, "expected a long answer, got {tokens} tokens");
    // The simulator paces tokens `delay` apart. Had the proxy buffered, the
    // first token would arrive with the last; it must arrive while at least
    // half of the remaining tokens were still to be produced.
    let first = first_content_at.expect("no content arrived");
    assert!(
        finished_at - first >= delay * (tokens as u32 / 2),
        "first token {:?} before the end: buffered?",
        finished_at - first
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(!body.contains("event:"));
}

/// Events whose delta carries non-empty content.
fn content_tokens(body: &str) -> usize {
    sse_data(body)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count()
}

#[tokio::test]
async fn a_stream_without_usage_is_captured_with_an_estimate_marked_so() {
    let app = spawn_app().await;
    // No `include_usage`: the simulator sends no usage chunk, as servers
    // that ignore the option never do.
    let response = app
        .post("/v1/chat/completions", &triage_request(true))
        .await;
    let conversation = response.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.text().await.unwrap();
    assert!(!body.contains("\"usage\""));
    let detail = app.stored_turns(&conversation, 1).await;
    let usage = &detail["turns"][0]["response"]["usage"];
    assert_eq!(usage["estimated"], true, "{usage}");
    assert_eq!(
        usage["tokenizer"], "o200k_base",
        "the route's gpt-4o family"
    );
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 20 && completion > 10, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64(), Some(prompt + completion));

    // With usage from upstream, the figure is the upstream's, unmarked.
    let mut request = triage_request(true);
    request["stream_options"] = json!({"include_usage": true});
    let response = app.post("/v1/chat/completions", &request).await;
    let conversation = response.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    response.text().await.unwrap();
    let detail = app.stored_turns(&conversation, 1).await;
    assert!(
        detail["turns"][0]["response"]["usage"]
            .get("estimated")
            .is_none()
    );
}

#[tokio::test]
async fn include_usage_adds_one_usage_chunk_before_done() {
    let app = spawn_app().await;
    let mut request = triage_request(true);
    request["stream_options"] = json!({"include_usage": true});
    let body = app
        .post("/v1/chat/completions", &request)
        .await
        .text()
        .await
        .unwrap();
    let events = sse_data(&body);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let usage: Vec<&Value> = chunks.iter().filter(|c| !c["usage"].is_null()).collect();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["choices"], json!([]));
    assert!(std::ptr::eq(usage[0], chunks.last().unwrap()));
    let ids: std::collections::HashSet<&str> =
        chunks.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "every chunk carries the same id");
}

#[tokio::test]
async fn streamed_tool_call_deltas_name_the_call_once() {
    let app = spawn_app().await;
    let mut request = triage_request(true);
    request["tools"] = json!([{"type": "function", "function": {"name": "isolate_host", "parameters": {"type": "object"}}}]);
    request["tool_choice"] = json!("required");
    let body = app
        .post("/v1/chat/completions", &request)
        .await
        .text()
        .await
        .unwrap();
    let mut names = 0;
    let mut arguments = String::new();
    for event in sse_data(&body).iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(event).unwrap();
        for call in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(call["index"], 0);
            if call["function"].get("name").is_some() {
                names += 1;
            }
            arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(names, 1);
    assert!(
        serde_json::from_str::<Value>(&arguments)
            .unwrap()
            .is_object()
    );
}

#[tokio::test]
async fn a_stream_that_breaks_ends_with_an_error_event() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-drop-after", "3")
        .header("x-sim-token-delay-ms", "20")
        .json(&triage_request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let events = sse_data(&body);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "api_error");
    assert!(
        events.len() >= 3,
        "content before the failure is kept: {body}"
    );
    assert!(body.ends_with("\n\n"));
}

#[tokio::test]
async fn a_stream_past_the_total_timeout_ends_with_a_timeout_event() {
    let app = spawn_app_with(Options {
        provider_extra: "timeout_s = 2\nfirst_byte_timeout_s = 1".into(),
        ..Options::default()
    })
    .await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-token-delay-ms", "400")
        .json(&triage_request(true))
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    let last: Value = serde_json::from_str(sse_data(&body).last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout");
}

/// An upstream that answers every chat completion with the event stream
/// `events` makes for it.
async fn streaming_upstream<F, S>(events: F) -> std::net::SocketAddr
where
    F: Fn() -> S + Clone + Send + Sync + 'static,
    S: futures_util::Stream<Item = Result<&'static str, std::io::Error>> + Send + 'static,
{
    let handler = move || {
        let body = Body::from_stream(events());
        async move {
            axum::response::Response::builder()
                .header("content-type", "text/event-stream")
                .body(body)
                .unwrap()
        }
    };
    let router = axum::Router::new().route("/v1/chat/completions", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// An upstream that streams until it is dropped, and says so.
async fn endless_upstream(dropped: Arc<AtomicBool>) -> std::net::SocketAddr {
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    streaming_upstream(move || {
        futures_util::stream::unfold(Flag(dropped.clone()), |flag| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let chunk = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" x\"}}]}\n\n";
            Some((Ok(chunk), flag))
        })
    })
    .await
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_drops_the_upstream_request() {
    let dropped = Arc::new(AtomicBool::new(false));
    let upstream = endless_upstream(dropped.clone()).await;
    let app = spawn_app_with(Options {
        upstream: Some(upstream),
        ..Options::default()
    })
    .await;
    let response = app
        .post("/v1/chat/completions", &triage_request(true))
        .await;
    let mut stream = response.bytes_stream();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    assert!(!dropped.load(Ordering::SeqCst));
    drop(stream);
    // Bounded wait for the drop to travel client → proxy → upstream.
    eventually(
        "the upstream stream to be dropped",
        Duration::from_secs(30),
        || async { dropped.load(Ordering::SeqCst).then_some(()) },
    )
    .await;
}

/// Streams one content chunk, then `[DONE]` split over two writes, and
/// keeps its body open for `hold` after them, as a provider may before
/// it ends the response.
async fn split_done_upstream(hold: Duration) -> std::net::SocketAddr {
    const PARTS: [&str; 3] = [
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Credential theft.\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DO",
        "NE]\n\n",
    ];
    streaming_upstream(move || {
        futures_util::stream::unfold(0, move |sent| async move {
            // Apart in time, so each part is a chunk of its own.
            let pause = if sent < PARTS.len() {
                Duration::from_millis(50)
            } else {
                hold
            };
            tokio::time::sleep(pause).await;
            let part = PARTS.get(sent)?;
            Some((Ok(*part), sent + 1))
        })
    })
    .await
}

/// The upstream's chunks split `data: [DONE]` and its body stays open
/// after it: the turn is still threaded the moment the client has the
/// whole event, not when the upstream ends.
#[tokio::test]
async fn a_follow_up_threads_when_the_upstream_split_its_done() {
    let upstream = split_done_upstream(Duration::from_secs(30)).await;
    let app = spawn_app_with(Options {
        upstream: Some(upstream),
        ..Options::default()
    })
    .await;
    let mut request = triage_request(true);
    let first = app.post("/v1/chat/completions", &request).await;
    let conversation = first.headers()["x-flywheel-conversation-id"].clone();
    let mut body = String::new();
    let mut stream = first.bytes_stream();
    while !body.contains("data: [DONE]\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("[DONE] within 10 s")
            .expect("the stream goes on to [DONE]")
            .unwrap();
        body.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let history = request["messages"].as_array_mut().unwrap();
    history.push(json!({"role": "assistant", "content": "Credential theft."}));
    history.push(json!({"role": "user", "content": "Contain it?"}));
    let second = app.post("/v1/chat/completions", &request).await;
    assert_eq!(
        second.headers()["x-flywheel-conversation-id"],
        conversation,
        "the follow-up continues the first turn's conversation"
    );
}
