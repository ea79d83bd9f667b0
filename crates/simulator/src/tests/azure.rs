//! Azure mode through the router: the paths of both URL styles, the
//! `api-version` and `api-key` it asks for, deployments (configured, and
//! made through the management API with their provisioning clock), and
//! Azure's error shapes.

use super::*;
use std::time::Duration;

const KEY: &str = "az-key";

fn azure(provisioning: Duration) -> Router {
    router(SimulatorConfig {
        api_key: Some(KEY.into()),
        azure: Some(AzureMode {
            deployments: [("soc-prod".to_string(), "gpt-4o".to_string())].into(),
            management_token: Some("arm-token".into()),
            provisioning_delay: provisioning,
            ..AzureMode::default()
        }),
        ..SimulatorConfig::default()
    })
}

async fn call(app: &Router, request: Request<Body>) -> (u16, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

const DEPLOYMENT: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/a/deployments";

fn management(method: &str, name: &str, token: &str, body: Option<Value>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(format!("{DEPLOYMENT}/{name}?api-version=2023-05-01"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap()
}

#[tokio::test]
async fn both_url_styles_reach_the_deployments_model() {
    let app = azure(Duration::ZERO);
    let dated = post(
        "/openai/deployments/soc-prod/chat/completions?api-version=2024-10-21",
        &triage(false),
        &[("api-key", KEY)],
    );
    let (status, body) = call(&app, dated).await;
    assert_eq!((status, &body["model"]), (200, &json!("gpt-4o")), "{body}");
    let mut v1_body = triage(false);
    v1_body["model"] = json!("soc-prod");
    let v1 = post(
        "/openai/v1/chat/completions",
        &v1_body,
        &[("authorization", "Bearer az-key")],
    );
    let (status, body) = call(&app, v1).await;
    assert_eq!((status, &body["model"]), (200, &json!("gpt-4o")), "{body}");
    // A base model is deployed under its own name.
    let base = post(
        "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
        &triage(false),
        &[("api-key", KEY)],
    );
    assert_eq!(call(&app, base).await.0, 200);
}

#[tokio::test]
async fn it_refuses_what_azure_refuses_in_azures_shape() {
    let app = azure(Duration::ZERO);
    let path = "/openai/deployments/soc-prod/chat/completions";
    let (status, body) = call(&app, post(path, &triage(false), &[("api-key", KEY)])).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("MissingApiVersionParameter"))
    );
    let versioned = format!("{path}?api-version=2024-10-21");
    let (status, body) = call(&app, post(&versioned, &triage(false), &[])).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("401")),
        "{body}"
    );
    let (status, _) = call(
        &app,
        post(&versioned, &triage(false), &[("api-key", "wrong")]),
    )
    .await;
    assert_eq!(status, 401);
    let unknown = post(
        "/openai/deployments/nope/chat/completions?api-version=2024-10-21",
        &triage(false),
        &[("api-key", KEY)],
    );
    let (status, body) = call(&app, unknown).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("DeploymentNotFound"))
    );
    let filtered = post(
        &versioned,
        &triage(false),
        &[("api-key", KEY), ("x-sim-content-filter", "1")],
    );
    let (status, body) = call(&app, filtered).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("content_filter"))
    );
    assert_eq!(
        body["error"]["innererror"]["code"],
        "ResponsibleAIPolicyViolation"
    );
}

