//! The keys of a provider with `kind = "azure"` (Azure OpenAI): the URL
//! style, the `api-version`, Entra ID auth as an alternative to the
//! `api-key` (a token from a variable, or an app registration's client
//! credentials that Flywheel turns into tokens itself), and the management
//! API section through which fine-tuned models are deployed — and their
//! start-up checks, each naming its key.

use super::{ConfigError, ProviderConfig, ProviderKind};
use serde::{Deserialize, Serialize};

/// Which of Azure's two request shapes a provider is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AzureUrlStyle {
    /// `/openai/deployments/{deployment}/chat/completions?api-version=…`:
    /// a version's `model` names the deployment.
    #[default]
    Deployments,
    /// `/openai/v1/chat/completions`, the deployment named by the body's
    /// `model`; `api-version` only when configured (`preview`).
    V1,
}

/// Azure Resource Manager access for deploying fine-tuned models:
/// `PUT {management_url}/subscriptions/{subscription_id}/resourceGroups/
/// {resource_group}/providers/Microsoft.CognitiveServices/accounts/
/// {account}/deployments/{name}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AzureDeploymentConfig {
    pub subscription_id: String,
    pub resource_group: String,
    /// The Azure OpenAI resource (Cognitive Services account) name.
    pub account: String,
    /// The deployment's SKU: `standard`, `globalstandard`, `developer` …
    #[serde(default = "sku")]
    pub sku: String,
    /// The SKU's capacity, in thousands of tokens per minute.
    #[serde(default = "capacity")]
    pub capacity: u32,
    /// The variable holding the ARM bearer token
    /// (`az account get-access-token --resource https://management.azure.com`);
    /// without it, the provider's `[providers.entra]` credentials sign in to
    /// the management API too (scope `{management_url}/.default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    #[serde(default = "management_url")]
    pub management_url: String,
    /// How long a deployment may take to provision before the job fails.
    #[serde(default = "provisioning_timeout_s")]
    pub provisioning_timeout_s: u64,
}

/// Microsoft Entra ID tokens, renewed before they expire, from either an
/// app registration's client credentials (Flywheel asks
/// `{authority}/{tenant_id}/oauth2/v2.0/token`) or the managed identity
/// of the host Flywheel runs on (`managed_identity = true`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// Client credentials: the directory the app registration is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Client credentials: the app registration's client id. A managed
    /// identity: a user-assigned identity's client id (the host's
    /// system-assigned identity when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The variable holding the client secret; or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_env: Option<String>,
    /// a file holding a federated token (a signed assertion, as AKS
    /// workload identity writes and rotates it), read at every renewal; or
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_assertion_file: Option<std::path::PathBuf>,
    /// the host's managed identity (a VM's, through the instance metadata
    /// service; App Service's, Container Apps' or Functions', through the
    /// endpoint their environment names).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub managed_identity: bool,
    /// Client credentials: the identity platform's host; a sovereign
    /// cloud has its own.
    #[serde(default = "authority")]
    pub authority: String,
    /// What the token is for.
    #[serde(default = "scope")]
    pub scope: String,
}

/// Where the host's managed identity hands out tokens, as the platform
/// announces it in the environment.
#[derive(Clone)]
pub enum ManagedIdentityHost {
    /// App Service, Container Apps, Functions: `IDENTITY_ENDPOINT`, asked
    /// with the secret in `IDENTITY_HEADER`.
    AppService {
        endpoint: String,
        header: secrecy::SecretString,
    },
    /// A VM, a scale set, an AKS node: the instance metadata service, at
    /// `AZURE_POD_IDENTITY_AUTHORITY_HOST` when that is set (as Azure's own
    /// SDKs read it), else its link-local address.
    Imds { endpoint: String },
}

/// The instance metadata service's address.
const IMDS_HOST: &str = "http://169.254.169.254";

