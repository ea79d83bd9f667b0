//! Apps written against Azure OpenAI, pointed at Flywheel: the key in
//! `api-key`, the deployment (the alias) in the path, Azure's v1 API under
//! `/openai/v1/`, and an `api-version` that stays between the app and
//! Flywheel. What reaches the provider is read by a recording upstream.

use crate::helpers::*;
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A request as the provider received it.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Value,
}

/// An OpenAI-shaped provider that answers every request with a fixed chat
/// completion (or embedding list) and keeps what it was sent.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let kept = seen.clone();
    let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
        let kept = kept.clone();
        async move {
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let answer = if uri.path().ends_with("/embeddings") {
                json!({"object": "list", "model": body["model"], "data": [
                    {"object": "embedding", "index": 0, "embedding": [0.6, 0.8]}],
                    "usage": {"prompt_tokens": 3, "total_tokens": 3}})
            } else {
                json!({"id": "chatcmpl-rec", "object": "chat.completion", "created": 1,
                    "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Threat type: credential_access\nSeverity: high"}}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}})
            };
            kept.lock().unwrap().push(Received {
                path: uri.path().to_string(),
                query: uri.query().map(str::to_string),
                headers,
                body,
            });
            axum::Json(answer)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A request as an `AzureOpenAI` client sends it: the key in `api-key`.
async fn azure_post(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .header("api-key", &app.client_key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A GET as an `AzureOpenAI` client sends it.
async fn azure_get(app: &TestApp, path: &str) -> reqwest::Response {
    app.http
        .get(app.url(path))
        .header("api-key", &app.client_key)
        .send()
        .await
        .unwrap()
}

fn alert() -> Value {
    json!([{"role": "user", "content": "Endpoint alert: LSASS memory dumped by rundll32.exe on WS-7."}])
}

#[tokio::test]
async fn the_deployment_in_the_path_names_the_alias_and_azures_credentials_stay_here() {
    let (upstream, seen) = recording_upstream().await;
    let app = spawn_app_with(Options {
        upstream: Some(upstream),
        ..Options::default()
    })
    .await;
    let dated = "/openai/deployments/triage/chat/completions?api-version=2024-10-21";
    // The body's model is ignored, as Azure ignores it; or there is none.
    for body in [
        json!({"model": "gpt-35-turbo", "messages": alert()}),
        json!({"messages": alert()}),
    ] {
        let response = azure_post(&app, dated, &body).await;
        assert_eq!(response.status(), 200, "{body}");
        assert_eq!(response.headers()["x-flywheel-variant"], "base");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["model"], "gpt-4o-mini", "{answer}");
    }
    let v1 = azure_post(
        &app,
        "/openai/v1/chat/completions?api-version=preview",
        &json!({"model": "triage", "messages": alert()}),
    )
    .await;
    assert_eq!(v1.status(), 200);
    let embedded = azure_post(
        &app,
        "/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21",
        &json!({"input": "mimikatz on DC01"}),
    )
    .await;
    assert_eq!(embedded.status(), 200);
    // A model that is no alias is the provider's to describe.
    let described = azure_get(&app, "/openai/models/gpt-4o?api-version=2024-10-21").await;
    assert_eq!(described.status(), 200);
    // Azure's dated routes for the rest (files, batches …) are passed on.
    let files = azure_get(&app, "/openai/files?api-version=2024-10-21&purpose=batch").await;
    assert_eq!(files.status(), 200);

    let seen = seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/embeddings",
            "/v1/models/gpt-4o",
            "/v1/files"
        ]
    );
    let (files, relayed) = seen.split_last().unwrap();
    assert_eq!(files.query.as_deref(), Some("purpose=batch"));
    for received in relayed {
        assert_eq!(received.query, None, "{received:?}");
    }
    for received in &seen {
        assert!(!received.headers.contains_key("api-key"), "{received:?}");
        assert_eq!(
            received.headers["authorization"],
            format!("Bearer {PROVIDER_KEY}")
        );
    }
    assert_eq!(seen[0].body["model"], "gpt-4o-mini");
    assert_eq!(seen[1].body["model"], "gpt-4o-mini");
    assert_eq!(seen[1].body["messages"], alert());
    assert_eq!(seen[3].body["model"], "text-embedding-3-small");
    assert_eq!(seen[3].body["input"], "mimikatz on DC01");
}

#[tokio::test]
async fn an_azure_client_is_answered_and_captured_like_any_other() {
    let app = spawn_app().await;
    let response = azure_post(
        &app,
        "/openai/deployments/triage/chat/completions?api-version=2024-10-21",
        &json!({"messages": alert(), "stream": true}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let conversation = response.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let events = sse_data(&response.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let stored = app.stored_turns(&conversation, 1).await;
    let turn = &stored["turns"][0];
    assert_eq!(
        (&turn["alias"], &turn["streamed"]),
        (&json!("triage"), &json!(true))
    );
    assert!(
        turn["response"]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Threat type:"),
        "{turn}"
    );

    // Azure's v1 API is the same routes: the model list, the Responses API.
    let models = azure_get(&app, "/openai/v1/models").await;
    let models: Value = models.json().await.unwrap();
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "triage")
    );
    let responded = azure_post(
        &app,
        "/openai/responses?api-version=2025-04-01-preview",
        &json!({"model": "triage", "input": "Endpoint alert: LSASS memory dumped on WS-7."}),
    )
    .await;
    assert_eq!(responded.status(), 200);
}

#[tokio::test]
async fn an_azure_clients_key_is_checked_like_a_bearer() {
    let app = spawn_app().await;
    let path = "/openai/deployments/triage/chat/completions?api-version=2024-10-21";
    let body = json!({"messages": alert()});
    let wrong = app
        .http
        .post(app.url(path))
        .header("api-key", "fw-not-a-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(wrong).await.0, 401);
    let (status, error) = error_of(
        app.http
            .post(app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        error["message"].as_str().unwrap().contains("api-key"),
        "{error}"
    );
    // An unknown deployment is an unknown model, in OpenAI's error shape.
    let (status, error) = error_of(
        azure_post(
            &app,
            "/openai/deployments/no-such-deployment/chat/completions?api-version=2024-10-21",
            &body,
        )
        .await,
    )
    .await;
    assert_eq!(status, 404, "{error}");
}