#[tokio::test]
async fn the_management_api_provisions_deployments_after_a_delay() {
    let app = azure(Duration::from_secs(3600));
    let spec = json!({"sku": {"name": "standard", "capacity": 1},
        "properties": {"model": {"format": "OpenAI", "name": "gpt-4o-mini", "version": "1"}}});
    let (status, body) = call(
        &app,
        management("PUT", "slow", "old-token", Some(spec.clone())),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("ExpiredAuthenticationToken"))
    );
    let (status, body) = call(
        &app,
        management("PUT", "slow", "arm-token", Some(spec.clone())),
    )
    .await;
    assert_eq!(
        (status, &body["properties"]["provisioningState"]),
        (201, &json!("Creating")),
        "{body}"
    );
    let chat = post(
        "/openai/deployments/slow/chat/completions?api-version=2024-10-21",
        &triage(false),
        &[("api-key", KEY)],
    );
    assert_eq!(
        call(&app, chat).await.0,
        404,
        "not serving while it provisions"
    );
    let unknown = json!({"properties": {"model": {"name": "ft:gpt-4o-mini:nobody::x"}}});
    let (status, body) = call(&app, management("PUT", "x", "arm-token", Some(unknown))).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("DeploymentModelNotSupported"))
    );

    let quick = azure(Duration::ZERO);
    for (name, state) in [("ready", "Succeeded"), ("sim-fail-1", "Failed")] {
        let (status, _) = call(
            &quick,
            management("PUT", name, "arm-token", Some(spec.clone())),
        )
        .await;
        assert_eq!(status, 201);
        let (status, body) = call(&quick, management("GET", name, "arm-token", None)).await;
        assert_eq!(
            (status, &body["properties"]["provisioningState"]),
            (200, &json!(state)),
            "{body}"
        );
    }
    let chat = post(
        "/openai/deployments/ready/chat/completions?api-version=2024-10-21",
        &triage(false),
        &[("api-key", KEY)],
    );
    let (status, body) = call(&quick, chat).await;
    assert_eq!((status, &body["model"]), (200, &json!("gpt-4o-mini")));
    assert_eq!(
        call(&quick, management("DELETE", "ready", "arm-token", None))
            .await
            .0,
        200
    );
    assert_eq!(
        call(&quick, management("GET", "ready", "arm-token", None))
            .await
            .0,
        404
    );
}

