//! The simulator's fine-tuning state — uploaded files, and (see
//! `fine_tuning`) jobs and the models they made — kept in memory behind the
//! router's shared state. It lives as long as the router: a restarted
//! simulator starts empty, as a fresh provider account would.

use std::sync::{Mutex, MutexGuard, PoisonError};

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
}

impl LabState {
    pub fn file(&self, id: &str) -> Option<&StoredFile> {
        self.files.iter().find(|f| f.id == id)
    }
}

#[derive(Debug, Default)]
pub struct Lab {
    state: Mutex<LabState>,
}

impl Lab {
    /// The state, locked. Handlers hold it only while they read or change
    /// it, never across an await.
    pub fn state(&self) -> MutexGuard<'_, LabState> {
        // A poisoned lock only means a handler panicked mid-change; the
        // collections themselves are still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
