//! The PostgreSQL store with a real PostgreSQL server (a cluster of each
//! test's own): the database going away and coming back while the app
//! serves, and two replicas sharing one database (changes, feedback, and
//! a conversation that moves between them keeping its version), and TLS
//! to the database.

use crate::helpers::postgres::{Cluster, database_in};
use crate::helpers::{Options, TestApp, eventually, spawn_app_with, triage_request};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

async fn chat(app: &TestApp) -> reqwest::Response {
    app.send(
        Method::POST,
        "/v1/chat/completions",
        &app.client_key,
        Some(&triage_request(false)),
    )
    .await
}

async fn ready(app: &TestApp) -> u16 {
    app.http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Chats and waits for the inference to be stored; its id.
async fn captured_inference(app: &TestApp) -> String {
    let response = chat(app).await;
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-flywheel-inference-id"]
        .to_str()
        .unwrap()
        .to_string();
    eventually(
        &format!("inference {id} to be stored"),
        Duration::from_secs(10),
        || async { app.state.store.inference(&id).ok().flatten() },
    )
    .await;
    id
}

async fn feedback(app: &TestApp, inference: &str) -> reqwest::Response {
    app.send(
        Method::POST,
        "/v1/feedback",
        &app.client_key,
        Some(&json!({"inference_id": inference, "rating": 4})),
    )
    .await
}

#[tokio::test]
async fn the_database_going_away_stops_feedback_not_chats_and_recovery_needs_no_restart() {
    let cluster = Cluster::start();
    let db = database_in(&cluster.url(), "flywheel").await;
    let app = spawn_app_with(Options {
        database: Some(db.url),
        ..Options::default()
    })
    .await;
    let first = captured_inference(&app).await;
    assert_eq!(feedback(&app, &first).await.status(), 201);
    assert_eq!(ready(&app).await, 200);

    cluster.down();
    eventually("/readyz to say 503", Duration::from_secs(10), || async {
        (ready(&app).await == 503).then_some(())
    })
    .await;
    let refused = feedback(&app, &first).await;
    assert_eq!(
        refused.status(),
        503,
        "feedback is never acknowledged unstored"
    );
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].is_string(), "{body}");
    // Chats go on; their capture waits in the queue.
    let during = chat(&app).await;
    assert_eq!(during.status(), 200);
    let waiting = during.headers()["x-flywheel-inference-id"]
        .to_str()
        .unwrap()
        .to_string();

    cluster.up();
    eventually(
        "/readyz to say 200 again",
        Duration::from_secs(20),
        || async { (ready(&app).await == 200).then_some(()) },
    )
    .await;
    eventually(
        "the chat served while the database was down to be stored",
        Duration::from_secs(20),
        || async { app.state.store.inference(&waiting).ok().flatten() },
    )
    .await;
    assert_eq!(feedback(&app, &waiting).await.status(), 201);
    let stored = app.state.store.feedback_for(&first).unwrap();
    assert_eq!(stored.len(), 1, "the refused feedback was not stored");
}

