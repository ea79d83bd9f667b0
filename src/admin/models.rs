//! `/admin/api/models…`: the registry's versions, traffic, promotion,
//! rollback and history. Reads are for analysts and admins, changes for
//! admins; every change names a reason, may carry `If-Match: <revision>`
//! (409 when the alias moved since), and is audited by the registry. With
//! evaluation gating (on by default), a promotion must pass
//! `evaluation::gate` unless an admin forces it, which is audited as a
//! forced promotion; `…/gate?version=` says where a version stands.

use super::{blocking, list_envelope};
use crate::auth::{Caller, Role};
use crate::evaluation::gate::Verdict;
use crate::openai::{ApiError, ApiJson, ApiQuery};
use crate::registry::{Change, ChangeError, RegistryError, Request};
use crate::state::AppState;
use crate::store::ModelAliasRecord;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Longest reason kept with a change.
const MAX_REASON: usize = 1_000;

pub async fn list_models(State(app): State<Arc<AppState>>) -> Json<Value> {
    let data = app.registry.aliases().iter().map(alias_view).collect();
    Json(list_envelope(data, None))
}

pub async fn get_model(
    State(app): State<Arc<AppState>>,
    Path(alias): Path<String>,
) -> Result<Response, ApiError> {
    let record = app
        .registry
        .alias(&alias)
        .ok_or_else(|| RegistryError::UnknownAlias(alias.clone()))?;
    Ok(with_etag(&record))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    name: String,
    provider: String,
    model: String,
    reason: Option<String>,
}

