//! The Files API: `POST /v1/files` (multipart `file` and `purpose`),
//! `GET /v1/files`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content` and
//! `DELETE /v1/files/{id}`, with OpenAI's file object. A `fine-tune` upload
//! is checked line by line (see `dataset`) before it is accepted.

use super::Sim;
use super::dataset;
use super::lab::StoredFile;
use super::pagination::PageRequest;
use super::training::Trained;
use super::wire::{self, ApiError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;

/// The purposes OpenAI accepts for an upload.
const PURPOSES: &[&str] = &[
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
];

/// OpenAI lists up to this many files a page, and as many by default.
const MAX_FILES_PAGE: usize = 10_000;

/// Files larger than this are refused (OpenAI allows far more; a simulator
/// keeps them in memory).
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// The file object, exactly the fields OpenAI documents.
pub fn object(file: &StoredFile) -> Value {
    json!({
        "id": file.id,
        "object": "file",
        "bytes": file.bytes.len(),
        "created_at": file.created_at,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
    })
}

/// A finished run's step metrics as CSV, the result file OpenAI attaches
/// to a succeeded job (purpose `fine-tune-results`).
pub fn results_file(run: &Trained, created_at: u64) -> StoredFile {
    let mut csv = String::from("step,train_loss,train_accuracy,valid_loss,valid_accuracy\n");
    for m in &run.metrics {
        let (valid_loss, valid_accuracy) =
            m.valid.map_or((String::new(), String::new()), |(l, a)| {
                (format!("{l:.6}"), format!("{a:.6}"))
            });
        csv.push_str(&format!(
            "{},{:.6},{:.6},{valid_loss},{valid_accuracy}\n",
            m.step, m.train_loss, m.train_accuracy
        ));
    }
    StoredFile {
        id: format!("file-{}", ulid::Ulid::new()),
        filename: "step_metrics.csv".into(),
        purpose: "fine-tune-results".into(),
        created_at,
        bytes: Bytes::from(csv),
    }
}

/// The 404 for a file id the simulator does not hold, worded as OpenAI's.
pub fn not_found(id: &str, param: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("No such File object: {id}"),
    )
    .param(param)
}

fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    id.map(|Path(id)| id)
        .map_err(|rejection| ApiError::invalid(rejection.body_text()))
}

/// The upload's parts, before they are checked.
#[derive(Default)]
struct Upload {
    file: Option<(String, Bytes)>,
    purpose: Option<String>,
}

async fn read_upload(mut multipart: Multipart) -> Result<Upload, ApiError> {
    let mut upload = Upload::default();
    let broken = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(e.status(), "invalid_request_error", e.body_text())
    };
    while let Some(field) = multipart.next_field().await.map_err(broken)? {
        match field.name() {
            Some("file") => {
                let name = field.file_name().unwrap_or("file").to_string();
                upload.file = Some((name, field.bytes().await.map_err(broken)?));
            }
            Some("purpose") => upload.purpose = Some(field.text().await.map_err(broken)?),
            // OpenAI ignores parts it does not know (`expires_after`, say).
            _ => {}
        }
    }
    Ok(upload)
}

/// Turns the parts into a file, or says which one is wrong.
fn accept(upload: Upload) -> Result<StoredFile, ApiError> {
    let missing = |param: &str| {
        ApiError::invalid(format!("Missing required parameter: '{param}'."))
            .param(param)
            .code("missing_required_parameter")
    };
    let purpose = upload.purpose.ok_or_else(|| missing("purpose"))?;
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid(format!(
            "'{purpose}' is not one of {} - 'purpose'",
            PURPOSES.join(", ")
        ))
        .param("purpose"));
    }
    let (filename, bytes) = upload.file.ok_or_else(|| missing("file"))?;
    if purpose == "fine-tune" {
        dataset::check(&bytes).map_err(|why| ApiError::invalid(why).param("file"))?;
    }
    Ok(StoredFile {
        id: format!("file-{}", ulid::Ulid::new()),
        filename,
        purpose,
        created_at: wire::now_unix(),
        bytes,
    })
}

pub async fn upload(
    State(sim): State<Sim>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let multipart = multipart.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            "invalid_request_error",
            rejection.body_text(),
        )
    })?;
    let file = accept(read_upload(multipart).await?)?;
    let body = object(&file);
    sim.lab.state().files.push(file);
    Ok(Json(body))
}

/// Newest first, optionally only one `purpose`.
pub async fn list(
    State(sim): State<Sim>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let purpose = query
        .as_ref()
        .ok()
        .and_then(|Query(q)| q.get("purpose").cloned());
    let page = PageRequest::from_query(query, MAX_FILES_PAGE, MAX_FILES_PAGE)?;
    let items = sim
        .lab
        .state()
        .files
        .iter()
        .rev()
        .filter(|f| purpose.as_ref().is_none_or(|p| *p == f.purpose))
        .map(|f| (f.id.clone(), object(f)))
        .collect();
    Ok(Json(page.page(items)))
}

pub async fn retrieve(
    State(sim): State<Sim>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let state = sim.lab.state();
    let file = state.file(&id).ok_or_else(|| not_found(&id, "id"))?;
    Ok(Json(object(file)))
}

/// The bytes as uploaded.
pub async fn content(
    State(sim): State<Sim>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let bytes = sim
        .lab
        .state()
        .file(&id)
        .map(|f| f.bytes.clone())
        .ok_or_else(|| not_found(&id, "id"))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

pub async fn delete(
    State(sim): State<Sim>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let mut state = sim.lab.state();
    let before = state.files.len();
    state.files.retain(|f| f.id != id);
    if state.files.len() == before {
        return Err(not_found(&id, "id"));
    }
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}