#[tokio::test]
async fn two_replicas_on_one_database_share_promotions_keys_and_feedback() {
    let cluster = Cluster::start();
    let db = database_in(&cluster.url(), "shared").await;
    let a = spawn_app_with(Options {
        database: Some(db.url.clone()),
        ..Options::default()
    })
    .await;
    let b = spawn_app_with(Options {
        database: Some(db.url),
        ..Options::default()
    })
    .await;

    // A promotion made through A: B routes to the new version.
    let promoted = a
        .admin(
            Method::POST,
            "/admin/api/models/triage/promote",
            Some(&json!({"version": "large", "reason": "replica test", "force": true})),
        )
        .await;
    assert_eq!(promoted.status(), 200, "{}", promoted.text().await.unwrap());
    eventually(
        "replica B to route to the promoted version",
        Duration::from_secs(30),
        || async {
            let r = chat(&b).await;
            let version = r.headers()["x-flywheel-variant"]
                .to_str()
                .unwrap()
                .to_string();
            (version == "large").then_some(()).ok_or(version)
        },
    )
    .await;

    // A key made through A is known to B; revoked through B, A refuses it.
    let created = a
        .admin(
            Method::POST,
            "/admin/api/keys",
            Some(&json!({"name": "shared", "role": "client"})),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let status_with = |app: &TestApp, key: String| {
        let request = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&triage_request(false));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    eventually(
        "replica B to accept the new key",
        Duration::from_secs(30),
        || async { (status_with(&b, key.clone()).await == 200).then_some(()) },
    )
    .await;
    let revoked = b
        .admin(
            Method::DELETE,
            &format!("/admin/api/keys/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(revoked.status(), 204);
    eventually(
        "replica A to refuse the revoked key",
        Duration::from_secs(30),
        || async { (status_with(&a, key.clone()).await == 401).then_some(()) },
    )
    .await;

    // Feedback posted to B (by an analyst) on an inference A served.
    let inference = captured_inference(&a).await;
    let labelled = b
        .send(
            Method::POST,
            "/v1/feedback",
            &b.analyst_key,
            Some(&json!({"inference_id": inference, "threat_type": "credential_access"})),
        )
        .await;
    assert_eq!(labelled.status(), 201, "{}", labelled.text().await.unwrap());
    let stored = a.state.store.feedback_for(&inference).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].threat_type.as_deref(), Some("credential_access"));

    // A 50/50 split set on A; conversations begun on A go on on B, in the
    // same conversation and on the same version.
    let split = a
        .admin(
            Method::PUT,
            "/admin/api/models/triage/traffic",
            Some(&json!({"weights": {"large": 50, "base": 50}, "reason": "replica split"})),
        )
        .await;
    assert_eq!(split.status(), 200, "{}", split.text().await.unwrap());
    let revision = split.json::<Value>().await.unwrap()["revision"].clone();
    eventually(
        "replica B to have the split",
        Duration::from_secs(30),
        || async {
            let alias: Value = b
                .admin(Method::GET, "/admin/api/models/triage", None)
                .await
                .json()
                .await
                .unwrap();
            (alias["revision"] == revision).then_some(())
        },
    )
    .await;
    let mut versions = std::collections::BTreeSet::new();
    for n in 0..12 {
        let user = format!("analyst-{n}");
        let mut messages = vec![json!({"role": "user", "content":
            format!("Endpoint alert: encoded PowerShell on WS-{n}")})];
        let turn = |app: &TestApp, messages: Vec<Value>| {
            let request = app
                .http
                .post(app.url("/v1/chat/completions"))
                .bearer_auth(&app.client_key)
                .header("x-flywheel-user", &user)
                .json(&json!({"model": "triage", "messages": messages}));
            async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), 200);
                let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
                let (conversation, version, inference) = (
                    header("x-flywheel-conversation-id"),
                    header("x-flywheel-variant"),
                    header("x-flywheel-inference-id"),
                );
                let body: Value = response.json().await.unwrap();
                (
                    conversation,
                    version,
                    inference,
                    body["choices"][0]["message"].clone(),
                )
            }
        };
        let (conversation, version, inference, answer) = turn(&a, messages.clone()).await;
        eventually(
            &format!("inference {inference} to be stored"),
            Duration::from_secs(10),
            || async { a.state.store.inference(&inference).ok().flatten() },
        )
        .await;
        messages.push(answer);
        messages.push(json!({"role": "user", "content": "Is the host isolated?"}));
        let (next_conversation, next_version, ..) = turn(&b, messages).await;
        assert_eq!(
            (next_conversation, &next_version),
            (conversation, &version),
            "{user}"
        );
        versions.insert(version);
    }
    assert_eq!(versions.len(), 2, "both versions served: {versions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_no_acknowledged_feedback() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let cluster = Cluster::start();
    let db = database_in(&cluster.url(), "restart").await;
    let app = std::sync::Arc::new(
        spawn_app_with(Options {
            database: Some(db.url),
            ..Options::default()
        })
        .await,
    );
    // Clients send until the database is back and ready, then a few more.
    let recovered = std::sync::Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (app, recovered) = (app.clone(), recovered.clone());
        clients.push(tokio::spawn(async move {
            let (mut acknowledged, mut refused) = (Vec::new(), 0);
            let mut after = 0;
            while after < 5 {
                if recovered.load(Ordering::Acquire) {
                    after += 1;
                }
                let response = chat(&app).await;
                assert_eq!(response.status(), 200, "chats are served throughout");
                let inference = response.headers()["x-flywheel-inference-id"]
                    .to_str()
                    .unwrap()
                    .to_string();
                let rated = feedback(&app, &inference).await;
                match rated.status().as_u16() {
                    201 => {
                        let body: Value = rated.json().await.unwrap();
                        acknowledged.push((inference, body["id"].as_str().unwrap().to_string()));
                    }
                    // Refused while the database is away (or while its
                    // turn waits to be stored): never acknowledged.
                    503 | 404 => refused += 1,
                    other => panic!("feedback answered {other}"),
                }
            }
            (acknowledged, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.down();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.up();
    eventually(
        "/readyz to say 200 after the restart",
        Duration::from_secs(20),
        || async { (ready(&app).await == 200).then_some(()) },
    )
    .await;
    recovered.store(true, Ordering::Release);
    let (mut acknowledged, mut refused) = (Vec::new(), 0);
    for c in clients {
        let (a, r) = c.await.unwrap();
        acknowledged.extend(a);
        refused += r;
    }
    assert!(refused > 0, "the restart happened under load");
    assert!(!acknowledged.is_empty());
    for (inference, feedback_id) in &acknowledged {
        let stored = app.state.store.feedback_for(inference).unwrap();
        assert!(
            stored.iter().any(|f| f.id == *feedback_id),
            "acknowledged feedback {feedback_id} is stored"
        );
    }
    // Capture goes on by itself.
    captured_inference(&app).await;
}

#[tokio::test]
async fn with_sslmode_require_every_connection_to_the_database_is_verified_tls() {
    let cluster = Cluster::start_tls();
    let app = spawn_app_with(Options {
        database: Some(format!("{}?sslmode=require", cluster.url())),
        database_ca: Some(cluster.ca()),
        ..Options::default()
    })
    .await;
    let id = captured_inference(&app).await;
    assert_eq!(feedback(&app, &id).await.status(), 201);

    // What the server says of Flywheel's connections, asked over its
    // socket: the pool's and the change feed's (which waits in LISTEN).
    let (client, connection) =
        tokio_postgres::connect(&cluster.socket_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let connections = eventually(
        "the change feed to listen",
        Duration::from_secs(10),
        || async {
            let rows = client
                .query(
                    "SELECT s.ssl, a.query FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                     WHERE a.application_name = 'flywheel'",
                    &[],
                )
                .await
                .unwrap();
            let listening = rows
                .iter()
                .any(|r| r.get::<_, String>(1).starts_with("LISTEN"));
            listening.then(|| rows.iter().map(|r| r.get::<_, bool>(0)).collect::<Vec<_>>())
        },
    )
    .await;
    assert!(connections.len() >= 2, "{connections:?}");
    assert!(
        connections.iter().all(|tls| *tls),
        "every connection uses TLS: {connections:?}"
    );
}