pub async fn register_version(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(alias): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<NewVersion>,
) -> Result<Response, ApiError> {
    let reason = match body.reason.as_deref() {
        Some(r) => checked_reason(Some(r))?,
        None => "registered through the admin API".to_string(),
    };
    let name = body.name.clone();
    let change = Change::Register {
        name: body.name,
        provider: body.provider,
        model: body.model,
        origin: "api".into(),
    };
    let record = change_alias(&app, &caller, &alias, &headers, reason, change).await?;
    let version = record
        .version(&name)
        .map(|v| version_view(&record, v))
        .unwrap_or(Value::Null);
    Ok((StatusCode::CREATED, Json(version)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    weights: BTreeMap<String, f64>,
    shadow: Option<Vec<String>>,
    reason: Option<String>,
}

pub async fn set_traffic(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(alias): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Traffic>,
) -> Result<Response, ApiError> {
    let reason = checked_reason(body.reason.as_deref())?;
    let change = Change::Traffic {
        weights: body.weights,
        shadow: body.shadow,
    };
    let record = change_alias(&app, &caller, &alias, &headers, reason, change).await?;
    Ok(with_etag(&record))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promotion {
    version: String,
    weights: Option<BTreeMap<String, f64>>,
    reason: Option<String>,
    /// Promote even though gating refuses; the reason says why.
    force: Option<bool>,
}

pub async fn promote(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(alias): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Promotion>,
) -> Result<Response, ApiError> {
    let reason = checked_reason(body.reason.as_deref())?;
    caller.require(Role::Admin)?;
    let forced = gate(&app, &alias, &body.version, body.force.unwrap_or(false)).await?;
    let change = Change::Promote {
        version: body.version,
        weights: body.weights,
        forced,
    };
    let record = change_alias(&app, &caller, &alias, &headers, reason, change).await?;
    Ok(with_etag(&record))
}

/// The gate's verdict on promoting `version` of `alias`, or `None` when
/// there is nothing to judge (an unknown alias or version, which the
/// change itself refuses with the right error).
async fn verdict_on(
    app: &Arc<AppState>,
    alias: &str,
    version: &str,
) -> Result<Option<Verdict>, ApiError> {
    let Some(record) = app.registry.alias(alias) else {
        return Ok(None);
    };
    if record.version(version).is_none() {
        return Ok(None);
    }
    let (state, alias, version) = (app.clone(), alias.to_string(), version.to_string());
    blocking(move || {
        crate::evaluation::gate::verdict(
            state.store.as_ref(),
            &state.config.evaluation,
            &alias,
            &version,
            &record.production,
        )
        .map(Some)
        .map_err(ApiError::from)
    })
    .await
}

/// Refuses the promotion when gating does, unless `force`; a forced
/// promotion past a refusal returns what was overridden, for the audit.
async fn gate(
    app: &Arc<AppState>,
    alias: &str,
    version: &str,
    force: bool,
) -> Result<Option<Value>, ApiError> {
    let Some(verdict) = verdict_on(app, alias, version).await? else {
        return Ok(None);
    };
    if verdict.allowed {
        return Ok(None);
    }
    if force {
        return Ok(Some(json!({
            "message": verdict.message,
            "requires": verdict.requires,
            "failing": verdict.failing,
        })));
    }
    Err(ApiError::PromotionGated {
        message: format!(
            "promotion gated: {} An admin may promote anyway with \"force\": true and a reason.",
            verdict.message
        ),
        failing: json!(verdict.failing),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateQuery {
    version: Option<String>,
}

/// `GET /admin/api/models/{alias}/gate?version=`: where a version stands
/// for promotion, with the figures to decide on.
pub async fn promotion_gate(
    State(app): State<Arc<AppState>>,
    Path(alias): Path<String>,
    ApiQuery(query): ApiQuery<GateQuery>,
) -> Result<Json<Value>, ApiError> {
    let record = app
        .registry
        .alias(&alias)
        .ok_or_else(|| ApiError::from(RegistryError::UnknownAlias(alias.clone())))?;
    let version = query.version.ok_or_else(|| {
        ApiError::invalid("`version` names the version to judge", Some("version"))
    })?;
    if record.version(&version).is_none() {
        return Err(ApiError::invalid(
            format!("alias `{alias}` has no version named `{version}`"),
            Some("version"),
        ));
    }
    let verdict = verdict_on(&app, &alias, &version)
        .await?
        .ok_or_else(|| ApiError::from(RegistryError::UnknownAlias(alias.clone())))?;
    let mut body = json!(verdict);
    body["object"] = json!("promotion_gate");
    Ok(Json(body))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    reason: Option<String>,
}

pub async fn rollback(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(alias): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Rollback>,
) -> Result<Response, ApiError> {
    let reason = checked_reason(body.reason.as_deref())?;
    let record = change_alias(&app, &caller, &alias, &headers, reason, Change::Rollback).await?;
    Ok(with_etag(&record))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn history(
    State(app): State<Arc<AppState>>,
    Path(alias): Path<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let entries = blocking(move || {
        app.registry
            .history(&alias, page.cursor.as_deref(), limit + 1)
            .map_err(ApiError::from)
    })
    .await?;
    let next_cursor = (entries.len() > limit).then(|| entries[limit - 1].id.clone());
    let data = entries.into_iter().take(limit).map(|h| json!(h)).collect();
    Ok(Json(list_envelope(data, next_cursor)))
}

/// Applies one change as `caller`, off the async workers (it writes and
/// flushes the store).
async fn change_alias(
    app: &Arc<AppState>,
    caller: &Caller,
    alias: &str,
    headers: &HeaderMap,
    reason: String,
    change: Change,
) -> Result<ModelAliasRecord, ApiError> {
    caller.require(Role::Admin)?;
    let expected_revision = if_match(headers)?;
    let (app, actor, alias) = (app.clone(), caller.id.to_string(), alias.to_string());
    blocking(move || {
        app.registry
            .change(Request {
                alias: &alias,
                expected_revision,
                actor: &actor,
                reason: &reason,
                change,
            })
            .map_err(ApiError::from)
    })
    .await
}

/// `If-Match: 3`, `"3"` or `W/"3"`: the revision the caller read.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    let bare = text.trim_start_matches("W/").trim_matches('"');
    bare.parse().map(Some).map_err(|_| {
        ApiError::invalid(
            format!("`If-Match` must be the alias's revision (a number), not `{text}`"),
            Some("If-Match"),
        )
    })
}

fn checked_reason(reason: Option<&str>) -> Result<String, ApiError> {
    let reason = reason.map(str::trim).unwrap_or("");
    if reason.is_empty() {
        return Err(ApiError::invalid(
            "every change needs a `reason`, kept in the model's history",
            Some("reason"),
        ));
    }
    if reason.chars().count() > MAX_REASON {
        return Err(ApiError::invalid(
            format!("`reason` must be at most {MAX_REASON} characters"),
            Some("reason"),
        ));
    }
    Ok(reason.to_string())
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::UnknownAlias(alias) => ApiError::NotFound {
                message: format!("no model alias named `{alias}`"),
                param: Some("alias".into()),
                code: "not_found",
            },
            e @ RegistryError::RevisionMoved { .. } => ApiError::Conflict {
                message: e.to_string(),
                code: "conflict",
            },
            RegistryError::Change(ChangeError::Invalid { message, param }) => {
                ApiError::InvalidRequest {
                    message,
                    param,
                    code: None,
                }
            }
            RegistryError::Change(ChangeError::Conflict(message)) => ApiError::Conflict {
                message,
                code: "conflict",
            },
            RegistryError::Store(e) => e.into(),
        }
    }
}

fn with_etag(record: &ModelAliasRecord) -> Response {
    let mut response = Json(alias_view(record)).into_response();
    if let Ok(v) = HeaderValue::try_from(format!("\"{}\"", record.revision)) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

pub fn alias_view(record: &ModelAliasRecord) -> Value {
    let versions: Vec<Value> = record
        .versions
        .iter()
        .map(|v| version_view(record, v))
        .collect();
    json!({
        "object": "model_alias",
        "alias": record.alias,
        "model_type": record.model_type,
        "production": record.production,
        "revision": record.revision,
        "previous_production": record.previous_production.last(),
        "updated_at": record.updated_at,
        "versions": versions,
    })
}

fn version_view(record: &ModelAliasRecord, v: &crate::store::ModelVersionRecord) -> Value {
    json!({
        "object": "model_version",
        "alias": record.alias,
        "name": v.name,
        "provider": v.provider,
        "model": v.model,
        "state": v.state.as_str(),
        "origin": v.origin,
        "weight": v.weight,
        "shadow": v.shadow,
        "created_at": v.created_at,
    })
}

pub async fn experiment(
    State(app): State<Arc<AppState>>,
    Path(alias): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = app
        .registry
        .alias(&alias)
        .ok_or_else(|| ApiError::from(RegistryError::UnknownAlias(alias.clone())))?;
    let alpha = crate::experiment::config_for(&app.config, &alias).alpha;
    let store = app.store.clone();
    let tallies = blocking(move || store.version_tallies(&alias)).await?;
    Ok(Json(crate::experiment::experiment_view(
        &record, &tallies, alpha,
    )))
}
