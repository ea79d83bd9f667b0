//! Microsoft Entra ID tokens for an Azure provider with `[providers.entra]`,
//! from one of two sources:
//! - the app registration's client credentials — its secret, or a
//!   federated token from a file (AKS workload identity), read afresh each
//!   time as it is rotated — exchanged at
//!   `{authority}/{tenant}/oauth2/v2.0/token`;
//! - the managed identity of the host, asked at the instance metadata
//!   service (a VM) or at the endpoint App Service, Container Apps and
//!   Functions announce in `IDENTITY_ENDPOINT`.
//!
//! A background task renews the token when three quarters of its lifetime
//! have passed, so a token never runs out under a request (they last
//! about an hour; a managed identity's up to a day). The request path only
//! reads the current token (one atomic load). While none is valid — before
//! the first arrives, or once renewals have failed until it expired — a
//! request fails before anything is sent, with the reason, and is retried
//! as a connection failure is.

use crate::config::{EntraConfig, ManagedIdentityHost};
use arc_swap::ArcSwapOption;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest one token request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed renewal, the next is tried this soon, doubling up to
/// [`RETRY_AT_MOST`]; a quarter of an hour-long token's life is left then.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_AT_MOST: Duration = Duration::from_secs(30);

/// The client a managed identity's tokens are asked with: its endpoint is
/// on the host (link-local, or loopback on App Service), which no egress
/// proxy the environment names (`HTTP_PROXY` …) can reach, so none is
/// used, as Azure's own SDKs do.
pub fn host_client(connect_timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(connect_timeout)
        .build()
        .map_err(|e| format!("cannot build the managed identity's HTTP client: {e}"))
}

/// The `api-version` each managed identity endpoint is asked with.
const IMDS_API_VERSION: &str = "2018-02-01";
const APP_SERVICE_API_VERSION: &str = "2019-08-01";

/// What a source's tokens are for.
#[derive(Debug, Clone, Copy)]
pub enum Purpose<'a> {
    /// The data plane, with the configured `entra.scope`.
    Inference,
    /// The management API at this URL (scope `{url}/.default`).
    Management(&'a str),
}

/// One provider's token source.
pub struct Entra {
    provider: Arc<str>,
    /// `inference` or `management`, for the expiry gauge.
    api: &'static str,
    /// The client id: the app registration's, or a user-assigned
    /// identity's (`None`: the host's system-assigned identity).
    client_id: Option<String>,
    scope: String,
    source: Source,
    http: reqwest::Client,
    current: ArcSwapOption<Token>,
    /// Why the last request for a token failed, when it did.
    failure: ArcSwapOption<String>,
}

/// Where tokens are asked for.
enum Source {
    /// The identity platform's token endpoint, with client credentials.
    Platform { url: String, proof: Proof },
    /// The host's managed identity.
    Host(ManagedIdentityHost),
}

/// What proves the app registration's identity to the token endpoint.
enum Proof {
    /// The client secret; `None` when its variable is not set.
    Secret(Option<SecretString>),
    /// A file holding a signed assertion (a federated token).
    Assertion(std::path::PathBuf),
}

/// The assertion type of a federated token.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

struct Token {
    /// `Bearer …`, marked sensitive.
    header: HeaderValue,
    expires_at: Instant,
}

/// A token as the identity platform or a managed identity endpoint
/// answers it.
#[derive(serde::Deserialize)]
struct Issued {
    access_token: String,
    /// Seconds, a number (the identity platform) or a string of one
    /// (the instance metadata service).
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    /// Unix seconds, a string of one: all App Service's endpoint gives.
    #[serde(default)]
    expires_on: Option<serde_json::Value>,
}

/// A refusal: the identity platform's and the metadata service's
/// `{error, error_description}`, or App Service's `{message}`.
#[derive(serde::Deserialize)]
struct Refused {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    message: Option<String>,
}

