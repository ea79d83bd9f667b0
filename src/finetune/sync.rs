//! Folding what happened into a job record, as plain functions: Flywheel's
//! own events, the provider's status, events and metrics, and failures
//! with the provider's error kept as it was sent.

use crate::ids::now_rfc3339;
use crate::store::{FineTuneJobRecord, JobEvent, JobStatus};
use crate::upstream::{EventObject, FineTuningError, JobObject};
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};

/// The newest events a job keeps; older ones give way.
pub const MAX_EVENTS: usize = 500;

/// Where a job was when something failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Upload,
    Create,
    Poll,
    Run,
    /// Azure: deploying the fine-tuned model.
    Deploy,
    Register,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Upload => "upload",
            Stage::Create => "create",
            Stage::Poll => "poll",
            Stage::Run => "run",
            Stage::Deploy => "deploy",
            Stage::Register => "register",
        }
    }
}

pub fn note(job: &mut FineTuneJobRecord, level: &str, message: impl Into<String>) {
    note_at(job, now_rfc3339(), level, message);
}

/// As [`note`], for something that happened at `at` (RFC 3339).
pub fn note_at(job: &mut FineTuneJobRecord, at: String, level: &str, message: impl Into<String>) {
    push(
        job,
        JobEvent {
            at,
            level: level.into(),
            message: message.into(),
        },
    );
}

fn push(job: &mut FineTuneJobRecord, event: JobEvent) {
    job.events.push(event);
    if job.events.len() > MAX_EVENTS {
        let excess = job.events.len() - MAX_EVENTS;
        job.events.drain(..excess);
    }
}

/// The provider's status names; `None` for one Flywheel does not know
/// (the job keeps its status until a known one arrives).
pub fn status_of(provider_status: &str) -> Option<JobStatus> {
    Some(match provider_status {
        // Azure's dated api-versions say `pending` and `notRunning`.
        "validating_files" | "pending" => JobStatus::ValidatingFiles,
        "queued" | "notRunning" => JobStatus::Queued,
        "running" => JobStatus::Running,
        "succeeded" => JobStatus::Succeeded,
        "failed" => JobStatus::Failed,
        "cancelled" => JobStatus::Cancelled,
        _ => return None,
    })
}

/// The events of a newest-first page that came after `last_seen`, and
/// whether `last_seen` was on the page (so no older page is needed).
pub fn unseen<'a>(
    page: &'a [EventObject],
    last_seen: Option<&str>,
) -> (Vec<&'a EventObject>, bool) {
    let mut out = Vec::new();
    for event in page {
        if Some(event.id.as_str()) == last_seen {
            return (out, true);
        }
        out.push(event);
    }
    (out, false)
}

/// Appends the provider's new events (given newest first) oldest first,
/// and keeps the newest metrics they carry.
pub fn add_provider_events(job: &mut FineTuneJobRecord, newest_first: &[&EventObject]) {
    if let Some(newest) = newest_first.first() {
        job.last_provider_event = Some(newest.id.clone());
    }
    let metrics = newest_first.iter().find_map(|e| {
        let data = e.data.as_ref()?;
        let is_metrics =
            e.kind.as_deref() == Some("metrics") || data.as_object().is_some_and(|d| !d.is_empty());
        is_metrics.then(|| data.clone())
    });
    if metrics.is_some() {
        job.metrics = metrics;
    }
    for e in newest_first.iter().rev() {
        let at = UNIX_EPOCH + Duration::from_secs(e.created_at);
        push(
            job,
            JobEvent {
                at: humantime::format_rfc3339_seconds(at).to_string(),
                level: if e.level.is_empty() {
                    "info".into()
                } else {
                    e.level.clone()
                },
                message: e.message.clone(),
            },
        );
    }
}

/// Takes the provider's view of a job in flight: its id, status, tokens
/// and model. A success is left to the caller, which registers the model
/// before the job may say `succeeded`.
pub fn apply_remote(job: &mut FineTuneJobRecord, remote: &JobObject) {
    job.provider_job_id = Some(remote.id.clone());
    if remote.trained_tokens.is_some() {
        job.trained_tokens = remote.trained_tokens;
    }
    if remote.fine_tuned_model.is_some() {
        job.fine_tuned_model = remote.fine_tuned_model.clone();
    }
    match status_of(&remote.status) {
        Some(s @ (JobStatus::ValidatingFiles | JobStatus::Queued | JobStatus::Running)) => {
            job.status = s;
        }
        Some(JobStatus::Cancelled) => finish(job, JobStatus::Cancelled),
        Some(JobStatus::Failed) => {
            let error = remote.error.clone().unwrap_or(Value::Null);
            let message = error["message"]
                .as_str()
                .unwrap_or("the provider reported the job failed")
                .to_string();
            fail_with(job, Stage::Run, None, &message, error);
        }
        Some(JobStatus::Succeeded | JobStatus::Preparing) | None => {}
    }
}

