//! A person signing in to a single-page app, as Microsoft Entra ID runs it:
//! the authorization code flow with PKCE. `GET /{tenant}/oauth2/v2.0/authorize`
//! signs the simulator's one user in at once (there is no password page)
//! and sends the browser back to the app's `redirect_uri` with a code; the
//! app redeems the code at the token endpoint with its `code_verifier`,
//! from the browser (the answer allows any origin, as Entra's does for
//! single-page apps), for a token for the scope it asked — and, when the
//! scopes include `offline_access`, a refresh token, which the same
//! endpoint redeems once (`grant_type=refresh_token`) for a new pair.

use super::{Audience, Azure, EntraMode, entra_error, issuer};
use crate::tokens;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::Duration;
use tokio::time::Instant;

/// How long a code may wait for its redemption, as Entra's ten minutes.
const CODE_TTL: Duration = Duration::from_secs(600);

/// The one user every visitor is signed in as.
pub const USER: &str = "analyst@soc.example";

/// A code handed out and not yet redeemed.
#[derive(Clone)]
pub struct Pending {
    challenge: String,
    redirect_uri: String,
    scope: String,
    expires: Instant,
}

/// `GET /{tenant}/oauth2/v2.0/authorize`: the user is signed in and sent
/// back with a code, or the app is told what is wrong (Entra shows such
/// errors on its own page; here they are its JSON).
pub async fn authorize(
    State(azure): State<Azure>,
    Path(tenant): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(entra) = &azure.mode.entra else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let field = |name: &str| query.get(name).map(String::as_str).unwrap_or("");
    let refuse =
        |error: &str, code: u32, why: &str| entra_error(StatusCode::BAD_REQUEST, error, code, why);
    if tenant != entra.tenant {
        return refuse(
            "invalid_tenant",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    if field("client_id") != entra.client_id {
        return refuse(
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{}' was not found in the directory.",
                field("client_id")
            ),
        );
    }
    if field("response_type") != "code" {
        return refuse(
            "unsupported_response_type",
            900144,
            "The app asked for another response type than 'code'.",
        );
    }
    if field("code_challenge").is_empty() || field("code_challenge_method") != "S256" {
        return refuse(
            "invalid_request",
            9002325,
            "Proof Key for Code Exchange is required for cross-origin authorization code redemption.",
        );
    }
    let redirect_uri = field("redirect_uri");
    if !redirect_uri.starts_with("http://") && !redirect_uri.starts_with("https://") {
        return refuse(
            "invalid_request",
            50011,
            "The redirect URI specified in the request does not match the redirect URIs configured for the application.",
        );
    }
    if Audience::of(resource_scope(field("scope"))).is_none() {
        return refuse(
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {} is not valid.",
                field("scope")
            ),
        );
    }
    let code = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let now = Instant::now();
    {
        let mut codes = azure.codes.lock().unwrap_or_else(PoisonError::into_inner);
        codes.retain(|_, p| p.expires > now);
        codes.insert(
            code.clone(),
            Pending {
                challenge: field("code_challenge").to_string(),
                redirect_uri: redirect_uri.to_string(),
                scope: field("scope").to_string(),
                expires: now + CODE_TTL,
            },
        );
    }
    let separator = if redirect_uri.contains('?') { '&' } else { '?' };
    let state = url_escape(field("state"));
    Redirect::to(&format!(
        "{redirect_uri}{separator}code={code}&state={state}"
    ))
    .into_response()
}

/// The authorization code grant at the token endpoint: the code redeemed
/// once, by the app it was given to, with the verifier its challenge was
/// made from.
pub fn redeem(
    azure: &Azure,
    entra: &EntraMode,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let invalid_grant =
        |why: &str| entra_error(StatusCode::BAD_REQUEST, "invalid_grant", 70008, why);
    let pending = azure
        .codes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(field("code"));
    let Some(pending) = pending.filter(|p| p.expires > Instant::now()) else {
        return invalid_grant(
            "The provided authorization code or refresh token has expired or was already redeemed.",
        );
    };
    if field("client_id") != entra.client_id {
        return invalid_grant("The code was issued to another application.");
    }
    if field("redirect_uri") != pending.redirect_uri {
        return invalid_grant("The redirect URI does not match the one the code was issued for.");
    }
    let verifier = Sha256::digest(field("code_verifier").as_bytes());
    if URL_SAFE_NO_PAD.encode(verifier) != pending.challenge {
        return invalid_grant(
            "The code_verifier does not match the code_challenge supplied in the authorization request for PKCE.",
        );
    }
    issue(azure, entra, headers, &pending.scope)
}

/// The refresh token grant: a refresh token redeemed once, by the app it
/// was given to, for a new access token and a new refresh token.
pub fn refresh(
    azure: &Azure,
    entra: &EntraMode,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let scope = azure
        .refresh_tokens
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(field("refresh_token"));
    let Some(scope) = scope.filter(|_| field("client_id") == entra.client_id) else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            700082,
            "The refresh token has expired, was already redeemed, or was issued to another application.",
        );
    };
    issue(azure, entra, headers, &scope)
}

/// The scope among `scopes` (space-separated) that names a resource
/// (`…/.default`); `offline_access` and the like name none.
fn resource_scope(scopes: &str) -> &str {
    scopes
        .split_whitespace()
        .find(|s| s.ends_with("/.default"))
        .unwrap_or(scopes)
}

/// A token for the signed-in user and `scopes`, and a refresh token when
/// they include `offline_access`.
fn issue(azure: &Azure, entra: &EntraMode, headers: &HeaderMap, scopes: &str) -> Response {
    let Some((audience, resource)) = Audience::of(resource_scope(scopes)) else {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            70008,
            "The scope the grant was issued for is not valid.",
        );
    };
    let tenant = &entra.tenant;
    let token = tokens::sign(&tokens::Grant {
        issuer: &issuer(headers, tenant),
        audience: resource,
        tenant,
        client_id: &entra.client_id,
        subject: Some(USER),
        roles: &entra.app_roles,
        ttl: entra.token_ttl,
    });
    let Some(access_token) = token else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    azure.remember(&access_token, entra.token_ttl, audience);
    let mut answer = json!({
        "token_type": "Bearer",
        "scope": scopes,
        "expires_in": entra.token_ttl.as_secs().max(1),
        "ext_expires_in": entra.token_ttl.as_secs().max(1),
        "access_token": access_token,
    });
    if scopes.split_whitespace().any(|s| s == "offline_access") {
        let refresh_token = format!("sim-refresh-{:032x}", rand::random::<u128>());
        azure
            .refresh_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(refresh_token.clone(), scopes.to_string());
        answer["refresh_token"] = json!(refresh_token);
    }
    axum::Json(answer).into_response()
}

/// Lets a page of any origin read the answer, as Entra's token endpoint
/// does for single-page apps.
pub fn any_origin(response: &mut Response) {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

/// `state` as the app sent it, escaped for a query string.
fn url_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
