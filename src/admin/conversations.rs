//! `/admin/api/conversations` and `/admin/api/stats`: the review side of
//! the admin API. Handlers parse, check the role, and hand over to
//! `review`; every write is audited and durable before it is answered.

use super::{blocking, list_envelope};
use crate::auth::{Caller, Role};
use crate::ids::now_rfc3339;
use crate::openai::{ApiError, ApiJson, ApiQuery};
use crate::review::{
    BulkAction, ListQuery, ReviewPatch, TurnRecords, apply_patch, conversation_detail,
    conversation_summary,
};
use crate::state::AppState;
use crate::store::{ConversationRecord, SharedStore, StoreError};
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Json;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Most conversations one bulk call may change.
const MAX_BULK: usize = 1_000;

pub async fn list_conversations(
    State(app): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let page =
        blocking(move || crate::review::list_conversations(app.store.as_ref(), query)).await?;
    let data = page.data.iter().map(conversation_summary).collect();
    Ok(Json(list_envelope(data, page.next_cursor)))
}

pub async fn get_conversation(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = app.store.clone();
    let recent = app.recent.clone();
    blocking(move || {
        let Some(c) = store.conversation(&id)? else {
            return Err(if recent.turns(&id).is_some() {
                being_written(&id)
            } else {
                not_found(&id)
            });
        };
        let registered = recent.turns_from(&id, 0);
        detail(&store, &c, &registered)
    })
    .await
    .map(Json)
}

pub async fn patch_conversation(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<ReviewPatch>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Analyst)?;
    patch.validate(&app.config.taxonomy)?;
    let store = app.store.clone();
    blocking(move || {
        let at = now_rfc3339();
        let updated = store
            .update_conversation(&id, &mut |c| {
                apply_patch(&mut c.review, &patch, &caller.id, &at)
            })?
            .ok_or_else(|| not_found(&id))?;
        let details =
            json!({"fields": patch.changed_fields(), "status": updated.review.status.as_str()});
        crate::audit::record(
            store.as_ref(),
            &caller.id,
            "conversation.update",
            &id,
            details,
        )?;
        detail(&store, &updated, &[])
    })
    .await
    .map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bulk {
    ids: Vec<String>,
    action: BulkAction,
}

pub async fn bulk_review(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(bulk): ApiJson<Bulk>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Analyst)?;
    if bulk.ids.is_empty() || bulk.ids.len() > MAX_BULK {
        return Err(ApiError::invalid(
            format!("`ids` must hold 1 to {MAX_BULK} conversation ids"),
            Some("ids"),
        ));
    }
    let store = app.store.clone();
    blocking(move || {
        let at = now_rfc3339();
        let status = bulk.action.status();
        let (mut updated, mut missing) = (0, Vec::new());
        for id in &bulk.ids {
            let changed = store.update_conversation(id, &mut |c| {
                c.review.status = status;
                c.review.reviewer = Some(caller.id.to_string());
                c.review.reviewed_at = Some(at.clone());
            })?;
            match changed {
                Some(_) => updated += 1,
                None => missing.push(id.clone()),
            }
        }
        let details = json!({"action": status.as_str(), "ids": bulk.ids, "updated": updated});
        crate::audit::record(
            store.as_ref(),
            &caller.id,
            "conversation.bulk",
            "conversations",
            details,
        )?;
        Ok::<_, ApiError>(json!({"object": "bulk_result", "updated": updated, "missing": missing}))
    })
    .await
    .map(Json)
}

pub async fn delete_conversation(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    let store = app.store.clone();
    blocking(move || {
        let deleted = store
            .delete_conversation(&id)?
            .ok_or_else(|| not_found(&id))?;
        let details =
            json!({"turns": deleted.inference_ids.len(), "status": deleted.review.status.as_str()});
        crate::audit::record(
            store.as_ref(),
            &caller.id,
            "conversation.delete",
            &id,
            details,
        )?;
        Ok::<_, ApiError>(StatusCode::NO_CONTENT)
    })
    .await
}

pub async fn get_stats(State(app): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let store = app.store.clone();
    let tallies = blocking(move || store.tallies()).await?;
    Ok(Json(crate::review::stats(&tallies, &app.config.taxonomy)))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("no conversation with id `{id}`"),
        param: Some("id".into()),
        code: "not_found",
    }
}

/// A conversation answered a moment ago whose first turn the capture
/// writer has not stored yet.
fn being_written(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!(
            "conversation `{id}` was answered a moment ago and is still being written; retry shortly"
        ),
        param: Some("id".into()),
        code: "not_found",
    }
}

/// The stored conversation with its turns. `registered` are its turns
/// answered a moment ago (turn, inference id): those the capture writer
/// has not stored yet show as `writing` — never as `missing`, which
/// means lost in a crash.
fn detail(
    store: &SharedStore,
    c: &ConversationRecord,
    registered: &[(usize, String)],
) -> Result<Value, ApiError> {
    let turns = c
        .inference_ids
        .iter()
        .map(|id| {
            Ok(TurnRecords {
                inference_id: id.clone(),
                inference: store.inference(id)?,
                feedback: store.feedback_for(id)?,
                shadows: store.shadows_of(id)?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let mut view = conversation_detail(c, &turns);
    let writing = |id: &str| json!({"inference_id": id, "status": "writing", "feedback": []});
    if let Some(shown) = view["turns"].as_array_mut() {
        for turn in shown.iter_mut() {
            let id = turn["inference_id"].as_str().unwrap_or("").to_string();
            if turn["status"] == "missing" && registered.iter().any(|(_, r)| *r == id) {
                *turn = writing(&id);
            }
        }
        let stored = c.inference_ids.len();
        shown.extend(
            registered
                .iter()
                .filter(|(turn, _)| *turn >= stored)
                .map(|(_, id)| writing(id)),
        );
    }
    Ok(view)
}