fn token_request(tenant: &str, form: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(format!("/{tenant}/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form.to_string()))
        .unwrap()
}

/// Azure mode with an identity platform that knows `client_id` in tenant
/// `t1` (secret `s3cret`) and issues tokens lasting `ttl`; `more` sets
/// the rest.
fn with_entra(client_id: &str, ttl: Duration, more: impl FnOnce(&mut crate::EntraMode)) -> Router {
    let mut entra = crate::EntraMode {
        tenant: "t1".into(),
        client_id: client_id.into(),
        client_secret: "s3cret".into(),
        client_assertion: None,
        token_ttl: ttl,
        identity_header: None,
        app_roles: Vec::new(),
    };
    more(&mut entra);
    router(SimulatorConfig {
        api_key: Some(KEY.into()),
        azure: Some(AzureMode {
            entra: Some(entra),
            ..AzureMode::default()
        }),
        ..SimulatorConfig::default()
    })
}

#[tokio::test]
async fn a_token_for_an_apps_api_is_a_jwt_with_the_apps_roles_and_its_keys_are_published() {
    let app = with_entra("app", Duration::from_secs(60), |e| {
        e.app_roles = vec!["Flywheel.Client".into()];
    });
    let form = "grant_type=client_credentials&client_id=app&client_secret=s3cret\
        &scope=api%3A%2F%2Fflywheel%2F.default";
    let mut request = token_request("t1", form);
    request
        .headers_mut()
        .insert("host", "login.example:443".parse().unwrap());
    let (status, body) = call(&app, request).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let keys = |tenant: &str| {
        Request::builder()
            .uri(format!("/{tenant}/discovery/v2.0/keys"))
            .body(Body::empty())
            .unwrap()
    };
    let (status, jwks) = call(&app, keys("t1")).await;
    assert_eq!(status, 200);
    let key = &jwks["keys"][0];
    assert_eq!(
        (&key["kty"], &key["kid"]),
        (&json!("RSA"), &json!("flywheel-simulator-1"))
    );
    assert_eq!(call(&app, keys("t2")).await.0, 400);
    let verifying = jsonwebtoken::DecodingKey::from_rsa_components(
        key["n"].as_str().unwrap(),
        key["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut checks = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    checks.set_audience(&["api://flywheel"]);
    let claims = jsonwebtoken::decode::<Value>(token, &verifying, &checks)
        .unwrap()
        .claims;
    assert_eq!(claims["aud"], "api://flywheel");
    assert_eq!(claims["iss"], "http://login.example:443/t1/v2.0");
    assert_eq!(claims["roles"], json!(["Flywheel.Client"]));
    // Not a token the data plane takes: it is for another API.
    let chat = Request::builder()
        .method("POST")
        .uri("/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
        ))
        .unwrap();
    assert_eq!(call(&app, chat).await.0, 401);
}

/// The code a sign-in sends the browser back with.
fn code_in(location: &str) -> String {
    let (_, query) = location.split_once('?').unwrap();
    query
        .split('&')
        .find_map(|p| p.strip_prefix("code="))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_person_signs_in_with_a_code_the_app_redeems_with_its_verifier() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let app = with_entra("spa", Duration::from_secs(60), |e| {
        e.app_roles = vec!["Flywheel.Analyst".into()];
    });
    let verifier = "a-long-random-verifier-of-the-single-page-app-0123456789";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    let authorize = |challenge: &str| {
        Request::builder()
            .uri(format!(
                "/t1/oauth2/v2.0/authorize?client_id=spa&response_type=code\
                 &redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fadmin%2F&scope=api%3A%2F%2Fflywheel%2F.default%20offline_access\
                 &state=s%201&code_challenge={challenge}&code_challenge_method=S256"
            ))
            .body(Body::empty())
            .unwrap()
    };
    let response = app.clone().oneshot(authorize(&challenge)).await.unwrap();
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let (back, query) = location.split_once('?').unwrap();
    assert_eq!(back, "http://127.0.0.1:9/admin/");
    let code = code_in(&location);
    assert!(query.ends_with("state=s%201"), "{query}");
    let redeem = |code: &str, verifier: &str| {
        token_request(
            "t1",
            &format!(
                "grant_type=authorization_code&client_id=spa&code={code}&code_verifier={verifier}\
                 &redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fadmin%2F"
            ),
        )
    };
    let (status, body) = call(&app, redeem(&code, "another-verifier")).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_grant")),
        "{body}"
    );
    // A code is redeemed once: the failed try above spent it.
    let response = app.clone().oneshot(authorize(&challenge)).await.unwrap();
    let code = &code_in(response.headers()["location"].to_str().unwrap());
    let response = app.clone().oneshot(redeem(code, verifier)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let (status, body) = call(&app, redeem(code, verifier)).await;
    assert_eq!(status, 400, "{body}");

    // `offline_access` brought a refresh token, redeemed once for a new pair.
    let response = app.clone().oneshot(authorize(&challenge)).await.unwrap();
    let code = &code_in(response.headers()["location"].to_str().unwrap());
    let (status, first) = call(&app, redeem(code, verifier)).await;
    assert_eq!(status, 200, "{first}");
    let refresh = |token: &Value| {
        token_request(
            "t1",
            &format!(
                "grant_type=refresh_token&client_id=spa&refresh_token={}",
                token["refresh_token"].as_str().unwrap()
            ),
        )
    };
    let (status, second) = call(&app, refresh(&first)).await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(second["access_token"], first["access_token"]);
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let (status, spent) = call(&app, refresh(&first)).await;
    assert_eq!(
        (status, &spent["error"]),
        (400, &json!("invalid_grant")),
        "{spent}"
    );

    // Without a challenge there is no sign-in: PKCE is required.
    let (status, body) = call(&app, authorize("")).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_request")),
        "{body}"
    );
}

#[tokio::test]
async fn entra_tokens_are_issued_for_the_one_app_and_refused_once_expired() {
    let app = with_entra("app", Duration::from_secs(1), |e| {
        e.client_assertion = Some("federated".into());
    });
    let scope = "scope=https%3A%2F%2Fcognitiveservices.azure.com%2F.default";
    let grant = format!("grant_type=client_credentials&client_id=app&client_secret=s3cret&{scope}");
    let assertion =
        "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer";
    for (tenant, form, status, error) in [
        ("t2", grant.clone(), 400, "invalid_tenant"),
        (
            "t1",
            grant.replace("client_id=app", "client_id=x"),
            400,
            "unauthorized_client",
        ),
        (
            "t1",
            grant.replace("s3cret", "wrong"),
            401,
            "invalid_client",
        ),
        (
            "t1",
            grant.replace("client_credentials", "password"),
            400,
            "unsupported_grant_type",
        ),
        ("t1", grant.replace(scope, "scope=x"), 400, "invalid_scope"),
        (
            "t1",
            grant.replace(
                "client_secret=s3cret",
                &format!("client_assertion=forged&{assertion}"),
            ),
            401,
            "invalid_client",
        ),
        (
            "t1",
            grant.replace(
                "client_secret=s3cret",
                "client_assertion=federated&client_assertion_type=x",
            ),
            400,
            "invalid_request",
        ),
    ] {
        let (got, body) = call(&app, token_request(tenant, &form)).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(error)),
            "{form}: {body}"
        );
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .starts_with("AADSTS")
        );
    }
    let federated = grant.replace(
        "client_secret=s3cret",
        &format!("client_assertion=federated&{assertion}"),
    );
    assert_eq!(call(&app, token_request("t1", &federated)).await.0, 200);
    let (status, issued) = call(&app, token_request("t1", &grant)).await;
    assert_eq!(
        (status, &issued["expires_in"]),
        (200, &json!(1)),
        "{issued}"
    );
    let bearer = format!("Bearer {}", issued["access_token"].as_str().unwrap());
    let chat = || {
        let mut body = triage(false);
        body["model"] = json!("gpt-4o-mini");
        post(
            "/openai/v1/chat/completions",
            &body,
            &[("authorization", &bearer)],
        )
    };
    assert_eq!(call(&app, chat()).await.0, 200);
    // A token is for its scope's API only.
    let bearer_only = bearer.trim_start_matches("Bearer ");
    let listed = management("GET", "any", bearer_only, None);
    assert_eq!(call(&app, listed).await.0, 401, "a data-plane token");
    let arm = grant.replace(scope, "scope=https%3A%2F%2Fmanagement.azure.com%2F.default");
    let (_, arm) = call(&app, token_request("t1", &arm)).await;
    let arm = arm["access_token"].as_str().unwrap();
    assert_eq!(
        call(&app, management("GET", "none", arm, None)).await.0,
        404
    );
    let mut body = triage(false);
    body["model"] = json!("gpt-4o-mini");
    let wrong = post(
        "/openai/v1/chat/completions",
        &body,
        &[("authorization", &format!("Bearer {arm}"))],
    );
    assert_eq!(call(&app, wrong).await.0, 401, "a management token");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(call(&app, chat()).await.0, 401, "an expired token");
}

