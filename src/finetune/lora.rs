//! A trained adapter served on vLLM: loaded on every provider the trainer
//! names in `serve_on` (each load in the job's events), then registered
//! as a candidate version with `model` = the adapter's name on the first
//! of them. At start-up every registered adapter is loaded again (a
//! background service; a server that restarted forgot them), and an admin
//! may unload a rolled-back candidate's adapter. A request that finds its
//! adapter forgotten loads it again in `upstream` (`lora.rs`).

use super::register::register_off_workers;
use super::step::{MAX_TRANSIENT, ride_out};
use super::sync::{Stage, fail, fail_with, finish, note};
use super::trainer::command_provider;
use super::{Context, JobError, existing, load, save};
use crate::config::ProviderConfig;
use crate::registry::{RegistryError, weights_of};
use crate::service::{Next, Service, periodic};
use crate::store::{FineTuneJobRecord, JobStatus, StoreError};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The provider a job's version is registered on: the first serving
/// provider of a trainer, else the job's own.
pub fn serving_provider(app: &Context, job: &FineTuneJobRecord) -> String {
    command_provider(app, &job.provider)
        .and_then(|t| t.serve_on.first().cloned())
        .unwrap_or_else(|| job.provider.clone())
}

/// Loads the trained adapter wherever it is not loaded yet, then
/// registers it and ends the job `succeeded`. A server that cannot be
/// reached is tried again at the next poll (as a provider's job rides
/// out); a refusal fails the job and unloads what was loaded, so nothing
/// is left half-registered.
pub async fn serve(
    app: &Arc<Context>,
    trainer: &ProviderConfig,
    job: &mut FineTuneJobRecord,
) -> Result<(), StoreError> {
    let name = job.fine_tuned_model.clone().unwrap_or_default();
    let path = job
        .trainer
        .as_ref()
        .map(|t| t.output_dir.clone())
        .unwrap_or_default();
    for server in &trainer.serve_on {
        if job
            .trainer
            .as_ref()
            .is_some_and(|t| t.loaded_on.contains(server))
        {
            continue;
        }
        let Some(provider) = app.upstreams.by_name(server) else {
            let message = format!("serving provider `{server}` is no longer configured");
            undo(app, job, &name).await;
            fail_with(job, Stage::Register, None, &message, Value::Null);
            return Ok(());
        };
        match provider.load_lora_adapter(&name, &path).await {
            Ok(()) => {
                provider.remember_adapter(&name, &path);
                if let Some(t) = job.trainer.as_mut() {
                    t.loaded_on.push(server.clone());
                }
                note(
                    job,
                    "info",
                    format!("Loaded adapter {name} on {server} from {path}"),
                );
                job.attempts.transient_failures = 0;
                save(app, job).await?;
            }
            Err(e) if e.is_transient() && job.attempts.transient_failures < MAX_TRANSIENT => {
                ride_out(job, Stage::Register, &e);
                return Ok(());
            }
            Err(e) => {
                undo(app, job, &name).await;
                fail(job, Stage::Register, &e);
                return Ok(());
            }
        }
    }
    let (registered, result) = register_off_workers(app, job).await?;
    *job = registered;
    match result {
        Ok(()) => finish(job, JobStatus::Succeeded),
        Err(RegistryError::Store(e)) => return Err(e),
        Err(e) => {
            undo(app, job, &name).await;
            fail_with(job, Stage::Register, None, &e.to_string(), Value::Null);
        }
    }
    Ok(())
}

/// Unloads the adapter from the servers this job loaded it on.
pub(super) async fn undo(app: &Context, job: &mut FineTuneJobRecord, name: &str) {
    let servers = job
        .trainer
        .as_mut()
        .map(|t| std::mem::take(&mut t.loaded_on))
        .unwrap_or_default();
    for server in servers {
        let Some(provider) = app.upstreams.by_name(&server) else {
            continue;
        };
        provider.forget_adapter(name);
        match provider.unload_lora_adapter(name).await {
            Ok(()) => note(
                job,
                "info",
                format!("Unloaded adapter {name} from {server}"),
            ),
            Err(e) => note(
                job,
                "warn",
                format!("Could not unload adapter {name} from {server}: {e}"),
            ),
        }
    }
}