impl ManagedIdentityHost {
    /// The host's endpoint, from the variables `lookup` reads (the process
    /// environment in `main`); empty values count as unset.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        match (get("IDENTITY_ENDPOINT"), get("IDENTITY_HEADER")) {
            (Some(endpoint), Some(header)) => Self::AppService {
                endpoint,
                header: header.into(),
            },
            _ => {
                let host = get("AZURE_POD_IDENTITY_AUTHORITY_HOST");
                let host = host.as_deref().unwrap_or(IMDS_HOST).trim_end_matches('/');
                Self::Imds {
                    endpoint: format!("{host}/metadata/identity/oauth2/token"),
                }
            }
        }
    }

    /// Where tokens are asked for, and by which protocol.
    pub fn describe(&self) -> String {
        match self {
            Self::AppService { endpoint, .. } => format!(
                "the platform's identity endpoint {endpoint} (IDENTITY_ENDPOINT, with IDENTITY_HEADER)"
            ),
            Self::Imds { endpoint } => format!("the instance metadata service at {endpoint}"),
        }
    }
}

impl Default for ManagedIdentityHost {
    fn default() -> Self {
        Self::from_env(|_| None)
    }
}

pub(super) fn authority() -> String {
    "https://login.microsoftonline.com".into()
}
fn scope() -> String {
    "https://cognitiveservices.azure.com/.default".into()
}

fn sku() -> String {
    "standard".into()
}
fn capacity() -> u32 {
    1
}
fn management_url() -> String {
    "https://management.azure.com".into()
}
fn provisioning_timeout_s() -> u64 {
    3_600
}

/// The management API's `api-version` for deployments.
pub const MANAGEMENT_API_VERSION: &str = "2023-05-01";

impl ProviderConfig {
    /// The URL style of an Azure provider (`deployments` unless set).
    pub fn azure_url_style(&self) -> AzureUrlStyle {
        self.url_style.unwrap_or_default()
    }
}

/// Checks the Azure keys of `providers[i]`: present only with
/// `kind = "azure"`, and complete there.
pub(super) fn check(i: usize, p: &ProviderConfig) -> Result<(), ConfigError> {
    let key = |field: &str| format!("providers[{i}].{field}");
    if p.kind != ProviderKind::Azure {
        for (field, set) in [
            ("api_version", p.api_version.is_some()),
            ("url_style", p.url_style.is_some()),
            ("bearer_token_env", p.bearer_token_env.is_some()),
            ("entra", p.entra.is_some()),
            ("deployment", p.deployment.is_some()),
        ] {
            if set {
                return Err(ConfigError::invalid(
                    key(field),
                    "is only for providers with kind = \"azure\"",
                ));
            }
        }
        return Ok(());
    }
    match p.api_version.as_deref().map(str::trim) {
        Some("") => {
            return Err(ConfigError::invalid(
                key("api_version"),
                "must not be empty",
            ));
        }
        Some(v) if !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') => {
            return Err(ConfigError::invalid(
                key("api_version"),
                format!("`{v}` is not an api-version (like 2024-10-21 or preview)"),
            ));
        }
        None if p.azure_url_style() == AzureUrlStyle::Deployments => {
            return Err(ConfigError::invalid(
                key("api_version"),
                "is required for kind = \"azure\" with url_style = \"deployments\" (e.g. \"2024-10-21\")",
            ));
        }
        _ => {}
    }
    if p.bearer_token_env
        .as_deref()
        .is_some_and(|v| v.trim().is_empty())
    {
        return Err(ConfigError::invalid(
            key("bearer_token_env"),
            "names no variable",
        ));
    }
    let credentials = [
        ("api_key_env", p.api_key_env.is_some()),
        ("bearer_token_env", p.bearer_token_env.is_some()),
        ("entra", p.entra.is_some()),
    ];
    match credentials.iter().filter(|(_, set)| *set).count() {
        0 => {
            return Err(ConfigError::invalid(
                key("api_key_env"),
                "kind = \"azure\" needs one of api_key_env (the api-key header), bearer_token_env (an Entra ID token) or [providers.entra] (client credentials)",
            ));
        }
        1 => {}
        _ => {
            let second = credentials.iter().filter(|(_, set)| *set).nth(1);
            return Err(ConfigError::invalid(
                key(second.map_or("entra", |(field, _)| field)),
                "set one of api_key_env, bearer_token_env and [providers.entra], not several",
            ));
        }
    }
    if let Some(entra) = &p.entra {
        check_entra(i, entra)?;
    }
    let Some(d) = &p.deployment else {
        return Ok(());
    };
    let dkey = |field: &str| format!("providers[{i}].deployment.{field}");
    match (&d.token_env, &p.entra) {
        (Some(var), _) if var.trim().is_empty() => {
            return Err(ConfigError::invalid(dkey("token_env"), "must not be empty"));
        }
        (None, None) => {
            return Err(ConfigError::invalid(
                dkey("token_env"),
                "is required unless the provider has [providers.entra], whose credentials then sign in to the management API too",
            ));
        }
        _ => {}
    }
    for (field, value) in [
        ("subscription_id", &d.subscription_id),
        ("resource_group", &d.resource_group),
        ("account", &d.account),
        ("sku", &d.sku),
    ] {
        check_segment(&dkey(field), value)?;
    }
    if d.capacity == 0 {
        return Err(ConfigError::invalid(dkey("capacity"), "must be at least 1"));
    }
    if d.provisioning_timeout_s == 0 {
        return Err(ConfigError::invalid(
            dkey("provisioning_timeout_s"),
            "must be at least 1 second",
        ));
    }
    check_http_url(&dkey("management_url"), &d.management_url)
}

