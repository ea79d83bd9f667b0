//! Azure mode (`flywheel simulate --azure`): the simulator answers as an
//! Azure OpenAI resource does, in front of the same models.
//!
//! | path | what |
//! |---|---|
//! | `/openai/deployments/{deployment}/chat/completions?api-version=…` | a deployment's chat completions; the body's `model` is replaced by the deployment's |
//! | `/openai/v1/{chat/completions, responses, files, fine_tuning/jobs…}` | the OpenAI-compatible surface; `model` names a deployment |
//! | `/openai/{files, fine_tuning/jobs…, responses}?api-version=…` | files and fine-tuning; an upload is `pending` for `file_import_delay`, and a job naming it meanwhile is refused (400 `invalidPayload`); jobs as the dated api-versions show them (`pending`, `notRunning`, …, no `metadata`) |
//! | `/subscriptions/…/accounts/{account}/deployments/{name}?api-version=…` | the management API: `PUT` creates a deployment (`Creating`, then `Succeeded` after `provisioning_delay`), `GET` reads it, `DELETE` removes it |
//! | `POST /{tenant}/oauth2/v2.0/token` | with `entra` set: Microsoft Entra ID's token endpoint for client credentials; a token it issues (an RS256 JWT, see `tokens`) is accepted as the bearer for `token_ttl`, then refused as expired — by the data plane for the scope `https://cognitiveservices.azure.com/.default`, by the management API for any other `https://…/.default`; an `api://…/.default` token is for another app's API (Flywheel's) and carries `entra.app_roles` |
//! | `GET /{tenant}/discovery/v2.0/keys` | with `entra` set: the keys the tokens are signed with |
//! | `GET /{tenant}/oauth2/v2.0/authorize` | with `entra` set: a person signing in to a single-page app (authorization code with PKCE, see `sign_in`); the token endpoint redeems the code |
//! | `GET /metadata/identity/oauth2/token?api-version=&resource=[&client_id=]` | with `entra` set: a VM's managed identity, as the instance metadata service serves it (`Metadata: true` required); tokens for the system-assigned identity, or the user-assigned one whose client id is `entra.client_id` |
//! | `GET /msi/token?api-version=&resource=[&client_id=]` | with `entra.identity_header` set: the same identity as App Service and Container Apps serve it, asked with `X-IDENTITY-HEADER` |
//!
//! Outside `/openai/v1/` a request without `api-version` is refused (400
//! `MissingApiVersionParameter`); every `/openai/` request needs the
//! `api-key` header (or `Authorization: Bearer`) with the simulator's key,
//! or a bearer its token endpoint issued that has not expired (401
//! otherwise), and the management API the management token (401
//! `ExpiredAuthenticationToken` for another). A deployment is a base model
//! under its own name, one of `deployments`, or one created through the
//! management API once it has succeeded; any other name answers 404
//! `DeploymentNotFound`. A deployment whose name contains `sim-fail`
//! ends `Failed`. `x-sim-content-filter: 1` makes a chat completion
//! answer Azure's content-filter 400. The plain OpenAI paths (`/v1/…`)
//! stay served, so one simulator can stand in for both kinds of provider.
//! Every credential a request presents must be the key (or an issued
//! token), so a client's own `Authorization` passed on beside the
//! `api-key` is refused.

mod sign_in;

use super::Sim;
use super::tokens;
use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt;

/// What Azure mode adds to the simulator's settings.
#[derive(Debug, Clone)]
pub struct AzureMode {
    /// Deployment name → model, besides the base models (deployed under
    /// their own names) and what the management API creates.
    pub deployments: HashMap<String, String>,
    /// The bearer token the management API accepts; `None` refuses every
    /// management request.
    pub management_token: Option<String>,
    /// How long a created deployment stays `Creating`.
    pub provisioning_delay: Duration,
    /// How long an uploaded file stays `pending` (being imported), when a
    /// job naming it is refused.
    pub file_import_delay: Duration,
    /// The identity platform's client credentials flow, when set.
    pub entra: Option<EntraMode>,
}

