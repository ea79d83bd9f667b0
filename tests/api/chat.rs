//! Chat completions and the other client routes, through the proxy.

use crate::helpers::*;
use serde_json::{Value, json};

#[tokio::test]
async fn an_alias_is_served_by_its_production_version_and_relayed_as_received() {
    let app = spawn_app().await;
    let response = app
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    assert_eq!(response.status(), 200);
    let h = response.headers().clone();
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .contains("application/json")
    );
    assert!(
        h["x-flywheel-inference-id"]
            .to_str()
            .unwrap()
            .starts_with("inf_")
    );
    assert_eq!(h["x-flywheel-variant"], "base");
    assert!(
        h["x-flywheel-conversation-id"]
            .to_str()
            .unwrap()
            .starts_with("conv_")
    );
    assert!(h["x-request-id"].to_str().unwrap().starts_with("req_"));
    assert!(h.contains_key("x-upstream-request-id"));
    let body: Value = response.json().await.unwrap();
    // The simulator echoes the model it was asked for: the alias was rewritten.
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["object"], "chat.completion");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.contains("Threat type:") && content.contains("Severity:"),
        "{content}"
    );
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn the_upstream_body_arrives_byte_for_byte() {
    let app = spawn_app().await;
    let request = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Endpoint alert: vssadmin delete shadows /all /quiet"}]});
    let via_proxy = app
        .post("/v1/chat/completions", &request)
        .await
        .bytes()
        .await
        .unwrap();
    let direct = app
        .http
        .post(format!("http://{}/v1/chat/completions", app.upstream))
        .bearer_auth(PROVIDER_KEY)
        .json(&request)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    // Ids and timestamps differ per call; everything else must be identical.
    let strip = |b: &[u8]| {
        let mut v: Value = serde_json::from_slice(b).unwrap();
        v["id"] = Value::Null;
        v["created"] = Value::Null;
        v
    };
    assert_eq!(strip(&via_proxy), strip(&direct));
}

#[tokio::test]
async fn a_model_that_is_no_alias_passes_through_unchanged() {
    let app = spawn_app().await;
    let mut request = triage_request(false);
    request["model"] = json!("gpt-4o");
    let response = app.post("/v1/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("x-flywheel-variant"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "gpt-4o");
}

#[tokio::test]
async fn n_choices_and_tool_calls_are_relayed() {
    let app = spawn_app().await;
    let mut request = triage_request(false);
    request["n"] = json!(2);
    let body: Value = app
        .post("/v1/chat/completions", &request)
        .await
        .json()
        .await
        .unwrap();
    let indexes: Vec<u64> = body["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1]);

    let mut request = triage_request(false);
    request["tools"] = json!([{"type": "function", "function": {"name": "lookup_host", "parameters": {"type": "object", "properties": {}}}}]);
    request["tool_choice"] = json!("required");
    let body: Value = app
        .post("/v1/chat/completions", &request)
        .await
        .json()
        .await
        .unwrap();
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup_host");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments.is_object());
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn models_lists_aliases_with_their_versions() {
    let app = spawn_app().await;
    let get = |path: &str| {
        app.http
            .get(app.url(path))
            .bearer_auth(&app.client_key)
            .send()
    };
    let list: Value = get("/v1/models").await.unwrap().json().await.unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["triage", "broken"]);
    let triage: Value = get("/v1/models/triage")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(triage["object"], "model");
    assert_eq!(triage["production"], "base");
    assert_eq!(triage["versions"].as_array().unwrap().len(), 2);
    // Not an alias: the provider answers.
    let upstream_model = get("/v1/models/gpt-4o").await.unwrap();
    assert_eq!(upstream_model.status(), 200);
    let missing = get("/v1/models/no-such-model").await.unwrap();
    let (status, error) = error_of(missing).await;
    assert_eq!(status, 404);
    assert_eq!(error["code"], "model_not_found");
}

#[tokio::test]
async fn other_v1_routes_are_forwarded_byte_for_byte() {
    let app = spawn_app().await;
    let body = json!({"model": "text-embedding-3-small", "input": ["lsass dump", "rclone exfil"]});
    let via_proxy = app.post("/v1/embeddings", &body).await;
    assert_eq!(via_proxy.status(), 200);
    let via_proxy = via_proxy.bytes().await.unwrap();
    let direct = app
        .http
        .post(format!("http://{}/v1/embeddings", app.upstream))
        .bearer_auth(PROVIDER_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(via_proxy, direct);
}

#[tokio::test]
async fn the_provider_key_is_sent_upstream_and_never_shown() {
    // The simulator refuses requests without the provider key, so a 200
    // proves the proxy replaced the client's key with the provider's.
    let app = spawn_app().await;
    let response = app
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    assert_eq!(response.status(), 200);
    let headers = format!("{:?}", response.headers());
    let body = response.text().await.unwrap();
    assert!(!headers.contains(PROVIDER_KEY) && !body.contains(PROVIDER_KEY));
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains(PROVIDER_KEY));
}
