//! Two real `flywheel serve` processes on one PostgreSQL database (a
//! cluster of the test's own): what one replica changes, the other serves
//! within a moment; feedback goes to either; one replica killed under
//! load loses no acknowledged feedback, the other keeps serving and
//! finishes the fine-tuning job the dead one was following.

use crate::helpers::eventually;
use crate::helpers::postgres::{Cluster, database_in};
use crate::helpers::process::{Process, flywheel, free_port, listening, ready};
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
# Short, so the survivor takes over soon after a death; long enough that a
# loaded machine's stall of the holder does not hand its leases over early.
lease_ttl_s = 6

[fine_tuning]
poll_interval_s = 1
min_examples = 20

[[providers]]
name = "sim"
base_url = "http://{upstream}/v1"
fine_tuning = true

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

/// The simulator, its fine-tuning jobs spending `step_ms` in each status.
async fn simulator(step_ms: u64) -> (Process, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let process = Process::spawn(
        "flywheel simulate",
        flywheel().args([
            "simulate",
            "--listen",
            &addr.to_string(),
            "--job-step-ms",
            &step_ms.to_string(),
        ]),
    );
    listening(addr.port()).await;
    (process, addr)
}

async fn database(url: &str) -> tokio_postgres::Client {
    let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db
}

/// Who holds the fine-tuning poller's lease, once someone does.
async fn poller_holder(db: &tokio_postgres::Client) -> String {
    eventually(
        "a replica to take the fine-tuning poller's lease",
        Duration::from_secs(30),
        || async {
            db.query_opt(
                "SELECT holder FROM leases WHERE name = 'fine-tuning-poller'",
                &[],
            )
            .await
            .unwrap()
            .map(|row| row.get::<_, String>(0))
        },
    )
    .await
}

/// 24 conversations chatted on `base`, approved, made into a dataset and
/// a fine-tuning job; returns the job once the provider has it.
async fn submitted_job(http: &reqwest::Client, base: &str, client: &str) -> String {
    for n in 0..24 {
        assert!(chat(http, base, client, 5000 + n).await.is_some());
    }
    let ids = eventually(
        "the 24 conversations to be captured",
        Duration::from_secs(30),
        || async {
            let page: Value = admin(
                http,
                base,
                reqwest::Method::GET,
                "/admin/api/conversations?limit=100",
                json!(null),
            )
            .await
            .json()
            .await
            .unwrap();
            let ids: Vec<Value> = page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].clone())
                .collect();
            (ids.len() >= 24).then_some(ids)
        },
    )
    .await;
    let approved = admin(
        http,
        base,
        reqwest::Method::POST,
        "/admin/api/conversations/bulk",
        json!({"ids": ids, "action": "approve"}),
    )
    .await;
    assert_eq!(approved.status(), 200);
    let dataset: Value = admin(
        http,
        base,
        reqwest::Method::POST,
        "/admin/api/datasets",
        json!({"name": "replicas", "format": "sft", "filter": {"status": "approved", "alias": "triage"}}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(dataset["ready_for_training"], true, "{dataset:#}");
    let created = admin(
        http,
        base,
        reqwest::Method::POST,
        "/admin/api/fine-tuning/jobs",
        json!({"alias": "triage", "dataset_id": dataset["id"], "suffix": "replica"}),
    )
    .await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(
        "the job to be submitted",
        Duration::from_secs(60),
        || async { (job(http, base, &id).await["provider_job_id"].is_string()).then_some(()) },
    )
    .await;
    id
}

async fn job(http: &reqwest::Client, base: &str, id: &str) -> Value {
    admin(
        http,
        base,
        reqwest::Method::GET,
        &format!("/admin/api/fine-tuning/jobs/{id}"),
        json!(null),
    )
    .await
    .json()
    .await
    .unwrap()
}

#[tokio::test]
async fn two_serve_processes_share_changes_and_survive_one_being_killed() {
    let cluster = Cluster::start();
    let url = database_in(&cluster.url(), "replicas").await.url;
    let db = database(&url).await;
    // Each status of a fine-tuning job lasts 1.5 s: the job is still
    // running at the provider when A dies.
    let (_simulator, upstream) = simulator(1500).await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = replica(dir.path(), "a", upstream, &url).await;
    // A alone takes the background services' leases, so it is the one
    // following the job below.
    let holder_a = poller_holder(&db).await;
    let b = replica(dir.path(), "b", upstream, &url).await;
    let http = reqwest::Client::new();
    let (_, client) = new_key(&http, &a.base, "client").await;
    let (_, analyst) = new_key(&http, &b.base, "analyst").await;
    let job_id = submitted_job(&http, &b.base, &client).await;
    assert_eq!(poller_holder(&db).await, holder_a);

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
        Duration::from_secs(30),
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
        Duration::from_secs(30),
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
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM feedback WHERE id = ANY($1)",
            &[&acknowledged],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored as usize, acknowledged.len());

    // B takes the poller's lease over and finishes A's job: one
    // submission, one candidate.
    let finished = eventually(
        "the survivor to finish the dead replica's job",
        Duration::from_secs(40),
        || async {
            let job = job(&http, &b.base, &job_id).await;
            (job["status"] == "succeeded").then_some(job)
        },
    )
    .await;
    assert_ne!(poller_holder(&db).await, holder_a);
    let at_provider: Value = http
        .get(format!("http://{upstream}/v1/fine_tuning/jobs?limit=100"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let submissions = at_provider["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["metadata"]["flywheel_job_id"] == job_id.as_str())
        .count();
    assert_eq!(submissions, 1, "{at_provider:#}");
    let version = finished["registered_version"].as_str().unwrap();
    let alias: Value = admin(
        &http,
        &b.base,
        reqwest::Method::GET,
        "/admin/api/models/triage",
        json!(null),
    )
    .await
    .json()
    .await
    .unwrap();
    let registered = alias["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] == version)
        .count();
    assert_eq!(registered, 1, "{alias:#}");
}
