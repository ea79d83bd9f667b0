//! A fine-tuning job and the clock that moves it: validating_files → queued
//! → running → succeeded, one `job_step` per status, or failed / cancelled.
//! Time is kept as scheduled instants, and the job is brought up to date
//! whenever the lab is touched (see `lab`): a job nobody polls still
//! finishes on time, with the timestamps it would have had, and a
//! cancelled job simply stops being advanced.

mod view;

use super::dataset::{self, Example};
use super::files;
use super::job_request::{JobRequest, Setting};
use super::lab::StoredFile;
use super::training::{self, Settings, Trained};
use super::tuned::Tuned;
use super::wire;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The organisation named in job objects and fine-tuned model names.
pub const ORGANIZATION: &str = "flywheel-sim";

/// The DPO `beta` "auto" stands for.
const AUTO_BETA: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    ValidatingFiles,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::ValidatingFiles => "validating_files",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

/// A `fine_tuning.job.event`, visible once its time has come.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub due: Instant,
    pub created_at: u64,
    pub level: &'static str,
    pub message: String,
    pub data: Option<Value>,
}

/// The settings once the training file is known.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    settings: Settings,
    beta: f64,
}

/// Where a finished job's outputs go: the lab's files and models.
pub struct Outputs<'l> {
    pub files: &'l mut Vec<StoredFile>,
    pub models: &'l mut Vec<Arc<Tuned>>,
}

#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub request: JobRequest,
    pub seed: u64,
    pub created_at: u64,
    /// Unix milliseconds and the monotonic instant at creation: the
    /// schedule's origin on both clocks.
    created_ms: u64,
    started: Instant,
    step: Duration,
    /// How many status steps have been taken.
    steps: u32,
    pub status: Status,
    pub events: Vec<Event>,
    pub error: Option<Value>,
    pub finished_at: Option<u64>,
    pub fine_tuned_model: Option<String>,
    pub trained_tokens: Option<u64>,
    pub result_files: Vec<String>,
    pub checkpoints: Vec<Value>,
    resolved: Option<Resolved>,
    /// Trained while validating files, published when the run succeeds.
    run: Option<Trained>,
}

impl Job {
    pub fn new(request: JobRequest, step: Duration) -> Self {
        let now_ms = wire::now_unix_ms();
        let seed = request
            .seed
            .unwrap_or_else(|| rand::random::<u64>() % 2_147_483_648);
        let mut job = Self {
            id: format!("ftjob-{}", ulid::Ulid::new()),
            request,
            seed,
            created_at: now_ms / 1000,
            created_ms: now_ms,
            started: Instant::now(),
            step,
            steps: 0,
            status: Status::ValidatingFiles,
            events: Vec::new(),
            error: None,
            finished_at: None,
            fine_tuned_model: None,
            trained_tokens: None,
            result_files: Vec::new(),
            checkpoints: Vec::new(),
            resolved: None,
            run: None,
        };
        job.say(0.0, "info", format!("Created fine-tuning job: {}", job.id));
        let file = job.request.training_file.clone();
        job.say(0.0, "info", format!("Validating training file: {file}"));
        job
    }

    /// The instant and Unix time `steps` status steps after creation.
    fn at(&self, steps: f64) -> (Instant, u64) {
        let offset = self.step.mul_f64(steps);
        let ms = u64::try_from(offset.as_millis()).unwrap_or(u64::MAX);
        (
            self.started + offset,
            self.created_ms.saturating_add(ms) / 1000,
        )
    }

    fn event(&mut self, steps: f64, level: &'static str, message: String, data: Option<Value>) {
        let (due, created_at) = self.at(steps);
        self.events.push(Event {
            id: format!("ftevent-{}", ulid::Ulid::new()),
            due,
            created_at,
            level,
            message,
            data,
        });
    }

    fn say(&mut self, steps: f64, level: &'static str, message: String) {
        self.event(steps, level, message, None);
    }

    /// Takes every status step that is due by `now`.
    pub fn advance(&mut self, now: Instant, outputs: &mut Outputs<'_>) {
        while !self.status.is_final() {
            let next = self.steps + 1;
            if self.at(f64::from(next)).0 > now {
                break;
            }
            self.steps = next;
            self.take_step(f64::from(next), outputs);
        }
    }

    fn take_step(&mut self, at: f64, outputs: &mut Outputs<'_>) {
        if self.request.sim_fail.as_deref() == Some(self.status.name()) {
            let message = format!(
                "The job failed while {} because its metadata.sim_fail asked for it (simulated).",
                self.status.name().replace('_', " ")
            );
            return self.fail(
                at,
                json!({"code": "simulated_failure", "message": message, "param": null}),
            );
        }
        match self.status {
            Status::ValidatingFiles => self.validate(at, outputs.files),
            Status::Queued => self.start(at),
            Status::Running => self.succeed(at, outputs),
            Status::Succeeded | Status::Failed | Status::Cancelled => {}
        }
    }

    fn fail(&mut self, at: f64, error: Value) {
        let message = error["message"]
            .as_str()
            .unwrap_or("The job failed.")
            .to_string();
        self.say(at, "error", message);
        self.status = Status::Failed;
        self.finished_at = Some(self.at(at).1);
        self.error = Some(error);
        self.run = None;
    }

