//! The command line with the PostgreSQL store: start-up errors that name
//! the key, `flywheel migrate`, TLS to the database, and keys and export
//! beside a running server (which the embedded store cannot allow).

use crate::helpers::eventually;
use crate::helpers::postgres::{Cluster, database_in};
use crate::helpers::process::{Process, flywheel, free_port, ready};
use std::path::{Path, PathBuf};
use std::time::Duration;

const URL_ENV: &str = "FLYWHEEL_DATABASE_URL";

fn write_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("flywheel.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
data_dir = "{data}"

[store]
kind = "postgres"

[[providers]]
name = "sim"
base_url = "http://127.0.0.1:9/v1"

[[models]]
name = "triage"
model_type = "threat_detection"
  [[models.versions]]
  name = "base"
  provider = "sim"
  model = "gpt-4o-mini"
"#,
        data = dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `flywheel <args> --config <config>` with the database URL set.
fn run(config: &Path, url: &str, args: &[&str]) -> std::process::Output {
    flywheel()
        .args(args)
        .arg("--config")
        .arg(config)
        .env(URL_ENV, url)
        .output()
        .unwrap()
}

/// `config` with `store.ca_file` set to `ca`.
fn with_ca_file(config: &Path, ca: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config).unwrap().replace(
        "kind = \"postgres\"\n",
        &format!("kind = \"postgres\"\nca_file = \"{}\"\n", ca.display()),
    );
    let path = config.with_file_name("with-ca.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn tls_to_the_database_is_verified_and_a_ca_file_needs_sslmode_require() {
    let cluster = Cluster::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let plain = write_config(dir.path(), free_port());
    let trusting = with_ca_file(&plain, &cluster.ca());
    let require = format!("{}?sslmode=require", cluster.url());

    let out = run(&trusting, &require, &["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is up to date"));

    // The server's certificate is not signed by a public root.
    let out = run(&plain, &require, &["migrate"]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert!(
        message.contains("store.url_env")
            && message.contains("certificate")
            && message.contains("store.ca_file"),
        "{message}"
    );

    // A CA file is never left unused while the URL goes without TLS.
    let out = run(&trusting, &cluster.url(), &["serve"]);
    let message = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{message}");
    assert!(
        message.contains("store.ca_file") && message.contains("sslmode=require"),
        "{message}"
    );
}

#[test]
fn a_bad_or_unreachable_database_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port());
    for (url, problem) in [
        ("not a url at all ::", "cannot be read"),
        (
            &format!("postgres://nobody@127.0.0.1:{}/x", free_port()) as &str,
            "cannot use the database",
        ),
    ] {
        let out = run(&config, url, &["serve"]);
        let message = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {message}");
        assert!(
            message.contains("store.url_env") && message.contains(problem),
            "{message}"
        );
    }
    let unset = flywheel()
        .args(["migrate", "--config"])
        .arg(&config)
        .env_remove(URL_ENV)
        .output()
        .unwrap();
    assert_eq!(unset.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unset.stderr).contains("not set"));
}