impl Default for AzureMode {
    fn default() -> Self {
        Self {
            deployments: HashMap::new(),
            management_token: None,
            provisioning_delay: Duration::from_millis(500),
            file_import_delay: Duration::from_millis(200),
            entra: None,
        }
    }
}

/// The one app registration the token endpoint knows.
#[derive(Debug, Clone)]
pub struct EntraMode {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    /// The federated token (client assertion) it also accepts in place of
    /// the secret, as a workload identity presents one; `None`: none is.
    pub client_assertion: Option<String>,
    /// How long an issued token is accepted (`expires_in`).
    pub token_ttl: Duration,
    /// The secret App Service's identity endpoint (`/msi/token`) wants in
    /// `X-IDENTITY-HEADER`; `None`: that endpoint is not served.
    pub identity_header: Option<String>,
    /// The app roles the app holds on any API it asks a token for: the
    /// tokens' `roles` claim.
    pub app_roles: Vec<String>,
}

/// The assertion type of a federated token.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The scope a token for Azure OpenAI is asked for.
const COGNITIVE_SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// A header that makes a chat completion trip the content filter.
pub const CONTENT_FILTER: &str = "x-sim-content-filter";

/// Request bodies this mode reads to rename the model.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A deployment made through the management API.
#[derive(Debug, Clone)]
struct Deployment {
    model: String,
    sku: Value,
    ready_at: Instant,
    fails: bool,
}

impl Deployment {
    fn state(&self, now: Instant) -> &'static str {
        match (now >= self.ready_at, self.fails) {
            (false, _) => "Creating",
            (true, false) => "Succeeded",
            (true, true) => "Failed",
        }
    }
}

#[derive(Clone)]
struct Azure {
    sim: Sim,
    mode: Arc<AzureMode>,
    /// The OpenAI-shaped router the translated requests go to.
    inner: Router,
    created: Arc<Mutex<HashMap<String, Deployment>>>,
    /// Uploaded file id → when its import is done.
    imports: Arc<Mutex<HashMap<String, Instant>>>,
    /// Entra ID tokens issued → when each expires, and what for.
    tokens: Arc<Mutex<HashMap<String, (Instant, Audience)>>>,
    /// Authorization codes handed out and not yet redeemed.
    codes: Arc<Mutex<HashMap<String, sign_in::Pending>>>,
    /// Refresh tokens handed out and not yet redeemed → their scopes.
    refresh_tokens: Arc<Mutex<HashMap<String, String>>>,
}

/// What an Entra ID token was asked for: its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audience {
    /// `https://cognitiveservices.azure.com/.default`: the data plane.
    OpenAi,
    /// Any other `https://…/.default` (the management URL's): the
    /// management API.
    Management,
    /// `api://…/.default`: an app's own API (Flywheel's, as an app
    /// registration exposes it), which the simulator does not serve.
    Api,
}

impl Audience {
    /// What the scope asks a token for, and the token's `aud`: the scope
    /// without `/.default`.
    fn of(scope: &str) -> Option<(Self, &str)> {
        let resource = scope.strip_suffix("/.default")?;
        if scope == COGNITIVE_SCOPE {
            Some((Self::OpenAi, resource))
        } else if scope.starts_with("http") {
            Some((Self::Management, resource))
        } else if scope.starts_with("api://") {
            Some((Self::Api, resource))
        } else {
            None
        }
    }
}

/// The Azure routes in front of `inner`, which keeps serving `/v1/…`.
pub fn router(sim: Sim, mode: AzureMode, inner: Router) -> Router {
    let azure = Azure {
        sim,
        mode: Arc::new(mode),
        inner: inner.clone(),
        created: Arc::default(),
        imports: Arc::default(),
        tokens: Arc::default(),
        codes: Arc::default(),
        refresh_tokens: Arc::default(),
    };
    Router::new()
        .route("/openai/{*rest}", axum::routing::any(data_plane))
        .route("/subscriptions/{*rest}", axum::routing::any(management))
        .route("/{tenant}/oauth2/v2.0/token", axum::routing::post(token))
        .route(
            "/{tenant}/oauth2/v2.0/authorize",
            axum::routing::get(sign_in::authorize),
        )
        .route(
            "/{tenant}/discovery/v2.0/keys",
            axum::routing::get(signing_keys),
        )
        .route(
            "/metadata/identity/oauth2/token",
            axum::routing::get(imds_token),
        )
        .route("/msi/token", axum::routing::get(app_service_token))
        .with_state(azure)
        .fallback_service(inner)
}

