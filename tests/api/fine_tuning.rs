//! Fine-tuning jobs over real HTTP against the real simulator, whose jobs
//! really train on the uploaded JSONL: the whole loop from chats through
//! review and the datasets API to a served candidate, restarts mid-job, provider failures at each stage,
//! cancel, and the checks on creation.

mod continuous;
mod failures;
mod methods;
pub mod restart;

use crate::helpers::*;
use flywheel::store::DatasetRecord;
use flywheel_simulator::SimulatorConfig;
use reqwest::Method;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

/// The simulator's step per job status: a job ends in a few polls.
const FAST_STEP: Duration = Duration::from_millis(50);

pub fn simulator(job_step: Duration) -> SimulatorConfig {
    SimulatorConfig {
        api_key: Some(PROVIDER_KEY.into()),
        job_step,
        ..SimulatorConfig::default()
    }
}

/// The `sim` provider fine-tunes, jobs are polled every second and
/// datasets need 20 examples.
pub fn options(upstream: SocketAddr, extra: &str) -> Options {
    Options {
        upstream: Some(upstream),
        provider_extra: "fine_tuning = true".into(),
        extra: format!("[fine_tuning]\npoll_interval_s = 1\nmin_examples = 20\n{extra}"),
        ..Options::default()
    }
}

