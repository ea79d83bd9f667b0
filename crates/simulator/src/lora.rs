//! vLLM's runtime LoRA adapters (`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`):
//! `POST /v1/load_lora_adapter {"lora_name", "lora_path"}` and
//! `POST /v1/unload_lora_adapter {"lora_name"}`, with vLLM's plain-text
//! successes and its error objects. A loaded adapter answers chat
//! completions under its name as a fine-tuned model does (`tuned`).
//!
//! What an adapter directory holds for the simulator: `adapter_config.json`
//! (as PEFT writes it; `base_model_name_or_path` names the base model) and
//! `flywheel_simulator.json` — `{"method", "n_epochs", "batch_size",
//! "learning_rate_multiplier", "seed", "train_file", "validation_file"}`,
//! the files named relative to the directory — which the test trainer
//! writes: the simulator trains on those examples when the adapter is
//! loaded, with the same learning curve as its fine-tuning jobs. Loaded
//! adapters live in memory, so a restarted simulator has none, as a
//! restarted vLLM has none.

use super::Sim;
use super::dataset::{self, Shape};
use super::training::{self, Settings};
use super::tuned::Tuned;
use super::wire;
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// What the simulator reads beside `adapter_config.json`.
pub const SIMULATOR_FILE: &str = "flywheel_simulator.json";

struct Load {
    lora_name: String,
    lora_path: String,
}

/// A string member of the request, empty when missing.
fn field(body: &Value, key: &str) -> String {
    body[key].as_str().unwrap_or_default().to_string()
}

/// vLLM's error object: `{"error": {"message", "type", "param", "code"}}`
/// with the status as the code.
fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = json!({"error": {
        "message": message,
        "type": kind,
        "param": null,
        "code": status.as_u16(),
    }});
    (status, Json(body)).into_response()
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "BadRequestError", message)
}

pub async fn load(State(sim): State<Sim>, body: Result<Json<Value>, JsonRejection>) -> Response {
    let load = match body {
        Ok(Json(body)) => Load {
            lora_name: field(&body, "lora_name"),
            lora_path: field(&body, "lora_path"),
        },
        Err(rejection) => return bad_request(rejection.body_text()),
    };
    if load.lora_name.is_empty() || load.lora_path.is_empty() {
        return bad_request("Both 'lora_name' and 'lora_path' must be provided.".into());
    }
    if sim.lab.state().adapter(&load.lora_name).is_some() {
        return bad_request(format!(
            "The lora adapter '{}' has already been loaded.",
            load.lora_name
        ));
    }
    let dir = Path::new(&load.lora_path);
    if !dir.join("adapter_config.json").is_file() {
        return error(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            format!(
                "Loading lora {} failed: No adapter found for {}",
                load.lora_name, load.lora_path
            ),
        );
    }
    // Training is CPU work; the runtime's workers stay free for requests.
    let (name, path) = (load.lora_name.clone(), dir.to_path_buf());
    let built = tokio::task::spawn_blocking(move || adapter(&name, &path)).await;
    let tuned = match built {
        Ok(Ok(tuned)) => tuned,
        Ok(Err(why)) => {
            return bad_request(format!("Loading lora {} failed: {why}", load.lora_name));
        }
        Err(e) => return bad_request(format!("Loading lora {} failed: {e}", load.lora_name)),
    };
    let mut state = sim.lab.state();
    if state.adapter(&load.lora_name).is_some() {
        return bad_request(format!(
            "The lora adapter '{}' has already been loaded.",
            load.lora_name
        ));
    }
    state.adapters.push(Arc::new(tuned));
    format!(
        "Success: LoRA adapter '{}' added successfully.",
        load.lora_name
    )
    .into_response()
}

pub async fn unload(State(sim): State<Sim>, body: Result<Json<Value>, JsonRejection>) -> Response {
    let lora_name = match body {
        Ok(Json(body)) => field(&body, "lora_name"),
        Err(rejection) => return bad_request(rejection.body_text()),
    };
    if lora_name.is_empty() {
        return bad_request("'lora_name' needs to be provided to unload a LoRA adapter.".into());
    }
    let mut state = sim.lab.state();
    let before = state.adapters.len();
    state.adapters.retain(|a| a.name != lora_name);
    if state.adapters.len() == before {
        return error(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            format!("The lora adapter '{lora_name}' cannot be found."),
        );
    }
    format!("Success: LoRA adapter '{lora_name}' removed successfully.").into_response()
}

/// Reads the directory and trains the adapter it describes.
fn adapter(name: &str, dir: &Path) -> Result<Tuned, String> {
    let read_json = |file: &str| -> Result<Value, String> {
        let bytes =
            std::fs::read(dir.join(file)).map_err(|e| format!("cannot read {file}: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{file} is not JSON: {e}"))
    };
    let config = read_json("adapter_config.json")?;
    let base = config["base_model_name_or_path"]
        .as_str()
        .ok_or("adapter_config.json names no base_model_name_or_path")?
        .to_string();
    let sim = read_json(SIMULATOR_FILE)
        .map_err(|e| format!("not an adapter the simulator can serve ({e})"))?;
    let method = match sim["method"].as_str() {
        Some("dpo") => Shape::Dpo,
        _ => Shape::Supervised,
    };
    let examples = |key: &str| -> Result<Vec<dataset::Example>, String> {
        match sim[key].as_str().filter(|f| !f.is_empty()) {
            None => Ok(Vec::new()),
            Some(file) => {
                let bytes = std::fs::read(dir.join(file))
                    .map_err(|e| format!("cannot read {file}: {e}"))?;
                if bytes.trim_ascii().is_empty() {
                    return Ok(Vec::new());
                }
                dataset::examples(&bytes, method).map_err(|e| format!("{file}: {e}"))
            }
        }
    };
    let training = examples("train_file")?;
    let validation = examples("validation_file")?;
    let number = |key: &str| sim[key].as_f64();
    let settings = Settings {
        n_epochs: number("n_epochs").map_or(Settings::AUTO_EPOCHS, |n| n.clamp(1.0, 50.0) as u32),
        batch_size: number("batch_size").map_or_else(
            || Settings::auto_batch_size(training.len()),
            |n| n.clamp(1.0, 256.0) as usize,
        ),
        learning_rate_multiplier: number("learning_rate_multiplier")
            .filter(|m| *m > 0.0)
            .unwrap_or(Settings::AUTO_LEARNING_RATE_MULTIPLIER),
        seed: sim["seed"].as_u64().unwrap_or(0),
    };
    let run = training::train(&training, &validation, settings, &base)?;
    Ok(Tuned::new(name, &base, wire::now_unix(), run))
}
