//! Configuration: typed sections, loaded once from TOML plus environment
//! overrides, validated at start-up, then shared read-only.
//!
//! Secrets never live in the file: it names the environment variables that
//! hold them, and [`Secrets`] resolves those once at start-up.

mod azure;
mod entra_auth;
mod load;
mod secrets;
mod types;
mod validate;

pub use azure::{
    AzureDeploymentConfig, AzureUrlStyle, EntraConfig,
    MANAGEMENT_API_VERSION as AZURE_MANAGEMENT_API_VERSION, ManagedIdentityHost,
};
pub use entra_auth::{EntraAuthConfig, EntraRoles};
pub use load::{ConfigError, ENV_PREFIX, SEED_ENV_ALIASES};
pub use secrets::Secrets;
pub use types::*;

use std::path::Path;

impl Config {
    /// Reads `path`, applies `FLYWHEEL__SECTION__KEY` overrides and the seed's
    /// aliases from `env`, and validates the result.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string(), env)
    }

    /// Like [`Config::load`] for text already in memory; `origin` names it in errors.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config = load::parse_with_env(text, origin, env)?;
        validate::validate(&config)?;
        Ok(config)
    }

    /// The provider that serves model names that are no alias, and pass-through routes.
    pub fn default_provider(&self) -> &ProviderConfig {
        let wanted = self.server.default_provider.as_deref();
        wanted
            .and_then(|name| self.providers.iter().find(|p| p.name == name))
            .or_else(|| self.providers.iter().find(|p| p.serves()))
            .unwrap_or(&FALLBACK_PROVIDER)
    }

    /// The effective configuration as TOML, for `check-config`. Secrets are
    /// never in it: only the names of the variables that hold them. A
    /// webhook URL carries its credential in the path (Slack's do), so only
    /// its scheme and host are shown.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if let Some(url) = &mut shown.evaluation.webhook_url {
            *url = masked_url(url);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// `https://hooks.slack.com/services/T/B/x` → `https://hooks.slack.com/***`.
fn masked_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    format!("{scheme}://{host}/***")
}

/// Validation guarantees at least one provider; this only keeps
/// `default_provider` total without a panic path.
static FALLBACK_PROVIDER: std::sync::LazyLock<ProviderConfig> =
    std::sync::LazyLock::new(ProviderConfig::placeholder);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_config_shows_a_webhook_url_without_its_credential() {
        assert_eq!(
            masked_url("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/***"
        );
        assert_eq!(
            masked_url("http://user:pw@127.0.0.1:9/hook?t=1"),
            "http://127.0.0.1:9/***"
        );
    }
}