impl Entra {
    /// The source of `provider`'s tokens for `purpose`: its client
    /// credentials (the secret `None` when its variable is not set: every
    /// request then says so), or the managed identity of `host`.
    pub fn new(
        provider: &str,
        config: &EntraConfig,
        purpose: Purpose<'_>,
        secret: Option<SecretString>,
        host: &ManagedIdentityHost,
        http: reqwest::Client,
    ) -> Self {
        let (api, scope) = match purpose {
            Purpose::Inference => ("inference", config.scope.trim().to_string()),
            Purpose::Management(url) => (
                "management",
                format!("{}/.default", url.trim().trim_end_matches('/')),
            ),
        };
        let source = if config.managed_identity {
            Source::Host(host.clone())
        } else {
            Source::Platform {
                url: format!(
                    "{}/{}/oauth2/v2.0/token",
                    config.authority.trim_end_matches('/'),
                    config.tenant_id.as_deref().unwrap_or_default().trim()
                ),
                proof: match &config.client_assertion_file {
                    Some(path) => Proof::Assertion(path.clone()),
                    None => Proof::Secret(secret),
                },
            }
        };
        Self {
            provider: provider.into(),
            api,
            client_id: config.client_id.as_deref().map(|id| id.trim().to_string()),
            scope,
            source,
            http,
            current: ArcSwapOption::empty(),
            failure: ArcSwapOption::empty(),
        }
    }

    /// The `Authorization` value of a token that has not expired, or why
    /// there is none.
    pub fn header(&self) -> Result<HeaderValue, String> {
        if let Some(token) = self.current.load().as_deref()
            && Instant::now() < token.expires_at
        {
            return Ok(token.header.clone());
        }
        Err(self.why_none())
    }

    /// How long the current token stays valid, or why there is none.
    pub fn valid_for(&self) -> Result<Duration, String> {
        let now = Instant::now();
        match self.current.load().as_deref() {
            Some(token) if now < token.expires_at => Ok(token.expires_at - now),
            _ => Err(self.why_none()),
        }
    }

    fn why_none(&self) -> String {
        match self.failure.load().as_deref() {
            Some(failure) => format!("no valid Microsoft Entra ID token: {failure}"),
            None => "no Microsoft Entra ID token yet: the first is being requested".into(),
        }
    }

    /// Whether the tokens are the host's managed identity's.
    pub fn is_managed_identity(&self) -> bool {
        matches!(self.source, Source::Host(_))
    }

    /// Keeps a valid token until `stop`: one now, then each renewed at
    /// three quarters of its lifetime; failures are retried with backoff.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut retry = RETRY_FIRST;
        loop {
            let renewed = self.renew().await;
            metrics::counter!("flywheel_upstream_token_renewals_total",
                "provider" => self.provider.to_string(),
                "outcome" => if renewed.is_ok() { "ok" } else { "failed" })
            .increment(1);
            let wait = match renewed {
                Ok(lifetime) => {
                    retry = RETRY_FIRST;
                    (lifetime * 3 / 4).max(Duration::from_secs(1))
                }
                Err(why) => {
                    tracing::warn!(provider = %self.provider, error = %why, "cannot renew the Microsoft Entra ID token");
                    self.failure.store(Some(Arc::new(why)));
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_AT_MOST);
                    wait
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Asks for a token and keeps it; its lifetime.
    async fn renew(&self) -> Result<Duration, String> {
        let (url, request) = self.request().await?;
        let (asked, asked_at) = (Instant::now(), SystemTime::now());
        let response = request
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("{url} cannot be reached: {e}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{url} broke off its answer: {e}"))?;
        if !status.is_success() {
            let what = match self.source {
                Source::Platform { .. } => "the client credentials",
                Source::Host(_) => "the managed identity",
            };
            return Err(match refusal(&body) {
                Some(reason) => format!("{url} refused {what} ({status}): {reason}"),
                None => format!("{url} answered {status}"),
            });
        }
        let issued: Issued =
            serde_json::from_slice(&body).map_err(|e| format!("{url} answered no token: {e}"))?;
        let lifetime = issued
            .lifetime(SystemTime::now())
            .ok_or_else(|| format!("{url} answered no usable expires_in or expires_on"))?;
        let mut header = HeaderValue::try_from(format!("Bearer {}", issued.access_token))
            .map_err(|_| format!("{url} answered a token that is no header value"))?;
        header.set_sensitive(true);
        // Counted from when it was asked for: it cannot outlive that.
        self.current.store(Some(Arc::new(Token {
            header,
            expires_at: asked + lifetime,
        })));
        let unix = (asked_at + lifetime)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!("flywheel_upstream_token_expiry_timestamp_seconds",
            "provider" => self.provider.to_string(), "api" => self.api)
        .set(unix.as_secs_f64());
        self.failure.store(None);
        Ok(lifetime)
    }

    /// The request for a token, and where it goes (for messages).
    async fn request(&self) -> Result<(String, reqwest::RequestBuilder), String> {
        let (url, proof) = match &self.source {
            Source::Platform { url, proof } => (url, proof),
            Source::Host(host) => return self.managed_identity_request(host),
        };
        let mut form = vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", self.client_id.clone().unwrap_or_default()),
            ("scope", self.scope.clone()),
        ];
        match proof {
            Proof::Secret(Some(secret)) => {
                form.push(("client_secret", secret.expose_secret().to_string()));
            }
            Proof::Secret(None) => {
                return Err("its client secret (entra.client_secret_env) is not set".into());
            }
            Proof::Assertion(path) => {
                let assertion = tokio::fs::read_to_string(path).await.map_err(|e| {
                    format!(
                        "cannot read entra.client_assertion_file {}: {e}",
                        path.display()
                    )
                })?;
                form.push(("client_assertion_type", JWT_BEARER.to_string()));
                form.push(("client_assertion", assertion.trim().to_string()));
            }
        }
        Ok((url.clone(), self.http.post(url).form(&form)))
    }

