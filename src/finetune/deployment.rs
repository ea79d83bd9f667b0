//! Azure: a fine-tuned model serves only once it is deployed. With the
//! provider's `[providers.deployment]` management access, a succeeded
//! job's model is deployed under the version's name (`deploy`: marked in
//! the record first, looked up by name before it is created, followed
//! until `Succeeded` — or the job fails, nothing registered); without it
//! the job ends `succeeded` with `deployment.state = awaiting_deployment`
//! and an admin registers the name of the deployment they made
//! (`register_deployment`). A rolled-back version's deployment is deleted
//! only on an admin's request (`delete_deployment`).

use super::register::{register_off_workers, version_name};
use super::sync::note;
use super::{Context, JobError, existing, save};
use crate::ids::now_rfc3339;
use crate::store::{
    DeploymentState, FineTuneJobRecord, JobDeployment, JobStatus, StoreError, VersionState,
};
use crate::upstream::{FineTuningError, Provider};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where the deployment step left the job.
pub enum Progress {
    /// Serving: register the candidate under the deployment's name.
    Ready,
    /// Provisioning: look again at the next poll.
    Provisioning,
    /// No management access: the job ends awaiting an admin.
    Awaiting,
}

/// Why the deployment step stopped short.
pub enum DeployError {
    Provider(FineTuningError),
    /// Nothing a retry would change: the job fails with this message.
    Fatal(String),
    Store(StoreError),
}

impl From<StoreError> for DeployError {
    fn from(e: StoreError) -> Self {
        DeployError::Store(e)
    }
}

/// One step of a succeeded job's deployment at an Azure provider.
pub async fn deploy(
    app: &Arc<Context>,
    provider: &Provider,
    job: &mut FineTuneJobRecord,
) -> Result<Progress, DeployError> {
    let model = job.fine_tuned_model.clone().unwrap_or_default();
    if !provider.manages_deployments() {
        if job.deployment.is_none() {
            job.deployment = Some(JobDeployment {
                state: DeploymentState::AwaitingDeployment,
                name: None,
                managed: false,
                attempted: false,
                created: false,
                started_at: None,
            });
            note(
                job,
                "info",
                format!(
                    "{model} awaits a deployment: deploy it in Azure and register the deployment's name"
                ),
            );
        }
        return Ok(Progress::Awaiting);
    }
    if let Some(problem) = provider.management_problem() {
        return Err(DeployError::Fatal(problem));
    }
    let name = job
        .deployment
        .as_ref()
        .and_then(|d| d.name.clone())
        .unwrap_or_else(|| version_name(job));
    let record = job.deployment.get_or_insert_with(|| JobDeployment {
        state: DeploymentState::Creating,
        name: Some(name.clone()),
        managed: true,
        attempted: false,
        created: false,
        started_at: None,
    });
    if record.state == DeploymentState::Succeeded {
        return Ok(Progress::Ready);
    }
    let (attempted, created) = (record.attempted, record.created);
    let found = if attempted {
        provider
            .get_deployment(&name)
            .await
            .map_err(DeployError::Provider)?
    } else {
        record.attempted = true;
        record.started_at = Some(now_rfc3339());
        note(job, "info", format!("Deploying {model} as {name}"));
        save(app, job).await?;
        None
    };
    let deployment = match found {
        Some(existing) => {
            if !created {
                note(
                    job,
                    "info",
                    format!("Found deployment {name} created before"),
                );
            }
            existing
        }
        None if created => {
            return Err(DeployError::Fatal(format!(
                "deployment {name} is gone from Azure while it provisioned"
            )));
        }
        None => provider
            .create_deployment(&name, &model)
            .await
            .map_err(DeployError::Provider)?,
    };
    if let Some(d) = job.deployment.as_mut() {
        d.created = true;
    }
    let state = deployment.properties.provisioning_state.clone();
    match state.as_str() {
        "Succeeded" => {
            if let Some(d) = job.deployment.as_mut() {
                d.state = DeploymentState::Succeeded;
            }
            note(job, "info", format!("Deployment {name} succeeded"));
            Ok(Progress::Ready)
        }
        "Failed" | "Canceled" => {
            if let Some(d) = job.deployment.as_mut() {
                d.state = DeploymentState::Failed;
            }
            let why = deployment
                .properties
                .error
                .as_ref()
                .and_then(|e| e["message"].as_str())
                .unwrap_or("no reason given");
            Err(DeployError::Fatal(format!(
                "deployment {name} ended {state}: {why}"
            )))
        }
        _ => {
            let started = job.deployment.as_ref().and_then(|d| d.started_at.clone());
            let limit = provider.provisioning_timeout().unwrap_or(Duration::MAX);
            if started
                .as_deref()
                .is_some_and(|at| elapsed_since(at) > limit)
            {
                return Err(DeployError::Fatal(format!(
                    "deployment {name} was still {state} after {} s (deployment.provisioning_timeout_s)",
                    limit.as_secs()
                )));
            }
            Ok(Progress::Provisioning)
        }
    }
}

