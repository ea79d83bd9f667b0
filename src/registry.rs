//! The model registry: per alias its versions, which one is production,
//! the candidates' traffic weights and shadows. State lives in the store
//! (the config seeds it on first start); every change is checked against
//! the alias's revision, written with its history entry in one atomic
//! step, audited, and then takes effect by swapping the routing table —
//! a request in flight keeps the route it started with.

mod transition;

pub use transition::{Change, ChangeError, weights_of};

use crate::config::Config;
use crate::ids::{new_id, now_rfc3339};
use crate::routing::{Routes, RoutingTable, buckets};
use crate::store::{
    ModelAliasRecord, ModelHistoryRecord, ModelVersionRecord, SharedStore, StoreError, VersionState,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no alias named `{0}`")]
    UnknownAlias(String),
    #[error(
        "alias `{alias}` is at revision {current}, not {expected}: it changed since it was read"
    )]
    RevisionMoved {
        alias: String,
        expected: u64,
        current: u64,
    },
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who asks for a change, and why.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub alias: &'a str,
    /// The revision the caller read (`If-Match`); `None` skips the check.
    pub expected_revision: Option<u64>,
    pub actor: &'a str,
    pub reason: &'a str,
    pub change: Change,
}

pub struct Registry {
    store: SharedStore,
    config: Arc<Config>,
    routes: Routes,
    /// The records as last committed; held while a change is made, so
    /// changes apply one at a time. Requests never take it: they read
    /// the routing table.
    records: Mutex<BTreeMap<String, ModelAliasRecord>>,
}

impl Registry {
    /// Loads the registry, seeding aliases (and versions) the store does
    /// not know yet from the config.
    pub fn open(store: SharedStore, config: Arc<Config>) -> Result<Self, StoreError> {
        let mut records: BTreeMap<String, ModelAliasRecord> = store
            .model_aliases()?
            .into_iter()
            .map(|r| (r.alias.clone(), r))
            .collect();
        let at = now_rfc3339();
        for model in &config.models {
            let seeded = match records.get(&model.name) {
                None => Some(seed_alias(model, &at)),
                Some(existing) => with_new_config_versions(existing, model, &at),
            };
            if let Some((record, action)) = seeded {
                let history = history_entry(
                    &record,
                    action,
                    None,
                    None,
                    "config",
                    "seeded from the configuration",
                );
                store.put_model_alias(&record, &history)?;
                records.insert(record.alias.clone(), record);
            }
        }
        let table = RoutingTable::build(&config, &records.values().cloned().collect::<Vec<_>>());
        Ok(Self {
            store,
            config,
            routes: Routes::new(table),
            records: Mutex::new(records),
        })
    }

    /// Reads every alias again and swaps the routing table when one
    /// changed (another replica made a change); a change under way here
    /// finishes first.
    pub fn reload(&self) -> Result<(), StoreError> {
        // Read under the lock: a read from before a change made here
        // meanwhile would undo it.
        let mut records = self.lock();
        let stored: BTreeMap<String, ModelAliasRecord> = self
            .store
            .model_aliases()?
            .into_iter()
            .map(|r| (r.alias.clone(), r))
            .collect();
        if *records != stored {
            let all: Vec<ModelAliasRecord> = stored.values().cloned().collect();
            self.routes.replace(RoutingTable::build(&self.config, &all));
            *records = stored;
            tracing::info!("model registry reloaded after a change elsewhere");
        }
        Ok(())
    }

