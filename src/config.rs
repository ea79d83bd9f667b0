//! Configuration: typed sections, loaded once from TOML plus environment
//! overrides, validated at start-up, then shared read-only.
//!
//! Secrets never live in the file: it names the environment variables that
//! hold them, and [`Secrets`] resolves those once at start-up.

mod load;
mod secrets;
mod types;
mod validate;

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
            .or_else(|| self.providers.first())
            .unwrap_or(&FALLBACK_PROVIDER)
    }

    /// The effective configuration as TOML, for `check-config`. Secrets are
    /// never in it: only the names of the variables that hold them.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Validation guarantees at least one provider; this only keeps
/// `default_provider` total without a panic path.
static FALLBACK_PROVIDER: std::sync::LazyLock<ProviderConfig> =
    std::sync::LazyLock::new(ProviderConfig::placeholder);