fn check_entra(i: usize, e: &EntraConfig) -> Result<(), ConfigError> {
    let key = |field: &str| format!("providers[{i}].entra.{field}");
    if e.scope.trim().is_empty() {
        return Err(ConfigError::invalid(key("scope"), "must not be empty"));
    }
    if e.client_id
        .as_deref()
        .is_some_and(|id| id.trim().is_empty())
    {
        return Err(ConfigError::invalid(key("client_id"), "must not be empty"));
    }
    if e.managed_identity {
        return check_managed_identity(&key, e);
    }
    match &e.tenant_id {
        Some(tenant) => check_segment(&key("tenant_id"), tenant)?,
        None => {
            return Err(ConfigError::invalid(
                key("tenant_id"),
                "is required for client credentials (or set managed_identity = true)",
            ));
        }
    }
    if e.client_id.is_none() {
        return Err(ConfigError::invalid(
            key("client_id"),
            "is required for client credentials (or set managed_identity = true)",
        ));
    }
    match (&e.client_secret_env, &e.client_assertion_file) {
        (Some(var), None) if var.trim().is_empty() => {
            return Err(ConfigError::invalid(
                key("client_secret_env"),
                "names no variable",
            ));
        }
        (Some(_), None) | (None, Some(_)) => {}
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                key("client_assertion_file"),
                "set either client_secret_env or client_assertion_file, not both",
            ));
        }
        (None, None) => {
            return Err(ConfigError::invalid(
                key("client_secret_env"),
                "needs client_secret_env (a client secret), client_assertion_file (a federated token, as AKS workload identity writes) or managed_identity = true (the host's identity)",
            ));
        }
    }
    check_http_url(&key("authority"), &e.authority)
}

/// A managed identity takes its identity and the endpoint from the host:
/// the client credentials' keys would be ignored, so they are refused.
fn check_managed_identity(
    key: &dyn Fn(&str) -> String,
    e: &EntraConfig,
) -> Result<(), ConfigError> {
    for (field, set) in [
        ("tenant_id", e.tenant_id.is_some()),
        ("client_secret_env", e.client_secret_env.is_some()),
        ("client_assertion_file", e.client_assertion_file.is_some()),
        ("authority", e.authority != authority()),
    ] {
        if set {
            return Err(ConfigError::invalid(
                key(field),
                "is for client credentials; with managed_identity = true the host's identity is used (set client_id only for a user-assigned identity)",
            ));
        }
    }
    Ok(())
}

/// A value that becomes one segment of a URL's path.
fn check_segment(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    if value.contains(['/', '?', '#']) {
        return Err(ConfigError::invalid(
            key,
            format!("`{value}` must not contain `/`, `?` or `#`"),
        ));
    }
    Ok(())
}