    /// The live routing table.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.routes.load()
    }

    pub fn aliases(&self) -> Vec<ModelAliasRecord> {
        self.lock().values().cloned().collect()
    }

    pub fn alias(&self, name: &str) -> Option<ModelAliasRecord> {
        self.lock().get(name).cloned()
    }

    /// Makes one change: checks the revision, applies it, stores it with
    /// its history entry, swaps the routing table and audits it.
    pub fn change(&self, request: Request<'_>) -> Result<ModelAliasRecord, RegistryError> {
        let mut records = self.lock();
        let current = records
            .get(request.alias)
            .ok_or_else(|| RegistryError::UnknownAlias(request.alias.to_string()))?;
        if let Some(expected) = request.expected_revision.filter(|e| *e != current.revision) {
            return Err(RegistryError::RevisionMoved {
                alias: request.alias.to_string(),
                expected,
                current: current.revision,
            });
        }
        // Versions are served: a trainer (`kind = "command"`) serves nothing.
        let providers: Vec<String> = self
            .config
            .providers
            .iter()
            .filter(|p| p.serves())
            .map(|p| p.name.clone())
            .collect();
        let at = now_rfc3339();
        let applied = transition::apply(current, &request.change, &providers, &at)?;
        let action = request.change.action();
        let forced = match &request.change {
            Change::Promote { forced, .. } => forced.clone(),
            _ => None,
        };
        let mut history = history_entry(
            &applied.record,
            action,
            applied.from.clone(),
            applied.to.clone(),
            request.actor,
            request.reason,
        );
        history.forced = forced.is_some();
        self.store.put_model_alias(&applied.record, &history)?;
        records.insert(applied.record.alias.clone(), applied.record.clone());
        let all: Vec<ModelAliasRecord> = records.values().cloned().collect();
        self.routes.replace(RoutingTable::build(&self.config, &all));
        drop(records);
        tracing::info!(
            alias = request.alias,
            action,
            actor = request.actor,
            revision = applied.record.revision,
            "model registry changed"
        );
        let mut details = serde_json::json!({
            "from": applied.from,
            "to": applied.to,
            "weights": history.weights,
            "reason": request.reason,
            "revision": applied.record.revision,
        });
        // A promotion past the gate is audited as what it is, with the
        // refusal the admin overrode.
        let audited = match forced {
            Some(gate) => {
                details["gate"] = gate;
                format!("model.{action}.forced")
            }
            None => format!("model.{action}"),
        };
        crate::audit::record(
            self.store.as_ref(),
            request.actor,
            &audited,
            request.alias,
            details,
        )?;
        Ok(applied.record)
    }

    pub fn history(
        &self,
        alias: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ModelHistoryRecord>, RegistryError> {
        if !self.lock().contains_key(alias) {
            return Err(RegistryError::UnknownAlias(alias.to_string()));
        }
        Ok(self.store.model_history(alias, cursor, limit)?)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ModelAliasRecord>> {
        // The map is replaced entry by entry only after the store write
        // succeeded, so it is consistent even after a panic elsewhere.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn history_entry(
    record: &ModelAliasRecord,
    action: &str,
    from: Option<String>,
    to: Option<String>,
    actor: &str,
    reason: &str,
) -> ModelHistoryRecord {
    ModelHistoryRecord {
        id: new_id("hist"),
        alias: record.alias.clone(),
        at: record.updated_at.clone(),
        actor: actor.to_string(),
        action: action.to_string(),
        from,
        to,
        weights: weights_of(record),
        reason: reason.to_string(),
        revision: record.revision,
        forced: false,
    }
}

fn config_version(
    v: &crate::config::VersionConfig,
    state: VersionState,
    at: &str,
) -> ModelVersionRecord {
    ModelVersionRecord {
        name: v.name.clone(),
        provider: v.provider.clone(),
        model: v.model.clone(),
        state,
        origin: "config".into(),
        weight: 0.0,
        shadow: false,
        created_at: at.to_string(),
    }
}

/// A new alias from its config: production at 100 %, the other versions
/// candidates without traffic.
fn seed_alias(model: &crate::config::ModelConfig, at: &str) -> (ModelAliasRecord, &'static str) {
    let production = model
        .production_version()
        .map_or_else(String::new, |v| v.name.clone());
    let versions: Vec<ModelVersionRecord> = model
        .versions
        .iter()
        .map(|v| {
            let is_production = v.name == production;
            let state = if is_production {
                VersionState::Production
            } else {
                VersionState::Candidate
            };
            ModelVersionRecord {
                weight: if is_production { 100.0 } else { 0.0 },
                ..config_version(v, state, at)
            }
        })
        .collect();
    let owner = versions
        .iter()
        .position(|v| v.name == production)
        .unwrap_or(0);
    let record = ModelAliasRecord {
        alias: model.name.clone(),
        model_type: model_type_name(model),
        revision: 1,
        production,
        previous_production: Vec::new(),
        versions,
        buckets: buckets::encode(&buckets::all_to(owner as u8)),
        updated_at: at.to_string(),
    };
    (record, "seed")
}

/// The stored alias plus any version the config names that it lacks (as a
/// candidate without traffic); `None` when there is none.
fn with_new_config_versions(
    existing: &ModelAliasRecord,
    model: &crate::config::ModelConfig,
    at: &str,
) -> Option<(ModelAliasRecord, &'static str)> {
    let missing: Vec<ModelVersionRecord> = model
        .versions
        .iter()
        .filter(|v| existing.version(&v.name).is_none())
        .map(|v| config_version(v, VersionState::Candidate, at))
        .collect();
    if missing.is_empty() || existing.versions.len() + missing.len() > transition::MAX_VERSIONS {
        return None;
    }
    let mut record = existing.clone();
    record.versions.extend(missing);
    record.revision += 1;
    record.updated_at = at.to_string();
    Some((record, "register"))
}

fn model_type_name(model: &crate::config::ModelConfig) -> String {
    serde_json::to_value(model.model_type)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