/// Azure's error envelope: `{"error": {"code", "message"}}`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": code, "message": message.into()}});
    (status, axum::Json(body)).into_response()
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

impl Azure {
    /// Every credential presented must be the key — an `api-key`, an
    /// `Authorization` bearer (Entra ID), or both — and one must be.
    fn key_ok(&self, request: &Request) -> bool {
        let Some(expected) = &self.sim.config.api_key else {
            return true;
        };
        let headers = request.headers();
        let api_key = headers.get("api-key").map(|v| v.to_str().unwrap_or(""));
        let bearer = headers.get(header::AUTHORIZATION).map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("")
        });
        let presented: Vec<&str> = [api_key, bearer].into_iter().flatten().collect();
        !presented.is_empty()
            && presented
                .iter()
                .all(|k| k.trim() == expected || self.issued(k.trim(), Audience::OpenAi))
    }

    /// Whether the token endpoint issued `token` for `audience` and it has
    /// not expired.
    fn issued(&self, token: &str, audience: Audience) -> bool {
        let tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.get(token).is_some_and(|&(expires, issued_for)| {
            issued_for == audience && Instant::now() < expires
        })
    }

    /// The model behind `deployment`, if it serves now.
    fn model_of(&self, deployment: &str) -> Option<String> {
        if let Some(model) = self.mode.deployments.get(deployment) {
            return Some(model.clone());
        }
        if super::MODELS.contains(&deployment) {
            return Some(deployment.to_string());
        }
        let created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        let d = created.get(deployment)?;
        (d.state(Instant::now()) == "Succeeded").then(|| d.model.clone())
    }
}

fn not_found(deployment: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "DeploymentNotFound",
        format!(
            "The API deployment {deployment} for this resource does not exist. If you created \
             the deployment within the last 5 minutes, please wait a moment and try again."
        ),
    )
}

/// Azure's answer to a prompt its content filter stops.
fn content_filtered() -> Response {
    let verdicts = json!({
        "hate": {"filtered": false, "severity": "safe"},
        "self_harm": {"filtered": false, "severity": "safe"},
        "sexual": {"filtered": false, "severity": "safe"},
        "violence": {"filtered": true, "severity": "high"},
    });
    let body = json!({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry.",
        "type": null,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": verdicts,
        },
    }});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// The identity platform's error: `{error, error_description, error_codes}`.
fn entra_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{code}: {description}"),
        "error_codes": [code],
    });
    (status, axum::Json(body)).into_response()
}

/// `POST /{tenant}/oauth2/v2.0/token`: the client credentials grant, as
/// Microsoft Entra ID answers it.
async fn token(
    State(azure): State<Azure>,
    axum::extract::Path(tenant): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    form: Result<axum::Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(entra) = &azure.mode.entra else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if tenant != entra.tenant {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let Ok(axum::Form(form)) = form else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        );
    };
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    // A single-page app's grants, answered to any origin, errors too.
    let mut signed_in = match field("grant_type") {
        "authorization_code" => sign_in::redeem(&azure, entra, &headers, &form),
        "refresh_token" => sign_in::refresh(&azure, entra, &headers, &form),
        _ => return client_credentials(&azure, entra, &headers, &form),
    };
    sign_in::any_origin(&mut signed_in);
    signed_in
}

