//! Azure OpenAI's request shapes for a provider with `kind = "azure"`:
//! where a request goes (`/openai/deployments/{deployment}/…?api-version=`
//! or `/openai/v1/…`) and how it is authorised (the `api-key` header, or
//! an Entra ID bearer token — read from a variable, or obtained and
//! renewed from client credentials by `azure/entra.rs`). The management
//! API calls that deploy a fine-tuned model live in `azure/management.rs`.

pub mod entra;
pub mod management;

use crate::config::{AzureUrlStyle, ProviderConfig, ProviderKind};
use http::{HeaderName, HeaderValue, header};
use secrecy::{ExposeSecret, SecretString};

/// The header Azure reads an API key from.
pub const API_KEY: HeaderName = HeaderName::from_static("api-key");

/// The paths whose Azure URL names the deployment in the deployments style.
const PER_DEPLOYMENT: [&str; 3] = ["chat/completions", "completions", "embeddings"];

/// How one Azure provider is addressed.
#[derive(Debug, Clone)]
pub struct Azure {
    style: AzureUrlStyle,
    /// `api-version=…`, ready to put in a query.
    version_query: Option<String>,
    /// Entra ID: the key is a bearer token rather than an `api-key`.
    bearer: bool,
}

impl Azure {
    /// The shape of `config`, when it is an Azure provider.
    pub fn of(config: &ProviderConfig) -> Option<Self> {
        (config.kind == ProviderKind::Azure).then(|| Self {
            style: config.azure_url_style(),
            version_query: config
                .api_version
                .as_deref()
                .map(|v| format!("api-version={}", v.trim())),
            bearer: config.bearer_token_env.is_some() || config.entra.is_some(),
        })
    }

    /// Whether requests go to the dated routes (`?api-version=…`) rather
    /// than the v1 API, which reads bodies as OpenAI does.
    pub fn dated(&self) -> bool {
        self.style == AzureUrlStyle::Deployments
    }

    /// The URL of `path` (as under an OpenAI base URL: `chat/completions`,
    /// `files`, `fine_tuning/jobs/{id}` …) at the resource endpoint `base`;
    /// `deployment` is the request's model, which the deployments style
    /// puts in the path of the per-deployment routes.
    pub fn url(
        &self,
        base: &str,
        path: &str,
        query: Option<&str>,
        deployment: Option<&str>,
    ) -> String {
        let prefix = match (self.style, deployment) {
            (AzureUrlStyle::V1, _) => format!("{base}/openai/v1/{path}"),
            (AzureUrlStyle::Deployments, Some(d)) if PER_DEPLOYMENT.contains(&path) => {
                format!("{base}/openai/deployments/{}/{path}", encode(d))
            }
            (AzureUrlStyle::Deployments, _) => format!("{base}/openai/{path}"),
        };
        let parts: Vec<&str> = [
            self.version_query.as_deref(),
            query.filter(|q| !q.is_empty()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            prefix
        } else {
            format!("{prefix}?{}", parts.join("&"))
        }
    }

    /// The header carrying `key`: `api-key`, or `Authorization: Bearer`
    /// for an Entra ID token; marked sensitive (never logged).
    pub fn auth(&self, key: &SecretString) -> Option<(HeaderName, HeaderValue)> {
        let (name, text) = if self.bearer {
            (
                header::AUTHORIZATION,
                format!("Bearer {}", key.expose_secret()),
            )
        } else {
            (API_KEY, key.expose_secret().to_string())
        };
        let mut value = HeaderValue::try_from(text).ok()?;
        value.set_sensitive(true);
        Some((name, value))
    }
}

/// A deployment name as one path segment (on the request path: one
/// string, not one per byte).
fn encode(segment: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            other => {
                let _ = write!(out, "%{other:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn azure(extra: &str) -> Azure {
        let config: ProviderConfig = toml::from_str(&format!(
            "name = \"az\"\nbase_url = \"https://r.openai.azure.com\"\nkind = \"azure\"\n{extra}"
        ))
        .unwrap();
        Azure::of(&config).unwrap()
    }

    #[test]
    fn the_deployments_style_names_the_deployment_and_the_version() {
        let a = azure("api_version = \"2024-10-21\"\napi_key_env = \"K\"");
        let base = "https://r.openai.azure.com";
        assert_eq!(
            a.url(base, "chat/completions", None, Some("ft gpt/1")),
            "https://r.openai.azure.com/openai/deployments/ft%20gpt%2F1/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            a.url(base, "files", Some("purpose=fine-tune"), None),
            "https://r.openai.azure.com/openai/files?api-version=2024-10-21&purpose=fine-tune"
        );
        assert_eq!(
            a.url(base, "responses", None, Some("d")),
            "https://r.openai.azure.com/openai/responses?api-version=2024-10-21"
        );
        let (name, value) = a.auth(&SecretString::from("k1")).unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("api-key", "k1"));
        assert!(value.is_sensitive());
    }

    #[test]
    fn the_v1_style_keeps_the_model_in_the_body() {
        let a = azure("url_style = \"v1\"\nbearer_token_env = \"T\"");
        let base = "https://r.openai.azure.com";
        assert_eq!(
            a.url(base, "chat/completions", None, Some("d")),
            "https://r.openai.azure.com/openai/v1/chat/completions"
        );
        let preview = azure("url_style = \"v1\"\napi_version = \"preview\"\napi_key_env = \"K\"");
        assert_eq!(
            preview.url(base, "fine_tuning/jobs", Some("limit=5"), None),
            "https://r.openai.azure.com/openai/v1/fine_tuning/jobs?api-version=preview&limit=5"
        );
        let (name, value) = a.auth(&SecretString::from("tok")).unwrap();
        assert_eq!(
            (name, value.to_str().unwrap()),
            (header::AUTHORIZATION, "Bearer tok")
        );
    }
}
