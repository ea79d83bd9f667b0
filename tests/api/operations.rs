//! Health, readiness, metrics and graceful shutdown.

use crate::helpers::*;
use futures_util::StreamExt;
use serde_json::{Value, json};

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    let health: Value = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["store"], true);

    let mut request = triage_request(true);
    request["stream_options"] = serde_json::json!({"include_usage": true});
    app.post("/v1/chat/completions", &request)
        .await
        .text()
        .await
        .unwrap();
    app.post("/v1/chat/completions", &triage_request(false))
        .await
        .text()
        .await
        .unwrap();
    let mut broken = triage_request(false);
    broken["model"] = "broken".into();
    app.post("/v1/chat/completions", &broken)
        .await
        .text()
        .await
        .unwrap();

    // The exchange worker counts tokens off the hot path: give it a moment.
    let metrics = eventually(
        "flywheel_tokens_total in /metrics",
        std::time::Duration::from_secs(30),
        || async {
            let metrics = app
                .http
                .get(app.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            metrics.contains("flywheel_tokens_total").then_some(metrics)
        },
    )
    .await;
    for name in [
        "flywheel_requests_total{",
        "flywheel_request_duration_seconds_bucket{",
        "flywheel_time_to_first_byte_seconds_bucket{",
        "flywheel_upstream_errors_total{",
        "flywheel_tokens_total{",
        "flywheel_streams_in_flight",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    assert!(metrics.contains(r#"alias="triage""#) && metrics.contains(r#"version="base""#));
    assert!(metrics.contains(r#"route="/v1/chat/completions""#));
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_stream_finish_and_refuses_new_connections() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-token-delay-ms", "40")
        .json(&triage_request(true))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut body = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
    let addr = app.addr;
    let state = app.state.clone();
    state.shutdown.cancel();
    while let Some(chunk) = stream.next().await {
        body.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "the stream was cut: {body}"
    );
    app.server.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn the_providers_say_whether_their_requests_can_be_signed() {
    let app = spawn_app_with(Options {
        extra: "[[providers]]\nname = \"unkeyed\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
                api_key_env = \"FLYWHEEL_TEST_NEVER_SET\"\n"
            .into(),
        ..Options::default()
    })
    .await;
    let listed = app.admin_get("/admin/api/providers").await;
    let provider = |name: &str| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no provider {name}: {listed}"))
    };
    let sim = provider("sim");
    assert_eq!(
        (&sim["kind"], &sim["default"]),
        (&json!("openai"), &json!(true))
    );
    assert_eq!(sim["signing"], json!({"source": "key", "ready": true}));
    assert_eq!(
        provider("dead")["signing"],
        json!({"source": "none", "ready": true})
    );
    let unkeyed = provider("unkeyed")["signing"].clone();
    assert_eq!(unkeyed["ready"], false, "{unkeyed}");
    assert!(
        unkeyed["problem"]
            .as_str()
            .unwrap()
            .contains("FLYWHEEL_TEST_NEVER_SET"),
        "{unkeyed}"
    );
    assert!(!listed.to_string().contains(PROVIDER_KEY));
    // Analysts may read it; clients may not.
    let as_client = app
        .send(
            reqwest::Method::GET,
            "/admin/api/providers",
            &app.client_key,
            None,
        )
        .await;
    assert_eq!(as_client.status(), 403);
}
