//! Starting a job: the request checked against the alias, the dataset and
//! the providers, then stored as `preparing` for the poller to carry on.

use super::Context;
use super::{JOB_ID_KEY, JobError, invalid};
use crate::config::Config;
use crate::ids::{new_id, now_rfc3339};
use crate::store::{
    DatasetRecord, FineTuneJobRecord, Hyperparameters, JobEvent, JobStatus, ModelAliasRecord,
};
use std::collections::BTreeMap;

/// What `POST /fine-tuning/jobs` asks for; unset fields take defaults
/// from the alias's production version and the dataset.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub alias: String,
    pub dataset_id: String,
    pub provider: Option<String>,
    pub base_model: Option<String>,
    pub suffix: Option<String>,
    pub seed: Option<u64>,
    /// `supervised` or `dpo`; follows the dataset's format when unset.
    pub method: Option<String>,
    pub hyperparameters: Hyperparameters,
    /// Passed to the provider with the job (besides `flywheel_job_id`).
    pub metadata: BTreeMap<String, String>,
}

/// The most metadata keys OpenAI takes, one of which is ours.
const MAX_METADATA: usize = 16;
const MAX_SEED: u64 = 2_147_483_647;

/// Checks `new`, stores the job and wakes the poller. Blocking: it reads
/// and writes the store.
pub fn create_job(app: &Context, new: NewJob, actor: &str) -> Result<FineTuneJobRecord, JobError> {
    if !app.config.fine_tuning.enabled {
        return Err(JobError::Disabled);
    }
    let alias = app
        .registry
        .alias(&new.alias)
        .ok_or_else(|| JobError::NotFound {
            message: format!("no model alias named `{}`", new.alias),
            param: "alias",
        })?;
    let dataset = app
        .store
        .dataset(&new.dataset_id)?
        .ok_or_else(|| JobError::NotFound {
            message: format!("no dataset with id `{}`", new.dataset_id),
            param: "dataset_id",
        })?;
    ready(&dataset)?;
    let method = method(&dataset, new.method.as_deref())?;
    let production = alias.version(&alias.production);
    let provider = provider(&app.config, new.provider.as_deref(), &alias)?;
    let base_model = new
        .base_model
        .clone()
        .or_else(|| dataset.base_model.clone())
        .or_else(|| production.map(|v| v.model.clone()))
        .ok_or_else(|| invalid("name the `base_model` to fine-tune", "base_model"))?;
    check_settings(&new)?;
    let mut record = job_record(new, dataset, provider, base_model, method, actor);
    record.model_type = alias.model_type.clone();
    record.approved_at_start = Some(app.store.tallies()?.approved);
    app.store.put_job(&record)?;
    crate::audit::record(
        app.store.as_ref(),
        actor,
        "fine_tuning.job.create",
        &record.id,
        serde_json::json!({
            "alias": record.alias,
            "dataset_id": record.dataset_id,
            "provider": record.provider,
            "base_model": record.base_model,
            "method": record.method,
            "hyperparameters": record.hyperparameters,
        }),
    )?;
    app.jobs.wake();
    Ok(record)
}

fn job_record(
    new: NewJob,
    dataset: DatasetRecord,
    provider: String,
    base_model: String,
    method: &'static str,
    actor: &str,
) -> FineTuneJobRecord {
    let at = now_rfc3339();
    FineTuneJobRecord {
        id: new_id("job"),
        alias: new.alias,
        model_type: String::new(),
        dataset_id: dataset.id.clone(),
        provider,
        base_model,
        method: method.to_string(),
        hyperparameters: new.hyperparameters,
        suffix: new.suffix,
        seed: new.seed,
        metadata: new.metadata,
        status: JobStatus::Preparing,
        provider_job_id: None,
        provider_files: Default::default(),
        trained_tokens: None,
        fine_tuned_model: None,
        registered_version: None,
        error: None,
        events: vec![JobEvent {
            at: at.clone(),
            level: "info".into(),
            message: format!("Created from dataset {} ({})", dataset.id, dataset.name),
        }],
        metrics: None,
        created_at: at,
        approved_at_start: None,
        created_by: actor.to_string(),
        finished_at: None,
        last_provider_event: None,
        attempts: Default::default(),
        deployment: None,
        trainer: None,
    }
}

