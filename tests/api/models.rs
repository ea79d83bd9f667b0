//! The model registry over HTTP: weighted sticky splits, forced variants,
//! promotion and rollback under load, restarts, fallback, shadows, the
//! experiment figures and the guardrail.

use crate::helpers::{
    ADMIN_TOKEN, Options, TestApp, error_of, eventually, spawn_app, spawn_app_with, sse_data,
};
use flywheel_simulator::SimulatorConfig;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn set_traffic(app: &TestApp, weights: Value) -> Value {
    let response = app
        .admin(
            Method::PUT,
            "/admin/api/models/triage/traffic",
            Some(&json!({"weights": weights, "reason": "test split"})),
        )
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn chat(alert: &str) -> Value {
    json!({"model": "triage", "messages": [{"role": "user", "content": alert}]})
}

fn variant(response: &reqwest::Response) -> String {
    response.headers()["x-flywheel-variant"]
        .to_str()
        .unwrap()
        .to_string()
}

/// 10,000 first turns from distinct users split 70/30 within ±2 points;
/// then conversations whose first turn named a user and whose later turns
/// (resent histories, no user header) keep the version of the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_and_threaded_conversations_keep_their_version() {
    let app = Arc::new(spawn_app().await);
    set_traffic(&app, json!({"base": 70, "large": 30})).await;
    let counts = futures_util::stream::iter(0..10_000)
        .map(|i| {
            let app = app.clone();
            async move {
                let response = app
                    .http
                    .post(app.url("/v1/chat/completions"))
                    .bearer_auth(&app.client_key)
                    .header("x-flywheel-user", format!("analyst-{i}"))
                    .header("x-flywheel-no-capture", "1")
                    .json(&chat("Endpoint alert: whoami /all on WS-7"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                variant(&response)
            }
        })
        .buffer_unordered(32)
        .fold(HashMap::<String, usize>::new(), |mut m, v| async move {
            *m.entry(v).or_default() += 1;
            m
        })
        .await;
    let large = counts.get("large").copied().unwrap_or(0) as f64 / 10_000.0;
    assert!(
        (large - 0.30).abs() <= 0.02,
        "large got {large}: {counts:?}"
    );

    let conversations = futures_util::stream::iter(0..60)
        .map(|c| {
            let app = app.clone();
            async move { three_turns(&app, c).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut seen_versions = std::collections::BTreeSet::new();
    for (conversation, versions) in &conversations {
        assert!(versions.iter().all(|v| v == &versions[0]), "{versions:?}");
        seen_versions.insert(versions[0].clone());
        let detail = app
            .admin_get(&format!("/admin/api/conversations/{conversation}"))
            .await;
        assert_eq!(
            detail["turns"].as_array().unwrap().len(),
            3,
            "threaded: {detail}"
        );
        assert_eq!(detail["versions"], json!([versions[0]]));
    }
    assert_eq!(seen_versions.len(), 2, "both versions serve conversations");
}

/// One conversation: the user is named on the first turn only; every turn
/// resends the history. Returns its id and the version of each turn.
async fn three_turns(app: &TestApp, c: usize) -> (String, Vec<String>) {
    let mut messages = vec![
        json!({"role": "user", "content": format!("Alert #{c}: net user /domain from WS-{c}")}),
    ];
    let (mut versions, mut conversation) = (Vec::new(), String::new());
    for turn in 0..3 {
        let mut request = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.client_key)
            .json(&json!({"model": "triage", "messages": messages}));
        if turn == 0 {
            request = request.header("x-flywheel-user", format!("sticky-{c}"));
        }
        let response = request.send().await.unwrap();
        versions.push(variant(&response));
        conversation = response.headers()["x-flywheel-conversation-id"]
            .to_str()
            .unwrap()
            .to_string();
        let inference = response.headers()["x-flywheel-inference-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body: Value = response.json().await.unwrap();
        // Feedback waits until the turn is stored, so the next turn finds it.
        let rated = app
            .post(
                "/v1/feedback",
                &json!({"inference_id": inference, "thumbs": "up"}),
            )
            .await;
        assert_eq!(rated.status(), 201);
        messages.push(body["choices"][0]["message"].clone());
        messages.push(json!({"role": "user", "content": format!("And what next, turn {turn}?")}));
    }
    (conversation, versions)
}

/// What one streamed request saw.
struct Seen {
    started: Instant,
    version: String,
    models: Vec<String>,
    ok: bool,
}

/// Streams that ended, by when they started: how the test knows the load
/// went on before and after each change, whatever the machine's speed.
#[derive(Default)]
struct Started(std::sync::Mutex<Vec<Instant>>);

impl Started {
    fn since(&self, at: Instant) -> usize {
        let started = self.0.lock().unwrap();
        started.iter().filter(|s| **s >= at).count()
    }
}

/// Streams wanted before the first change and after each change.
const PER_PHASE: usize = 70;

/// Waits until `PER_PHASE` streams that started at `at` or later ended.
async fn streams_since(started: &Started, at: Instant, phase: &str) {
    eventually(
        &format!("{PER_PHASE} streams {phase}"),
        Duration::from_secs(60),
        || async {
            let n = started.since(at);
            (n >= PER_PHASE).then_some(()).ok_or(format!("{n} streams"))
        },
    )
    .await;
}

/// 50 clients stream continuously while the alias is promoted and rolled
/// back: no request fails, every answer comes from a version that was
/// live when it started, and from that version's model throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_rollback_under_streaming_load_fail_no_request() {
    let app = Arc::new(
        spawn_app_with(Options {
            simulator: SimulatorConfig {
                token_delay: Duration::from_millis(3),
                ..Options::default().simulator
            },
            ..Options::default()
        })
        .await,
    );
    // The clients stream until told to stop, which is once enough streams
    // ran before the promotion, between it and the rollback, and after
    // it: a fixed window could close, on a slow machine, before a stream
    // saw the promoted version.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Arc::new(Started::default());
    let test_start = Instant::now();
    let clients: Vec<_> = (0..50)
        .map(|c| {
            let (app, stop, started) = (app.clone(), stop.clone(), started.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let s = stream_once(&app, c).await;
                    started.0.lock().unwrap().push(s.started);
                    seen.push(s);
                }
                seen
            })
        })
        .collect();
    // (issued, acknowledged, live version after) for each change.
    let mut changes = Vec::new();
    streams_since(&started, test_start, "before the promotion").await;
    for (path, body, after) in [
        (
            // No evaluation ran here, so gating would refuse: an admin
            // forces it, as one may.
            "promote",
            json!({"version": "large", "reason": "better on the eval set", "force": true}),
            "large",
        ),
        (
            "rollback",
            json!({"reason": "analysts prefer base"}),
            "base",
        ),
    ] {
        let issued = Instant::now();
        let response = app
            .admin(
                Method::POST,
                &format!("/admin/api/models/triage/{path}"),
                Some(&body),
            )
            .await;
        assert_eq!(response.status(), 200, "{path}");
        let acked = Instant::now();
        changes.push((issued, acked, after));
        streams_since(&started, acked, &format!("after the {path}")).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    let model_of = |v: &str| {
        if v == "large" {
            "gpt-4o"
        } else {
            "gpt-4o-mini"
        }
    };
    let mut by_version = BTreeMap::<String, usize>::new();
    for s in &all {
        assert!(s.ok, "a stream failed");
        // Live at its start: the version before each change not yet
        // acknowledged, or after each change already issued.
        let mut live = vec!["base"];
        for (issued, acked, after) in &changes {
            if s.started >= *acked {
                live = vec![after];
            } else if s.started >= *issued {
                live.push(after);
            }
        }
        assert!(
            live.contains(&s.version.as_str()),
            "{} not live at its start",
            s.version
        );
        assert!(
            s.models.iter().all(|m| m == model_of(&s.version)),
            "{:?}",
            s.models
        );
        *by_version.entry(s.version.clone()).or_default() += 1;
    }
    assert!(by_version.len() == 2, "{by_version:?}");
}

async fn stream_once(app: &TestApp, c: usize) -> Seen {
    let started = Instant::now();
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-flywheel-no-capture", "1")
        .json(&json!({"model": "triage", "stream": true, "messages": [
            {"role": "user", "content": format!("Alert {c}: schtasks /create from a temp folder")}]}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let version = variant(&response);
    let body = response.text().await.unwrap();
    let events = sse_data(&body);
    let models = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["model"].as_str().map(String::from))
        .collect();
    let ok = status == 200
        && events.last().map(String::as_str) == Some("[DONE]")
        && !body.contains("\"error\"");
    Seen {
        started,
        version,
        models,
        ok,
    }
}

#[tokio::test]
async fn versions_weights_and_history_survive_a_restart() {
    let app = spawn_app().await;
    let registered = app
        .admin(
            Method::POST,
            "/admin/api/models/triage/versions",
            Some(&json!({"name": "ft1", "provider": "sim", "model": "gpt-4o"})),
        )
        .await;
    assert_eq!(registered.status(), 201);
    let version: Value = registered.json().await.unwrap();
    assert_eq!(
        (version["state"].as_str(), version["origin"].as_str()),
        (Some("candidate"), Some("api"))
    );
    set_traffic(&app, json!({"base": 80, "ft1": 20})).await;
    let (dir, kept) = app.stop().await;

    let app = spawn_app_with(Options {
        data_dir: Some(dir),
        ..Options::default()
    })
    .await;
    let alias = app.admin_get("/admin/api/models/triage").await;
    let weights: BTreeMap<String, f64> = alias["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["weight"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        weights,
        BTreeMap::from([
            ("base".into(), 80.0),
            ("ft1".into(), 20.0),
            ("large".into(), 0.0)
        ])
    );
    assert_eq!(alias["revision"], 3);
    let history = app.admin_get("/admin/api/models/triage/history").await;
    let actions: Vec<&str> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["traffic", "register", "seed"]);
    assert_eq!(history["data"][0]["reason"], "test split");
    let models: Value = app
        .send(Method::GET, "/v1/models", &app.client_key, None)
        .await
        .json()
        .await
        .unwrap();
    let triage = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "triage")
        .unwrap();
    assert!(
        triage["versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "ft1" && v["weight"] == 20.0)
    );
    let forced = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.analyst_key)
        .header("x-flywheel-variant", "ft1")
        .json(&chat("Endpoint alert: certutil -urlcache on WS-3"))
        .send()
        .await
        .unwrap();
    assert_eq!(variant(&forced), "ft1");
    let body: Value = forced.json().await.unwrap();
    assert_eq!(body["model"], "gpt-4o");
    drop(kept);
}

#[tokio::test]
async fn registry_changes_are_checked_and_guarded_by_role_and_revision() {
    let app = spawn_app().await;
    let alias = app
        .send(
            Method::GET,
            "/admin/api/models/triage",
            &app.analyst_key,
            None,
        )
        .await;
    assert_eq!(alias.headers()["etag"], "\"1\"");
    let put = |key: String, if_match: &'static str, body: Value| {
        let request = app
            .http
            .put(app.url("/admin/api/models/triage/traffic"))
            .bearer_auth(key)
            .header("if-match", if_match)
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    let good = json!({"weights": {"base": 90, "large": 10}, "reason": "canary"});
    assert_eq!(
        error_of(put(app.analyst_key.clone(), "1", good.clone()).await)
            .await
            .0,
        403
    );
    for (body, param) in [
        (
            json!({"weights": {"base": 90, "large": 5}, "reason": "x"}),
            "weights",
        ),
        (
            json!({"weights": {"base": 90, "nope": 10}, "reason": "x"}),
            "weights.nope",
        ),
        (
            json!({"weights": {"base": 99.995, "large": 0.005}, "reason": "x"}),
            "weights.base",
        ),
        (json!({"weights": {"base": 100}}), "reason"),
        (
            json!({"weights": {"base": 100}, "shadow": ["base"], "reason": "x"}),
            "shadow",
        ),
    ] {
        let (status, e) = error_of(put(ADMIN_TOKEN.into(), "1", body.clone()).await).await;
        assert_eq!((status, e["param"].as_str()), (400, Some(param)), "{body}");
    }
    assert_eq!(
        put(ADMIN_TOKEN.into(), "\"1\"", good.clone())
            .await
            .status(),
        200
    );
    let (status, e) = error_of(put(ADMIN_TOKEN.into(), "1", good).await).await;
    assert_eq!((status, e["code"].as_str()), (409, Some("conflict")));

    let rollback = app
        .admin(
            Method::POST,
            "/admin/api/models/triage/rollback",
            Some(&json!({"reason": "x"})),
        )
        .await;
    assert_eq!(error_of(rollback).await.0, 409, "nothing to roll back to");
    let promote = app
        .admin(
            Method::POST,
            "/admin/api/models/triage/promote",
            Some(&json!({"version": "nope", "reason": "x"})),
        )
        .await;
    let (status, e) = error_of(promote).await;
    assert_eq!((status, e["param"].as_str()), (400, Some("version")));
    let unknown = app
        .admin(
            Method::POST,
            "/admin/api/models/nope/rollback",
            Some(&json!({"reason": "x"})),
        )
        .await;
    assert_eq!(error_of(unknown).await.0, 404);

    // x-flywheel-variant: analysts and admins only, and only known versions.
    let forced = |key: String, version: &'static str| {
        let request = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("x-flywheel-variant", version)
            .json(&chat("Endpoint alert: vssadmin delete shadows"));
        async move { request.send().await.unwrap() }
    };
    assert_eq!(
        error_of(forced(app.client_key.clone(), "large").await)
            .await
            .0,
        403
    );
    let (status, e) = error_of(forced(app.analyst_key.clone(), "nope").await).await;
    assert_eq!(
        (status, e["param"].as_str()),
        (400, Some("x-flywheel-variant"))
    );
    assert_eq!(
        variant(&forced(app.analyst_key.clone(), "large").await),
        "large"
    );

    let audit = app.admin_get("/admin/api/audit").await;
    assert!(
        audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "model.traffic" && a["target"] == "triage")
    );
}

