//! Azure Resource Manager calls for an Azure provider's `[deployment]`
//! section: a fine-tuned model deployed under a name (`PUT`), the
//! deployment read while it provisions (`GET`), and deleted on an admin's
//! request (`DELETE`). Each call is made once, with the ARM bearer token;
//! an error answer is kept as sent, as the fine-tuning calls keep theirs.

use super::entra::{Entra, Purpose};
use crate::config::Secrets;
use crate::config::{AzureDeploymentConfig, ProviderConfig};
use crate::upstream::{FineTuningError, Provider};
use http::{Method, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// Where and how a provider's deployments are managed.
pub struct Management {
    config: AzureDeploymentConfig,
    credential: Credential,
    http: reqwest::Client,
}

/// How the management API is signed in to.
enum Credential {
    /// The token in `deployment.token_env`, read once; `None` when the
    /// variable is not set: every call then fails, naming it.
    Token(Option<SecretString>),
    /// Tokens from the provider's `[providers.entra]` credentials, for
    /// the scope `{management_url}/.default`.
    Entra(Arc<Entra>),
}

/// A deployment as much as Flywheel reads of it.
#[derive(Debug, Clone, Deserialize)]
pub struct DeploymentObject {
    pub name: String,
    #[serde(default)]
    pub properties: DeploymentProperties,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentProperties {
    /// `Creating`, `Succeeded`, `Failed`, `Canceled`, `Deleting` …
    #[serde(default)]
    pub provisioning_state: String,
    #[serde(default)]
    pub model: Option<Value>,
    /// Why provisioning failed, when it did.
    #[serde(default)]
    pub error: Option<Value>,
}

impl Management {
    /// The management API of `config`'s deployment section, when it has
    /// one; its calls go through `http`, its Entra ID tokens (when it has
    /// no token of its own) are asked for through `token_http`.
    pub(in crate::upstream) fn of(
        config: &ProviderConfig,
        secrets: &Secrets,
        http: &reqwest::Client,
        token_http: &reqwest::Client,
    ) -> Option<Self> {
        let deployment = config.deployment.clone()?;
        let credential = match (&deployment.token_env, &config.entra) {
            (None, Some(entra)) => Credential::Entra(Arc::new(Entra::new(
                &config.name,
                entra,
                Purpose::Management(&deployment.management_url),
                secrets.entra_secrets.get(&config.name).cloned(),
                &secrets.managed_identity,
                token_http.clone(),
            ))),
            _ => Credential::Token(secrets.management_tokens.get(&config.name).cloned()),
        };
        Some(Self {
            config: deployment,
            credential,
            http: http.clone(),
        })
    }

    /// Its Entra ID token source, when it signs in with one.
    pub(in crate::upstream) fn entra(&self) -> Option<Arc<Entra>> {
        match &self.credential {
            Credential::Entra(entra) => Some(entra.clone()),
            Credential::Token(_) => None,
        }
    }

    /// The `Authorization` value of a call, or why there is none.
    fn authorization(&self) -> Result<http::HeaderValue, String> {
        match &self.credential {
            Credential::Entra(entra) => entra.header(),
            Credential::Token(None) => Err(format!(
                "the management token variable `{}` (deployment.token_env) is not set",
                self.config.token_env.as_deref().unwrap_or_default()
            )),
            Credential::Token(Some(token)) => {
                let mut value =
                    http::HeaderValue::try_from(format!("Bearer {}", token.expose_secret()))
                        .map_err(|_| "the management token is not a header value".to_string())?;
                value.set_sensitive(true);
                Ok(value)
            }
        }
    }

    /// How calls are signed, and whether they can be now.
    pub(in crate::upstream) fn signing(&self) -> crate::upstream::Signing {
        use crate::upstream::Signing;
        match &self.credential {
            Credential::Entra(entra) => Signing::entra(entra),
            Credential::Token(Some(_)) => Signing::key(None),
            Credential::Token(None) => Signing::key(Some(format!(
                "the variable `{}` (deployment.token_env) is not set",
                self.config.token_env.as_deref().unwrap_or_default()
            ))),
        }
    }

    fn url(&self, name: &str) -> String {
        let c = &self.config;
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.CognitiveServices/accounts/{}/deployments/{}?api-version={}",
            c.management_url.trim_end_matches('/'),
            c.subscription_id,
            c.resource_group,
            c.account,
            name,
            crate::config::AZURE_MANAGEMENT_API_VERSION,
        )
    }
}

impl Provider {
    /// Whether this provider is Azure OpenAI, whose fine-tuned models
    /// serve only once deployed.
    pub fn is_azure(&self) -> bool {
        self.azure.is_some()
    }

    /// Whether this provider deploys its fine-tuned models itself.
    pub fn manages_deployments(&self) -> bool {
        self.management.is_some()
    }

    /// How long a deployment may provision before its job fails.
    pub fn provisioning_timeout(&self) -> Option<Duration> {
        let m = self.management.as_ref()?;
        Some(Duration::from_secs(m.config.provisioning_timeout_s))
    }

    /// Why deployments cannot be managed, if they cannot: no `[deployment]`
    /// section, or its token variable is not set. (An Entra ID token that
    /// cannot be had is told by the call that needs it.)
    pub fn management_problem(&self) -> Option<String> {
        match &self.management {
            None => Some(format!(
                "provider `{}` has no [providers.deployment] section",
                self.name
            )),
            Some(m) => match &m.credential {
                Credential::Token(None) => m
                    .authorization()
                    .err()
                    .map(|why| format!("provider `{}`: {why}", self.name)),
                _ => None,
            },
        }
    }

    /// A call to the deployment `name`, signed in, with the section it
    /// is made under.
    fn management_request(
        &self,
        method: Method,
        name: &str,
    ) -> Result<(&Management, reqwest::RequestBuilder), FineTuningError> {
        let unmanaged = |detail: String| FineTuningError::Invalid {
            provider: self.name.to_string(),
            detail,
        };
        let Some(m) = self.management.as_ref() else {
            return Err(unmanaged(self.management_problem().unwrap_or_default()));
        };
        let value = m.authorization().map_err(unmanaged)?;
        let request = m
            .http
            .request(method, m.url(name))
            .timeout(self.total_timeout)
            .header(header::AUTHORIZATION, value);
        Ok((m, request))
    }

    /// `GET …/deployments/{name}`; `None` when there is none by that name.
    pub async fn get_deployment(
        &self,
        name: &str,
    ) -> Result<Option<DeploymentObject>, FineTuningError> {
        let (_, request) = self.management_request(Method::GET, name)?;
        match self.call(request).await {
            Ok(found) => Ok(Some(found)),
            Err(FineTuningError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT …/deployments/{name}` serving `model` with the configured SKU
    /// and capacity.
    pub async fn create_deployment(
        &self,
        name: &str,
        model: &str,
    ) -> Result<DeploymentObject, FineTuningError> {
        let (m, request) = self.management_request(Method::PUT, name)?;
        let body = json!({
            "sku": {"name": m.config.sku, "capacity": m.config.capacity},
            "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}},
        });
        let request = request
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.call(request).await
    }

    /// `DELETE …/deployments/{name}`; a deployment already gone is fine.
    pub async fn delete_deployment(&self, name: &str) -> Result<(), FineTuningError> {
        let (_, request) = self.management_request(Method::DELETE, name)?;
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        if status.is_success() || status.as_u16() == 404 {
            return Ok(());
        }
        let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
        Err(FineTuningError::Status {
            provider: self.name.to_string(),
            status: status.as_u16(),
            body: serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        })
    }
}