/// The client credentials grant: the app itself, with its secret or a
/// federated assertion.
fn client_credentials(
    azure: &Azure,
    entra: &EntraMode,
    headers: &axum::http::HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    if field("grant_type") != "client_credentials" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if field("client_id") != entra.client_id {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{}' was not found in the directory.",
                field("client_id")
            ),
        );
    }
    if let Some(assertion) = form.get("client_assertion") {
        if field("client_assertion_type") != JWT_BEARER {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "Invalid client_assertion_type.",
            );
        }
        if entra.client_assertion.as_deref() != Some(assertion.as_str()) {
            return entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700027,
                "Client assertion failed signature validation.",
            );
        }
    } else if field("client_secret") != entra.client_secret {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the \
             client secret value, not the client secret ID.",
        );
    }
    let Some((audience, resource)) = Audience::of(field("scope")) else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {} is not valid.",
                field("scope")
            ),
        );
    };
    let access_token = azure.issue(entra, audience, resource, &issuer(headers, &entra.tenant));
    axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": entra.token_ttl.as_secs().max(1),
        "ext_expires_in": entra.token_ttl.as_secs().max(1),
        "access_token": access_token,
    }))
    .into_response()
}

/// What a managed identity endpoint is asked: `api-version`, `resource`
/// and, for a user-assigned identity, `client_id`.
struct IdentityQuery {
    api_version: Option<String>,
    resource: Option<String>,
    client_id: Option<String>,
}

impl IdentityQuery {
    fn of(Query(pairs): Query<HashMap<String, String>>) -> Self {
        let get = |name: &str| pairs.get(name).cloned();
        Self {
            api_version: get("api-version"),
            resource: get("resource"),
            client_id: get("client_id"),
        }
    }
}

/// Which identity's token is asked for, and for what: the system-assigned
/// identity or the user-assigned one the simulator knows; or the refusal's
/// description.
fn managed_identity(
    entra: &EntraMode,
    query: &IdentityQuery,
) -> Result<(Audience, String), String> {
    if query.api_version.is_none() {
        return Err("Required query variable 'api-version' is missing".into());
    }
    if query
        .client_id
        .as_ref()
        .is_some_and(|id| *id != entra.client_id)
    {
        return Err("Identity not found".into());
    }
    let resource = query.resource.as_deref().unwrap_or_default();
    Audience::of(&format!("{}/.default", resource.trim_end_matches('/')))
        .map(|(audience, resource)| (audience, resource.to_string()))
        .ok_or_else(|| format!("Resource '{resource}' is not a valid resource"))
}

/// Unix seconds `ttl` from now, as the managed identity endpoints write
/// them (a string).
fn expires_on(ttl: Duration) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now + ttl).as_secs().to_string()
}

/// `GET /metadata/identity/oauth2/token`: the instance metadata service's
/// managed identity endpoint (`expires_in` and `expires_on` are strings).
async fn imds_token(
    State(azure): State<Azure>,
    headers: axum::http::HeaderMap,
    query: Query<HashMap<String, String>>,
) -> Response {
    let query = IdentityQuery::of(query);
    let Some(entra) = &azure.mode.entra else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let refuse = |description: &str| {
        let body = json!({"error": "invalid_request", "error_description": description});
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    };
    if headers.get("metadata").is_none_or(|v| v != "true") {
        return refuse("Required metadata header not specified");
    }
    let (audience, resource) = match managed_identity(entra, &query) {
        Ok(asked) => asked,
        Err(why) => return refuse(&why),
    };
    let ttl = entra.token_ttl.as_secs().max(1);
    axum::Json(json!({
        "access_token": azure.issue(entra, audience, &resource, &issuer(&headers, &entra.tenant)),
        "client_id": entra.client_id,
        "expires_in": ttl.to_string(),
        "expires_on": expires_on(entra.token_ttl),
        "ext_expires_in": ttl.to_string(),
        "resource": query.resource,
        "token_type": "Bearer",
    }))
    .into_response()
}

