//! Two real `flywheel serve` processes on one PostgreSQL database (a
//! cluster of the test's own): what one replica changes, the other serves
//! within a moment; feedback goes to either; one replica killed under
//! load loses no acknowledged feedback and the other keeps serving.

use crate::helpers::eventually;
use crate::helpers::postgres::{Cluster, database_in};
use crate::helpers::process::{Process, flywheel, free_port, ready, simulate};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ADMIN: &str = "replica-admin-token";

fn write_config(dir: &Path, name: &str, port: u16, upstream: SocketAddr) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
data_dir = "{data}"

[limits]
requests_per_minute = 0

[store]
kind = "postgres"

[[providers]]
name = "sim"
base_url = "http://{upstream}/v1"

[[models]]
name = "triage"
model_type = "threat_detection"
production = "base"
  [[models.versions]]
  name = "base"
  provider = "sim"
  model = "gpt-4o-mini"
  [[models.versions]]
  name = "large"
  provider = "sim"
  model = "gpt-4o"
"#,
        data = dir.join(name).display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

struct Replica {
    process: Process,
    base: String,
}

async fn replica(dir: &Path, name: &str, upstream: SocketAddr, url: &str) -> Replica {
    let port = free_port();
    let config = write_config(dir, name, port, upstream);
    let process = Process::spawn(
        name,
        flywheel()
            .args(["serve", "--config"])
            .arg(&config)
            .env("FLYWHEEL_DATABASE_URL", url)
            .env("FLYWHEEL_ADMIN_TOKEN", ADMIN)
            .stderr(std::process::Stdio::inherit()),
    );
    let base = format!("http://127.0.0.1:{port}");
    ready(&reqwest::Client::new(), &base).await;
    Replica { process, base }
}

async fn admin(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> reqwest::Response {
    http.request(method, format!("{base}{path}"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn new_key(http: &reqwest::Client, base: &str, role: &str) -> (String, String) {
    let created: Value = admin(
        http,
        base,
        reqwest::Method::POST,
        "/admin/api/keys",
        json!({"name": role, "role": role}),
    )
    .await
    .json()
    .await
    .unwrap();
    (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    )
}

fn chat_body(n: usize) -> Value {
    json!({"model": "triage", "messages": [{"role": "user", "content": format!("Endpoint alert #{n}: mimikatz on WS-{n}")}]})
}

/// Chats on `base`: the status and, when served, the inference id and the
/// version that served it.
async fn chat(http: &reqwest::Client, base: &str, key: &str, n: usize) -> Option<(String, String)> {
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(n))
        .send()
        .await
        .ok()?;
    if response.status() != StatusCode::OK {
        return None;
    }
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
    Some((
        header("x-flywheel-inference-id"),
        header("x-flywheel-variant"),
    ))
}

#[tokio::test]
async fn two_serve_processes_share_changes_and_survive_one_being_killed() {
    let cluster = Cluster::start();
    let url = database_in(&cluster.url(), "replicas").await.url;
    let (_simulator, upstream) = simulate().await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = replica(dir.path(), "a", upstream, &url).await;
    let b = replica(dir.path(), "b", upstream, &url).await;
    let http = reqwest::Client::new();
    let (_, client) = new_key(&http, &a.base, "client").await;
    let (_, analyst) = new_key(&http, &b.base, "analyst").await;

    // Promoted through A, served by B.
    let promoted = admin(
        &http,
        &a.base,
        reqwest::Method::POST,
        "/admin/api/models/triage/promote",
        json!({"version": "large", "reason": "replica test", "force": true}),
    )
    .await;
    assert_eq!(promoted.status(), 200);
    eventually(
        "B to serve the version promoted on A",
        Duration::from_secs(5),
        || async {
            let served = chat(&http, &b.base, &client, 0).await.map(|(_, v)| v);
            (served.as_deref() == Some("large"))
                .then_some(())
                .ok_or(format!("{served:?}"))
        },
    )
    .await;

    // A key revoked through B is refused by A.
    let (doomed_id, doomed) = new_key(&http, &a.base, "client").await;
    let revoked = admin(
        &http,
        &b.base,
        reqwest::Method::DELETE,
        &format!("/admin/api/keys/{doomed_id}"),
        json!({}),
    )
    .await;
    assert_eq!(revoked.status(), 204);
    eventually(
        "A to refuse the key revoked on B",
        Duration::from_secs(5),
        || async {
            let status = http
                .get(format!("{}/v1/models", a.base))
                .bearer_auth(&doomed)
                .send()
                .await
                .unwrap()
                .status();
            (status == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await;

    // 8 clients: chat on one replica, label the answer on the other; A is
    // killed half-way. Every acknowledged feedback must be stored.
    let bases = [a.base.clone(), b.base.clone()];
    let mut clients = Vec::new();
    for c in 0..8 {
        let (http, bases, client, analyst) =
            (http.clone(), bases.clone(), client.clone(), analyst.clone());
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0..30 {
                let (chat_on, rate_on) = if (c + n) % 2 == 0 { (0, 1) } else { (1, 0) };
                let served = match chat(&http, &bases[chat_on], &client, c * 100 + n).await {
                    Some(s) => Some(s),
                    // A replica that is gone: the other serves.
                    None => chat(&http, &bases[rate_on], &client, c * 100 + n).await,
                };
                let Some((inference, _)) = served else {
                    continue;
                };
                for base in [&bases[rate_on], &bases[chat_on]] {
                    let response = http
                        .post(format!("{base}/v1/feedback"))
                        .bearer_auth(&analyst)
                        .json(
                            &json!({"inference_id": inference, "threat_type": "credential_access"}),
                        )
                        .send()
                        .await;
                    if let Ok(r) = response
                        && r.status() == StatusCode::CREATED
                    {
                        let body: Value = r.json().await.unwrap();
                        acknowledged.push(body["id"].as_str().unwrap().to_string());
                        break;
                    }
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.process.kill();
    let mut acknowledged = Vec::new();
    for c in clients {
        acknowledged.extend(c.await.unwrap());
    }
    assert!(
        acknowledged.len() > 100,
        "most feedback got through: {}",
        acknowledged.len()
    );

    // B keeps serving, and every acknowledged feedback is in the database.
    assert!(chat(&http, &b.base, &client, 9999).await.is_some());
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM feedback WHERE id = ANY($1)",
            &[&acknowledged],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored as usize, acknowledged.len());
}
