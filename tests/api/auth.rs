//! Keys, roles, the bootstrap admin token, anonymous clients, pass-through
//! provider keys and rate limits, over HTTP.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn missing_unknown_and_revoked_keys_get_401() {
    let app = spawn_app().await;
    let url = app.url("/v1/chat/completions");
    let body = triage_request(false);
    let none = app.http.post(&url).json(&body).send().await.unwrap();
    let (status, error) = error_of(none).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let wrong = app
        .http
        .post(&url)
        .bearer_auth("fw-0000")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let foreign = app
        .http
        .post(&url)
        .bearer_auth("sk-somebody-else")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 401);

    let created: Value = app
        .admin(
            Method::POST,
            "/admin/api/keys",
            Some(&json!({"name": "short-lived", "role": "client"})),
        )
        .await
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap();
    assert_eq!(
        app.http
            .post(&url)
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let revoked = app
        .admin(
            Method::DELETE,
            &format!("/admin/api/keys/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(revoked.status(), 204);
    assert_eq!(
        app.http
            .post(&url)
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn roles_gate_the_admin_api() {
    let app = spawn_app().await;
    let keys = app.url("/admin/api/keys");
    let as_client = app
        .http
        .get(&keys)
        .bearer_auth(&app.client_key)
        .send()
        .await
        .unwrap();
    let (status, _) = error_of(as_client).await;
    assert_eq!(status, 403);
    let analyst_create = app
        .http
        .post(&keys)
        .bearer_auth(&app.analyst_key)
        .json(&json!({"name": "x", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(analyst_create.status(), 403);
    let audit = app
        .send(Method::GET, "/admin/api/audit", &app.analyst_key, None)
        .await;
    assert_eq!(audit.status(), 200);

    let listed: Value = app
        .http
        .get(&keys)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = listed["data"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|k| k.get("key").is_none() && k.get("hash").is_none())
    );

    let bad = app
        .http
        .post(&keys)
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "x", "role": "emperor"}))
        .send()
        .await
        .unwrap();
    let (status, error) = error_of(bad).await;
    assert_eq!((status, error["param"].as_str()), (400, Some("role")));
}

#[tokio::test]
async fn anonymous_clients_are_served_only_when_allowed() {
    let app = spawn_app_with(Options {
        extra: "[auth]\nallow_anonymous_clients = true".into(),
        ..Options::default()
    })
    .await;
    let url = app.url("/v1/chat/completions");
    let anonymous = app
        .http
        .post(&url)
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 200);
    // An app's own OpenAI key is no Flywheel key: served anonymously, not forwarded.
    let own_key = app
        .http
        .post(&url)
        .bearer_auth("sk-apps-own-key")
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(own_key.status(), 200);
    // A Flywheel-shaped key that is wrong is never rescued.
    let bad = app
        .http
        .post(&url)
        .bearer_auth("fw-revoked")
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let admin = app
        .http
        .get(app.url("/admin/api/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 403);
}

#[tokio::test]
async fn passthrough_forwards_the_clients_own_provider_key() {
    let app = spawn_app_with(Options {
        extra: "[auth]\npassthrough_client_keys = true".into(),
        ..Options::default()
    })
    .await;
    let url = app.url("/v1/chat/completions");
    // The simulator accepts only PROVIDER_KEY: with the client's own right
    // key it answers, with a wrong one the upstream's 401 comes back.
    let right = app
        .http
        .post(&url)
        .bearer_auth(PROVIDER_KEY)
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let wrong = app
        .http
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // Flywheel keys still use the configured provider key.
    assert_eq!(
        app.post("/v1/chat/completions", &triage_request(false))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_headers() {
    let app = spawn_app_with(Options {
        limits: "[limits]\nrequests_per_minute = 60\nburst = 2".into(),
        ..Options::default()
    })
    .await;
    let first = app
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "60");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
    assert!(first.headers().contains_key("x-ratelimit-reset-requests"));
    assert_eq!(
        app.post("/v1/chat/completions", &triage_request(false))
            .await
            .status(),
        200
    );
    let limited = app
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    let headers = limited.headers().clone();
    let (status, error) = error_of(limited).await;
    assert_eq!((status, error["type"].as_str()), (429, Some("requests")));
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after));
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert!(headers.contains_key("retry-after-ms"));
    // Another key has its own bucket.
    let other = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            &app.analyst_key,
            Some(&triage_request(false)),
        )
        .await;
    assert_eq!(other.status(), 200);
}

#[tokio::test]
async fn me_names_the_role_and_the_taxonomy() {
    let app = spawn_app().await;
    let get_me = |key: String| {
        let request = app.http.get(app.url("/admin/api/me")).bearer_auth(key);
        async move { request.send().await.unwrap() }
    };
    let admin: Value = get_me(ADMIN_TOKEN.to_string()).await.json().await.unwrap();
    assert_eq!(admin["role"], "admin");
    assert_eq!(admin["object"], "caller");
    assert!(
        admin["taxonomy"]["threat_types"]
            .as_array()
            .unwrap()
            .contains(&json!("malware"))
    );
    assert_eq!(admin["taxonomy"]["severities"][4], "critical");
    assert_eq!(admin["evaluation_targets"]["accuracy"], 0.9);

    let mut keys = Vec::new();
    for role in ["analyst", "client"] {
        let created: Value = app
            .admin(
                Method::POST,
                "/admin/api/keys",
                Some(&json!({"name": role, "role": role})),
            )
            .await
            .json()
            .await
            .unwrap();
        keys.push((
            created["key"].as_str().unwrap().to_string(),
            created["id"].clone(),
        ));
    }
    let analyst: Value = get_me(keys[0].0.clone()).await.json().await.unwrap();
    assert_eq!(
        (&analyst["role"], &analyst["id"]),
        (&json!("analyst"), &keys[0].1)
    );
    let (status, error) = error_of(get_me(keys[1].0.clone()).await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (403, Some("insufficient_permissions"))
    );
    let (status, _) = error_of(app.http.get(app.url("/admin/api/me")).send().await.unwrap()).await;
    assert_eq!(status, 401);
}
