//! Azure imports an uploaded file before a job may train on it, and
//! refuses a job whose files are still importing ("The specified file
//! reference must point to a completed file import"): an Azure job is
//! submitted only once both uploads say `processed`; one that ends in
//! `error` fails the job with Azure's details.

use crate::store::FineTuneJobRecord;
use crate::upstream::{FineTuningError, Provider};
use std::time::{Duration, SystemTime};

/// Imports take minutes; a job whose files are still importing this long
/// after it was created fails rather than waiting for ever.
const IMPORT_LIMIT: Duration = Duration::from_secs(6 * 3600);

/// Whether a job's uploads may be trained on.
pub enum Imported {
    Ready,
    /// Still importing: look again at the next poll.
    Waiting,
    /// Azure could not import one: why.
    Failed(String),
}

pub async fn imported(
    provider: &Provider,
    job: &FineTuneJobRecord,
) -> Result<Imported, FineTuningError> {
    let files = [
        job.provider_files.training_file.as_deref(),
        job.provider_files.validation_file.as_deref(),
    ];
    for id in files.into_iter().flatten() {
        let file = provider.get_file(id).await?;
        match file.status.as_deref() {
            // A provider that does not say is taken at its word.
            None | Some("processed") => {}
            Some("error") => {
                let details = file
                    .status_details
                    .map(|d| d.as_str().map_or_else(|| d.to_string(), String::from))
                    .unwrap_or_else(|| "no details given".into());
                return Ok(Imported::Failed(format!(
                    "Azure could not import {id}: {details}"
                )));
            }
            Some(status) if waited(job) > IMPORT_LIMIT => {
                return Ok(Imported::Failed(format!(
                    "Azure had not imported {id} {} h after the job was created (still {status})",
                    IMPORT_LIMIT.as_secs() / 3600
                )));
            }
            Some(_) => return Ok(Imported::Waiting),
        }
    }
    Ok(Imported::Ready)
}

fn waited(job: &FineTuneJobRecord) -> Duration {
    humantime::parse_rfc3339(&job.created_at)
        .ok()
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .unwrap_or_default()
}