pub fn finish(job: &mut FineTuneJobRecord, status: JobStatus) {
    job.status = status;
    job.finished_at = Some(now_rfc3339());
}

/// Ends the job `failed` at `stage` with the provider's error.
pub fn fail(job: &mut FineTuneJobRecord, stage: Stage, error: &FineTuningError) {
    let message = error.to_string();
    fail_with(job, stage, error.status(), &message, error.provider_error());
}

pub fn fail_with(
    job: &mut FineTuneJobRecord,
    stage: Stage,
    status: Option<u16>,
    message: &str,
    provider_error: Value,
) {
    job.error = Some(json!({
        "stage": stage.as_str(),
        "status": status,
        "message": message,
        "provider_error": provider_error,
    }));
    note(
        job,
        "error",
        format!("Failed at {}: {message}", stage.as_str()),
    );
    finish(job, JobStatus::Failed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FineTuneJobRecord;

    fn job() -> FineTuneJobRecord {
        serde_json::from_value(json!({
            "id": "job_1", "alias": "triage", "dataset_id": "ds_1", "provider": "sim",
            "base_model": "gpt-4o-mini", "method": "supervised", "hyperparameters": {},
            "suffix": null, "seed": null, "status": "queued", "provider_job_id": null,
            "trained_tokens": null, "fine_tuned_model": null, "registered_version": null,
            "error": null, "events": [], "metrics": null, "created_at": "t",
            "created_by": "k", "finished_at": null
        }))
        .unwrap()
    }

    fn event(id: &str, at: u64, data: Option<Value>) -> EventObject {
        EventObject {
            id: id.into(),
            created_at: at,
            level: "info".into(),
            message: format!("event {id}"),
            kind: Some(if data.is_some() { "metrics" } else { "message" }.into()),
            data,
        }
    }

    #[test]
    fn only_unseen_events_are_added_oldest_first_with_the_newest_metrics() {
        let page = [
            event("e4", 40, None),
            event("e3", 30, Some(json!({"step": 2, "train_loss": 0.5}))),
            event("e2", 20, Some(json!({"step": 1, "train_loss": 0.9}))),
            event("e1", 10, None),
        ];
        let (new, found) = unseen(&page, Some("e2"));
        assert!(found);
        let mut j = job();
        add_provider_events(&mut j, &new);
        let messages: Vec<&str> = j.events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["event e3", "event e4"]);
        assert_eq!(j.events[0].at, "1970-01-01T00:00:30Z");
        assert_eq!(j.metrics, Some(json!({"step": 2, "train_loss": 0.5})));
        assert_eq!(j.last_provider_event.as_deref(), Some("e4"));
        let (again, _) = unseen(&page, j.last_provider_event.as_deref());
        assert!(again.is_empty());
        assert_eq!(unseen(&page, None).0.len(), 4);
    }

    #[test]
    fn a_failed_run_keeps_the_providers_error_as_sent() {
        let mut j = job();
        let error = json!({"code": "simulated_failure", "message": "it broke", "param": null});
        apply_remote(
            &mut j,
            &JobObject {
                id: "ftjob-1".into(),
                status: "failed".into(),
                fine_tuned_model: None,
                trained_tokens: None,
                error: Some(error.clone()),
                metadata: None,
                training_file: None,
            },
        );
        assert_eq!(j.status, JobStatus::Failed);
        assert!(j.finished_at.is_some());
        let kept = j.error.unwrap();
        assert_eq!(
            (&kept["stage"], &kept["provider_error"]),
            (&json!("run"), &error)
        );
        assert_eq!(j.events.last().unwrap().level, "error");
    }

    #[test]
    fn a_success_waits_for_registration() {
        let mut j = job();
        apply_remote(
            &mut j,
            &JobObject {
                id: "ftjob-1".into(),
                status: "succeeded".into(),
                fine_tuned_model: Some("ft:m:org::abc".into()),
                trained_tokens: Some(1200),
                error: None,
                metadata: None,
                training_file: None,
            },
        );
        assert_eq!(j.status, JobStatus::Queued);
        assert_eq!(j.fine_tuned_model.as_deref(), Some("ft:m:org::abc"));
        assert_eq!(j.trained_tokens, Some(1200));
        assert_eq!(status_of("paused"), None);
        // Azure's dated api-versions.
        assert_eq!(status_of("pending"), Some(JobStatus::ValidatingFiles));
        assert_eq!(status_of("notRunning"), Some(JobStatus::Queued));
    }

    #[test]
    fn events_beyond_the_cap_drop_the_oldest() {
        let mut j = job();
        for i in 0..MAX_EVENTS + 3 {
            note(&mut j, "info", format!("n{i}"));
        }
        assert_eq!(j.events.len(), MAX_EVENTS);
        assert_eq!(j.events[0].message, "n3");
    }
}
