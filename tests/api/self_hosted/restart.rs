//! Flywheel killed while its trainer runs, with the real binary: the
//! trainer it left behind is stopped when Flywheel starts again, and the
//! job fails saying why — not lost, not started a second time.

use super::{alive, trainer_toml};
use crate::fine_tuning::sft_jsonl;
use crate::helpers::process::{Process, flywheel, free_port, ready};
use crate::helpers::*;
use flywheel::store::DatasetRecord;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn serve(config: &Path) -> Process {
    Process::spawn(
        "flywheel serve",
        flywheel()
            .args(["serve", "--config"])
            .arg(config)
            .env("FLYWHEEL_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SIM_KEY", PROVIDER_KEY)
            .stderr(std::process::Stdio::inherit()),
    )
}

/// A ready dataset written straight into the store before Flywheel starts.
fn seed_dataset(data: &Path) -> String {
    let store = flywheel::store::open(data).unwrap();
    let id = flywheel::ids::new_id("ds");
    let record = DatasetRecord {
        id: id.clone(),
        name: "stored for a test".into(),
        format: "sft".into(),
        created_at: flywheel::ids::now_rfc3339(),
        created_by: "test".into(),
        filter: json!({"status": "approved"}),
        alias: Some("triage".into()),
        base_model: Some("gpt-4o-mini".into()),
        validation_split: 0.2,
        report: json!({"ready_for_training": true, "problems": []}),
        train_ids: Vec::new(),
        validation_ids: Vec::new(),
    };
    store
        .insert_dataset(&record, sft_jsonl(24).as_bytes(), sft_jsonl(6).as_bytes())
        .unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_running_when_flywheel_stopped_is_stopped_and_its_job_fails_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sim = spawn_simulator(flywheel_simulator::SimulatorConfig {
        api_key: Some(PROVIDER_KEY.into()),
        ..Default::default()
    })
    .await;
    let dataset = seed_dataset(&data);
    let port = free_port();
    let config = dir.path().join("flywheel.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
             [[providers]]\nname = \"sim\"\nbase_url = \"http://{sim}/v1\"\napi_key_env = \"SIM_KEY\"\nlora = true\n\
             {}\
             [[models]]\nname = \"triage\"\nmodel_type = \"threat_detection\"\n  [[models.versions]]\n  name = \"base\"\n  provider = \"sim\"\n  model = \"gpt-4o-mini\"\n\
             [fine_tuning]\npoll_interval_s = 1\nmin_examples = 10\n",
            data.display(),
            trainer_toml(&dir.path().join("adapters"), &["--step-seconds", "30"], ""),
        ),
    )
    .unwrap();
    let check = flywheel()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve(&config);
    ready(&http, &base).await;
    let get_job = |id: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}/admin/api/fine-tuning/jobs/{id}"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let created: Value = http
        .post(format!("{base}/admin/api/fine-tuning/jobs"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"alias": "triage", "dataset_id": dataset, "provider": "trainer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_string();
    let pid = eventually("the trainer to start", Duration::from_secs(60), || async {
        let job = get_job(id.clone()).await;
        job["trainer"]["pid"].as_u64().ok_or(format!("{job:#}"))
    })
    .await;

    // The trainer is under way (it said so, and sleeps through its first
    // step), so it outlives Flywheel rather than dying on its next write
    // to the pipe Flywheel held.
    eventually("the trainer to report", Duration::from_secs(60), || async {
        let job = get_job(id.clone()).await;
        let said = job["events"].as_array().unwrap().iter().any(|e| {
            e["message"]
                .as_str()
                .unwrap()
                .starts_with("Loaded 24 training examples")
        });
        said.then_some(()).ok_or(format!("{job:#}"))
    })
    .await;
    // Killed as a crash would: the trainer, in its own process group, runs on.
    server.kill();
    assert!(alive(pid), "the trainer died with Flywheel");

    let _server = serve(&config);
    ready(&http, &base).await;
    let failed = eventually("the job to fail", Duration::from_secs(60), || async {
        let job = get_job(id.clone()).await;
        (job["status"] == "failed")
            .then_some(job.clone())
            .ok_or(format!("{job:#}"))
    })
    .await;
    assert_eq!(
        failed["error"]["message"],
        "Flywheel stopped while the trainer was running; start the job again"
    );
    let events: Vec<&str> = failed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        events.contains(
            &format!(
                "Stopped the trainer left running by the previous process (process group {pid})"
            )
            .as_str()
        ),
        "{events:#?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|m| m.starts_with("Started the trainer"))
            .count(),
        1,
        "started twice: {events:#?}"
    );
    assert!(!alive(pid), "the orphaned trainer still runs");
}