/// A time as the managed identity endpoints write it: Unix seconds, in a
/// string.
fn unix_seconds(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.parse::<u64>().is_ok())
}

fn identity_request(path: &str, query: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::builder().uri(format!("{path}?{query}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn managed_identity_tokens_come_from_the_metadata_service_and_app_services_endpoint() {
    let app = with_entra("user-assigned", Duration::from_secs(3600), |e| {
        e.identity_header = Some("h3ad3r".into());
    });
    const IMDS: &str = "/metadata/identity/oauth2/token";
    const APP_SERVICE: &str = "/msi/token";
    let cognitive = "resource=https%3A%2F%2Fcognitiveservices.azure.com";
    let imds = format!("api-version=2018-02-01&{cognitive}");
    let metadata = [("metadata", "true")];
    for (query, headers, why) in [
        (
            imds.clone(),
            &[][..],
            "Required metadata header not specified",
        ),
        (
            cognitive.to_string(),
            &metadata[..],
            "Required query variable 'api-version' is missing",
        ),
        (
            format!("{imds}&client_id=other"),
            &metadata[..],
            "Identity not found",
        ),
        (
            "api-version=2018-02-01&resource=x".to_string(),
            &metadata[..],
            "Resource 'x' is not a valid resource",
        ),
    ] {
        let (status, body) = call(&app, identity_request(IMDS, &query, headers)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{query}"
        );
        assert_eq!(body["error_description"], why, "{query}");
    }
    let (status, issued) = call(&app, identity_request(IMDS, &imds, &metadata)).await;
    assert_eq!(status, 200, "{issued}");
    assert_eq!(issued["expires_in"], "3600", "{issued}");
    assert!(unix_seconds(&issued["expires_on"]), "{issued}");
    let user_assigned = format!("{imds}&client_id=user-assigned");
    assert_eq!(
        call(&app, identity_request(IMDS, &user_assigned, &metadata))
            .await
            .0,
        200
    );

    // A managed identity's token is a bearer like any the simulator issued.
    let bearer = format!("Bearer {}", issued["access_token"].as_str().unwrap());
    let mut body = triage(false);
    body["model"] = json!("gpt-4o-mini");
    let chat = post(
        "/openai/v1/chat/completions",
        &body,
        &[("authorization", &bearer)],
    );
    assert_eq!(call(&app, chat).await.0, 200);

    let app_service = format!("api-version=2019-08-01&{cognitive}");
    let (status, refused) = call(
        &app,
        identity_request(APP_SERVICE, &app_service, &[("x-identity-header", "guess")]),
    )
    .await;
    assert_eq!(
        (status, &refused["statusCode"]),
        (401, &json!(401)),
        "{refused}"
    );
    let (status, issued) = call(
        &app,
        identity_request(
            APP_SERVICE,
            &app_service,
            &[("x-identity-header", "h3ad3r")],
        ),
    )
    .await;
    assert_eq!(status, 200, "{issued}");
    assert!(issued.get("expires_in").is_none(), "{issued}");
    assert!(unix_seconds(&issued["expires_on"]), "{issued}");
}
