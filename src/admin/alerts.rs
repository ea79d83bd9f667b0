//! `/admin/api/alerts`: what needs an admin's eye (a guardrail that
//! stopped a candidate, a metric under its target), and acknowledging it.

use super::{blocking, list_envelope};
use crate::auth::{Caller, Role};
use crate::ids::now_rfc3339;
use crate::openai::{ApiError, ApiQuery};
use crate::state::AppState;
use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Json;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn list_alerts(
    State(app): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<AlertQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(s) = query
        .state
        .as_deref()
        .filter(|s| !matches!(*s, "open" | "acknowledged"))
    {
        return Err(ApiError::invalid(
            format!("`state` must be `open` or `acknowledged`, not `{s}`"),
            Some("state"),
        ));
    }
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let store = app.store.clone();
    let alerts = blocking(move || {
        let state = query.state;
        store.alerts(query.cursor.as_deref(), limit + 1, &|a| {
            state.as_deref().is_none_or(|s| a.state == s)
        })
    })
    .await?;
    let next_cursor = (alerts.len() > limit).then(|| alerts[limit - 1].id.clone());
    let data = alerts.into_iter().take(limit).map(|a| json!(a)).collect();
    Ok(Json(list_envelope(data, next_cursor)))
}

pub async fn acknowledge_alert(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Analyst)?;
    let store = app.store.clone();
    blocking(move || {
        let mut alert = store.alert(&id)?.ok_or_else(|| ApiError::NotFound {
            message: format!("no alert with id `{id}`"),
            param: Some("id".into()),
            code: "not_found",
        })?;
        if alert.state != "acknowledged" {
            alert.state = "acknowledged".into();
            alert.acknowledged_by = Some(caller.id.to_string());
            alert.acknowledged_at = Some(now_rfc3339());
            store.put_alert(&alert)?;
            crate::audit::record(
                store.as_ref(),
                &caller.id,
                "alert.acknowledge",
                &id,
                json!({"kind": alert.kind}),
            )?;
        }
        Ok::<_, ApiError>(json!(alert))
    })
    .await
    .map(Json)
}