    /// A managed identity endpoint takes the resource, not the scope, and
    /// a header that proves the caller is on the host.
    fn managed_identity_request(
        &self,
        host: &ManagedIdentityHost,
    ) -> Result<(String, reqwest::RequestBuilder), String> {
        let resource = self.scope.strip_suffix("/.default").unwrap_or(&self.scope);
        let mut query = vec![("resource", resource)];
        if let Some(client_id) = &self.client_id {
            query.push(("client_id", client_id));
        }
        let (endpoint, request) = match host {
            ManagedIdentityHost::Imds { endpoint } => {
                query.push(("api-version", IMDS_API_VERSION));
                (endpoint, self.http.get(endpoint).header("Metadata", "true"))
            }
            ManagedIdentityHost::AppService { endpoint, header } => {
                query.push(("api-version", APP_SERVICE_API_VERSION));
                let mut header = HeaderValue::try_from(header.expose_secret())
                    .map_err(|_| "IDENTITY_HEADER is no header value".to_string())?;
                header.set_sensitive(true);
                (
                    endpoint,
                    self.http.get(endpoint).header("X-IDENTITY-HEADER", header),
                )
            }
        };
        Ok((endpoint.clone(), request.query(&query)))
    }
}

impl Issued {
    /// How long the token lasts from `now`: `expires_in`, else the time
    /// left until `expires_on`.
    fn lifetime(&self, now: SystemTime) -> Option<Duration> {
        if let Some(expires_in) = &self.expires_in {
            return lifetime(expires_in);
        }
        let expires_on =
            SystemTime::UNIX_EPOCH + Duration::from_secs(seconds(self.expires_on.as_ref()?)?);
        expires_on.duration_since(now).ok().filter(|d| !d.is_zero())
    }
}

/// The reason in a refusal's body, when it gives one.
fn refusal(body: &[u8]) -> Option<String> {
    let refused: Refused = serde_json::from_slice(body).ok()?;
    match (refused.error, refused.message) {
        (Some(error), _) => Some(format!(
            "{error}: {}",
            first_line(&refused.error_description)
        )),
        (None, Some(message)) => Some(first_line(&message).to_string()),
        (None, None) => None,
    }
}

