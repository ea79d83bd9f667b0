//! Secrets named by the config, resolved from the environment once at start-up.

use super::{Config, ManagedIdentityHost, ProviderConfig};
use secrecy::SecretString;
use std::collections::HashMap;

/// Values that must never be printed, logged, stored or returned.
#[derive(Clone, Default)]
pub struct Secrets {
    pub admin_token: Option<SecretString>,
    /// Provider name → API key (for an Azure provider, its `api-key` or
    /// its Entra ID bearer token, whichever the config names).
    pub provider_keys: HashMap<String, SecretString>,
    /// Azure provider name → its management API (ARM) bearer token.
    pub management_tokens: HashMap<String, SecretString>,
    /// Azure provider name → the client secret of its Entra ID credentials.
    pub entra_secrets: HashMap<String, SecretString>,
    /// The PostgreSQL connection URL (`store.url_env`), when set.
    pub database_url: Option<SecretString>,
    /// Where the host's managed identity hands out tokens, for providers
    /// with `entra.managed_identity = true`.
    pub managed_identity: ManagedIdentityHost,
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
            .field(
                "entra_secrets",
                &self.entra_secrets.keys().collect::<Vec<_>>(),
            )
            .field(
                "management_tokens",
                &self.management_tokens.keys().collect::<Vec<_>>(),
            )
            .field("managed_identity", &self.managed_identity.describe())
            .finish()
    }
}

impl Secrets {
    /// Reads every variable the config names through `lookup` (the process
    /// environment in `main`, a map in tests). Empty values count as unset.
    pub fn resolve(config: &Config, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let managed_identity = ManagedIdentityHost::from_env(&lookup);
        let get = |name: &str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .map(SecretString::from)
        };
        // Provider name → the value of the variable `var` names for it.
        let per_provider = |var: &dyn Fn(&ProviderConfig) -> Option<&str>| {
            config
                .providers
                .iter()
                .filter_map(|p| Some((p.name.clone(), get(var(p)?)?)))
                .collect::<HashMap<_, _>>()
        };
        let provider_keys =
            per_provider(&|p| p.api_key_env.as_deref().or(p.bearer_token_env.as_deref()));
        let management_tokens = per_provider(&|p| p.deployment.as_ref()?.token_env.as_deref());
        let entra_secrets = per_provider(&|p| p.entra.as_ref()?.client_secret_env.as_deref());
        Self {
            admin_token: get(&config.auth.admin_token_env),
            provider_keys,
            management_tokens,
            entra_secrets,
            database_url: (config.store.kind == super::StoreKind::Postgres)
                .then(|| get(&config.store.url_env))
                .flatten(),
            managed_identity,
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
        let host = ManagedIdentityHost::from_env(&lookup);
        for p in &config.providers {
            if let Some(var) = &p.api_key_env {
                lines.push(format!(
                    "providers.{}.api_key_env = {var}: {}",
                    p.name,
                    state(var)
                ));
            }
            if let Some(var) = &p.bearer_token_env {
                lines.push(format!(
                    "providers.{}.bearer_token_env = {var}: {}",
                    p.name,
                    state(var)
                ));
            }
            if let Some(var) = p.entra.as_ref().and_then(|e| e.client_secret_env.as_ref()) {
                lines.push(format!(
                    "providers.{}.entra.client_secret_env = {var}: {}",
                    p.name,
                    state(var)
                ));
            }
            if p.entra.as_ref().is_some_and(|e| e.managed_identity) {
                lines.push(format!(
                    "providers.{}.entra.managed_identity: tokens from {}",
                    p.name,
                    host.describe()
                ));
            }
            if let Some(var) = p.deployment.as_ref().and_then(|d| d.token_env.as_ref()) {
                lines.push(format!(
                    "providers.{}.deployment.token_env = {var}: {}",
                    p.name,
                    state(var)
                ));
            }
        }
        lines
    }
}
