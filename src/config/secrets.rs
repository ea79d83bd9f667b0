//! Secrets named by the config, resolved from the environment once at start-up.

use super::Config;
use secrecy::SecretString;
use std::collections::HashMap;

/// Values that must never be printed, logged, stored or returned.
#[derive(Clone, Default)]
pub struct Secrets {
    pub admin_token: Option<SecretString>,
    /// Provider name → API key.
    pub provider_keys: HashMap<String, SecretString>,
    /// The PostgreSQL connection URL (`store.url_env`), when set.
    pub database_url: Option<SecretString>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("admin_token", &self.admin_token.as_ref().map(|_| "[set]"))
            .field(
                "provider_keys",
                &self.provider_keys.keys().collect::<Vec<_>>(),
            )
            .field("database_url", &self.database_url.as_ref().map(|_| "[set]"))
            .finish()
    }
}

impl Secrets {
    /// Reads every variable the config names through `lookup` (the process
    /// environment in `main`, a map in tests). Empty values count as unset.
    pub fn resolve(config: &Config, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .map(SecretString::from)
        };
        let provider_keys = config
            .providers
            .iter()
            .filter_map(|p| {
                let var = p.api_key_env.as_deref()?;
                Some((p.name.clone(), get(var)?))
            })
            .collect();
        Self {
            admin_token: get(&config.auth.admin_token_env),
            provider_keys,
            database_url: (config.store.kind == super::StoreKind::Postgres)
                .then(|| get(&config.store.url_env))
                .flatten(),
        }
    }

    /// One line per secret the config names: set or not, never the value.
    pub fn describe(config: &Config, lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
        let state = |var: &str| match lookup(var) {
            Some(v) if !v.trim().is_empty() => "set (value hidden)",
            _ => "not set",
        };
        let mut lines = vec![format!(
            "auth.admin_token_env = {}: {}",
            config.auth.admin_token_env,
            state(&config.auth.admin_token_env)
        )];
        if config.store.kind == super::StoreKind::Postgres {
            lines.push(format!(
                "store.url_env = {}: {}",
                config.store.url_env,
                state(&config.store.url_env)
            ));
        }
        for p in &config.providers {
            if let Some(var) = &p.api_key_env {
                lines.push(format!(
                    "providers.{}.api_key_env = {var}: {}",
                    p.name,
                    state(var)
                ));
            }
        }
        lines
    }
}