/// A candidate whose upstream fails before the first byte: production
/// answers, the client never sees the failure, the record names it.
/// A shadow version gets a copy whose answer is captured, never returned.
#[tokio::test]
async fn failed_candidates_fall_back_and_shadows_are_captured_not_returned() {
    let app = spawn_app_with(Options {
        provider_extra: "max_retries = 0".into(),
        ..Options::default()
    })
    .await;
    set_traffic(&app, json!({"base": 0, "large": 100})).await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-fail-rate", "gpt-4o=1")
        .json(&chat("Endpoint alert: rundll32 comsvcs.dll MiniDump lsass"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(variant(&response), "base");
    let conversation = response.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let inference = response.headers()["x-flywheel-inference-id"]
        .to_str()
        .unwrap()
        .to_string();
    let rated = app
        .post(
            "/v1/feedback",
            &json!({"inference_id": inference, "rating": 4}),
        )
        .await;
    assert_eq!(rated.status(), 201);
    let detail = app
        .admin_get(&format!("/admin/api/conversations/{conversation}"))
        .await;
    assert_eq!(detail["turns"][0]["fallback_from"], "large");
    assert_eq!(detail["turns"][0]["version"], "base");

    let shadowed = app.admin(Method::PUT, "/admin/api/models/triage/traffic", Some(&json!({"weights": {"base": 100}, "shadow": ["large"], "reason": "compare quietly"})))
    .await;
    assert_eq!(shadowed.status(), 200);
    let response = app
        .post(
            "/v1/chat/completions",
            &chat("Endpoint alert: mimikatz sekurlsa::logonpasswords"),
        )
        .await;
    assert_eq!(variant(&response), "base");
    let conversation = response.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["model"], "gpt-4o-mini",
        "the shadow's answer is never returned"
    );
    let shadows = eventually(
        "the shadow's answer beside the turn",
        Duration::from_secs(30),
        || async {
            let detail = app
                .admin(
                    Method::GET,
                    &format!("/admin/api/conversations/{conversation}"),
                    None,
                )
                .await;
            if detail.status() != 200 {
                return Err(format!("status {}", detail.status()));
            }
            let detail: Value = detail.json().await.unwrap();
            let shadows = detail["turns"][0]["shadows"].clone();
            if shadows.as_array().is_some_and(|s| !s.is_empty()) {
                Ok(shadows)
            } else {
                Err(detail.to_string())
            }
        },
    )
    .await;
    assert_eq!(shadows[0]["version"], "large", "{shadows}");
    assert_eq!(shadows[0]["provider_model"], "gpt-4o");
    let detail = app
        .admin_get(&format!("/admin/api/conversations/{conversation}"))
        .await;
    assert_eq!(
        detail["turns"].as_array().unwrap().len(),
        1,
        "a shadow is no turn"
    );
    // Deleting the conversation deletes the shadow's answer too.
    let shadow_id = shadows[0]["inference_id"].as_str().unwrap().to_string();
    let deleted = app
        .admin(
            Method::DELETE,
            &format!("/admin/api/conversations/{conversation}"),
            None,
        )
        .await;
    assert_eq!(deleted.status(), 204);
    assert!(app.state.store.inference(&shadow_id).unwrap().is_none());
    assert!(
        app.state
            .store
            .shadows_of(detail["turns"][0]["inference_id"].as_str().unwrap())
            .unwrap()
            .is_empty()
    );
}