/// The build report's verdict; its problems say what is missing.
fn ready(dataset: &DatasetRecord) -> Result<(), JobError> {
    if dataset.report.get("ready_for_training") == Some(&serde_json::Value::Bool(true)) {
        return Ok(());
    }
    let problems: Vec<&str> = dataset
        .report
        .get("problems")
        .and_then(|p| p.as_array())
        .map(|p| p.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    Err(JobError::NotReady {
        dataset: dataset.id.clone(),
        problems: if problems.is_empty() {
            "its report does not say it is ready".into()
        } else {
            problems.join("; ")
        },
    })
}

/// SFT datasets train `supervised`, DPO datasets `dpo`.
fn method(dataset: &DatasetRecord, asked: Option<&str>) -> Result<&'static str, JobError> {
    let natural = if dataset.format == "dpo" {
        "dpo"
    } else {
        "supervised"
    };
    match asked {
        None => Ok(natural),
        Some(m) if m == natural => Ok(natural),
        Some(m @ ("supervised" | "dpo")) => Err(invalid(
            format!(
                "method `{m}` needs a {} dataset; `{}` is {}",
                if m == "dpo" { "dpo" } else { "sft" },
                dataset.id,
                dataset.format
            ),
            "method",
        )),
        Some(other) => Err(invalid(
            format!("`method` must be `supervised` or `dpo`, not `{other}`"),
            "method",
        )),
    }
}

/// The named provider, else the production version's, else the first
/// one that fine-tunes; it must have `fine_tuning = true`.
fn provider(
    config: &Config,
    asked: Option<&str>,
    alias: &ModelAliasRecord,
) -> Result<String, JobError> {
    let tunes = |name: &str| {
        config
            .providers
            .iter()
            .any(|p| p.name == name && p.fine_tuning)
    };
    if let Some(name) = asked {
        if !config.providers.iter().any(|p| p.name == name) {
            return Err(invalid(format!("no provider named `{name}`"), "provider"));
        }
        if !tunes(name) {
            return Err(invalid(
                format!("provider `{name}` does not fine-tune (its `fine_tuning` is not true)"),
                "provider",
            ));
        }
        return Ok(name.to_string());
    }
    let production = alias
        .version(&alias.production)
        .map(|v| v.provider.as_str());
    if let Some(name) = production.filter(|p| tunes(p)) {
        return Ok(name.to_string());
    }
    config
        .providers
        .iter()
        .find(|p| p.fine_tuning)
        .map(|p| p.name.clone())
        .ok_or_else(|| {
            invalid(
                "no configured provider has `fine_tuning = true`",
                "provider",
            )
        })
}