/// `GET /msi/token`: App Service's and Container Apps' identity endpoint
/// (only `expires_on`; refusals are `{statusCode, message}`).
async fn app_service_token(
    State(azure): State<Azure>,
    headers: axum::http::HeaderMap,
    query: Query<HashMap<String, String>>,
) -> Response {
    let query = IdentityQuery::of(query);
    let Some((entra, secret)) = azure
        .mode
        .entra
        .as_ref()
        .and_then(|e| Some((e, e.identity_header.as_deref()?)))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let refuse = |status: StatusCode, message: &str| {
        let body = json!({"statusCode": status.as_u16(), "message": message});
        (status, axum::Json(body)).into_response()
    };
    if headers.get("x-identity-header").is_none_or(|v| v != secret) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "The X-IDENTITY-HEADER is missing or not this host's.",
        );
    }
    let (audience, resource) = match managed_identity(entra, &query) {
        Ok(asked) => asked,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, &why),
    };
    axum::Json(json!({
        "access_token": azure.issue(entra, audience, &resource, &issuer(&headers, &entra.tenant)),
        "client_id": entra.client_id,
        "expires_on": expires_on(entra.token_ttl),
        "resource": query.resource,
        "token_type": "Bearer",
    }))
    .into_response()
}

impl Azure {
    /// A new token for `audience` (`resource` its `aud`), accepted for
    /// the app registration's `token_ttl`: a signed JWT, as Entra ID
    /// issues them.
    fn issue(&self, entra: &EntraMode, audience: Audience, resource: &str, issuer: &str) -> String {
        let access_token = tokens::sign(&tokens::Grant {
            issuer,
            audience: resource,
            tenant: &entra.tenant,
            client_id: &entra.client_id,
            subject: None,
            roles: &entra.app_roles,
            ttl: entra.token_ttl,
        })
        .unwrap_or_else(|| format!("sim-entra-{}", uuid_like()));
        self.remember(&access_token, entra.token_ttl, audience);
        access_token
    }

    /// Accepts `token` as a bearer for `audience` until `ttl` from now.
    fn remember(&self, token: &str, ttl: Duration, audience: Audience) {
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        tokens.retain(|_, (expires, _)| *expires > now);
        tokens.insert(token.to_string(), (now + ttl, audience));
    }
}

/// The issuer of the tenant's tokens, `{authority}/{tenant}/v2.0`, with
/// the authority as the client reached it.
fn issuer(headers: &axum::http::HeaderMap, tenant: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/{tenant}/v2.0")
}

/// `GET /{tenant}/discovery/v2.0/keys`: the keys the tenant's tokens are
/// signed with.
async fn signing_keys(
    State(azure): State<Azure>,
    axum::extract::Path(tenant): axum::extract::Path<String>,
) -> Response {
    match &azure.mode.entra {
        Some(entra) if entra.tenant == tenant => axum::Json(tokens::jwks()).into_response(),
        Some(_) => entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            &format!("Tenant '{tenant}' not found."),
        ),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// 32 random hex digits.
fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// `/openai/…`: checked and translated, then answered by the OpenAI router.
async fn data_plane(State(azure): State<Azure>, request: Request) -> Response {
    if !azure.key_ok(&request) {
        return error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to \
             provide a valid key for an active subscription and use a correct regional API \
             endpoint for your resource.",
        );
    }
    let rest = request
        .uri()
        .path()
        .strip_prefix("/openai/")
        .unwrap_or("")
        .to_string();
    let mut query = query_pairs(request.uri());
    let version = query
        .iter()
        .position(|(k, _)| k == "api-version")
        .map(|i| query.remove(i).1);
    let (path, deployment, legacy) = if let Some(path) = rest.strip_prefix("v1/") {
        (path.to_string(), None, false)
    } else {
        if version.as_deref().is_none_or(str::is_empty) {
            return error(
                StatusCode::BAD_REQUEST,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            );
        }
        match rest.strip_prefix("deployments/") {
            Some(tail) => {
                let Some((name, path)) = tail.split_once('/') else {
                    return error(StatusCode::NOT_FOUND, "404", "Resource not found");
                };
                let Some(model) = azure.model_of(name) else {
                    return not_found(name);
                };
                (path.to_string(), Some(model), true)
            }
            None => (rest.clone(), None, true),
        }
    };
    if path == "chat/completions"
        && request
            .headers()
            .get(CONTENT_FILTER)
            .is_some_and(|v| v == "1")
    {
        return content_filtered();
    }
    let (mut parts, body) = request.into_parts();
    let renames_model = parts.method == Method::POST
        && ["chat/completions", "responses", "embeddings", "completions"].contains(&path.as_str());
    let body = if renames_model {
        let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "413",
                "The request is too large.",
            );
        };
        match rename_model(&azure, &bytes, deployment) {
            Ok(renamed) => Body::from(renamed),
            Err(unknown) => return not_found(&unknown),
        }
    } else if parts.method == Method::POST && path == "fine_tuning/jobs" {
        let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "413",
                "The request is too large.",
            );
        };
        if names_an_importing_file(&azure, &bytes) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalidPayload",
                "The specified file reference must point to a completed file import.",
            );
        }
        Body::from(bytes)
    } else {
        body
    };
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let target = if query.is_empty() {
        format!("/v1/{path}")
    } else {
        format!("/v1/{path}?{}", query.join("&"))
    };
    let Ok(uri) = target.parse::<Uri>() else {
        return error(StatusCode::BAD_REQUEST, "400", "The URL is not valid.");
    };
    parts.uri = uri;
    let upload = parts.method == Method::POST && path == "files";
    // The outer route's matched path would read as the inner route's own.
    parts.extensions.clear();
    parts.headers.remove("api-key");
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(key) = &azure.sim.config.api_key
        && let Ok(value) = HeaderValue::try_from(format!("Bearer {key}"))
    {
        parts.headers.insert(header::AUTHORIZATION, value);
    }
    let response = match azure
        .inner
        .clone()
        .oneshot(Request::from_parts(parts, body))
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if legacy && path.starts_with("fine_tuning/jobs") && !path.ends_with("/events") {
        return azure_statuses(response).await;
    }
    if path == "files"
        || path
            .strip_prefix("files/")
            .is_some_and(|id| !id.contains('/'))
    {
        return file_imports(&azure, response, upload).await;
    }
    response
}

