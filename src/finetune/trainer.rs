//! Jobs of a trainer command (`kind = "command"`): the organisation's own
//! trainer run as a child process instead of a provider's job.
//!
//! The first step writes the dataset's two JSONL files into the job's
//! directory under `adapters_dir`, marks the run in the record, and starts
//! the command (`command.rs`: the argv template) in a process group of its
//! own (`process.rs`). Each later step turns the output lines since the
//! last into job events — a JSON line `{"step", "total_steps",
//! "train_loss", "valid_loss"}` into progress and the job's metrics — and,
//! once the trainer exited, judges it: exit 0 with `adapter_config.json`
//! in the output directory is success, and the adapter is loaded and
//! registered (`lora`); anything else fails the job with the last lines of
//! stderr. A trainer past `max_run_s` is stopped and its job fails.
//!
//! A run recorded as started that this process does not hold was started
//! by a Flywheel that stopped: the trainer (if it still runs, and its
//! environment names the job) is stopped and the job fails, saying so —
//! never lost, never run twice.

mod command;
mod process;

pub use command::check_template;
pub use process::Running;

use super::sync::{Stage, fail_with, note, note_at};
use super::{Context, dataset_file, lora, save};
use crate::config::{ProviderConfig, ProviderKind};
use crate::ids::now_rfc3339;
use crate::store::{DatasetSplit, FineTuneJobRecord, JobStatus, StoreError, TrainerRun};
use process::{Exit, Line, Run};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What counts as an adapter in the output directory: PEFT writes it
/// beside the weights, and vLLM reads it to load one.
pub const ADAPTER_MARKER: &str = "adapter_config.json";
/// The output directory inside the job's directory.
const OUTPUT_DIR: &str = "adapter";

/// The reason a job fails when the Flywheel that started its trainer stopped.
pub const RESTARTED: &str = "Flywheel stopped while the trainer was running; start the job again";

/// The trainer's configuration when `name` is a `command` provider.
pub fn command_provider<'a>(app: &'a Context, name: &str) -> Option<&'a ProviderConfig> {
    app.config
        .providers
        .iter()
        .find(|p| p.name == name && p.kind == ProviderKind::Command)
}

/// One step of a trainer job; the caller stores the record if it changed.
pub async fn step(
    app: &Arc<Context>,
    trainer: &ProviderConfig,
    job: &mut FineTuneJobRecord,
) -> Result<(), StoreError> {
    if job.fine_tuned_model.is_some() {
        // Trained; what is left is loading and registering.
        return lora::serve(app, trainer, job).await;
    }
    if job.trainer.is_none() {
        return start(app, trainer, job).await;
    }
    match app.jobs.trainers.get(&job.id) {
        Some(run) => follow(app, trainer, job, &run).await,
        None => {
            orphaned(job).await;
            Ok(())
        }
    }
}

/// Writes the data, marks the run, starts the trainer.
async fn start(
    app: &Arc<Context>,
    trainer: &ProviderConfig,
    job: &mut FineTuneJobRecord,
) -> Result<(), StoreError> {
    let root = trainer.adapters_dir.clone().unwrap_or_default();
    let dir = match prepare_dir(app, &root, job).await {
        Ok(Some(dir)) => dir,
        Ok(None) => {
            let message = format!("dataset `{}` has no training examples", job.dataset_id);
            fail_with(job, Stage::Upload, None, &message, Value::Null);
            return Ok(());
        }
        Err(Prepare::Store(e)) => return Err(e),
        Err(Prepare::Io(message)) => {
            fail_with(job, Stage::Upload, None, &message, Value::Null);
            return Ok(());
        }
    };
    let output = dir.join(OUTPUT_DIR);
    let adapter_name = super::register::version_name(job);
    let argv = command::expand(
        &trainer.command,
        job,
        &adapter_name,
        &command::Paths {
            data: &dir,
            train: &dir.join("train.jsonl"),
            validation: &dir.join("validation.jsonl"),
            output: &output,
        },
    );
    // Marked before the process starts: a Flywheel that stops from here
    // on finds the mark and never starts the trainer a second time.
    job.trainer = Some(TrainerRun {
        output_dir: output.display().to_string(),
        started_at: now_rfc3339(),
        ..TrainerRun::default()
    });
    job.attempts.submit = true;
    save(app, job).await?;
    match process::spawn(&argv, &dir, &job.id) {
        Ok(run) => {
            if let Some(t) = job.trainer.as_mut() {
                t.pid = Some(run.pid);
                t.process_start = process::start_ticks(run.pid);
            }
            job.status = JobStatus::Running;
            note(
                job,
                "info",
                format!(
                    "Started the trainer on {} (process group {}): {}",
                    trainer.name,
                    run.pid,
                    argv.join(" ")
                ),
            );
            app.jobs.trainers.insert(&job.id, run);
        }
        Err(e) => {
            let program = argv.first().map_or("", String::as_str);
            let message = format!("could not start the trainer `{program}`: {e}");
            fail_with(job, Stage::Create, None, &message, Value::Null);
        }
    }
    Ok(())
}