/// A whole number of seconds, from a number or a string of one.
fn seconds(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `expires_in` as a duration, from a number or a string of one.
fn lifetime(expires_in: &serde_json::Value) -> Option<Duration> {
    let seconds = seconds(expires_in)?;
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// The identity platform's descriptions run on with a trace and a
/// timestamp on further lines.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("").trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_lifetime_is_read_from_a_number_or_a_string_and_must_be_positive() {
        assert_eq!(lifetime(&json!(3599)), Some(Duration::from_secs(3599)));
        assert_eq!(lifetime(&json!("3599")), Some(Duration::from_secs(3599)));
        for bad in [json!(0), json!(-5), json!("soon"), json!(null)] {
            assert_eq!(lifetime(&bad), None, "{bad}");
        }
    }

    #[test]
    fn an_expiry_is_read_from_expires_in_or_else_expires_on() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let issued = |fields: serde_json::Value| -> Issued {
            let mut token = json!({"access_token": "t"});
            token
                .as_object_mut()
                .unwrap()
                .extend(fields.as_object().unwrap().clone());
            serde_json::from_value(token).unwrap()
        };
        let imds = issued(json!({"expires_in": "86399", "expires_on": "1086399"}));
        assert_eq!(imds.lifetime(now), Some(Duration::from_secs(86_399)));
        let app_service = issued(json!({"expires_on": "1003600"}));
        assert_eq!(app_service.lifetime(now), Some(Duration::from_secs(3_600)));
        for gone in [
            json!({"expires_on": "999999"}),
            json!({"expires_on": 1_000_000}),
            json!({}),
        ] {
            assert_eq!(issued(gone.clone()).lifetime(now), None, "{gone}");
        }
    }

    #[test]
    fn a_refusal_gives_its_reason_in_either_shape() {
        let platform = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret.\r\nTrace ID: x"}"#;
        assert_eq!(
            refusal(platform).as_deref(),
            Some("invalid_client: AADSTS7000215: Invalid client secret.")
        );
        let app_service = br#"{"statusCode":400,"message":"No managed identity found.\nMore."}"#;
        assert_eq!(
            refusal(app_service).as_deref(),
            Some("No managed identity found.")
        );
        assert_eq!(refusal(b"<html>busy</html>"), None);
        assert_eq!(refusal(b"{}"), None);
    }

    fn config(managed_identity: bool) -> EntraConfig {
        EntraConfig {
            tenant_id: (!managed_identity).then(|| "t".into()),
            client_id: Some("c".into()),
            client_secret_env: (!managed_identity).then(|| "S".into()),
            client_assertion_file: None,
            managed_identity,
            authority: "http://127.0.0.1:9/".into(),
            scope: "https://cognitiveservices.azure.com/.default".into(),
        }
    }

    #[tokio::test]
    async fn client_credentials_and_a_managed_identity_ask_as_each_endpoint_expects() {
        let host = ManagedIdentityHost::from_env(|_| None);
        let http = reqwest::Client::new();
        let platform = Entra::new(
            "az",
            &config(false),
            Purpose::Inference,
            None,
            &host,
            http.clone(),
        );
        let Err(why) = platform.request().await else {
            panic!("a missing secret asks for nothing");
        };
        assert!(why.contains("entra.client_secret_env"), "{why}");

        let imds = Entra::new(
            "az",
            &config(true),
            Purpose::Inference,
            None,
            &host,
            http.clone(),
        );
        let (url, request) = imds.request().await.unwrap();
        let request = request.build().unwrap();
        assert_eq!(url, "http://169.254.169.254/metadata/identity/oauth2/token");
        assert_eq!(
            request.url().query(),
            Some(
                "resource=https%3A%2F%2Fcognitiveservices.azure.com&client_id=c&api-version=2018-02-01"
            )
        );
        assert_eq!(request.headers()["metadata"], "true");

        let app_service = ManagedIdentityHost::AppService {
            endpoint: "http://127.0.0.1:9/msi/token".into(),
            header: "h".to_string().into(),
        };
        let mut system_assigned = config(true);
        system_assigned.client_id = None;
        let entra = Entra::new(
            "az",
            &system_assigned,
            Purpose::Management("https://management.azure.com/"),
            None,
            &app_service,
            http,
        );
        let (_, request) = entra.request().await.unwrap();
        let request = request.build().unwrap();
        assert_eq!(
            request.url().query(),
            Some("resource=https%3A%2F%2Fmanagement.azure.com&api-version=2019-08-01")
        );
        assert_eq!(request.headers()["x-identity-header"], "h");
    }

    #[test]
    fn a_source_without_a_token_says_why() {
        let host = ManagedIdentityHost::from_env(|_| None);
        let entra = Entra::new(
            "az",
            &config(false),
            Purpose::Inference,
            None,
            &host,
            reqwest::Client::new(),
        );
        let Source::Platform { url, .. } = &entra.source else {
            panic!("client credentials go to the identity platform");
        };
        assert_eq!(url, "http://127.0.0.1:9/t/oauth2/v2.0/token");
        assert!(entra.header().unwrap_err().contains("being requested"));
        entra
            .failure
            .store(Some(Arc::new("it said no".to_string())));
        assert!(entra.header().unwrap_err().ends_with("it said no"));
    }
}
