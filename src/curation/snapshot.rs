//! Creating a dataset snapshot end to end: the request checked, the
//! conversations matching its filter read from the store, the build, and
//! the immutable record stored and audited. The admin API and background
//! jobs both call [`create_dataset`]; nothing here knows about HTTP.

mod candidates;
mod request;

pub use candidates::{MAX_CANDIDATES, candidates};
pub use request::{DatasetFilter, DatasetRequest};

use super::build::{BuildOptions, OptionsError, build_dataset};
use super::format::DatasetFormat;
use crate::config::Config;
use crate::ids::{new_id, now_rfc3339};
use crate::registry::Registry;
use crate::store::{DatasetRecord, Store, StoreError};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A value of the request is wrong; `param` names it.
    #[error("{message}")]
    Invalid { message: String, param: String },
    #[error("no model alias named `{0}`")]
    UnknownAlias(String),
    #[error(
        "the filter matches more than {MAX_CANDIDATES} conversations; narrow it (e.g. with since/until)"
    )]
    TooManyCandidates,
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Builds the snapshot `request` asks for from the conversations in
/// `store`, stores it with its files, audits it as `actor`'s
/// `dataset.create` and returns its record.
pub fn create_dataset(
    store: &dyn Store,
    config: &Config,
    registry: &Registry,
    request: &DatasetRequest,
    actor: &str,
) -> Result<DatasetRecord, DatasetError> {
    let filter = request.validate(config)?;
    let (alias, base_model) = base_model(config, registry, request)?;
    let options = BuildOptions::from_config(
        config,
        request.format,
        &base_model,
        request.validation_split,
    )?;
    let found = candidates(store, &filter)?;
    let build = build_dataset(&found, &options);
    let record = DatasetRecord {
        id: new_id("ds"),
        name: request.name.trim().to_string(),
        format: format_name(request.format).to_string(),
        created_at: now_rfc3339(),
        created_by: actor.to_string(),
        filter: serde_json::to_value(&filter).unwrap_or(Value::Null),
        alias: Some(alias),
        base_model: Some(base_model),
        validation_split: options.validation_split,
        report: serde_json::to_value(&build.report).unwrap_or(Value::Null),
        train_ids: build.train.conversation_ids,
        validation_ids: build.validation.conversation_ids,
    };
    store.insert_dataset(
        &record,
        build.train.jsonl.as_bytes(),
        build.validation.jsonl.as_bytes(),
    )?;
    let details = json!({
        "name": record.name,
        "format": record.format,
        "content_hash": build.report.content_hash,
        "counts": build.report.counts,
        "ready_for_training": build.report.ready_for_training,
    });
    crate::audit::record(store, actor, "dataset.create", &record.id, details)?;
    Ok(record)
}

/// The alias whose production model the examples are checked against
/// (the filter's, else the first configured), and that base model unless
/// the request names one.
fn base_model(
    config: &Config,
    registry: &Registry,
    request: &DatasetRequest,
) -> Result<(String, String), DatasetError> {
    // Config validation guarantees at least one alias.
    let name = request
        .filter
        .alias
        .clone()
        .or_else(|| config.models.first().map(|m| m.name.clone()))
        .unwrap_or_default();
    let alias = registry
        .alias(&name)
        .ok_or_else(|| DatasetError::UnknownAlias(name.clone()))?;
    let model = match &request.base_model {
        Some(m) => m.clone(),
        None => alias
            .version(&alias.production)
            .map(|v| v.model.clone())
            .unwrap_or_default(),
    };
    Ok((name, model))
}

fn format_name(format: DatasetFormat) -> &'static str {
    match format {
        DatasetFormat::Sft => "sft",
        DatasetFormat::Dpo => "dpo",
    }
}

/// The dataset as the admin API shows it: the record's fields and its
/// report's, side by side.
pub fn dataset_view(record: &DatasetRecord) -> Value {
    let mut view = json!({
        "id": record.id,
        "object": "dataset",
        "name": record.name,
        "format": record.format,
        "created_at": record.created_at,
        "created_by": record.created_by,
        "filter": record.filter,
        "alias": record.alias,
        "base_model": record.base_model,
        "validation_split": record.validation_split,
    });
    if let (Some(out), Some(report)) = (view.as_object_mut(), record.report.as_object()) {
        for (k, v) in report {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    view
}
