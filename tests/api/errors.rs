//! Every failure a client can see, in the OpenAI error shape with the right
//! status, and the server still serving afterwards.

use crate::helpers::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn malformed_requests_get_a_400_naming_the_field_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    let cases: [(&str, u16, Option<&str>); 12] = [
        ("{", 400, None),
        ("[1,2]", 400, None),
        ("", 400, None),
        (
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            400,
            Some("model"),
        ),
        (
            r#"{"model":5,"messages":[{"role":"user","content":"x"}]}"#,
            400,
            Some("model"),
        ),
        (
            r#"{"model":"triage","messages":"hi"}"#,
            400,
            Some("messages"),
        ),
        (r#"{"model":"triage","messages":[]}"#, 400, Some("messages")),
        (
            r#"{"model":"triage","messages":[{"role":"robot","content":"x"}]}"#,
            400,
            Some("messages[0].role"),
        ),
        (
            r#"{"model":"triage","messages":[{"role":"user","content":5}]}"#,
            400,
            Some("messages[0].content"),
        ),
        (
            r#"{"model":"triage","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
            400,
            Some("stream"),
        ),
        (
            r#"{"model":"triage","messages":[{"role":"user","content":"x"}],"n":0}"#,
            400,
            Some("n"),
        ),
        (
            r#"{"model":"triage","messages":[{"role":"user","content":"x"}],"temperature":9}"#,
            400,
            Some("temperature"),
        ),
    ];
    for (body, status, param) in cases {
        let response = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.client_key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (got, error) = error_of(response).await;
        assert_eq!(got, status, "{body}: {error}");
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert_eq!(error["param"].as_str(), param, "{body}: {error}");
    }
    let ok = app
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let app = spawn_app().await;
    let big = "A".repeat(70_000);
    let request = json!({"model": "triage", "messages": [{"role": "user", "content": big}]});
    let (status, error) = error_of(app.post("/v1/chat/completions", &request).await).await;
    assert_eq!(status, 413);
    assert_eq!(error["code"], "request_too_large");
    let (status, _) = error_of(app.post("/v1/embeddings", &json!({"input": big})).await).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn upstream_errors_are_relayed_with_their_status() {
    let app = spawn_app().await;
    let mut request = triage_request(false);
    request["model"] = json!("no-such-model");
    let (status, error) = error_of(app.post("/v1/chat/completions", &request).await).await;
    assert_eq!(status, 404);
    assert_eq!(error["code"], "model_not_found");

    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-status", "400")
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["type"].as_str()),
        (400, Some("invalid_request_error"))
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_and_nonsense_too() {
    let app = spawn_app().await;
    let mut request = triage_request(false);
    request["model"] = json!("broken");
    let (status, error) = error_of(app.post("/v1/chat/completions", &request).await).await;
    assert_eq!((status, error["type"].as_str()), (502, Some("api_error")));
    assert_eq!(error["code"], "upstream_unreachable");
    assert!(
        !error["message"].as_str().unwrap().contains("127.0.0.1:1"),
        "no upstream URL in messages"
    );

    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-garbage", "1")
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(response).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (502, Some("upstream_invalid_response"))
    );
}

#[tokio::test]
async fn a_slow_first_byte_is_a_504() {
    let app = spawn_app_with(Options {
        provider_extra: "timeout_s = 5\nfirst_byte_timeout_s = 1\nmax_retries = 0".into(),
        ..Options::default()
    })
    .await;
    for stream in [false, true] {
        let response = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.client_key)
            .header("x-sim-delay-ms", "2500")
            .json(&triage_request(stream))
            .send()
            .await
            .unwrap();
        let (status, error) = error_of(response).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (504, Some("upstream_timeout")),
            "stream={stream}"
        );
    }
}

#[tokio::test]
async fn server_errors_and_429s_are_retried_before_the_first_byte() {
    let app = spawn_app().await;
    let fault_id = ulid::Ulid::new().to_string();
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-status", "503")
        .header("x-sim-fail-times", "2")
        .header("x-sim-fault-id", &fault_id)
        .json(&triage_request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "two 503s then success, within max_retries = 2"
    );
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));

    let fault_id = ulid::Ulid::new().to_string();
    let started = Instant::now();
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-status", "429")
        .header("x-sim-retry-after", "1")
        .header("x-sim-fail-times", "1")
        .header("x-sim-fault-id", &fault_id)
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Honouring retry-after means waiting it out (a lower bound, not a speed target).
    assert!(started.elapsed() >= Duration::from_millis(950));

    let fault_id = ulid::Ulid::new().to_string();
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-status", "500")
        .header("x-sim-fail-times", "5")
        .header("x-sim-fault-id", &fault_id)
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    let (status, _) = error_of(response).await;
    assert_eq!(
        status, 500,
        "retries exhausted: the upstream's status is relayed"
    );
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let app = spawn_app().await;
    let fault_id = ulid::Ulid::new().to_string();
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-status", "400")
        .header("x-sim-fail-times", "1")
        .header("x-sim-fault-id", &fault_id)
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a retry would have succeeded");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let app = spawn_app().await;
    let (status, _) = error_of(app.http.get(app.url("/nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    let response = app
        .send(
            reqwest::Method::GET,
            "/v1/chat/completions",
            &app.client_key,
            None,
        )
        .await;
    let (status, _) = error_of(response).await;
    assert_eq!(status, 405);
}
