//! The Files and fine-tuning calls Flywheel makes to a provider with
//! `fine_tuning = true`: upload a JSONL training file, create, get, list
//! and cancel jobs, and list a job's events. Each call is made once: the
//! job poller decides what to retry, because a create that may have
//! reached the provider must be looked up before it is sent again.
//! A provider's error answer is kept as it was sent (status and body).

use super::client::Provider;
use super::errors::reqwest_error;
use crate::openai::ApiError;
use http::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

const FILES_PATH: &str = "files";
const JOBS_PATH: &str = "fine_tuning/jobs";

#[derive(Debug, Clone, thiserror::Error)]
pub enum FineTuningError {
    /// The provider answered with an error status; `body` is what it sent
    /// (its JSON, or the text when it was not JSON).
    #[error("provider `{provider}` answered {status}: {}", message_of(.body))]
    Status {
        provider: String,
        status: u16,
        body: Value,
    },
    #[error("provider `{provider}` could not be reached: {detail}")]
    Transport { provider: String, detail: String },
    #[error("provider `{provider}` sent an answer that could not be read: {detail}")]
    Invalid { provider: String, detail: String },
}

impl FineTuningError {
    /// Whether the same call may succeed later: the provider was
    /// unreachable, overloaded (429) or failing (5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Self::Transport { .. } | Self::Invalid { .. } => true,
        }
    }

    /// The HTTP status the provider answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The provider's error object as it sent it: the `error` member of
    /// an OpenAI error body, else the whole body; for a failure with no
    /// answer, an object describing it.
    pub fn provider_error(&self) -> Value {
        match self {
            Self::Status { body, .. } => body.get("error").cloned().unwrap_or_else(|| body.clone()),
            Self::Transport { detail, .. } | Self::Invalid { detail, .. } => {
                json!({"message": detail, "type": "api_error", "code": null, "param": null})
            }
        }
    }
}

/// The message of an OpenAI error body, or the body itself.
fn message_of(body: &Value) -> String {
    match body.pointer("/error/message").and_then(Value::as_str) {
        Some(message) => message.to_string(),
        None => match body {
            Value::String(text) => text.chars().take(500).collect(),
            other => other.to_string().chars().take(500).collect(),
        },
    }
}

/// An uploaded file, as much of OpenAI's file object as Flywheel reads.
#[derive(Debug, Clone, Deserialize)]
pub struct FileObject {
    pub id: String,
    #[serde(default)]
    pub filename: String,
    /// Azure imports an upload before a job may use it: `pending` or
    /// `running`, then `processed` (or `error`, with `status_details`).
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub status_details: Option<Value>,
}

/// A provider's `fine_tuning.job`, as much of it as Flywheel reads.
#[derive(Debug, Clone, Deserialize)]
pub struct JobObject {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub fine_tuned_model: Option<String>,
    #[serde(default)]
    pub trained_tokens: Option<u64>,
    #[serde(default)]
    pub error: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub training_file: Option<String>,
}

/// A `fine_tuning.job.event`.
#[derive(Debug, Clone, Deserialize)]
pub struct EventObject {
    pub id: String,
    #[serde(default)]
    pub created_at: u64,
    #[serde(default)]
    pub level: String,
    #[serde(default)]
    pub message: String,
    /// `message` or `metrics`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub data: Option<Value>,
}

/// One page of an OpenAI list.
#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

/// What a job is created with; `None` leaves a setting to the provider.
#[derive(Debug, Clone, Default)]
pub struct JobSpec {
    pub model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub suffix: Option<String>,
    pub seed: Option<u64>,
    pub metadata: BTreeMap<String, String>,
    /// `supervised` or `dpo`.
    pub method: String,
    pub n_epochs: Option<u32>,
    pub batch_size: Option<u32>,
    pub learning_rate_multiplier: Option<f64>,
}

impl JobSpec {
    /// The request body. Hyperparameters go inside `method`, where OpenAI
    /// reads them now (the top-level field is deprecated).
    pub fn body(&self) -> Value {
        let mut hyperparameters = Map::new();
        let mut set = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                hyperparameters.insert(key.to_string(), v);
            }
        };
        set("n_epochs", self.n_epochs.map(Value::from));
        set("batch_size", self.batch_size.map(Value::from));
        set(
            "learning_rate_multiplier",
            self.learning_rate_multiplier.map(Value::from),
        );
        let mut body = json!({
            "model": self.model,
            "training_file": self.training_file,
            "metadata": self.metadata,
            "method": {
                "type": self.method,
                self.method.as_str(): {"hyperparameters": hyperparameters},
            },
        });
        let mut optional = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                body[key] = v;
            }
        };
        optional(
            "validation_file",
            self.validation_file.clone().map(Value::from),
        );
        optional("suffix", self.suffix.clone().map(Value::from));
        optional("seed", self.seed.map(Value::from));
        body
    }
}

impl Provider {
    /// `POST /files`, multipart, purpose `fine-tune`.
    pub async fn upload_file(
        &self,
        filename: &str,
        bytes: Vec<u8>,
    ) -> Result<FileObject, FineTuningError> {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(filename.to_string())
            .mime_str("application/jsonl")
            .map_err(|e| self.transport(&e))?;
        let form = reqwest::multipart::Form::new()
            .text("purpose", "fine-tune")
            .part("file", part);
        let request = self.authorized(Method::POST, FILES_PATH)?.multipart(form);
        self.call(request).await
    }

    /// `GET /files?purpose=fine-tune`: the uploads the provider holds.
    pub async fn list_files(&self) -> Result<Page<FileObject>, FineTuningError> {
        let request = self
            .authorized(Method::GET, FILES_PATH)?
            .query(&[("purpose", "fine-tune")]);
        self.call(request).await
    }

