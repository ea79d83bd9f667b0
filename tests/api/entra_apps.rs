//! Apps that sign in to Flywheel with Microsoft Entra ID (`[auth.entra]`)
//! instead of a Flywheel key, as keyless Azure OpenAI apps do: the
//! simulator stands in for the identity platform, issuing signed tokens
//! for an app registration and publishing the keys Flywheel checks them
//! with.

use crate::helpers::*;
use flywheel_simulator::{AzureMode, EntraMode, SimulatorConfig};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const TENANT: &str = "soc-tenant";

/// The identity platform (and provider): one app registration,
/// `triage-app`, holding `roles` on any API it asks a token for.
async fn identity_platform(roles: &[&str]) -> std::net::SocketAddr {
    spawn_simulator(SimulatorConfig {
        api_key: Some(PROVIDER_KEY.into()),
        azure: Some(AzureMode {
            entra: Some(EntraMode {
                tenant: TENANT.into(),
                client_id: "triage-app".into(),
                client_secret: "app-secret".into(),
                client_assertion: None,
                token_ttl: Duration::from_secs(3600),
                identity_header: None,
                app_roles: roles.iter().map(|r| r.to_string()).collect(),
            }),
            ..AzureMode::default()
        }),
        ..SimulatorConfig::default()
    })
    .await
}

/// Flywheel, accepting the tenant's tokens for `api://flywheel`.
async fn flywheel(platform: std::net::SocketAddr) -> TestApp {
    spawn_app_with(Options {
        upstream: Some(platform),
        extra: format!(
            "[auth.entra]\ntenant_id = \"{TENANT}\"\naudiences = [\"api://flywheel\"]\n\
             authority = \"http://{platform}\"\n"
        ),
        ..Options::default()
    })
    .await
}

/// A token for `scope`, as the app's SDK asks the identity platform.
async fn token(platform: std::net::SocketAddr, scope: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("http://{platform}/{TENANT}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "triage-app"),
            ("client_secret", "app-secret"),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

/// A chat with `token` as the bearer, once Flywheel has the tenant's keys
/// (fetched in the background at start).
async fn chat(app: &TestApp, token: &str) -> reqwest::Response {
    let body = triage_request(false);
    eventually(
        "Flywheel holds the tenant's signing keys",
        Duration::from_secs(10),
        || async {
            let response = app
                .send(Method::POST, "/v1/chat/completions", token, Some(&body))
                .await;
            if response.status() == 401 {
                Err(response.text().await.unwrap())
            } else {
                Ok(response)
            }
        },
    )
    .await
}

#[tokio::test]
async fn an_app_signed_in_with_entra_id_is_served_as_its_app_role_allows() {
    let platform = identity_platform(&["Flywheel.Analyst"]).await;
    let app = flywheel(platform).await;
    let bearer = token(platform, "api://flywheel/.default").await;
    let response = chat(&app, &bearer).await;
    assert_eq!(response.status(), 200);
    let inference = response.headers()["x-flywheel-inference-id"]
        .to_str()
        .unwrap()
        .to_string();
    response.text().await.unwrap();

    // The caller is the app's object id, with the role its app role grants.
    let me = app.send(Method::GET, "/admin/api/me", &bearer, None).await;
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["role"], "analyst");
    let caller = me["id"].as_str().unwrap().to_string();
    assert!(caller.starts_with("entra:"), "{me}");
    app.capture_settled().await;
    let stored = app.state.store.inference(&inference).unwrap().unwrap();
    assert_eq!(stored.key_id, caller);

    // Keys stay an admin's: the analyst's token is not enough.
    let create = app
        .send(
            Method::POST,
            "/admin/api/keys",
            &bearer,
            Some(&json!({"role": "client", "name": "x"})),
        )
        .await;
    let (status, error) = error_of(create).await;
    assert_eq!(status, 403, "{error}");
    // Flywheel keys work beside tokens.
    let keyed = app
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    assert_eq!(keyed.status(), 200);
}

#[tokio::test]
async fn a_token_for_another_api_or_without_an_app_role_is_refused_with_the_reason() {
    let platform = identity_platform(&[]).await;
    let app = flywheel(platform).await;
    // The app holds no app role on Flywheel.
    let roleless = token(platform, "api://flywheel/.default").await;
    let (status, error) = error_of(chat(&app, &roleless).await).await;
    assert_eq!(status, 403, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("Flywheel.Client"), "{message}");

    // A token for Azure OpenAI itself, not for Flywheel.
    let other = token(platform, "https://cognitiveservices.azure.com/.default").await;
    let response = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            &other,
            Some(&triage_request(false)),
        )
        .await;
    let (status, error) = error_of(response).await;
    assert_eq!(status, 401, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("another audience"), "{message}");
    assert!(message.contains("api://flywheel"), "{message}");
}

#[tokio::test]
async fn the_admin_ui_offers_a_microsoft_sign_in_only_when_configured() {
    let plain = spawn_app().await;
    let http = reqwest::Client::new();
    let methods = |app: &TestApp| {
        let (http, url) = (http.clone(), app.url("/admin/api/sign-in"));
        async move {
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200, "no key is needed");
            response.json::<Value>().await.unwrap()
        }
    };
    let csp = |app: &TestApp| {
        let (http, url) = (http.clone(), app.url("/admin/"));
        async move {
            let response = http.get(url).send().await.unwrap();
            response.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(
        methods(&plain).await,
        json!({"object": "sign_in", "methods": ["key"]})
    );
    assert!(csp(&plain).await.contains("connect-src 'self';"));

    let platform = identity_platform(&["Flywheel.Analyst"]).await;
    let app = spawn_app_with(Options {
        upstream: Some(platform),
        extra: format!(
            "[auth.entra]\ntenant_id = \"{TENANT}\"\naudiences = [\"api://flywheel\"]\n\
             authority = \"http://{platform}/\"\nadmin_ui_client_id = \"triage-app\"\n"
        ),
        ..Options::default()
    })
    .await;
    let offered = methods(&app).await;
    assert_eq!(offered["methods"], json!(["key", "entra"]));
    assert_eq!(
        offered["entra"],
        json!({
            "authorize_url": format!("http://{platform}/{TENANT}/oauth2/v2.0/authorize"),
            "token_url": format!("http://{platform}/{TENANT}/oauth2/v2.0/token"),
            "client_id": "triage-app",
            "scope": "api://flywheel/.default",
        })
    );
    // The page may call the identity platform to redeem its code.
    assert!(
        csp(&app)
            .await
            .contains(&format!("connect-src 'self' http://{platform};")),
        "{}",
        csp(&app).await
    );
}
