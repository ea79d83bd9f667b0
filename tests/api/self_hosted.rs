//! The self-hosted loop over real HTTP: a trainer command (the test
//! trainer, `tests/fixtures/trainer/train.py`, plain Python) fine-tunes,
//! its adapter is loaded into the simulator standing in for vLLM
//! (`/v1/load_lora_adapter`), registered as a candidate, evaluated,
//! promoted through the gate, rolled back and unloaded; a trainer that
//! fails, one cancelled, and a server that restarted and forgot its
//! adapters. A Flywheel restart mid-training, with the real binary, is in
//! `restart.rs`.

mod restart;

use crate::evaluation_fixtures::*;
use crate::evaluations::LOW_TARGETS;
use crate::fine_tuning::{create_job, job, sft_jsonl, stored_dataset, until_finished};
use crate::helpers::*;
use flywheel_simulator::SimulatorConfig;
use reqwest::Method;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::oneshot;

/// The test trainer's path.
pub fn trainer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trainer/train.py")
}

/// A `[[providers]]` entry for the test trainer, serving on `sim` (unless
/// `extra`, more keys of the entry, names `serve_on`), with `flags` added
/// to its command line.
pub fn trainer_toml(adapters: &Path, flags: &[&str], extra: &str) -> String {
    let mut argv: Vec<String> = [
        "python3",
        &trainer_script().display().to_string(),
        "--train",
        "{train_file}",
        "--validation",
        "{validation_file}",
        "--base-model",
        "{base_model}",
        "--method",
        "{method}",
        "--epochs",
        "{epochs}",
        "--batch-size",
        "{batch_size}",
        "--learning-rate-multiplier",
        "{learning_rate_multiplier}",
        "--seed",
        "{seed}",
        "--output",
        "{output_dir}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(flags.iter().map(|s| s.to_string()));
    let command = serde_json::to_string(&argv).unwrap();
    // `sim` serves the adapters unless `extra` says where.
    let serve_on = if extra.contains("serve_on") {
        ""
    } else {
        "serve_on = [\"sim\"]\n"
    };
    format!(
        "[[providers]]\nname = \"trainer\"\nkind = \"command\"\nfine_tuning = true\n\
         command = {command}\nadapters_dir = \"{}\"\n{serve_on}{extra}\n",
        adapters.display()
    )
}

/// `sim` takes runtime adapters; `trainer` trains for it; jobs are polled
/// every second; promotions are gated on meeting (low) targets.
fn options(adapters: &Path, flags: &[&str], upstream: Option<SocketAddr>) -> Options {
    options_with(adapters, flags, upstream, "")
}

/// As [`options`], with more keys for the trainer's provider entry.
fn options_with(
    adapters: &Path,
    flags: &[&str],
    upstream: Option<SocketAddr>,
    trainer_extra: &str,
) -> Options {
    Options {
        upstream,
        provider_extra: "lora = true".into(),
        extra: format!(
            "{}[fine_tuning]\npoll_interval_s = 1\nmin_examples = 10\n\
             [evaluation]\npromotion_requires = \"meets_targets\"\n{LOW_TARGETS}",
            trainer_toml(adapters, flags, trainer_extra)
        ),
        ..Options::default()
    }
}

fn messages(job: &Value) -> Vec<String> {
    job["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

fn has(job: &Value, start: &str) -> bool {
    messages(job).iter().any(|m| m.starts_with(start))
}

async fn ask(app: &TestApp, variant: &str) -> reqwest::Response {
    app.http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.analyst_key)
        .header("x-flywheel-variant", variant)
        .json(&triage_request(false))
        .send()
        .await
        .unwrap()
}

async fn trainer_job(app: &TestApp, dataset: &str) -> String {
    let created = create_job(
        app,
        json!({"alias": "triage", "dataset_id": dataset, "provider": "trainer", "suffix": "local"}),
    )
    .await;
    assert_eq!(created["provider"], "trainer");
    created["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_command_fine_tunes_and_vllm_serves_the_adapter_through_the_gate() {
    let adapters = tempfile::tempdir().unwrap();
    let app = spawn_app_with(options(adapters.path(), &[], None)).await;
    let data = labelled_dataset(&app).await;
    let id = trainer_job(&app, &data.dataset_id).await;
    let done = until_finished(&app, &id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");

    // The trainer's run in the events and metrics; the adapter loaded.
    let adapter = done["fine_tuned_model"].as_str().unwrap().to_string();
    let version = done["registered_version"].as_str().unwrap().to_string();
    assert_eq!(adapter, version);
    assert!(adapter.starts_with("ft-local-"), "{adapter}");
    assert!(
        has(&done, "Started the trainer on trainer (process group "),
        "{done:#}"
    );
    assert!(has(&done, "Loaded "), "{done:#}");
    assert!(
        has(&done, &format!("Loaded adapter {adapter} on sim from ")),
        "{done:#}"
    );
    assert!(has(&done, "Saved the adapter to "), "{done:#}");
    let steps = messages(&done)
        .iter()
        .filter(|m| m.starts_with("Step "))
        .count();
    let metrics = &done["metrics"];
    assert_eq!(metrics["step"], metrics["total_steps"], "{metrics}");
    assert_eq!(Some(steps as u64), metrics["total_steps"].as_u64());
    assert!(metrics["train_loss"].as_f64().is_some(), "{metrics}");
    assert_eq!(done["trainer"]["loaded_on"], json!(["sim"]));
    assert_eq!(done["trainer"]["exit_code"], 0);
    let output = PathBuf::from(done["trainer"]["output_dir"].as_str().unwrap());
    assert!(output.starts_with(adapters.path().canonicalize().unwrap()));
    assert!(output.join("adapter_config.json").is_file());

    // Registered on the serving provider under the adapter's name.
    let alias = app.admin_get("/admin/api/models/triage").await;
    let registered = alias["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version.as_str())
        .unwrap_or_else(|| panic!("{alias:#}"))
        .clone();
    assert_eq!(
        (&registered["provider"], &registered["model"]),
        (&json!("sim"), &json!(adapter))
    );
    let answer = ask(&app, &version).await;
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["model"], adapter.as_str());
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with("Threat type: "), "{text}");

    // The trainer serves nothing, so no version may name it.
    let refused = app
        .admin(
            Method::POST,
            "/admin/api/models/triage/versions",
            Some(&json!({"name": "on-trainer", "provider": "trainer", "model": adapter})),
        )
        .await;
    let (status, error) = error_of(refused).await;
    assert_eq!(
        (status, error["param"].as_str()),
        (400, Some("provider")),
        "{error}"
    );
    assert!(
        error["message"].as_str().unwrap().contains("serves chat"),
        "{error}"
    );

    // Gated: refused before an evaluation, allowed once it meets the targets.
    let promote = || async {
        app.admin(
            Method::POST,
            "/admin/api/models/triage/promote",
            Some(&json!({"version": version, "reason": "trained on our alerts"})),
        )
        .await
    };
    let (status, error) = error_of(promote().await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (409, Some("promotion_gated"))
    );
    let run = evaluate(&app, &data.dataset_id, &["base", &version]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let results = app
        .admin_get(&format!(
            "/admin/api/evaluations/{}/examples",
            run["id"].as_str().unwrap()
        ))
        .await;
    let mine: Vec<&Value> = results["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["version"] == version.as_str())
        .collect();
    assert_eq!(mine.len(), data.validation_ids.len());
    assert!(mine.iter().all(|r| r["error"].is_null()), "{results:#}");
    assert_eq!(promote().await.status(), 200);

    // While it serves, its adapter stays; after the rollback an admin may unload it.
    let unload = || async {
        app.admin(
            Method::POST,
            &format!("/admin/api/fine-tuning/jobs/{id}/unload-adapter"),
            None,
        )
        .await
    };
    let (status, error) = error_of(unload().await).await;
    assert_eq!(status, 409, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("still serves traffic"),
        "{error}"
    );
    let rollback = app
        .admin(
            Method::POST,
            "/admin/api/models/triage/rollback",
            Some(&json!({"reason": "back to base"})),
        )
        .await;
    assert_eq!(rollback.status(), 200);
    let unloaded = unload().await;
    assert_eq!(unloaded.status(), 200);
    let unloaded: Value = unloaded.json().await.unwrap();
    assert!(
        has(&unloaded, &format!("Unloaded adapter {adapter} from sim")),
        "{unloaded:#}"
    );
    assert_eq!(unloaded["trainer"]["loaded_on"], json!([]));
    let models: Value = app
        .http
        .get(format!("http://{}/v1/models", app.upstream))
        .bearer_auth(PROVIDER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == adapter.as_str()),
        "{models}"
    );
    let audit = app.admin_get("/admin/api/audit?limit=5").await;
    assert!(
        audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "fine_tuning.job.unload_adapter"),
        "{audit:#}"
    );
    let (status, _) = error_of(unload().await).await;
    assert_eq!(status, 409, "nothing left to unload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_trainer_fails_the_job_with_its_last_stderr_lines() {
    let adapters = tempfile::tempdir().unwrap();
    let app = spawn_app_with(options(adapters.path(), &["--fail"], None)).await;
    let dataset = stored_dataset(&app, "sft", true, &sft_jsonl(24), &sft_jsonl(6)).await;
    let id = trainer_job(&app, &dataset).await;
    let done = until_finished(&app, &id).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    let error = &done["error"];
    assert_eq!(error["stage"], "run");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("the trainer exited with status 3"),
        "{message}"
    );
    assert!(
        message.ends_with("CUDA out of memory (simulated)\nthe trainer gives up"),
        "{message}"
    );
    assert_eq!(error["provider_error"]["exit_code"], 3);
    assert!(done["registered_version"].is_null());
    assert!(done["trainer"]["loaded_on"].as_array().unwrap().is_empty());

    // Exit 0 without an adapter is a failure too.
    let app = spawn_app_with(options(adapters.path(), &["--no-adapter"], None)).await;
    let dataset = stored_dataset(&app, "sft", true, &sft_jsonl(24), &sft_jsonl(6)).await;
    let id = trainer_job(&app, &dataset).await;
    let done = until_finished(&app, &id).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "the trainer exited 0 but wrote no adapter (adapter_config.json is not in "
        ),
        "{message}"
    );

    // A run past max_run_s is stopped, and its job fails saying so.
    let app = spawn_app_with(options_with(
        adapters.path(),
        &["--step-seconds", "30"],
        None,
        "max_run_s = 1",
    ))
    .await;
    let dataset = stored_dataset(&app, "sft", true, &sft_jsonl(24), &sft_jsonl(6)).await;
    let id = trainer_job(&app, &dataset).await;
    let pid = trainer_pid(&app, &id).await;
    let done = until_finished(&app, &id).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(
        done["error"]["message"],
        "the trainer ran longer than max_run_s (1 s) and was stopped"
    );
    assert!(!alive(pid), "the trainer still runs past max_run_s");
}

/// Whether a process with this id exists (and is no zombie).
pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Waits until the job's trainer has started; its process id.
pub async fn trainer_pid(app: &TestApp, id: &str) -> u64 {
    eventually("the trainer to start", Duration::from_secs(60), || async {
        let job = job(app, id).await;
        job["trainer"]["pid"].as_u64().ok_or(format!("{job:#}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_trainers_process_group() {
    let adapters = tempfile::tempdir().unwrap();
    let app = spawn_app_with(options(adapters.path(), &["--step-seconds", "5"], None)).await;
    let dataset = stored_dataset(&app, "sft", true, &sft_jsonl(24), &sft_jsonl(6)).await;
    let id = trainer_job(&app, &dataset).await;
    let pid = trainer_pid(&app, &id).await;
    assert!(alive(pid));
    let cancelled = app
        .admin(
            Method::POST,
            &format!("/admin/api/fine-tuning/jobs/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(cancelled.status(), 200);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(
        has(
            &cancelled,
            &format!("Stopped the trainer (process group {pid})")
        ),
        "{cancelled:#}"
    );
    assert!(!alive(pid), "the trainer still runs after the cancel");
    // Nothing comes back to life at the next polls.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = job(&app, &id).await;
    assert_eq!(after["status"], "cancelled");
    assert!(after["registered_version"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_a_server_is_down_unloads_what_was_loaded() {
    let adapters = tempfile::tempdir().unwrap();
    let mut options = options_with(adapters.path(), &[], None, "serve_on = [\"sim\", \"down\"]");
    options.extra.push_str(
        "[[providers]]\nname = \"down\"\nbase_url = \"http://127.0.0.1:1/v1\"\nlora = true\nmax_retries = 0\n",
    );
    let app = spawn_app_with(options).await;
    let dataset = stored_dataset(&app, "sft", true, &sft_jsonl(24), &sft_jsonl(6)).await;
    let id = trainer_job(&app, &dataset).await;
    // Loaded on `sim`; `down` cannot be reached, so the job waits for it.
    let waiting = eventually(
        "the job to wait for the server that is down",
        Duration::from_secs(30),
        || async {
            let job = job(&app, &id).await;
            let waits = messages(&job)
                .iter()
                .any(|m| m.contains("trying again at the next poll"));
            (waits && job["status"] == "running")
                .then_some(job.clone())
                .ok_or(format!("{job:#}"))
        },
    )
    .await;
    let adapter = waiting["fine_tuned_model"].as_str().unwrap().to_string();
    assert_eq!(waiting["trainer"]["loaded_on"], json!(["sim"]));
    assert!(waiting["registered_version"].is_null());

    let cancelled = app
        .admin(
            Method::POST,
            &format!("/admin/api/fine-tuning/jobs/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(cancelled.status(), 200);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(
        has(&cancelled, &format!("Unloaded adapter {adapter} from sim")),
        "{cancelled:#}"
    );
    assert_eq!(cancelled["trainer"]["loaded_on"], json!([]));
    let alias = app.admin_get("/admin/api/models/triage").await;
    assert_eq!(alias["versions"].as_array().unwrap().len(), 2, "{alias:#}");
    let (status, _) = error_of(
        app.http
            .post(format!("http://{}/v1/chat/completions", app.upstream))
            .bearer_auth(PROVIDER_KEY)
            .json(&json!({"model": adapter, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "the adapter is still loaded");
}

/// A simulator that can be stopped and started again on the same address,
/// as a vLLM server restarts.
struct Restartable {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Restartable {
    async fn start(addr: SocketAddr) -> Self {
        let listener = eventually(
            "the simulator's port to be free again",
            Duration::from_secs(30),
            || async { tokio::net::TcpListener::bind(addr).await.ok() },
        )
        .await;
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let config = SimulatorConfig {
            api_key: Some(PROVIDER_KEY.into()),
            ..SimulatorConfig::default()
        };
        let task = tokio::spawn(flywheel_simulator::serve(listener, config, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn restart(mut self) -> Self {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        Self::start(self.addr).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_gets_its_adapter_again_and_a_second_failure_is_clean() {
    let sim = Restartable::start(SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let adapters = tempfile::tempdir().unwrap();
    let app = spawn_app_with(options(adapters.path(), &[], Some(sim.addr))).await;
    let dataset = stored_dataset(&app, "sft", true, &sft_jsonl(24), &sft_jsonl(6)).await;
    let id = trainer_job(&app, &dataset).await;
    let done = until_finished(&app, &id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let version = done["registered_version"].as_str().unwrap().to_string();
    // Production from here on, so no fallback hides a failure.
    let promoted = app
        .admin(
            Method::POST,
            "/admin/api/models/triage/promote",
            Some(&json!({"version": version, "reason": "test", "force": true})),
        )
        .await;
    assert_eq!(promoted.status(), 200);
    let asked = |variant: &'static str| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/v1/chat/completions"))
                .bearer_auth(&app.client_key)
                .json(
                    &json!({"model": "triage", "messages": [{"role": "user", "content": variant}]}),
                )
                .send()
                .await
                .unwrap()
        }
    };
    let first = asked("mimikatz on DC-01").await;
    assert_eq!(first.status(), 200);

    // vLLM restarted: it forgot the adapter; the next request loads it again.
    let sim = sim.restart().await;
    let again = asked("mimikatz on DC-02").await;
    assert_eq!(again.status(), 200);
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["model"], version.as_str());
    assert_eq!(app.metric("flywheel_lora_reloads_total").await, 1.0);

    // vLLM and Flywheel both restarted: Flywheel loads the adapter at
    // start-up, before any request asks for it.
    let sim = sim.restart().await;
    let (data_dir, _kept) = app.stop().await;
    let app = spawn_app_with(Options {
        data_dir: Some(data_dir),
        ..options(adapters.path(), &[], Some(sim.addr))
    })
    .await;
    eventually(
        "the adapter to be loaded at start-up",
        Duration::from_secs(60),
        || async {
            let models: Value = app
                .http
                .get(format!("http://{}/v1/models", sim.addr))
                .bearer_auth(PROVIDER_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let listed = models["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == version.as_str());
            listed.then_some(()).ok_or(models.to_string())
        },
    )
    .await;
    let asked = |variant: &'static str| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/v1/chat/completions"))
                .bearer_auth(&app.client_key)
                .json(
                    &json!({"model": "triage", "messages": [{"role": "user", "content": variant}]}),
                )
                .send()
                .await
                .unwrap()
        }
    };
    let served = asked("mimikatz on DC-04").await;
    assert_eq!(served.status(), 200);
    // The counter is the process's, so it still holds the reload above.
    assert_eq!(
        app.metric("flywheel_lora_reloads_total").await,
        1.0,
        "no request needed a reload"
    );

    // Restarted again with the adapter gone from disk: one load is tried,
    // it fails, and the request fails cleanly in the OpenAI shape.
    let output = done["trainer"]["output_dir"].as_str().unwrap();
    std::fs::remove_dir_all(output).unwrap();
    let _sim = sim.restart().await;
    let (status, error) = error_of(asked("mimikatz on DC-03").await).await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["code"], "model_not_found", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains(&format!("The model `{version}` does not exist")),
        "{error}"
    );
    assert_eq!(app.metric("flywheel_lora_reloads_total").await, 2.0);
}