    /// `GET /files/{id}`.
    pub async fn get_file(&self, id: &str) -> Result<FileObject, FineTuningError> {
        let request = self.authorized(Method::GET, &format!("{FILES_PATH}/{id}"))?;
        self.call(request).await
    }

    /// `POST /fine_tuning/jobs`.
    pub async fn create_job(&self, spec: &JobSpec) -> Result<JobObject, FineTuningError> {
        let mut body = spec.body();
        if self.azure.as_ref().is_some_and(|a| a.dated()) && spec.method == "supervised" {
            // Azure's dated api-versions read hyperparameters at the top
            // level and may not know `method`; supervised is their default.
            let hyperparameters = body["method"]["supervised"]["hyperparameters"].take();
            if let Some(fields) = body.as_object_mut() {
                fields.remove("method");
                fields.insert("hyperparameters".into(), hyperparameters);
            }
        }
        let request = self
            .authorized(Method::POST, JOBS_PATH)?
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.call(request).await
    }

    /// `GET /fine_tuning/jobs/{id}`.
    pub async fn get_job(&self, id: &str) -> Result<JobObject, FineTuningError> {
        let request = self.authorized(Method::GET, &format!("{JOBS_PATH}/{id}"))?;
        self.call(request).await
    }

    /// `GET /fine_tuning/jobs?after=&limit=`, newest first.
    pub async fn list_jobs(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<JobObject>, FineTuningError> {
        let request = self
            .authorized(Method::GET, JOBS_PATH)?
            .query(&page_query(after, limit));
        self.call(request).await
    }

    /// `GET /fine_tuning/jobs/{id}/events?after=&limit=`, newest first;
    /// `after` is the last event of the previous page, so pages go back
    /// in time.
    pub async fn list_events(
        &self,
        id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<EventObject>, FineTuningError> {
        let request = self
            .authorized(Method::GET, &format!("{JOBS_PATH}/{id}/events"))?
            .query(&page_query(after, limit));
        self.call(request).await
    }

    /// `POST /fine_tuning/jobs/{id}/cancel`.
    pub async fn cancel_job(&self, id: &str) -> Result<JobObject, FineTuningError> {
        let request = self.authorized(Method::POST, &format!("{JOBS_PATH}/{id}/cancel"))?;
        self.call(request).await
    }

    /// Sends once and reads the JSON answer; an error status keeps its body.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, FineTuningError> {
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
        if !status.is_success() {
            let body = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            return Err(FineTuningError::Status {
                provider: self.name.to_string(),
                status: status.as_u16(),
                body,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| FineTuningError::Invalid {
            provider: self.name.to_string(),
            detail: e.to_string(),
        })
    }

    pub(super) fn transport(&self, e: &reqwest::Error) -> FineTuningError {
        let detail = match reqwest_error(&self.name, e) {
            ApiError::UpstreamUnreachable { detail, .. } => detail,
            other => other.to_string(),
        };
        FineTuningError::Transport {
            provider: self.name.to_string(),
            detail,
        }
    }
}

fn page_query(after: Option<&str>, limit: usize) -> Vec<(&'static str, String)> {
    let mut query = vec![("limit", limit.to_string())];
    if let Some(after) = after {
        query.push(("after", after.to_string()));
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_puts_hyperparameters_inside_the_method() {
        let spec = JobSpec {
            model: "gpt-4o-mini".into(),
            training_file: "file-1".into(),
            validation_file: Some("file-2".into()),
            suffix: Some("soc".into()),
            seed: Some(7),
            metadata: [("flywheel_job_id".to_string(), "job_1".to_string())].into(),
            method: "dpo".into(),
            n_epochs: Some(3),
            batch_size: None,
            learning_rate_multiplier: Some(0.5),
        };
        let body = spec.body();
        assert_eq!(body["method"]["type"], "dpo");
        assert_eq!(
            body["method"]["dpo"]["hyperparameters"],
            json!({"n_epochs": 3, "learning_rate_multiplier": 0.5})
        );
        assert_eq!(body["metadata"]["flywheel_job_id"], "job_1");
        assert_eq!(
            (&body["validation_file"], &body["suffix"], &body["seed"]),
            (&json!("file-2"), &json!("soc"), &json!(7))
        );
        assert!(body.get("hyperparameters").is_none());
    }

    #[test]
    fn unset_options_stay_out_of_the_body() {
        let body = JobSpec {
            model: "m".into(),
            training_file: "f".into(),
            method: "supervised".into(),
            ..JobSpec::default()
        }
        .body();
        for key in ["validation_file", "suffix", "seed"] {
            assert!(body.get(key).is_none(), "{key} in {body}");
        }
        assert_eq!(body["method"]["supervised"]["hyperparameters"], json!({}));
    }

    #[test]
    fn provider_errors_keep_their_body_and_say_whether_to_retry() {
        let body = json!({"error": {"message": "bad file", "type": "invalid_request_error", "param": "file", "code": null}});
        let e = FineTuningError::Status {
            provider: "p".into(),
            status: 400,
            body: body.clone(),
        };
        assert_eq!(e.provider_error(), body["error"]);
        assert!(!e.is_transient());
        assert!(e.to_string().contains("bad file"), "{e}");
        let busy = FineTuningError::Status {
            provider: "p".into(),
            status: 503,
            body: Value::String("<html>down</html>".into()),
        };
        assert!(busy.is_transient());
        assert_eq!(busy.provider_error(), json!("<html>down</html>"));
    }
}
