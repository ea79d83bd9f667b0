//! The simulator's fine-tuning state — uploaded files, fine-tuning jobs and
//! the models they made — kept in memory behind the router's shared state.
//! It lives as long as the router: a restarted simulator starts empty, as a
//! fresh provider account would.
//!
//! Jobs move with time rather than with requests: every access first takes
//! the status steps that have fallen due (see `jobs`), so whoever looks —
//! a poll, a model listing, a chat with the new model — sees the world as
//! the schedule made it, and a deletion or a cancel lands after the steps
//! that came before it.

use super::jobs::{Job, Outputs};
use super::tuned::Tuned;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// One uploaded file, with its bytes.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub created_at: u64,
    pub bytes: bytes::Bytes,
}

#[derive(Debug, Default)]
pub struct LabState {
    /// In upload order.
    pub files: Vec<StoredFile>,
    /// In creation order.
    pub jobs: Vec<Job>,
    /// Fine-tuned models, in the order their jobs succeeded.
    pub models: Vec<Arc<Tuned>>,
    /// LoRA adapters loaded at run time (`lora`), in load order.
    pub adapters: Vec<Arc<Tuned>>,
}

impl LabState {
    pub fn file(&self, id: &str) -> Option<&StoredFile> {
        self.files.iter().find(|f| f.id == id)
    }

    pub fn job_mut(&mut self, id: &str) -> Option<&mut Job> {
        self.jobs.iter_mut().find(|j| j.id == id)
    }

    /// A fine-tuned model or a loaded adapter.
    pub fn model(&self, name: &str) -> Option<Arc<Tuned>> {
        self.models
            .iter()
            .find(|m| m.name == name)
            .or_else(|| self.adapters.iter().find(|m| m.name == name))
            .cloned()
    }

    pub fn adapter(&self, name: &str) -> Option<Arc<Tuned>> {
        self.adapters.iter().find(|m| m.name == name).cloned()
    }

    fn advance(&mut self, now: Instant) {
        let LabState {
            files,
            jobs,
            models,
            ..
        } = self;
        let mut outputs = Outputs { files, models };
        for job in jobs.iter_mut() {
            job.advance(now, &mut outputs);
        }
    }
}

#[derive(Debug)]
pub struct Lab {
    state: Mutex<LabState>,
    /// How long a job spends in each status.
    pub job_step: Duration,
}

impl Lab {
    pub fn new(job_step: Duration) -> Self {
        Self {
            state: Mutex::default(),
            job_step,
        }
    }

    /// The state, locked and brought up to date. Handlers hold it only
    /// while they read or change it, never across an await.
    pub fn state(&self) -> MutexGuard<'_, LabState> {
        // A poisoned lock only means a handler panicked mid-change; the
        // collections themselves are still whole.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.advance(Instant::now());
        state
    }
}
