//! Feedback by endpoint and by header: roles, validation, idempotency,
//! durability before the 201.

use crate::helpers::*;
use serde_json::{Value, json};

/// Makes an inference with `key` and waits until it is stored.
async fn inference(app: &TestApp, key: &str) -> (String, String) {
    let response = app
        .send(
            reqwest::Method::POST,
            "/v1/chat/completions",
            key,
            Some(&triage_request(false)),
        )
        .await;
    let id = response.headers()["x-flywheel-inference-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    eventually(
        &format!("inference {id} to be captured"),
        std::time::Duration::from_secs(30),
        || async { app.state.store.inference(&id).unwrap() },
    )
    .await;
    (id, body["id"].as_str().unwrap().to_string())
}

/// POST /v1/feedback as `key`.
async fn post(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.send(reqwest::Method::POST, "/v1/feedback", key, Some(body))
        .await
}

#[tokio::test]
async fn clients_rate_their_own_answers_and_analysts_label_any() {
    let app = spawn_app().await;
    let (id, completion_id) = inference(&app, &app.client_key).await;
    let response = post(
        &app,
        &app.client_key,
        &json!({"inference_id": id, "rating": 4, "thumbs": "up"}),
    )
    .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    assert!(created["id"].as_str().unwrap().starts_with("fb_"));
    // 201 means durable: it is in the store now, not after a flush.
    let stored = app.state.store.feedback_for(&id).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].rating, Some(4));

    let labels = json!({"completion_id": completion_id, "threat_type": "credential_access", "severity": "high",
        "quality_score": 5, "notes": "LSASS dump via comsvcs", "correction": "Threat type: credential_access", "approved_for_training": true});
    let response = post(&app, &app.analyst_key, &labels).await;
    assert_eq!(response.status(), 201);
    let stored = app.state.store.feedback_for(&id).unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].threat_type.as_deref(), Some("credential_access"));
    assert_eq!(stored[1].approved_for_training, Some(true));
}

#[tokio::test]
async fn bad_feedback_gets_the_right_error_and_stores_nothing() {
    let app = spawn_app().await;
    let (id, _) = inference(&app, &app.client_key).await;
    let (analysts, _) = inference(&app, &app.analyst_key).await;
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        (
            "client",
            json!({"inference_id": id, "rating": 6}),
            400,
            Some("rating"),
        ),
        (
            "client",
            json!({"inference_id": id, "rating": 0}),
            400,
            Some("rating"),
        ),
        (
            "client",
            json!({"inference_id": id, "thumbs": "sideways"}),
            400,
            Some("thumbs"),
        ),
        (
            "analyst",
            json!({"inference_id": id, "threat_type": "aliens"}),
            400,
            Some("threat_type"),
        ),
        (
            "analyst",
            json!({"inference_id": id, "severity": "apocalyptic"}),
            400,
            Some("severity"),
        ),
        (
            "analyst",
            json!({"inference_id": id, "notes": "x".repeat(4001)}),
            400,
            Some("notes"),
        ),
        (
            "client",
            json!({"inference_id": id, "rating": "five"}),
            400,
            Some("rating"),
        ),
        ("client", json!({"inference_id": id, "stars": 5}), 400, None),
        ("client", json!({"inference_id": id}), 400, None),
        ("client", json!({"rating": 3}), 400, Some("inference_id")),
        (
            "client",
            json!({"inference_id": "inf_nope", "rating": 3}),
            404,
            Some("inference_id"),
        ),
        (
            "client",
            json!({"completion_id": "chatcmpl-nope", "rating": 3}),
            404,
            Some("completion_id"),
        ),
        (
            "client",
            json!({"inference_id": analysts, "rating": 3}),
            403,
            None,
        ),
        (
            "client",
            json!({"inference_id": id, "threat_type": "malware"}),
            403,
            None,
        ),
    ];
    for (who, body, status, param) in cases {
        let key = if who == "client" {
            &app.client_key
        } else {
            &app.analyst_key
        };
        let (got, error) = error_of(post(&app, key, &body).await).await;
        assert_eq!(got, status, "{body}: {error}");
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{body}");
        }
    }
    let huge = json!({"inference_id": id, "notes": "x".repeat(70_000)});
    assert_eq!(post(&app, &app.analyst_key, &huge).await.status(), 413);
    assert!(app.state.store.feedback_for(&id).unwrap().is_empty());
    assert!(app.state.store.feedback_for(&analysts).unwrap().is_empty());
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_a_no_op() {
    let app = spawn_app().await;
    let (id, _) = inference(&app, &app.client_key).await;
    let send = || {
        app.http
            .post(app.url("/v1/feedback"))
            .bearer_auth(&app.client_key)
            .header("idempotency-key", "retry-1")
            .json(&json!({"inference_id": id, "rating": 2}))
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), 201);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(app.state.store.feedback_for(&id).unwrap().len(), 1);
}

#[tokio::test]
async fn feedback_rides_on_any_request_as_a_header() {
    let app = spawn_app().await;
    let (id, _) = inference(&app, &app.client_key).await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.analyst_key)
        .header(
            "x-flywheel-feedback",
            format!(r#"id="{id}", rating=5, threat_type="credential_access", severity=high"#),
        )
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["x-flywheel-feedback-id"]
            .to_str()
            .unwrap()
            .starts_with("fb_")
    );
    let stored = app.state.store.feedback_for(&id).unwrap();
    assert_eq!(
        (stored[0].rating, stored[0].severity.as_deref()),
        (Some(5), Some("high"))
    );

    // A malformed header rejects the request before anything goes upstream.
    for bad in [
        "id=\"x\", rating==",
        "rating=4",
        &format!("id=\"{id}\", rating=9"),
    ] {
        let response = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.client_key)
            .header("x-flywheel-feedback", bad)
            .header("x-sim-status", "500")
            .json(&triage_request(false))
            .send()
            .await
            .unwrap();
        let (status, _) = error_of(response).await;
        assert_eq!(
            status, 400,
            "{bad}: the request was not stopped before the upstream"
        );
    }
    assert_eq!(app.state.store.feedback_for(&id).unwrap().len(), 1);
}