/// Unloads a job's adapter from every server it was loaded on (an admin's
/// choice after a rollback; never automatic). Refused while its version
/// serves traffic.
pub async fn unload_adapter(
    app: &Arc<Context>,
    id: &str,
    actor: &str,
) -> Result<FineTuneJobRecord, JobError> {
    let _held = app.jobs.lock().await;
    let mut job = existing(app, id).await?;
    let Some(name) = job
        .fine_tuned_model
        .clone()
        .filter(|_| job.trainer.is_some())
    else {
        return Err(JobError::Conflict(format!(
            "job `{id}` has no adapter: only a trainer's (`kind = \"command\"`) finished job has one"
        )));
    };
    if let Some(version) = &job.registered_version
        && let Some(alias) = app.registry.alias(&job.alias)
    {
        let weight = weights_of(&alias).get(version).copied().unwrap_or(0.0);
        if alias.production == *version || weight > 0.0 {
            return Err(JobError::Conflict(format!(
                "version `{version}` of `{}` still serves traffic; roll it back or set its weight to 0 first",
                job.alias
            )));
        }
    }
    if job.trainer.as_ref().is_some_and(|t| t.loaded_on.is_empty()) {
        return Err(JobError::Conflict(format!(
            "adapter {name} of job `{id}` is not loaded anywhere"
        )));
    }
    note(
        &mut job,
        "info",
        format!("Unloading adapter {name}, asked by {actor}"),
    );
    undo(app, &mut job, &name).await;
    save(app, &job).await?;
    let (store, target, actor) = (app.store.clone(), job.id.clone(), actor.to_string());
    tokio::task::spawn_blocking(move || {
        crate::audit::record(
            store.as_ref(),
            &actor,
            "fine_tuning.job.unload_adapter",
            &target,
            serde_json::json!({"adapter": name}),
        )
    })
    .await
    .map_err(|e| StoreError::Io(format!("store task failed: {e}")))??;
    Ok(job)
}

/// How often the start-up loading tries again what failed, and how many
/// rounds it makes before it leaves the rest to the request path.
const RESTORE_EVERY: Duration = Duration::from_secs(30);
const RESTORE_ROUNDS: u32 = 20;

/// One adapter to load at start-up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    provider: String,
    name: String,
    path: String,
}

/// Loads every registered adapter on its servers, at start and again
/// every 30 s for what failed (logged, never fatal), until all are loaded.
pub async fn run_restore(app: Arc<Context>, shutdown: CancellationToken) {
    let pending = match collect(&app).await {
        Ok(pending) => pending,
        Err(e) => {
            tracing::error!(error = %e, "could not read the registered LoRA adapters");
            return;
        }
    };
    if pending.is_empty() {
        return;
    }
    let state = Arc::new(Mutex::new((pending, 0u32)));
    let service = Service::every("lora-adapters", RESTORE_EVERY);
    periodic(service, shutdown, || {
        let (app, state) = (app.clone(), state.clone());
        async move { restore_round(&app, &state).await }
    })
    .await;
}

async fn restore_round(
    app: &Context,
    state: &Mutex<(BTreeSet<Pending>, u32)>,
) -> Result<Next, StoreError> {
    let (todo, round) = {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.1 += 1;
        (s.0.clone(), s.1)
    };
    for p in todo {
        let Some(provider) = app.upstreams.by_name(&p.provider) else {
            continue;
        };
        match provider.load_lora_adapter(&p.name, &p.path).await {
            Ok(()) => {
                tracing::info!(provider = %p.provider, adapter = %p.name, "loaded a registered LoRA adapter");
                state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
                    .remove(&p);
            }
            Err(e) => {
                tracing::warn!(provider = %p.provider, adapter = %p.name, error = %e, "could not load a registered LoRA adapter; trying again");
            }
        }
    }
    let left = state.lock().unwrap_or_else(PoisonError::into_inner).0.len();
    Ok(match left {
        0 => Next::Stop("every registered adapter is loaded"),
        _ if round >= RESTORE_ROUNDS => {
            tracing::warn!(
                left,
                round,
                "registered LoRA adapters still not loaded; requests load them when they need them"
            );
            Next::Stop("gave up on the adapters left")
        }
        _ => Next::Wait,
    })
}

/// Every adapter a trainer job registered and left loaded, remembered by
/// its servers at once (so a request finds it even before it is loaded).
async fn collect(app: &Arc<Context>) -> Result<BTreeSet<Pending>, StoreError> {
    let mut pending = BTreeSet::new();
    for alias in app.registry.aliases() {
        for version in &alias.versions {
            if !version.origin.starts_with("job_") {
                continue;
            }
            let Some(job) = load(app, &version.origin).await? else {
                continue;
            };
            let Some(run) = &job.trainer else { continue };
            for server in &run.loaded_on {
                let Some(provider) = app.upstreams.by_name(server) else {
                    continue;
                };
                provider.remember_adapter(&version.model, &run.output_dir);
                pending.insert(Pending {
                    provider: server.clone(),
                    name: version.model.clone(),
                    path: run.output_dir.clone(),
                });
            }
        }
    }
    Ok(pending)
}