/// The ranges OpenAI accepts, so a mistake is refused now rather than by
/// the provider minutes later.
fn check_settings(new: &NewJob) -> Result<(), JobError> {
    if let Some(suffix) = &new.suffix {
        let ok = (1..=64).contains(&suffix.chars().count())
            && suffix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return Err(invalid(
                "`suffix` must be 1–64 letters, digits, `-`, `_` or `.`",
                "suffix",
            ));
        }
    }
    if new.seed.is_some_and(|s| s > MAX_SEED) {
        return Err(invalid(
            format!("`seed` must be from 0 to {MAX_SEED}"),
            "seed",
        ));
    }
    let h = &new.hyperparameters;
    if h.n_epochs.is_some_and(|n| !(1..=50).contains(&n)) {
        return Err(invalid(
            "`hyperparameters.n_epochs` must be from 1 to 50",
            "hyperparameters.n_epochs",
        ));
    }
    if h.batch_size.is_some_and(|n| !(1..=256).contains(&n)) {
        return Err(invalid(
            "`hyperparameters.batch_size` must be from 1 to 256",
            "hyperparameters.batch_size",
        ));
    }
    if h.learning_rate_multiplier
        .is_some_and(|m| !(m > 0.0 && m <= 10.0))
    {
        return Err(invalid(
            "`hyperparameters.learning_rate_multiplier` must be above 0 and at most 10",
            "hyperparameters.learning_rate_multiplier",
        ));
    }
    check_metadata(&new.metadata)
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), JobError> {
    if metadata.contains_key(JOB_ID_KEY) {
        return Err(invalid(
            format!("`metadata.{JOB_ID_KEY}` is set by Flywheel"),
            "metadata",
        ));
    }
    if metadata.len() >= MAX_METADATA {
        return Err(invalid(
            format!("`metadata` may have at most {} keys", MAX_METADATA - 1),
            "metadata",
        ));
    }
    let too_long = metadata
        .iter()
        .any(|(k, v)| k.is_empty() || k.chars().count() > 64 || v.chars().count() > 512);
    if too_long {
        return Err(invalid(
            "`metadata` keys must be 1–64 characters and values at most 512",
            "metadata",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(format: &str, report: serde_json::Value) -> DatasetRecord {
        DatasetRecord {
            id: "ds_1".into(),
            name: "n".into(),
            format: format.into(),
            created_at: "t".into(),
            created_by: "k".into(),
            filter: serde_json::Value::Null,
            alias: None,
            base_model: None,
            validation_split: 0.2,
            report,
            train_ids: Vec::new(),
            validation_ids: Vec::new(),
        }
    }

    #[test]
    fn a_dataset_not_ready_says_why() {
        let d = dataset(
            "sft",
            serde_json::json!({"ready_for_training": false, "problems": ["12 examples; at least 50 are needed"]}),
        );
        let e = ready(&d).unwrap_err().to_string();
        assert!(e.contains("at least 50"), "{e}");
        let d = dataset("sft", serde_json::json!({"ready_for_training": true}));
        assert!(ready(&d).is_ok());
    }

    #[test]
    fn the_method_follows_the_dataset_format() {
        let sft = dataset("sft", serde_json::Value::Null);
        let dpo = dataset("dpo", serde_json::Value::Null);
        assert_eq!(method(&sft, None).unwrap(), "supervised");
        assert_eq!(method(&dpo, None).unwrap(), "dpo");
        assert_eq!(method(&dpo, Some("dpo")).unwrap(), "dpo");
        let e = method(&sft, Some("dpo")).unwrap_err().to_string();
        assert!(e.contains("dpo dataset"), "{e}");
        assert!(method(&sft, Some("rl")).is_err());
    }

    #[test]
    fn settings_outside_what_providers_accept_are_refused() {
        let with = |h: Hyperparameters| NewJob {
            hyperparameters: h,
            ..NewJob::default()
        };
        let param = |new: &NewJob| match check_settings(new) {
            Err(JobError::Invalid { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        let h = Hyperparameters::default();
        assert_eq!(
            param(&with(Hyperparameters {
                n_epochs: Some(0),
                ..h
            })),
            "hyperparameters.n_epochs"
        );
        assert_eq!(
            param(&with(Hyperparameters {
                batch_size: Some(257),
                ..h
            })),
            "hyperparameters.batch_size"
        );
        assert_eq!(
            param(&with(Hyperparameters {
                learning_rate_multiplier: Some(0.0),
                ..h
            })),
            "hyperparameters.learning_rate_multiplier"
        );
        let suffix = NewJob {
            suffix: Some("has space".into()),
            ..NewJob::default()
        };
        assert_eq!(param(&suffix), "suffix");
        let reserved = NewJob {
            metadata: [(JOB_ID_KEY.to_string(), "x".to_string())].into(),
            ..NewJob::default()
        };
        assert_eq!(param(&reserved), "metadata");
        assert!(
            check_settings(&with(Hyperparameters {
                n_epochs: Some(3),
                batch_size: Some(8),
                learning_rate_multiplier: Some(0.5),
            }))
            .is_ok()
        );
    }
}