/// Whether a job's body names a training or validation file still
/// being imported.
fn names_an_importing_file(azure: &Azure, bytes: &Bytes) -> bool {
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let imports = azure.imports.lock().unwrap_or_else(PoisonError::into_inner);
    let now = Instant::now();
    ["training_file", "validation_file"].iter().any(|key| {
        body[*key]
            .as_str()
            .and_then(|id| imports.get(id))
            .is_some_and(|done| now < *done)
    })
}

/// Files as Azure shows them while it imports them: an upload starts its
/// import clock, and one not done yet says `pending`.
async fn file_imports(azure: &Azure, response: Response, upload: bool) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500",
            "The answer broke off.",
        );
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let now = Instant::now();
    let mut imports = azure.imports.lock().unwrap_or_else(PoisonError::into_inner);
    let mut show = |file: &mut Value, uploaded: bool| {
        let Some(id) = file["id"].as_str() else {
            return;
        };
        if uploaded {
            imports.insert(id.to_string(), now + azure.mode.file_import_delay);
        }
        if imports.get(id).is_some_and(|done| now < *done) {
            file["status"] = Value::String("pending".into());
        }
    };
    if value["object"] == "file" {
        show(&mut value, upload && parts.status.is_success());
    } else if let Some(files) = value.get_mut("data").and_then(Value::as_array_mut) {
        files.iter_mut().for_each(|f| show(f, false));
    }
    drop(imports);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(value.to_string()))
}

/// The body with its `model` (a deployment's name in the v1 style) made
/// the model the deployment serves; `Err` names a deployment there is not.
fn rename_model(azure: &Azure, bytes: &Bytes, deployment: Option<String>) -> Result<Bytes, String> {
    let Ok(mut body) = serde_json::from_slice::<Value>(bytes) else {
        // Not JSON: the OpenAI router says what is wrong with it.
        return Ok(bytes.clone());
    };
    let model = match deployment {
        Some(model) => model,
        None => {
            let named = body["model"].as_str().unwrap_or("").to_string();
            azure.model_of(&named).ok_or(named)?
        }
    };
    body["model"] = Value::String(model);
    Ok(Bytes::from(body.to_string()))
}

