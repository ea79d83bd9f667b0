//! Microsoft Entra ID tokens for an Azure provider with `[providers.entra]`:
//! the app registration's client credentials — its secret, or a federated
//! token from a file (AKS workload identity), read afresh each time as it
//! is rotated — exchanged at `{authority}/{tenant}/oauth2/v2.0/token` for
//! a bearer token, renewed by a background task when three quarters of its
//! lifetime have passed, so a token never runs out under a request (they
//! last about an hour).
//!
//! The request path only reads the current token (one atomic load). While
//! none is valid — before the first arrives, or once renewals have failed
//! until it expired — a request fails before anything is sent, with the
//! identity platform's reason, and is retried as a connection failure is.

use crate::config::EntraConfig;
use arc_swap::ArcSwapOption;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest one token request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed renewal, the next is tried this soon, doubling up to
/// [`RETRY_AT_MOST`]; a quarter of an hour-long token's life is left then.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_AT_MOST: Duration = Duration::from_secs(30);

/// One provider's token source.
pub struct Entra {
    provider: Arc<str>,
    url: String,
    client_id: String,
    scope: String,
    credential: Credential,
    http: reqwest::Client,
    current: ArcSwapOption<Token>,
    /// Why the last request for a token failed, when it did.
    failure: ArcSwapOption<String>,
}

/// What proves the app's identity to the token endpoint.
enum Credential {
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

/// A token as the identity platform answers it.
#[derive(serde::Deserialize)]
struct Issued {
    access_token: String,
    /// Seconds; a number from the v2.0 endpoint, a string from older ones.
    expires_in: serde_json::Value,
}

/// The identity platform's refusal.
#[derive(serde::Deserialize)]
struct Refused {
    error: String,
    #[serde(default)]
    error_description: String,
}

impl Entra {
    /// The source of `provider`'s tokens for `scope`, with its client
    /// secret unless it proves itself with an assertion file (`None` when
    /// the variable is not set: every request then says so).
    pub fn new(
        provider: &str,
        config: &EntraConfig,
        scope: &str,
        secret: Option<SecretString>,
        http: reqwest::Client,
    ) -> Self {
        Self {
            provider: provider.into(),
            url: format!(
                "{}/{}/oauth2/v2.0/token",
                config.authority.trim_end_matches('/'),
                config.tenant_id.trim()
            ),
            client_id: config.client_id.trim().to_string(),
            scope: scope.trim().to_string(),
            credential: match &config.client_assertion_file {
                Some(path) => Credential::Assertion(path.clone()),
                None => Credential::Secret(secret),
            },
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
        let why = match self.failure.load().as_deref() {
            Some(failure) => format!("no valid Microsoft Entra ID token: {failure}"),
            None => "no Microsoft Entra ID token yet: the first is being requested".into(),
        };
        Err(why)
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
        let proof = match &self.credential {
            Credential::Secret(Some(secret)) => {
                vec![("client_secret", secret.expose_secret().to_string())]
            }
            Credential::Secret(None) => {
                return Err("its client secret (entra.client_secret_env) is not set".into());
            }
            Credential::Assertion(path) => {
                let assertion = tokio::fs::read_to_string(path).await.map_err(|e| {
                    format!(
                        "cannot read entra.client_assertion_file {}: {e}",
                        path.display()
                    )
                })?;
                vec![
                    ("client_assertion_type", JWT_BEARER.to_string()),
                    ("client_assertion", assertion.trim().to_string()),
                ]
            }
        };
        let mut form = vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", self.client_id.clone()),
            ("scope", self.scope.clone()),
        ];
        form.extend(proof);
        let asked = Instant::now();
        let response = self
            .http
            .post(&self.url)
            .form(&form)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("{} cannot be reached: {e}", self.url))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("{} broke off its answer: {e}", self.url))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<Refused>(&body) {
                Ok(r) => format!(
                    "{} refused the client credentials ({status}): {}: {}",
                    self.url,
                    r.error,
                    first_line(&r.error_description)
                ),
                Err(_) => format!("{} answered {status}", self.url),
            });
        }
        let issued: Issued = serde_json::from_slice(&body)
            .map_err(|e| format!("{} answered no token: {e}", self.url))?;
        let lifetime = lifetime(&issued.expires_in)
            .ok_or_else(|| format!("{} answered no usable expires_in", self.url))?;
        let mut header = HeaderValue::try_from(format!("Bearer {}", issued.access_token))
            .map_err(|_| format!("{} answered a token that is no header value", self.url))?;
        header.set_sensitive(true);
        // Counted from when it was asked for: it cannot outlive that.
        self.current.store(Some(Arc::new(Token {
            header,
            expires_at: asked + lifetime,
        })));
        self.failure.store(None);
        Ok(lifetime)
    }
}

/// `expires_in` as a duration, from a number or a string of one.
fn lifetime(expires_in: &serde_json::Value) -> Option<Duration> {
    let seconds = match expires_in {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
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
    fn a_source_without_a_token_says_why() {
        let config = EntraConfig {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret_env: Some("S".into()),
            client_assertion_file: None,
            authority: "http://127.0.0.1:9/".into(),
            scope: "s".into(),
        };
        let entra = Entra::new("az", &config, &config.scope, None, reqwest::Client::new());
        assert_eq!(entra.url, "http://127.0.0.1:9/t/oauth2/v2.0/token");
        assert!(entra.header().unwrap_err().contains("being requested"));
        entra
            .failure
            .store(Some(Arc::new("it said no".to_string())));
        assert!(entra.header().unwrap_err().ends_with("it said no"));
    }
}
