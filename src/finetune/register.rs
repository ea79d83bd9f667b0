//! A succeeded job's model becomes a candidate version of its alias
//! through the registry (which audits it), with `fine_tuning.canary_weight`
//! percent of the traffic taken from production when that is set.
//! Registering again after a restart finds the version the job made.

use super::Context;
use super::sync::note;
use crate::registry::{Change, RegistryError, Request, weights_of};
use crate::store::{FineTuneJobRecord, StoreError};
use std::sync::Arc;

/// Who the registry's history and the audit log name for these changes.
pub const ACTOR: &str = "fine-tuning";

/// [`register_model`] off the async workers: the job as registration left
/// it, and how registration went.
pub(super) async fn register_off_workers(
    app: &Arc<Context>,
    job: &FineTuneJobRecord,
) -> Result<(FineTuneJobRecord, Result<(), RegistryError>), StoreError> {
    let (state, mut copy) = (app.clone(), job.clone());
    tokio::task::spawn_blocking(move || {
        let result = register_model(&state, &mut copy);
        (copy, result)
    })
    .await
    .map_err(|e| StoreError::Io(format!("registry task failed: {e}")))
}

/// Registers `job`'s fine-tuned model and sets `registered_version`.
/// Blocking: the registry writes the store.
pub fn register_model(app: &Context, job: &mut FineTuneJobRecord) -> Result<(), RegistryError> {
    let Some(model) = job.served_model() else {
        return Ok(());
    };
    let alias = app
        .registry
        .alias(&job.alias)
        .ok_or_else(|| RegistryError::UnknownAlias(job.alias.clone()))?;
    let name = match alias.versions.iter().find(|v| v.origin == job.id) {
        Some(existing) => existing.name.clone(),
        None => {
            let name = version_name(job);
            let reason = format!("fine-tuning job {} succeeded with {model}", job.id);
            app.registry.change(Request {
                alias: &job.alias,
                expected_revision: None,
                actor: ACTOR,
                reason: &reason,
                change: Change::Register {
                    name: name.clone(),
                    provider: super::lora::serving_provider(app, job),
                    model: model.clone(),
                    origin: job.id.clone(),
                },
            })?;
            note(
                job,
                "info",
                format!(
                    "Registered {model} as candidate version {name} of {}",
                    job.alias
                ),
            );
            name
        }
    };
    job.registered_version = Some(name.clone());
    canary(app, job, &name)
}

/// Moves `fine_tuning.canary_weight` percent from production to the new
/// version, unless it already has traffic or production has too little.
fn canary(app: &Context, job: &mut FineTuneJobRecord, version: &str) -> Result<(), RegistryError> {
    let share = app.config.fine_tuning.canary_weight;
    let Some(alias) = app.registry.alias(&job.alias) else {
        return Ok(());
    };
    let mut weights = weights_of(&alias);
    let production = weights.get(&alias.production).copied().unwrap_or(0.0);
    if share <= 0.0 || weights.get(version).copied().unwrap_or(0.0) > 0.0 {
        return Ok(());
    }
    if production < share {
        note(
            job,
            "warn",
            format!("No canary: production has {production} % of the traffic, below {share} %"),
        );
        return Ok(());
    }
    weights.insert(alias.production.clone(), round2(production - share));
    weights.insert(version.to_string(), share);
    let reason = format!("canary for fine-tuning job {}", job.id);
    app.registry.change(Request {
        alias: &job.alias,
        expected_revision: None,
        actor: ACTOR,
        reason: &reason,
        change: Change::Traffic {
            weights,
            shadow: None,
        },
    })?;
    note(
        job,
        "info",
        format!("Canary: {version} serves {share} % of {}", job.alias),
    );
    Ok(())
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `ft-<suffix>-<short id>`: the suffix kept to registry-safe characters
/// and a length that leaves room, the short id the job id's last eight
/// (random) characters.
pub fn version_name(job: &FineTuneJobRecord) -> String {
    let id: Vec<char> = job.id.chars().collect();
    let short: String = id[id.len().saturating_sub(8)..]
        .iter()
        .collect::<String>()
        .to_lowercase();
    let suffix: String = job
        .suffix
        .as_deref()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .take(40)
        .collect();
    if suffix.is_empty() {
        format!("ft-{short}")
    } else {
        format!("ft-{suffix}-{short}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_carry_the_suffix_and_the_jobs_short_id() {
        let mut job: FineTuneJobRecord = serde_json::from_value(serde_json::json!({
            "id": "job_01JDXYZABCDEFGH12345678", "alias": "a", "dataset_id": "d",
            "provider": "p", "base_model": "m", "method": "supervised",
            "hyperparameters": {}, "suffix": "soc-v2", "seed": null, "status": "running",
            "provider_job_id": null, "trained_tokens": null, "fine_tuned_model": null,
            "registered_version": null, "error": null, "events": [], "metrics": null,
            "created_at": "t", "created_by": "k", "finished_at": null
        }))
        .unwrap();
        assert_eq!(version_name(&job), "ft-soc-v2-12345678");
        job.suffix = None;
        assert_eq!(version_name(&job), "ft-12345678");
        job.suffix = Some("x".repeat(64));
        assert!(version_name(&job).len() <= 64);
        assert_eq!(round2(90.0 - 10.0), 80.0);
    }
}