#[tokio::test]
async fn keys_and_export_work_while_a_server_runs() {
    let cluster = Cluster::start();
    let url = database_in(&cluster.url(), "cli").await.url;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port);

    let migrated = run(&config, &url, &["migrate"]);
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let mut server = Process::spawn(
        "flywheel serve",
        flywheel()
            .args(["serve", "--config"])
            .arg(&config)
            .env(URL_ENV, &url)
            .stderr(std::process::Stdio::inherit()),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    ready(&http, &base).await;

    let created = run(
        &config,
        &url,
        &["keys", "create", "--role", "client", "--name", "cli"],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = String::from_utf8(created.stdout)
        .unwrap()
        .trim()
        .to_string();
    let status = |key: String| {
        let request = http.get(format!("{base}/v1/models")).bearer_auth(key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    eventually(
        "the running server to accept the key the CLI made",
        Duration::from_secs(30),
        || async { (status(key.clone()).await == 200).then_some(()) },
    )
    .await;

    let listing = run(&config, &url, &["keys", "list"]);
    let listing = String::from_utf8(listing.stdout).unwrap();
    let id = listing
        .lines()
        .find(|l| l.ends_with(" cli"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(
        run(&config, &url, &["keys", "revoke", &id])
            .status
            .success()
    );
    eventually(
        "the running server to refuse the key the CLI revoked",
        Duration::from_secs(30),
        || async { (status(key.clone()).await == 401).then_some(()) },
    )
    .await;

    let out = dir.path().join("conversations.jsonl");
    let export = run(&config, &url, &["export", "--out", out.to_str().unwrap()]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    assert!(String::from_utf8_lossy(&export.stderr).contains("exported 0 conversations"));
    server.terminate().await;
}

#[tokio::test]
async fn an_embedded_store_moves_into_postgres_and_a_second_run_is_safe() {
    use crate::helpers::{Options, spawn_app, spawn_app_with, triage_request};
    use flywheel::store::ConversationScan;
    use serde_json::{Value, json};
    // An embedded store with conversations, feedback (sent with an
    // idempotency key), keys and an alert delivery still queued.
    let app = spawn_app().await;
    let mut inferences = Vec::new();
    // The three ask the same: the continuation key is the last one's.
    let mut last_turn = None;
    for _ in 0..3 {
        let response = app
            .post("/v1/chat/completions", &triage_request(false))
            .await;
        assert_eq!(response.status(), 200);
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
        inferences.push(header("x-flywheel-inference-id"));
        let conversation = header("x-flywheel-conversation-id");
        let answer: Value = response.json().await.unwrap();
        last_turn = Some((conversation, answer["choices"][0]["message"].clone()));
    }
    app.capture_settled().await;
    // The same client (its key moves too) rates once, then retries.
    let client_key = app.client_key.clone();
    let rate = |app: &crate::helpers::TestApp| {
        app.http
            .post(app.url("/v1/feedback"))
            .bearer_auth(&client_key)
            .header("idempotency-key", "rated-once")
            .json(&json!({"inference_id": inferences[0], "rating": 5}))
            .send()
    };
    let rated = rate(&app).await.unwrap();
    assert_eq!(rated.status(), 201);
    let rated: Value = rated.json().await.unwrap();
    let queued = crate::evaluation_fixtures::an_alert(
        "alert_01JQUEUED0000000000000000",
        "2026-12-01T00:00:00Z",
    );
    let delivery = flywheel::store::QueuedWebhook {
        alert_id: queued.id.clone(),
        attempts: 2,
        next_attempt_ms: 1,
    };
    app.state
        .store
        .raise_alert(&queued, Some(&delivery))
        .unwrap();
    let before = app.state.store.tallies().unwrap();
    let (data_dir, _kept) = app.stop().await;

    let cluster = Cluster::start();
    let url = database_in(&cluster.url(), "moved").await.url;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), free_port());
    let from = data_dir.to_str().unwrap();
    for run_number in 1..=2 {
        let out = run(
            &config,
            &url,
            &["migrate-store", "--from", from, "--to", "postgres"],
        );
        let message = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "run {run_number}: {message}");
        assert!(
            message.contains("copied 3 conversations, 3 inferences, 1 feedback")
                && message.contains("(1 deliveries queued)")
                && message.contains("1 idempotency keys")
                && message.contains("counts match"),
            "run {run_number}: {message}"
        );
    }

    // The app on PostgreSQL sees what the embedded store held.
    let moved = spawn_app_with(Options {
        database: Some(url),
        ..Options::default()
    })
    .await;
    let store = &moved.state.store;
    assert_eq!(store.tallies().unwrap(), before);
    assert_eq!(store.feedback_for(&inferences[0]).unwrap().len(), 1);
    for id in &inferences {
        assert!(store.inference(id).unwrap().is_some(), "{id}");
    }
    assert_eq!(store.queued_webhooks(10).unwrap(), vec![delivery]);
    // The feedback's retry is still a retry…
    let retried = rate(&moved).await.unwrap();
    assert_eq!(retried.status(), 201);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["id"], rated["id"]);
    assert_eq!(store.feedback_for(&inferences[0]).unwrap().len(), 1);
    // …and a follow-up of a moved conversation continues it.
    let (conversation, answer) = last_turn.unwrap();
    let mut history = triage_request(false)["messages"]
        .as_array()
        .unwrap()
        .clone();
    history.push(answer);
    history.push(json!({"role": "user", "content": "Which host should be isolated first?"}));
    let follow_up = moved
        .post(
            "/v1/chat/completions",
            &json!({"model": "triage", "messages": history}),
        )
        .await;
    assert_eq!(follow_up.status(), 200);
    assert_eq!(
        follow_up.headers()["x-flywheel-conversation-id"]
            .to_str()
            .unwrap(),
        conversation,
        "the follow-up threads onto the moved conversation"
    );
    // New conversations list before the moved ones.
    let response = moved
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    let new = response.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    eventually(
        "the new conversation to list first",
        Duration::from_secs(10),
        || async {
            let page = store
                .list_conversations(
                    &ConversationScan {
                        limit: 1,
                        budget: 10,
                        ..Default::default()
                    },
                    &|_| true,
                )
                .unwrap();
            (page.data.first().map(|c| c.id.as_str()) == Some(new.as_str())).then_some(())
        },
    )
    .await;
}