enum Prepare {
    Store(StoreError),
    Io(String),
}

/// `{adapters_dir}/{job id}/` with `train.jsonl` and `validation.jsonl`
/// (not written when the dataset has no validation split), as an absolute path
/// (servers load the adapter by it); `None` without training examples.
async fn prepare_dir(
    app: &Arc<Context>,
    root: &Path,
    job: &FineTuneJobRecord,
) -> Result<Option<PathBuf>, Prepare> {
    let train = dataset_file(app, &job.dataset_id, DatasetSplit::Train)
        .await
        .map_err(Prepare::Store)?;
    let Some(train) = train.filter(|b| !b.trim_ascii().is_empty()) else {
        return Ok(None);
    };
    let validation = dataset_file(app, &job.dataset_id, DatasetSplit::Validation)
        .await
        .map_err(Prepare::Store)?
        .unwrap_or_default();
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Prepare::Io(format!("cannot {what} {}: {e}", path.display()))
    };
    let dir = root.join(&job.id);
    tokio::fs::create_dir_all(dir.join(OUTPUT_DIR))
        .await
        .map_err(|e| io("create", &dir, e))?;
    let dir = tokio::fs::canonicalize(&dir)
        .await
        .map_err(|e| io("resolve", &dir, e))?;
    for (name, bytes) in [("train.jsonl", train), ("validation.jsonl", validation)] {
        if bytes.trim_ascii().is_empty() {
            // No validation split: no file, so a trainer that finds the
            // files by name (a dataset loader given the directory) sees none.
            continue;
        }
        let path = dir.join(name);
        tokio::fs::write(&path, bytes)
            .await
            .map_err(|e| io("write", &path, e))?;
    }
    Ok(Some(dir))
}

/// The output since the last step into the record; the end judged.
async fn follow(
    app: &Arc<Context>,
    trainer: &ProviderConfig,
    job: &mut FineTuneJobRecord,
    run: &Arc<Run>,
) -> Result<(), StoreError> {
    // The exit is read first: it is set once the output is all read, so
    // the lines drained after it are the last ones.
    let exit = run.exit();
    take_output(job, run);
    let Some(exit) = exit else {
        if run.started.elapsed().as_secs() >= trainer.max_run_s {
            run.stop().await;
            app.jobs.trainers.remove(&job.id);
            take_output(job, run);
            let message = format!(
                "the trainer ran longer than max_run_s ({} s) and was stopped",
                trainer.max_run_s
            );
            fail_with(job, Stage::Run, None, &message, tail(run, None));
        }
        return Ok(());
    };
    app.jobs.trainers.remove(&job.id);
    let code = match &exit {
        Exit::Code(c) => Some(*c),
        Exit::Other(_) => None,
    };
    if let Some(t) = job.trainer.as_mut() {
        t.exit_code = code;
    }
    let output = job
        .trainer
        .as_ref()
        .map(|t| PathBuf::from(&t.output_dir))
        .unwrap_or_default();
    let message = match exit {
        Exit::Code(0) if output.join(ADAPTER_MARKER).is_file() => {
            let name = super::register::version_name(job);
            note(
                job,
                "info",
                format!(
                    "The trainer finished; adapter {name} is in {}",
                    output.display()
                ),
            );
            job.fine_tuned_model = Some(name);
            return lora::serve(app, trainer, job).await;
        }
        Exit::Code(0) => format!(
            "the trainer exited 0 but wrote no adapter ({ADAPTER_MARKER} is not in {})",
            output.display()
        ),
        Exit::Code(c) => format!("the trainer exited with status {c}"),
        Exit::Other(how) => format!("the trainer ended without an exit status ({how})"),
    };
    let stderr = run.stderr_tail();
    let message = match stderr.last() {
        Some(_) => format!("{message}; its last stderr lines:\n{}", stderr.join("\n")),
        None => message,
    };
    fail_with(job, Stage::Run, None, &message, tail(run, code));
    Ok(())
}

/// What a failed run's error keeps besides the message.
fn tail(run: &Run, code: Option<i32>) -> Value {
    json!({"exit_code": code, "stderr": run.stderr_tail()})
}