fn elapsed_since(rfc3339: &str) -> Duration {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .unwrap_or_default()
}

/// An admin names the deployment serving an awaiting job's model: the
/// candidate is registered under it (with the configured canary share).
pub async fn register_deployment(
    app: &Arc<Context>,
    id: &str,
    name: &str,
    actor: &str,
) -> Result<FineTuneJobRecord, JobError> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(JobError::Invalid {
            message:
                "`name` must be an Azure deployment name: 1 to 64 letters, digits, `.`, `_` or `-`"
                    .into(),
            param: "name",
        });
    }
    let _held = app.jobs.lock().await;
    let mut job = existing(app, id).await?;
    let awaiting = job.status == JobStatus::Succeeded
        && job
            .deployment
            .as_ref()
            .is_some_and(|d| d.state == DeploymentState::AwaitingDeployment);
    if !awaiting {
        return Err(JobError::Conflict(format!(
            "job `{id}` is not awaiting a deployment"
        )));
    }
    if let Some(d) = job.deployment.as_mut() {
        d.name = Some(name.to_string());
        d.state = DeploymentState::Succeeded;
    }
    note(
        &mut job,
        "info",
        format!("Deployment {name} registered by {actor}"),
    );
    let (registered, result) = register_off_workers(app, &job).await?;
    result?;
    job = registered;
    save(app, &job).await?;
    audit(
        app,
        actor,
        "fine_tuning.job.deployment.register",
        &job.id,
        json!({"deployment": name}),
    )
    .await?;
    Ok(job)
}

/// Deletes the deployment of a job whose version no longer serves
/// (rolled back or retired: not production, no traffic).
pub async fn delete_deployment(
    app: &Arc<Context>,
    id: &str,
    actor: &str,
) -> Result<FineTuneJobRecord, JobError> {
    let _held = app.jobs.lock().await;
    let mut job = existing(app, id).await?;
    // Flywheel's own deployment in any state (a cancelled job's may still
    // be provisioning), or one an admin registered.
    let Some(name) = job
        .deployment
        .as_ref()
        .filter(|d| d.state == DeploymentState::Succeeded || (d.managed && d.created))
        .filter(|d| d.state != DeploymentState::Deleted)
        .and_then(|d| d.name.clone())
    else {
        return Err(JobError::Conflict(format!(
            "job `{id}` has no deployment to delete"
        )));
    };
    if let Some(version) = &job.registered_version
        && let Some(alias) = app.registry.alias(&job.alias)
        && let Some(v) = alias.version(version)
        && (v.state == VersionState::Production || v.weight > 0.0)
    {
        return Err(JobError::Conflict(format!(
            "version `{version}` still serves {} % of `{}`{}; roll it back or take its traffic first",
            v.weight,
            job.alias,
            if v.state == VersionState::Production {
                " as production"
            } else {
                ""
            }
        )));
    }
    let provider = app.upstreams.by_name(&job.provider).ok_or_else(|| {
        JobError::Conflict(format!(
            "provider `{}` is no longer configured",
            job.provider
        ))
    })?;
    if let Some(problem) = provider.management_problem() {
        return Err(JobError::Conflict(format!(
            "{problem}: delete deployment {name} in Azure instead"
        )));
    }
    provider.delete_deployment(&name).await?;
    if let Some(d) = job.deployment.as_mut() {
        d.state = DeploymentState::Deleted;
    }
    note(
        &mut job,
        "info",
        format!("Deployment {name} deleted by {actor}"),
    );
    save(app, &job).await?;
    audit(
        app,
        actor,
        "fine_tuning.job.deployment.delete",
        &job.id,
        json!({"deployment": name}),
    )
    .await?;
    Ok(job)
}

async fn audit(
    app: &Arc<Context>,
    actor: &str,
    action: &'static str,
    target: &str,
    details: Value,
) -> Result<(), StoreError> {
    let (store, actor, target) = (app.store.clone(), actor.to_string(), target.to_string());
    tokio::task::spawn_blocking(move || {
        crate::audit::record(store.as_ref(), &actor, action, &target, details)
    })
    .await
    .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
}
