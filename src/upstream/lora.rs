//! LoRA adapters on a server that loads them at run time (vLLM with
//! `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, a provider with `lora = true`):
//! `POST {base_url}/load_lora_adapter` and `…/unload_lora_adapter` with
//! vLLM's bodies, and the adapters Flywheel registered on the provider, so
//! that a request answered "model does not exist" for one of them — the
//! server restarted and forgot it — loads it again and is sent once more
//! (`Provider::send_retrying`).

use super::client::Provider;
use super::errors::read_error;
use super::fine_tuning::FineTuningError;
use crate::openai::ApiError;
use http::{Method, header};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use tokio::time::{Instant, timeout_at};

const LOAD_PATH: &str = "load_lora_adapter";
const UNLOAD_PATH: &str = "unload_lora_adapter";

/// Adapter name → the path the server loads it from.
#[derive(Debug, Default)]
pub struct Adapters {
    paths: RwLock<HashMap<String, String>>,
}

impl Provider {
    /// Whether the provider takes adapters at run time (`lora = true`).
    pub fn takes_lora(&self) -> bool {
        self.adapters.is_some()
    }

    /// Marks `name` as an adapter of this provider, loaded from `path`, so
    /// that it is loaded again when the server forgot it.
    pub fn remember_adapter(&self, name: &str, path: &str) {
        if let Some(adapters) = &self.adapters {
            adapters
                .paths
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name.to_string(), path.to_string());
        }
    }

    pub fn forget_adapter(&self, name: &str) {
        if let Some(adapters) = &self.adapters {
            adapters
                .paths
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(name);
        }
    }

    fn adapter_path(&self, name: &str) -> Option<String> {
        let adapters = self.adapters.as_ref()?;
        adapters
            .paths
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// `POST /load_lora_adapter {lora_name, lora_path}`. An adapter the
    /// server holds already counts as loaded.
    pub async fn load_lora_adapter(&self, name: &str, path: &str) -> Result<(), FineTuningError> {
        let body = json!({"lora_name": name, "lora_path": path});
        match self.admin_call(LOAD_PATH, &body).await {
            Err(FineTuningError::Status {
                status: 400, body, ..
            }) if message(&body).contains("already been loaded") => Ok(()),
            other => other,
        }
    }

    /// `POST /unload_lora_adapter {lora_name}`. An adapter the server does
    /// not hold counts as unloaded.
    pub async fn unload_lora_adapter(&self, name: &str) -> Result<(), FineTuningError> {
        let body = json!({"lora_name": name});
        match self.admin_call(UNLOAD_PATH, &body).await {
            Err(FineTuningError::Status { status: 404, .. }) => Ok(()),
            other => other,
        }
    }

    /// vLLM answers these with plain text on success and an error object
    /// otherwise; the error is kept as sent.
    async fn admin_call(&self, path: &str, body: &Value) -> Result<(), FineTuningError> {
        let response = self
            .authorized(Method::POST, path)?
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(&e))?;
        if status.is_success() {
            return Ok(());
        }
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Err(FineTuningError::Status {
            provider: self.name.to_string(),
            status: status.as_u16(),
            body,
        })
    }

    /// A 404 from a LoRA server: when it says a model Flywheel registered
    /// as an adapter here does not exist, and this request has not loaded
    /// it already, the adapter is loaded again and `Ok` says to resend;
    /// otherwise the error goes to the client as the server sent it.
    pub(super) async fn reload_forgotten(
        &self,
        response: http::Response<super::BodyStream>,
        deadline: Instant,
        reloaded_before: bool,
    ) -> Result<(), ApiError> {
        // A LoRA server speaks the OpenAI shape, never Azure's.
        let (error, text) = read_error(&self.name, response, deadline, false).await;
        let forgotten = forgotten_model(&text)
            .filter(|_| !reloaded_before)
            .and_then(|name| self.adapter_path(&name).map(|path| (name, path)));
        let Some((name, path)) = forgotten else {
            self.count_error("status");
            return Err(error);
        };
        match timeout_at(deadline, self.load_lora_adapter(&name, &path)).await {
            Ok(Ok(())) => {
                tracing::info!(provider = %self.name, adapter = %name, "loaded a LoRA adapter the server had forgotten");
                metrics::counter!("flywheel_lora_reloads_total", "provider" => self.name.to_string(), "outcome" => "loaded")
                    .increment(1);
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::warn!(provider = %self.name, adapter = %name, error = %e, "could not load a forgotten LoRA adapter again");
                metrics::counter!("flywheel_lora_reloads_total", "provider" => self.name.to_string(), "outcome" => "failed")
                    .increment(1);
                self.count_error("status");
                Err(error)
            }
            Err(_) => {
                self.count_error("status");
                Err(error)
            }
        }
    }
}

/// The message of an error body, in vLLM's current shape
/// (`{"error": {"message"}}`) or its older flat one (`{"message"}`).
fn message(body: &Value) -> &str {
    body.pointer("/error/message")
        .or_else(|| body.get("message"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The model a "The model `x` does not exist." answer names.
fn forgotten_model(text: &str) -> Option<String> {
    let body: Value = serde_json::from_str(text).ok()?;
    let said = message(&body);
    if !said.contains("does not exist") {
        return None;
    }
    let (_, rest) = said.split_once('`')?;
    let (name, _) = rest.split_once('`')?;
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forgotten_model_is_read_from_vllms_answer_in_either_shape() {
        let current = r#"{"error": {"message": "The model `ft-a1` does not exist.", "type": "NotFoundError", "param": null, "code": 404}}"#;
        assert_eq!(forgotten_model(current).as_deref(), Some("ft-a1"));
        let older = r#"{"object": "error", "message": "The model `ft-b2` does not exist.", "type": "NotFoundError", "param": null, "code": 404}"#;
        assert_eq!(forgotten_model(older).as_deref(), Some("ft-b2"));
        assert_eq!(
            forgotten_model(r#"{"error": {"message": "Not Found"}}"#),
            None
        );
        assert_eq!(forgotten_model("not json"), None);
    }
}