/// A job or a page of jobs as the dated api-versions report them:
/// `pending` while files are validated, `notRunning` while queued, and
/// no `metadata` (which only the v1 API keeps).
async fn azure_statuses(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500",
            "The answer broke off.",
        );
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let rename = |job: &mut Value| {
        if let Some(fields) = job.as_object_mut() {
            fields.remove("metadata");
        }
        let azure = match job["status"].as_str() {
            Some("validating_files") => "pending",
            Some("queued") => "notRunning",
            _ => return,
        };
        job["status"] = Value::String(azure.into());
    };
    if value["object"] == "fine_tuning.job" {
        rename(&mut value);
    } else if let Some(jobs) = value.get_mut("data").and_then(Value::as_array_mut) {
        jobs.iter_mut().for_each(rename);
    }
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(value.to_string()))
}

/// `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/accounts/{a}/deployments/{name}`.
async fn management(State(azure): State<Azure>, request: Request) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (token, &azure.mode.management_token) {
        (None, _) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            );
        }
        (Some(t), Some(expected)) if t.trim() == expected => {}
        (Some(t), _) if azure.issued(t.trim(), Audience::Management) => {}
        (Some(_), _) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "ExpiredAuthenticationToken",
                "The access token expiry UTC time is earlier than current UTC time (simulated).",
            );
        }
    }
    if !query_pairs(request.uri())
        .iter()
        .any(|(k, v)| k == "api-version" && !v.is_empty())
    {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let name = match segments.as_slice() {
        [
            "subscriptions",
            _,
            "resourceGroups",
            _,
            "providers",
            "Microsoft.CognitiveServices",
            "accounts",
            _,
            "deployments",
            name,
        ] => (*name).to_string(),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "InvalidResourceType",
                "The resource type could not be found.",
            );
        }
    };
    let now = Instant::now();
    let method = request.method().clone();
    match method {
        Method::PUT => {
            let Ok(bytes) = to_bytes(request.into_body(), MAX_BODY).await else {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "413",
                    "The request is too large.",
                );
            };
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let model = body
                .pointer("/properties/model/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let known = super::MODELS.contains(&model.as_str())
                || azure.sim.lab.state().model(&model).is_some();
            if !known {
                return error(
                    StatusCode::BAD_REQUEST,
                    "DeploymentModelNotSupported",
                    format!(
                        "The model '{model}' is not supported for deployment on this resource."
                    ),
                );
            }
            let deployment = Deployment {
                model,
                sku: body.get("sku").cloned().unwrap_or(Value::Null),
                ready_at: now + azure.mode.provisioning_delay,
                fails: name.contains("sim-fail"),
            };
            let view = view(&path, &name, &deployment, now);
            let existed = azure
                .created
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name, deployment)
                .is_some();
            let status = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, axum::Json(view)).into_response()
        }
        Method::GET => {
            let created = azure.created.lock().unwrap_or_else(PoisonError::into_inner);
            match created.get(&name) {
                Some(d) => axum::Json(view(&path, &name, d, now)).into_response(),
                None => error(
                    StatusCode::NOT_FOUND,
                    "DeploymentNotFound",
                    format!("Deployment '{name}' not found."),
                ),
            }
        }
        Method::DELETE => {
            let removed = azure
                .created
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&name);
            match removed {
                Some(_) => StatusCode::OK.into_response(),
                None => StatusCode::NO_CONTENT.into_response(),
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "Use PUT, GET or DELETE.",
        ),
    }
}

/// A deployment as the management API shows it.
fn view(path: &str, name: &str, d: &Deployment, now: Instant) -> Value {
    let state = d.state(now);
    let mut properties = json!({
        "model": {"format": "OpenAI", "name": d.model, "version": "1"},
        "provisioningState": state,
    });
    if state == "Failed" {
        properties["error"] = json!({
            "code": "DeploymentFailed",
            "message": format!("The deployment of '{}' failed (simulated: its name asks for it).", d.model),
        });
    }
    json!({
        "id": path,
        "type": "Microsoft.CognitiveServices/accounts/deployments",
        "name": name,
        "sku": d.sku,
        "properties": properties,
    })
}