/// A base URL that paths are appended to.
#[expect(
    clippy::disallowed_types,
    reason = "read as the provider's client will read it"
)]
pub(super) fn check_http_url(key: &str, value: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.query().is_none() => Ok(()),
        _ => Err(ConfigError::invalid(
            key,
            format!("`{value}` is not an http(s) URL"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(provider: &str) -> Result<Config, String> {
        let toml = format!(
            r#"
[[providers]]
name = "az"
base_url = "https://res.openai.azure.com"
{provider}

[[models]]
name = "triage"
model_type = "threat_detection"
  [[models.versions]]
  name = "base"
  provider = "az"
  model = "gpt-4o-mini"
"#
        );
        Config::from_toml_str(&toml, "test", Vec::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn an_azure_provider_needs_its_version_and_one_credential() {
        let ok = load("kind = \"azure\"\napi_version = \"2024-10-21\"\napi_key_env = \"K\"");
        assert!(ok.is_ok(), "{ok:?}");
        let v1 = load("kind = \"azure\"\nurl_style = \"v1\"\nbearer_token_env = \"T\"");
        assert!(v1.is_ok(), "{v1:?}");
        for (extra, key) in [
            (
                "kind = \"azure\"\napi_key_env = \"K\"",
                "providers[0].api_version",
            ),
            (
                "kind = \"azure\"\napi_version = \"2024-10-21\"",
                "providers[0].api_key_env",
            ),
            (
                "kind = \"azure\"\napi_version = \"x\"\napi_key_env = \"K\"\nbearer_token_env = \"T\"",
                "providers[0].bearer_token_env",
            ),
            ("api_version = \"2024-10-21\"", "providers[0].api_version"),
            (
                "kind = \"azure\"\napi_version = \"x\"\napi_key_env = \"K\"\n[providers.deployment]\nsubscription_id = \"s\"\nresource_group = \"\"\naccount = \"a\"\ntoken_env = \"T\"",
                "providers[0].deployment.resource_group",
            ),
        ] {
            let error = load(extra).unwrap_err();
            assert!(error.contains(&format!("`{key}`")), "{extra}: {error}");
        }
    }

    #[test]
    fn entra_client_credentials_are_one_credential_checked_key_by_key() {
        let entra = |fields: &str| {
            format!("kind = \"azure\"\nurl_style = \"v1\"\n[providers.entra]\n{fields}")
        };
        let complete = "tenant_id = \"t\"\nclient_id = \"c\"\nclient_secret_env = \"S\"";
        let config = load(&entra(complete)).unwrap();
        // Its credentials sign in to the management API when no token is named.
        let deploying = format!(
            "{}\n[providers.deployment]\nsubscription_id = \"s\"\nresource_group = \"rg\"\naccount = \"a\"",
            entra(complete)
        );
        assert!(load(&deploying).is_ok(), "{deploying}");
        let federated =
            "tenant_id = \"t\"\nclient_id = \"c\"\nclient_assertion_file = \"/tokens/t\"";
        assert!(load(&entra(federated)).is_ok());
        let e = config.providers[0].entra.as_ref().unwrap();
        assert!(!e.managed_identity);
        assert_eq!(e.authority, "https://login.microsoftonline.com");
        assert_eq!(e.scope, "https://cognitiveservices.azure.com/.default");
        for (extra, key) in [
            (
                format!("api_key_env = \"K\"\n{}", entra(complete)),
                "providers[0].entra",
            ),
            (
                entra("tenant_id = \"\"\nclient_id = \"c\"\nclient_secret_env = \"S\""),
                "providers[0].entra.tenant_id",
            ),
            (
                entra("tenant_id = \"a/b\"\nclient_id = \"c\"\nclient_secret_env = \"S\""),
                "providers[0].entra.tenant_id",
            ),
            (
                entra(&format!("{complete}\nauthority = \"login.example\"")),
                "providers[0].entra.authority",
            ),
            (
                format!("[providers.entra]\n{complete}"),
                "providers[0].entra",
            ),
            (
                entra(&format!("{complete}\nclient_assertion_file = \"/tokens/t\"")),
                "providers[0].entra.client_assertion_file",
            ),
            (
                entra("tenant_id = \"t\"\nclient_id = \"c\""),
                "providers[0].entra.client_secret_env",
            ),
            (
                "kind = \"azure\"\nurl_style = \"v1\"\napi_key_env = \"K\"\n[providers.deployment]\nsubscription_id = \"s\"\nresource_group = \"rg\"\naccount = \"a\"".to_string(),
                "providers[0].deployment.token_env",
            ),
        ] {
            let error = load(&extra).unwrap_err();
            assert!(error.contains(&format!("`{key}`")), "{extra}: {error}");
        }
    }

    #[test]
    fn a_managed_identity_takes_only_an_optional_client_id() {
        let entra = |fields: &str| {
            format!("kind = \"azure\"\nurl_style = \"v1\"\n[providers.entra]\n{fields}")
        };
        let system = load(&entra("managed_identity = true")).unwrap();
        let e = system.providers[0].entra.as_ref().unwrap();
        assert!(e.managed_identity && e.client_id.is_none());
        assert!(load(&entra("managed_identity = true\nclient_id = \"u\"")).is_ok());
        let deploying = format!(
            "{}\n[providers.deployment]\nsubscription_id = \"s\"\nresource_group = \"rg\"\naccount = \"a\"",
            entra("managed_identity = true")
        );
        assert!(load(&deploying).is_ok(), "{deploying}");
        for (fields, key) in [
            ("managed_identity = true\ntenant_id = \"t\"", "tenant_id"),
            (
                "managed_identity = true\nclient_secret_env = \"S\"",
                "client_secret_env",
            ),
            (
                "managed_identity = true\nclient_assertion_file = \"/t\"",
                "client_assertion_file",
            ),
            (
                "managed_identity = true\nauthority = \"https://login.example\"",
                "authority",
            ),
            ("managed_identity = true\nclient_id = \" \"", "client_id"),
            (
                "managed_identity = false\nclient_id = \"c\"\nclient_secret_env = \"S\"",
                "tenant_id",
            ),
            ("tenant_id = \"t\"\nclient_secret_env = \"S\"", "client_id"),
        ] {
            let error = load(&entra(fields)).unwrap_err();
            assert!(
                error.contains(&format!("`providers[0].entra.{key}`")),
                "{fields}: {error}"
            );
        }
    }

    #[test]
    fn the_managed_identity_endpoint_is_the_one_the_platform_announces() {
        use super::ManagedIdentityHost;
        use secrecy::ExposeSecret;
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        match ManagedIdentityHost::from_env(env(&[])) {
            ManagedIdentityHost::Imds { endpoint } => assert_eq!(
                endpoint,
                "http://169.254.169.254/metadata/identity/oauth2/token"
            ),
            ManagedIdentityHost::AppService { .. } => panic!("no App Service here"),
        }
        let pod = env(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://10.0.0.9:2579/")]);
        match ManagedIdentityHost::from_env(pod) {
            ManagedIdentityHost::Imds { endpoint } => {
                assert_eq!(
                    endpoint,
                    "http://10.0.0.9:2579/metadata/identity/oauth2/token"
                );
            }
            ManagedIdentityHost::AppService { .. } => panic!("no App Service here"),
        }
        let app_service = env(&[
            ("IDENTITY_ENDPOINT", "http://localhost:4141/msi/token"),
            ("IDENTITY_HEADER", "h3ad3r"),
        ]);
        match ManagedIdentityHost::from_env(app_service) {
            ManagedIdentityHost::AppService { endpoint, header } => {
                assert_eq!(endpoint, "http://localhost:4141/msi/token");
                assert_eq!(header.expose_secret(), "h3ad3r");
            }
            ManagedIdentityHost::Imds { .. } => panic!("App Service announced itself"),
        }
        // An endpoint without its header is not App Service's protocol.
        let half = env(&[("IDENTITY_ENDPOINT", "http://localhost:4141/msi/token")]);
        assert!(matches!(
            ManagedIdentityHost::from_env(half),
            ManagedIdentityHost::Imds { .. }
        ));
    }

    #[test]
    fn the_management_section_has_defaults() {
        let config = load(
            "kind = \"azure\"\napi_version = \"2024-10-21\"\napi_key_env = \"K\"\n\
             [providers.deployment]\nsubscription_id = \"s\"\nresource_group = \"rg\"\naccount = \"a\"\ntoken_env = \"T\"",
        )
        .unwrap();
        let d = config.providers[0].deployment.as_ref().unwrap();
        assert_eq!((d.sku.as_str(), d.capacity), ("standard", 1));
        assert_eq!(d.management_url, "https://management.azure.com");
    }
}