/// Output lines become events; progress lines also the job's metrics.
fn take_output(job: &mut FineTuneJobRecord, run: &Run) {
    let (lines, skipped) = run.drain();
    if skipped > 0 {
        note(
            job,
            "warn",
            format!("{skipped} lines of the trainer's output came faster than they were kept"),
        );
    }
    // Both streams are plain events: trainers log to stderr as a matter
    // of course, so only the exit says whether something went wrong.
    for Line { at, text } in lines {
        match progress(&text) {
            Some((metrics, summary)) => {
                job.metrics = Some(metrics);
                note_at(job, at, "info", summary);
            }
            None => note_at(job, at, "info", text),
        }
    }
}

/// A line `{"step": …, "total_steps": …, "train_loss": …, "valid_loss": …}`
/// (any of the losses may be missing) as the job's metrics — the fields
/// the provider's metrics events carry — and a readable event.
fn progress(line: &str) -> Option<(Value, String)> {
    let value: Value = serde_json::from_str(line.trim()).ok()?;
    let object = value.as_object()?;
    let step = object.get("step")?.as_u64()?;
    let mut metrics = serde_json::Map::new();
    metrics.insert("step".into(), step.into());
    let mut summary = match object.get("total_steps").and_then(Value::as_u64) {
        Some(total) => {
            metrics.insert("total_steps".into(), total.into());
            format!("Step {step}/{total}")
        }
        None => format!("Step {step}"),
    };
    for (key, label) in [
        ("train_loss", "training loss"),
        ("valid_loss", "validation loss"),
    ] {
        if let Some(loss) = object.get(key).and_then(Value::as_f64) {
            metrics.insert(key.into(), loss.into());
            summary.push_str(&format!(", {label} {loss:.4}"));
        }
    }
    Some((Value::Object(metrics), summary))
}

/// The run a previous process started: stopped if it still runs, and the
/// job failed.
async fn orphaned(job: &mut FineTuneJobRecord) {
    if let Some(pid) = orphan(job) {
        process::stop_orphan(pid).await;
        note(
            job,
            "warn",
            format!(
                "Stopped the trainer left running by the previous process (process group {pid})"
            ),
        );
    }
    fail_with(job, Stage::Run, None, RESTARTED, Value::Null);
}

/// The process group of a trainer another Flywheel process started for
/// `job`, when it still runs.
fn orphan(job: &FineTuneJobRecord) -> Option<u32> {
    let run = job.trainer.as_ref()?;
    let pid = run.pid?;
    process::is_ours(pid, &job.id, run.process_start).then_some(pid)
}

/// Cancels what `job`'s trainer left going: its process if it runs, and
/// the adapter where a trained job had loaded it before it was
/// registered (a server that was down held the rest back), so nothing is
/// left half-registered.
pub async fn cancel(app: &Context, job: &mut FineTuneJobRecord) {
    stop(app, job).await;
    if let Some(name) = job.fine_tuned_model.clone()
        && job
            .trainer
            .as_ref()
            .is_some_and(|t| !t.loaded_on.is_empty())
    {
        lora::undo(app, job, &name).await;
    }
}

/// Stops `job`'s trainer if it runs.
async fn stop(app: &Context, job: &mut FineTuneJobRecord) {
    if let Some(run) = app.jobs.trainers.remove(&job.id) {
        run.stop().await;
        take_output(job, &run);
        note(
            job,
            "info",
            format!("Stopped the trainer (process group {})", run.pid),
        );
        return;
    }
    if let Some(pid) = orphan(job) {
        process::stop_orphan(pid).await;
        note(
            job,
            "info",
            format!("Stopped the trainer (process group {pid})"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_become_metrics_and_other_lines_do_not() {
        let (metrics, summary) =
            progress(r#"{"step": 3, "total_steps": 10, "train_loss": 0.5, "valid_loss": 0.625}"#)
                .unwrap();
        assert_eq!(
            metrics,
            json!({"step": 3, "total_steps": 10, "train_loss": 0.5, "valid_loss": 0.625})
        );
        assert_eq!(
            summary,
            "Step 3/10, training loss 0.5000, validation loss 0.6250"
        );
        let (metrics, _) = progress(r#"{"step": 1}"#).unwrap();
        assert_eq!(metrics, json!({"step": 1}));
        assert!(progress("Loading checkpoint shards: 100%").is_none());
        assert!(progress(r#"{"loss": 0.1}"#).is_none());
        assert!(progress("[1, 2]").is_none());
    }
}
