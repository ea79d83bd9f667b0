//! `flywheel export`: conversations with their turns and feedback as JSON
//! lines, or one dataset snapshot's JSONL, read straight from the store
//! (no server needed).

use crate::store::{ConversationRecord, DatasetSplit, Store, StoreError};
use serde_json::{Value, json};
use std::io::Write;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
    #[error("no dataset with id `{0}` in this store")]
    UnknownDataset(String),
}

/// Which file of a dataset to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitChoice {
    Train,
    Validation,
    /// The training lines, then the validation lines.
    All,
}

impl SplitChoice {
    fn splits(self) -> &'static [DatasetSplit] {
        match self {
            Self::Train => &[DatasetSplit::Train],
            Self::Validation => &[DatasetSplit::Validation],
            Self::All => &[DatasetSplit::Train, DatasetSplit::Validation],
        }
    }
}

/// Writes the chosen files of dataset `id` as stored; returns how many
/// lines.
pub fn export_dataset(
    store: &dyn Store,
    id: &str,
    choice: SplitChoice,
    out: &mut dyn Write,
) -> Result<usize, ExportError> {
    if store.dataset(id)?.is_none() {
        return Err(ExportError::UnknownDataset(id.to_string()));
    }
    let mut lines = 0;
    for split in choice.splits() {
        let file = store.dataset_file(id, *split)?.unwrap_or_default();
        lines += file.iter().filter(|b| **b == b'\n').count();
        out.write_all(&file)?;
    }
    out.flush()?;
    Ok(lines)
}

/// Writes one line per conversation; returns how many.
pub fn export_conversations(store: &dyn Store, out: &mut dyn Write) -> Result<usize, ExportError> {
    let mut count = 0;
    let mut failure = None;
    store
        .for_each_conversation(&mut |conversation| {
            let line = conversation_line(store, &conversation)?;
            if let Err(e) = writeln!(out, "{line}") {
                failure = Some(e);
                return Err(StoreError::Io("export output failed".into()));
            }
            count += 1;
            Ok(())
        })
        .map_err(|e| match failure.take() {
            Some(io) => ExportError::Write(io),
            None => ExportError::Store(e),
        })?;
    out.flush()?;
    Ok(count)
}

fn conversation_line(store: &dyn Store, c: &ConversationRecord) -> Result<Value, StoreError> {
    let turns: Vec<Value> = crate::review::stored_turns(store, c)?
        .into_iter()
        .map(|(r, feedback)| {
            json!({
                "inference_id": r.id,
                "completion_id": r.completion_id,
                "created_at": r.created_at,
                "alias": r.alias,
                "version": r.version,
                "status": r.status,
                "request": r.request,
                "response": r.response,
                "feedback": feedback,
            })
        })
        .collect();
    Ok(json!({
        "conversation_id": c.id,
        "parent_id": c.parent_id,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "alias": c.alias,
        "versions": c.versions,
        "user": c.user,
        "review": c.review,
        "turns": turns,
    }))
}
