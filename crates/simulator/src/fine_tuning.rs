//! The fine-tuning routes: `POST /v1/fine_tuning/jobs`, `GET` the list
//! (newest first) and one job, its events and checkpoints, and `POST
//! …/{id}/cancel`. The jobs themselves, and how they move, are in `jobs`.

use super::Sim;
use super::files;
use super::job_request;
use super::jobs::Job;
use super::lab::LabState;
use super::pagination::PageRequest;
use super::wire::ApiError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use tokio::time::Instant;

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// OpenAI's default page sizes, and the most a page may hold.
const JOBS_PAGE: usize = 20;
const EVENTS_PAGE: usize = 20;
const CHECKPOINTS_PAGE: usize = 10;
const MAX_PAGE: usize = 100;

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("No such fine-tuning job: {id}"),
    )
    .param("fine_tuning_job_id")
}

fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    id.map(|Path(id)| id)
        .map_err(|rejection| ApiError::invalid(rejection.body_text()))
}

/// A referenced file must exist and be fine-tuning data.
fn check_file(state: &LabState, id: &str, param: &str) -> Result<(), ApiError> {
    let file = state.file(id).ok_or_else(|| files::not_found(id, param))?;
    if file.purpose != "fine-tune" {
        return Err(ApiError::invalid(format!(
            "File {id} has purpose '{}'; fine-tuning needs a file uploaded with purpose 'fine-tune'.",
            file.purpose
        ))
        .param(param)
        .code("invalid_file_purpose"));
    }
    Ok(())
}

pub async fn create(
    State(sim): State<Sim>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body =
        body.map_err(|r| ApiError::new(r.status(), "invalid_request_error", r.body_text()))?;
    let request = job_request::parse(&body)?;
    let mut state = sim.lab.state();
    check_file(&state, &request.training_file, "training_file")?;
    if let Some(validation) = &request.validation_file {
        check_file(&state, validation, "validation_file")?;
    }
    let job = Job::new(request, sim.lab.job_step);
    let object = job.object();
    state.jobs.push(job);
    Ok(Json(object))
}

pub async fn list(State(sim): State<Sim>, query: Params) -> Result<Json<Value>, ApiError> {
    let page = PageRequest::from_query(query, JOBS_PAGE, MAX_PAGE)?;
    let state = sim.lab.state();
    let jobs = state
        .jobs
        .iter()
        .rev()
        .map(|j| (j.id.clone(), j.object()))
        .collect();
    Ok(Json(page.page(jobs)))
}

pub async fn retrieve(
    State(sim): State<Sim>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let mut state = sim.lab.state();
    let job = state.job_mut(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(job.object()))
}

pub async fn events(
    State(sim): State<Sim>,
    id: Result<Path<String>, PathRejection>,
    query: Params,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let page = PageRequest::from_query(query, EVENTS_PAGE, MAX_PAGE)?;
    let mut state = sim.lab.state();
    let job = state.job_mut(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(page.page(job.visible_events(Instant::now()))))
}

pub async fn checkpoints(
    State(sim): State<Sim>,
    id: Result<Path<String>, PathRejection>,
    query: Params,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let page = PageRequest::from_query(query, CHECKPOINTS_PAGE, MAX_PAGE)?;
    let mut state = sim.lab.state();
    let job = state.job_mut(&id).ok_or_else(|| not_found(&id))?;
    let items = job
        .checkpoints
        .iter()
        .rev()
        .map(|c| (c["id"].as_str().unwrap_or_default().to_string(), c.clone()))
        .collect();
    Ok(Json(page.page(items)))
}

pub async fn cancel(
    State(sim): State<Sim>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(id)?;
    let mut state = sim.lab.state();
    let job = state.job_mut(&id).ok_or_else(|| not_found(&id))?;
    if !job.cancel(Instant::now()) {
        return Err(ApiError::invalid(format!(
            "Job {id} has already {} and cannot be cancelled.",
            job.status.name()
        ))
        .code("job_already_finished"));
    }
    Ok(Json(job.object()))
}
