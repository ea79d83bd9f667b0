//! Which upstream model serves a request: alias → version (by weighted,
//! sticky assignment over the alias's bucket table, or forced) → provider
//! and model; a name that is no alias goes to the default provider
//! unchanged. The table is built from the registry and swapped atomically,
//! so a request keeps the route it resolved even if the table changes
//! while it runs.

pub mod buckets;

use crate::config::Config;
use crate::store::{ModelAliasRecord, VersionState};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Version {
    pub name: Arc<str>,
    /// Index into the upstream providers; `None` when the registry names a
    /// provider the config no longer has (the version cannot serve).
    pub provider: Option<usize>,
    pub model: Arc<str>,
}

#[derive(Debug, Clone)]
pub struct Alias {
    pub name: Arc<str>,
    pub model_type: Arc<str>,
    pub versions: Vec<Version>,
    /// Index into `versions`.
    pub production: usize,
    /// Owner of each traffic slot (index into `versions`).
    buckets: Arc<[u8]>,
    /// The one version owning every slot, when there is no split.
    sole: Option<usize>,
    /// Versions that receive a mirrored copy of the traffic.
    pub shadows: Vec<usize>,
}

impl Alias {
    pub fn production(&self) -> Option<&Version> {
        self.versions.get(self.production)
    }

    pub fn version(&self, name: &str) -> Option<&Version> {
        self.versions.iter().find(|v| &*v.name == name)
    }

    /// The version a sticky key is assigned to.
    fn assigned(&self, sticky: &str) -> usize {
        let owner = match self.sole {
            Some(v) => v,
            None => self
                .buckets
                .get(buckets::slot(&self.name, sticky))
                .map_or(self.production, |&o| o as usize),
        };
        match self.versions.get(owner) {
            Some(v) if v.provider.is_some() => owner,
            _ => self.production,
        }
    }
}

/// Where one request goes, owned so it outlives a table swap.
#[derive(Debug, Clone)]
pub struct Route {
    pub alias: Option<Arc<str>>,
    pub version: Option<Arc<str>>,
    pub provider: usize,
    pub upstream_model: Arc<str>,
    /// Assigned by weight to a version that is not production: a failure
    /// before the first byte may fall back to production.
    pub candidate: bool,
}

/// How a request chooses its version.
#[derive(Debug, Clone, Copy)]
pub enum Choice<'a> {
    /// By the alias's weights, sticky on this key.
    Sticky(&'a str),
    /// This version, whatever the weights (`x-flywheel-variant`).
    Forced(&'a str),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("alias `{alias}` has no version named `{version}`")]
    UnknownVersion { alias: String, version: String },
    #[error("alias `{0}` has no version that can serve: its providers are not configured")]
    Unroutable(String),
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    aliases: HashMap<Arc<str>, Alias>,
    /// Config order, then the rest by name, for listings.
    order: Vec<Arc<str>>,
    default_provider: usize,
}

impl RoutingTable {
    /// Builds the table from the registry's records; `config` gives the
    /// providers' indexes and the listing order.
    pub fn build(config: &Config, records: &[ModelAliasRecord]) -> Self {
        let provider_index = |name: &str| config.providers.iter().position(|p| p.name == name);
        let mut table = RoutingTable {
            default_provider: provider_index(&config.default_provider().name).unwrap_or(0),
            ..Default::default()
        };
        let mut sorted: Vec<&ModelAliasRecord> = records.iter().collect();
        let rank = |r: &ModelAliasRecord| {
            config
                .models
                .iter()
                .position(|m| m.name == r.alias)
                .unwrap_or(usize::MAX)
        };
        sorted.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.alias.cmp(&b.alias)));
        for record in sorted {
            let alias = alias_from(record, &provider_index);
            table.order.push(alias.name.clone());
            table.aliases.insert(alias.name.clone(), alias);
        }
        table
    }

    /// The route for `model`: an alias's chosen version, or the default
    /// provider for any other name.
    pub fn resolve(&self, model: &str, choice: Choice<'_>) -> Result<Route, RouteError> {
        let Some(alias) = self.aliases.get(model) else {
            return Ok(Route {
                alias: None,
                version: None,
                provider: self.default_provider,
                upstream_model: model.into(),
                candidate: false,
            });
        };
        let index = match choice {
            Choice::Sticky(key) => alias.assigned(key),
            Choice::Forced(name) => alias
                .versions
                .iter()
                .position(|v| &*v.name == name)
                .ok_or_else(|| RouteError::UnknownVersion {
                    alias: alias.name.to_string(),
                    version: name.to_string(),
                })?,
        };
        let route = route_to(alias, index)?;
        Ok(Route {
            candidate: matches!(choice, Choice::Sticky(_)) && index != alias.production,
            ..route
        })
    }

    /// The alias's production route, for a fallback.
    pub fn production(&self, alias: &str) -> Option<Route> {
        let a = self.aliases.get(alias)?;
        route_to(a, a.production).ok()
    }

    /// Routes to every shadow version of the alias.
    pub fn shadows(&self, alias: &str) -> Vec<Route> {
        self.aliases.get(alias).map_or_else(Vec::new, |a| {
            a.shadows
                .iter()
                .filter_map(|&i| route_to(a, i).ok())
                .collect()
        })
    }

    pub fn alias(&self, name: &str) -> Option<&Alias> {
        self.aliases.get(name)
    }

    pub fn aliases(&self) -> impl Iterator<Item = &Alias> {
        self.order.iter().filter_map(|n| self.aliases.get(n))
    }
}

fn route_to(alias: &Alias, index: usize) -> Result<Route, RouteError> {
    let version = alias
        .versions
        .get(index)
        .filter(|v| v.provider.is_some())
        .ok_or_else(|| RouteError::Unroutable(alias.name.to_string()))?;
    Ok(Route {
        alias: Some(alias.name.clone()),
        version: Some(version.name.clone()),
        provider: version.provider.unwrap_or_default(),
        upstream_model: version.model.clone(),
        candidate: false,
    })
}

fn alias_from(record: &ModelAliasRecord, provider_index: &dyn Fn(&str) -> Option<usize>) -> Alias {
    let versions: Vec<Version> = record
        .versions
        .iter()
        .map(|v| {
            let provider = provider_index(&v.provider);
            if provider.is_none() {
                tracing::error!(alias = %record.alias, version = %v.name, provider = %v.provider,
                    "the version names a provider that is not configured; it cannot serve");
            }
            Version {
                name: v.name.as_str().into(),
                provider,
                model: v.model.as_str().into(),
            }
        })
        .collect();
    let production = record
        .versions
        .iter()
        .position(|v| v.name == record.production)
        .unwrap_or(0);
    let table = buckets::decode(&record.buckets).unwrap_or_else(|| {
        tracing::error!(alias = %record.alias, "the stored traffic table is unreadable; production serves all traffic");
        buckets::all_to(production as u8)
    });
    let counts = buckets::counts(&table, versions.len());
    let sole = counts
        .iter()
        .position(|&c| c as usize == buckets::SLOTS)
        .or((counts.iter().sum::<u32>() as usize != buckets::SLOTS).then_some(production));
    let shadows = record
        .versions
        .iter()
        .enumerate()
        .filter(|(_, v)| v.shadow && v.state != VersionState::Retired)
        .map(|(i, _)| i)
        .collect();
    Alias {
        name: record.alias.as_str().into(),
        model_type: record.model_type.as_str().into(),
        versions,
        production,
        buckets: table.into(),
        sole,
        shadows,
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
