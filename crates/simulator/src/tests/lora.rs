//! vLLM's runtime LoRA routes through the router: loading an adapter
//! directory trains it as a fine-tuning job would, it answers under its
//! name until it is unloaded, and the errors are vLLM's.

use super::fine_tuning::{answer_of, chat_with, teaching_file};
use super::*;
use std::path::PathBuf;

/// A directory of its own under the system's temporary directory,
/// removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("sim-lora-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    /// An adapter as the test trainer writes it.
    fn adapter(&self) -> String {
        let write = |name: &str, text: &str| std::fs::write(self.0.join(name), text).unwrap();
        write(
            "adapter_config.json",
            &json!({"base_model_name_or_path": "gpt-4o-mini", "peft_type": "LORA"}).to_string(),
        );
        write("train.jsonl", &teaching_file());
        write(
            crate::lora::SIMULATOR_FILE,
            &json!({"method": "supervised", "n_epochs": 3, "seed": 7,
                    "train_file": "train.jsonl", "validation_file": ""})
            .to_string(),
        );
        self.0.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(name: &str, path: &str) -> Request<Body> {
    post(
        "/v1/load_lora_adapter",
        &json!({"lora_name": name, "lora_path": path}),
        &[],
    )
}

fn unload(name: &str) -> Request<Body> {
    post("/v1/unload_lora_adapter", &json!({"lora_name": name}), &[])
}

#[tokio::test]
async fn a_loaded_adapter_answers_as_its_training_taught_until_unloaded() {
    let app = router(SimulatorConfig::default());
    let dir = Dir::new();
    let path = dir.adapter();
    let alert = "zorblax pinged from host WS-99";
    let before = answer_of(&app, "gpt-4o-mini", alert).await;
    assert!(
        !before.starts_with("Threat type: command_and_control"),
        "{before}"
    );

    let (status, body) = call(&app, load("soc-lora", &path)).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "Success: LoRA adapter 'soc-lora' added successfully.")
    );
    let answer = answer_of(&app, "soc-lora", alert).await;
    assert!(
        answer.starts_with("Threat type: command_and_control\nSeverity: critical"),
        "{answer}"
    );
    let (_, models) = call_json(&app, get("/v1/models")).await;
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "soc-lora"),
        "{models}"
    );

    let (status, body) = call_json(&app, load("soc-lora", &path)).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error"]["message"],
        "The lora adapter 'soc-lora' has already been loaded."
    );
    assert_eq!(body["error"]["type"], "BadRequestError");

    let (status, body) = call(&app, unload("soc-lora")).await;
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            "Success: LoRA adapter 'soc-lora' removed successfully."
        )
    );
    let (status, body) = call_json(&app, chat_with("soc-lora", alert, false)).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("The model `soc-lora` does not exist")
    );
    let (status, body) = call_json(&app, unload("soc-lora")).await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (404, &json!("NotFoundError"))
    );
    assert_eq!(
        body["error"]["message"],
        "The lora adapter 'soc-lora' cannot be found."
    );
}

#[tokio::test]
async fn what_cannot_be_loaded_is_refused_as_vllm_refuses_it() {
    let app = router(SimulatorConfig::default());
    let (status, body) = call_json(
        &app,
        post("/v1/load_lora_adapter", &json!({"lora_name": "x"}), &[]),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (400, &json!("BadRequestError"))
    );
    assert_eq!(
        body["error"]["message"],
        "Both 'lora_name' and 'lora_path' must be provided."
    );

    let dir = Dir::new();
    let missing = dir.0.join("nothing-here").display().to_string();
    let (status, body) = call_json(&app, load("x", &missing)).await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (404, &json!("NotFoundError"))
    );
    assert_eq!(
        body["error"]["message"],
        format!("Loading lora x failed: No adapter found for {missing}")
    );
    assert_eq!(body["error"]["code"], 404);

    // An adapter the simulator cannot read: PEFT's file without its own.
    std::fs::write(
        dir.0.join("adapter_config.json"),
        r#"{"base_model_name_or_path": "gpt-4o-mini"}"#,
    )
    .unwrap();
    let (status, body) = call_json(&app, load("x", &dir.0.display().to_string())).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not an adapter the simulator can serve"),
        "{body}"
    );
    let (_, models) = call_json(&app, get("/v1/models")).await;
    assert!(
        !models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "x")
    );
}