    /// Reads the files and trains, so that a file the trainer cannot use
    /// fails the job here, as OpenAI's validation would.
    fn validate(&mut self, at: f64, files: &[StoredFile]) {
        let read = |id: &str| -> Result<Vec<Example>, String> {
            let file = files
                .iter()
                .find(|f| f.id == id)
                .ok_or("the file no longer exists")?;
            dataset::examples(&file.bytes, self.request.method)
        };
        let training = match read(&self.request.training_file) {
            Ok(examples) => examples,
            Err(why) => return self.reject(at, "training_file", &why),
        };
        let validation = match self.request.validation_file.as_deref().map(read) {
            None => Vec::new(),
            Some(Ok(examples)) => examples,
            Some(Err(why)) => return self.reject(at, "validation_file", &why),
        };
        let resolved = self.resolve(training.len());
        match training::train(
            &training,
            &validation,
            resolved.settings,
            &self.request.model,
        ) {
            Ok(run) => {
                if run.skipped > 0 {
                    let message = format!(
                        "{} of {} examples state no threat type in their answer and teach nothing.",
                        run.skipped,
                        training.len()
                    );
                    self.say(at, "warn", message);
                }
                self.run = Some(run);
                self.resolved = Some(resolved);
                self.say(
                    at,
                    "info",
                    "Files validated, moving job to queued state".into(),
                );
                self.status = Status::Queued;
            }
            Err(why) => self.reject(at, "training_file", &why),
        }
    }

    fn reject(&mut self, at: f64, param: &str, why: &str) {
        let id = match param {
            "validation_file" => self.request.validation_file.clone().unwrap_or_default(),
            _ => self.request.training_file.clone(),
        };
        let code = format!("invalid_{param}");
        let message = format!("The {} {id} is invalid: {why}", param.replace('_', " "));
        self.fail(
            at,
            json!({"code": code, "message": message, "param": param}),
        );
    }

    fn resolve(&self, examples: usize) -> Resolved {
        let h = self.request.hyperparameters;
        Resolved {
            settings: Settings {
                n_epochs: h.n_epochs.or(Settings::AUTO_EPOCHS),
                batch_size: match h.batch_size {
                    Setting::Auto => Settings::auto_batch_size(examples),
                    Setting::Set(n) => usize::try_from(n).unwrap_or(1),
                },
                learning_rate_multiplier: h
                    .learning_rate_multiplier
                    .or(Settings::AUTO_LEARNING_RATE_MULTIPLIER),
                seed: self.seed,
            },
            beta: h.beta.or(AUTO_BETA),
        }
    }

    /// Starts running: the run's metrics become visible step by step
    /// across the running status.
    fn start(&mut self, at: f64) {
        self.say(at, "info", "Fine-tuning job started".into());
        self.status = Status::Running;
        let metrics = self
            .run
            .as_ref()
            .map(|r| r.metrics.clone())
            .unwrap_or_default();
        let n = metrics.len() as f64;
        for (i, m) in metrics.iter().enumerate() {
            let mut data = json!({
                "step": m.step,
                "total_steps": m.total_steps,
                "train_loss": m.train_loss,
                "train_accuracy": m.train_accuracy,
                "train_mean_token_accuracy": m.train_accuracy,
            });
            let mut message = format!(
                "Step {}/{}: training loss={:.4}",
                m.step, m.total_steps, m.train_loss
            );
            if let Some((loss, accuracy)) = m.valid {
                data["full_valid_loss"] = json!(loss);
                data["full_valid_accuracy"] = json!(accuracy);
                message.push_str(&format!(", validation loss={loss:.4}"));
            }
            self.event(
                at + (i as f64 + 1.0) / (n + 1.0),
                "info",
                message,
                Some(data),
            );
        }
    }

    fn succeed(&mut self, at: f64, outputs: &mut Outputs<'_>) {
        let Some(run) = self.run.take() else {
            return self.fail(
                at,
                json!({"code": "server_error", "message": "The run left no model.", "param": null}),
            );
        };
        // The job id's last (random) characters, as OpenAI's names end.
        let skip = self.id.chars().count().saturating_sub(8);
        let short = self
            .id
            .chars()
            .skip(skip)
            .collect::<String>()
            .to_lowercase();
        let name = format!(
            "ft:{}:{ORGANIZATION}:{}:{short}",
            self.request.model,
            self.request.suffix.as_deref().unwrap_or("")
        );
        let finished = self.at(at).1;
        let results = files::results_file(&run, finished);
        self.result_files = vec![results.id.clone()];
        outputs.files.push(results);
        self.checkpoints = self.checkpoint(&run, &name, finished);
        self.trained_tokens = Some(run.trained_tokens);
        outputs.models.push(Arc::new(Tuned::new(
            &name,
            &self.request.model,
            finished,
            run,
        )));
        self.say(at, "info", format!("New fine-tuned model created: {name}"));
        self.say(at, "info", "The job has successfully completed".into());
        self.fine_tuned_model = Some(name);
        self.status = Status::Succeeded;
        self.finished_at = Some(finished);
    }

    /// Stops the job where it is; `false` if it had already finished.
    pub fn cancel(&mut self, now: Instant) -> bool {
        if self.status.is_final() {
            return false;
        }
        // Metrics scheduled for later were never measured, as far as anyone
        // can tell.
        self.events.retain(|e| e.due <= now);
        self.status = Status::Cancelled;
        self.run = None;
        let finished = wire::now_unix();
        self.finished_at = Some(finished);
        self.events.push(Event {
            id: format!("ftevent-{}", ulid::Ulid::new()),
            due: now,
            created_at: finished,
            level: "info",
            message: "Fine-tuning job cancelled".into(),
            data: None,
        });
        true
    }

    /// Newest first, as OpenAI lists them.
    pub fn visible_events(&self, now: Instant) -> Vec<(String, Value)> {
        self.events
            .iter()
            .rev()
            .filter(|e| e.due <= now)
            .map(|e| (e.id.clone(), e.object()))
            .collect()
    }
}