pub async fn create_job(app: &TestApp, body: Value) -> Value {
    let response = app
        .admin(Method::POST, "/admin/api/fine-tuning/jobs", Some(&body))
        .await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

pub async fn job(app: &TestApp, id: &str) -> Value {
    let response = app
        .admin(
            Method::GET,
            &format!("/admin/api/fine-tuning/jobs/{id}"),
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Polls the job until it has ended (for two minutes at most: a loaded
/// machine stretches the polls and the simulated training alike).
pub async fn until_finished(app: &TestApp, id: &str) -> Value {
    eventually(
        &format!("job {id} to finish"),
        Duration::from_secs(120),
        || async {
            let job = job(app, id).await;
            if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
                Ok(job)
            } else {
                Err(format!("{job:#}"))
            }
        },
    )
    .await
}

/// Polls the job until the provider has its submission; the job.
pub async fn until_submitted(app: &TestApp, id: &str) -> Value {
    eventually(
        &format!("job {id} to be submitted"),
        Duration::from_secs(60),
        || async {
            let job = job(app, id).await;
            if job["provider_job_id"].is_null() {
                Err(format!("{job:#}"))
            } else {
                Ok(job)
            }
        },
    )
    .await
}

/// The simulator's own view, asked directly with the provider key.
pub async fn at_simulator(app: &TestApp, path: &str) -> Value {
    app.http
        .get(format!("http://{}/v1{path}", app.upstream))
        .bearer_auth(PROVIDER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The simulator's jobs submitted for our job `id`.
pub async fn submissions(app: &TestApp, id: &str) -> Vec<Value> {
    let jobs = at_simulator(app, "/fine_tuning/jobs?limit=100").await;
    jobs["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["metadata"]["flywheel_job_id"] == id)
        .cloned()
        .collect()
}

const ALERTS: [(&str, &str, &str); 6] = [
    (
        "LSASS memory dumped by rundll32.exe via comsvcs.dll MiniDump on host WS-{n}",
        "credential_access",
        "high",
    ),
    (
        "user clicked a link to a credential harvesting page mimicking Office 365 at invoice-{n}.example",
        "phishing",
        "medium",
    ),
    (
        "files on FS-{n} renamed with a .locked extension and a ransom note README_DECRYPT.txt dropped",
        "ransomware",
        "critical",
    ),
    (
        "PsExec service created on SRV-{n} from WS-{n} over the ADMIN$ share",
        "lateral_movement",
        "high",
    ),
    (
        "scheduled task created on WS-{n} running powershell -enc at every logon",
        "persistence",
        "medium",
    ),
    (
        "wuauclt.exe on WS-{n} downloaded updates from windowsupdate.com as scheduled",
        "benign",
        "informational",
    ),
];

/// `n` alerts of six kinds, each with its label.
pub fn alert(i: usize) -> (String, &'static str, &'static str) {
    let (text, threat, severity) = ALERTS[i % ALERTS.len()];
    (
        format!("Endpoint alert: {}.", text.replace("{n}", &i.to_string())),
        threat,
        severity,
    )
}

/// SFT lines in the shape curation writes, without going through chats.
pub fn sft_jsonl(n: usize) -> String {
    (0..n)
        .map(|i| {
            let (text, threat, severity) = alert(i);
            let line = json!({"messages": [
                {"role": "system", "content": "You are a security analyst. Classify the alert."},
                {"role": "user", "content": text},
                {"role": "assistant", "content": format!("Threat type: {threat}\nSeverity: {severity}\nRationale: the alert shows it.")},
            ]});
            format!("{line}\n")
        })
        .collect()
}

/// A dataset snapshot stored directly, with the report's verdict given.
pub async fn stored_dataset(
    app: &TestApp,
    format: &str,
    ready: bool,
    train: &str,
    validation: &str,
) -> String {
    let id = flywheel::ids::new_id("ds");
    let problems: Vec<&str> = if ready {
        vec![]
    } else {
        vec!["3 examples; at least 20 are needed"]
    };
    let record = DatasetRecord {
        id: id.clone(),
        name: "stored for a test".into(),
        format: format.into(),
        created_at: flywheel::ids::now_rfc3339(),
        created_by: "test".into(),
        filter: json!({"status": "approved"}),
        alias: Some("triage".into()),
        base_model: Some("gpt-4o-mini".into()),
        validation_split: 0.2,
        report: json!({"ready_for_training": ready, "problems": problems}),
        train_ids: Vec::new(),
        validation_ids: Vec::new(),
    };
    let (store, train, validation) = (
        app.state.store.clone(),
        train.to_string(),
        validation.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        store.insert_dataset(&record, train.as_bytes(), validation.as_bytes())
    })
    .await
    .unwrap()
    .unwrap();
    id
}

/// `n` chats through the proxy, each labelled and then approved in bulk.
pub async fn reviewed_conversations(app: &TestApp, n: usize) {
    reviewed_conversations_from(app, 0, n).await;
}

/// What an answer in the simulator's format states: its `Threat type:`
/// and `Severity:` lines.
fn stated(answer: &str) -> (Option<&str>, Option<&str>) {
    let field = |name: &str| {
        answer
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    (field("Threat type:"), field("Severity:"))
}

/// As [`reviewed_conversations`], with alerts `first..first + n`. Where
/// the model said otherwise than the label, the analyst also writes the
/// answer it should have given, as a reviewer must for the conversation to
/// be trained on.
pub async fn reviewed_conversations_from(app: &TestApp, first: usize, n: usize) {
    let mut labelled = Vec::new();
    for i in first..first + n {
        let (text, threat, severity) = alert(i);
        let response = app
            .post(
                "/v1/chat/completions",
                &json!({"model": "triage", "messages": [{"role": "user", "content": text}]}),
            )
            .await;
        assert_eq!(response.status(), 200);
        let id = response.headers()["x-flywheel-conversation-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body: Value = response.json().await.unwrap();
        let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
        let mut review = json!({"threat_type": threat, "severity": severity, "quality_score": 5});
        if stated(answer) != (Some(threat), Some(severity)) {
            review["correction"] = json!(format!(
                "Threat type: {threat}\nSeverity: {severity}\nRationale: {text}"
            ));
        }
        labelled.push((id, review));
    }
    for (id, review) in &labelled {
        // Capture is off the hot path: the conversation appears shortly.
        let path = format!("/admin/api/conversations/{id}");
        eventually(
            &format!("conversation {id} to be captured and reviewed"),
            Duration::from_secs(30),
            || async {
                let response = app
                    .send(Method::PATCH, &path, &app.analyst_key, Some(review))
                    .await;
                (response.status() == 200).then_some(())
            },
        )
        .await;
    }
    let ids: Vec<&str> = labelled.iter().map(|(id, _)| id.as_str()).collect();
    let response = app
        .send(
            Method::POST,
            "/admin/api/conversations/bulk",
            &app.analyst_key,
            Some(&json!({"ids": ids, "action": "approve"})),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["updated"], n, "{body}");
}

/// A snapshot of the approved conversations, built by the datasets API.
async fn dataset_from_approved(app: &TestApp) -> (String, Value) {
    let body = json!({"name": "approved triage", "format": "sft", "filter": {"status": "approved", "alias": "triage"}});
    let response = app
        .admin(Method::POST, "/admin/api/datasets", Some(&body))
        .await;
    assert_eq!(response.status(), 201);
    let report: Value = response.json().await.unwrap();
    (report["id"].as_str().unwrap().to_string(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_become_a_fine_tuned_candidate_that_serves_its_canary_share() {
    let sim = spawn_simulator(simulator(FAST_STEP)).await;
    let app = spawn_app_with(options(sim, "canary_weight = 50")).await;
    reviewed_conversations(&app, 60).await;
    let (dataset, report) = dataset_from_approved(&app).await;
    assert_eq!(report["ready_for_training"], true, "{report:#}");
    assert_eq!(report["counts"]["accepted"], 60, "{report:#}");

    let created = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": dataset, "suffix": "soc", "seed": 7,
               "hyperparameters": {"n_epochs": 2}}),
    )
    .await;
    assert_eq!(created["status"], "preparing");
    assert_eq!(
        (&created["provider"], &created["base_model"]),
        (&json!("sim"), &json!("gpt-4o-mini"))
    );
    assert_eq!(created["method"], "supervised");
    assert_eq!(created["model_type"], "threat_detection");
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("job_"), "{id}");

    let done = until_finished(&app, id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let model = done["fine_tuned_model"].as_str().unwrap();
    assert!(
        model.starts_with("ft:gpt-4o-mini:") && model.contains(":soc:"),
        "{model}"
    );
    let version = done["registered_version"].as_str().unwrap();
    assert!(version.starts_with("ft-soc-"), "{version}");
    assert!(done["trained_tokens"].as_u64().unwrap() > 0);
    assert!(done["metrics"]["train_loss"].is_number(), "{done:#}");
    assert!(
        done["provider_file_ids"]["training_file"]
            .as_str()
            .unwrap()
            .starts_with("file-")
    );
    assert!(
        done["provider_file_ids"]["validation_file"]
            .as_str()
            .unwrap()
            .starts_with("file-")
    );
    assert!(done["finished_at"].is_string());
    let messages: Vec<&str> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("Step ")),
        "{messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("Registered")),
        "{messages:#?}"
    );
    assert_eq!(submissions(&app, id).await.len(), 1);

    let alias: Value = app
        .admin(Method::GET, "/admin/api/models/triage", None)
        .await
        .json()
        .await
        .unwrap();
    let tuned = alias["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version)
        .unwrap()
        .clone();
    assert_eq!(
        (&tuned["state"], &tuned["origin"], &tuned["model"]),
        (&json!("candidate"), &json!(id), &json!(model))
    );
    assert_eq!(tuned["weight"], 50.0);

    let mut served = std::collections::HashSet::new();
    for user in 0..40 {
        let response = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.client_key)
            .header("x-flywheel-user", format!("analyst-{user}"))
            .json(&triage_request(false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        served.insert(
            response.headers()["x-flywheel-variant"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert!(
        served.contains(version) && served.contains("base"),
        "{served:?}"
    );

    let audit: Value = app
        .admin(Method::GET, "/admin/api/audit?limit=100", None)
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<(&str, &str)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["actor"].as_str().unwrap()))
        .collect();
    for expected in ["fine_tuning.job.create", "model.register", "model.traffic"] {
        assert!(
            actions.iter().any(|(a, _)| *a == expected),
            "{expected} not in {actions:?}"
        );
    }
    assert!(
        actions.contains(&("model.register", "fine-tuning")),
        "{actions:?}"
    );

    let list: Value = app
        .admin(Method::GET, "/admin/api/fine-tuning/jobs", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["id"], id);
    assert_eq!(list["has_more"], false);
}
