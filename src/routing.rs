//! Which upstream model serves a request: alias → production version →
//! provider and model; a name that is no alias goes to the default provider
//! unchanged. The table is swapped atomically, so a request keeps the route
//! it resolved even if the table changes while it runs.

use crate::config::{Config, ModelType};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Version {
    pub name: Arc<str>,
    /// Index into the upstream providers, fixed at start-up.
    pub provider: usize,
    pub model: Arc<str>,
}

#[derive(Debug, Clone)]
pub struct Alias {
    pub name: Arc<str>,
    pub model_type: ModelType,
    pub versions: Vec<Version>,
    /// Index into `versions`.
    pub production: usize,
}

impl Alias {
    pub fn production(&self) -> Option<&Version> {
        self.versions.get(self.production)
    }
}

/// Where one request goes, owned so it outlives a table swap.
#[derive(Debug, Clone)]
pub struct Route {
    pub alias: Option<Arc<str>>,
    pub version: Option<Arc<str>>,
    pub provider: usize,
    pub upstream_model: Arc<str>,
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    aliases: HashMap<Arc<str>, Alias>,
    /// Config order, for listings.
    order: Vec<Arc<str>>,
    default_provider: usize,
}

impl RoutingTable {
    /// Seeds the table from config. Validation has checked every reference.
    pub fn from_config(config: &Config) -> Self {
        let provider_index = |name: &str| {
            config
                .providers
                .iter()
                .position(|p| p.name == name)
                .unwrap_or(0)
        };
        let mut table = RoutingTable {
            default_provider: provider_index(&config.default_provider().name),
            ..Default::default()
        };
        for m in &config.models {
            let versions: Vec<Version> = m
                .versions
                .iter()
                .map(|v| Version {
                    name: v.name.as_str().into(),
                    provider: provider_index(&v.provider),
                    model: v.model.as_str().into(),
                })
                .collect();
            let production = m
                .production_version()
                .and_then(|p| versions.iter().position(|v| *v.name == *p.name))
                .unwrap_or(0);
            let name: Arc<str> = m.name.as_str().into();
            table.order.push(name.clone());
            table.aliases.insert(
                name.clone(),
                Alias {
                    name,
                    model_type: m.model_type,
                    versions,
                    production,
                },
            );
        }
        table
    }

    pub fn resolve(&self, model: &str) -> Route {
        match self
            .aliases
            .get(model)
            .and_then(|a| Some((a, a.production()?)))
        {
            Some((alias, version)) => Route {
                alias: Some(alias.name.clone()),
                version: Some(version.name.clone()),
                provider: version.provider,
                upstream_model: version.model.clone(),
            },
            None => Route {
                alias: None,
                version: None,
                provider: self.default_provider,
                upstream_model: model.into(),
            },
        }
    }

    pub fn alias(&self, name: &str) -> Option<&Alias> {
        self.aliases.get(name)
    }

    pub fn aliases(&self) -> impl Iterator<Item = &Alias> {
        self.order.iter().filter_map(|n| self.aliases.get(n))
    }
}

/// The live table, read without a lock on every request.
pub struct Routes(ArcSwap<RoutingTable>);

impl Routes {
    pub fn new(table: RoutingTable) -> Self {
        Self(ArcSwap::from_pointee(table))
    }

    pub fn load(&self) -> Arc<RoutingTable> {
        self.0.load_full()
    }

    pub fn replace(&self, table: RoutingTable) {
        self.0.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml_str(
            r#"
[[providers]]
name = "a"
base_url = "http://127.0.0.1:1"
[[providers]]
name = "b"
base_url = "http://127.0.0.1:2"
[server]
default_provider = "b"
[[models]]
name = "triage"
model_type = "threat_detection"
production = "large"
  [[models.versions]]
  name = "small"
  provider = "a"
  model = "gpt-4o-mini"
  [[models.versions]]
  name = "large"
  provider = "a"
  model = "gpt-4o"
"#,
            "test",
            Vec::new(),
        )
        .unwrap()
    }

    #[test]
    fn aliases_route_to_their_production_version() {
        let table = RoutingTable::from_config(&config());
        let r = table.resolve("triage");
        assert_eq!(r.version.as_deref(), Some("large"));
        assert_eq!(&*r.upstream_model, "gpt-4o");
        assert_eq!(r.provider, 0);
    }

    #[test]
    fn other_names_pass_through_to_the_default_provider() {
        let table = RoutingTable::from_config(&config());
        let r = table.resolve("gpt-4.1");
        assert!(r.alias.is_none() && r.version.is_none());
        assert_eq!((&*r.upstream_model, r.provider), ("gpt-4.1", 1));
    }
}
