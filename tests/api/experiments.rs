//! Online experiments over HTTP: the figures the API reports equal a count
//! this test makes from the captured records, and a failing candidate is
//! stopped by its guardrail without a single failed request.

use crate::evaluation_fixtures::webhook_receiver;
use crate::helpers::{Options, TestApp, eventually, spawn_app_with};
use flywheel_simulator::SimulatorConfig;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

async fn put_traffic(app: &TestApp, alias: &str, weights: Value) {
    let response = app
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/api/models/{alias}/traffic"),
            Some(&json!({"weights": weights, "reason": "experiment"})),
        )
        .await;
    assert_eq!(response.status(), 200);
}

const LABELS: [&str; 3] = ["credential_access", "discovery", "execution"];

/// One request from user `i`, with feedback on its answer when it has one.
async fn request_with_feedback(app: &TestApp, i: usize) {
    let alert = [
        "LSASS memory read by procdump.exe on WS-4",
        "net group \"domain admins\" /domain run by a user",
        "powershell -enc launched by winword.exe",
    ][i % 3];
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-flywheel-user", format!("user-{i}"))
        .header("x-sim-fail-rate", "gpt-4o-mini=0.25")
        .json(&json!({"model": "triage", "messages": [{"role": "user", "content": format!("Alert {i}: {alert}")}]}))
        .send()
        .await
        .unwrap();
    let inference = response.headers()["x-flywheel-inference-id"]
        .to_str()
        .unwrap()
        .to_string();
    if response.status() != 200 {
        return;
    }
    let feedback = |key: &str, body: Value| {
        let request = app
            .http
            .post(app.url("/v1/feedback"))
            .bearer_auth(key)
            .json(&body);
        async move { assert_eq!(request.send().await.unwrap().status(), 201) }
    };
    feedback(
        &app.client_key,
        json!({"inference_id": inference, "rating": 1 + i % 5}),
    )
    .await;
    if i.is_multiple_of(2) {
        let thumbs = if i.is_multiple_of(3) { "down" } else { "up" };
        feedback(
            &app.client_key,
            json!({"inference_id": inference, "thumbs": thumbs}),
        )
        .await;
    }
    if i.is_multiple_of(4) {
        let label = LABELS[(i / 4) % 3];
        feedback(
            &app.analyst_key,
            json!({"inference_id": inference, "threat_type": label}),
        )
        .await;
    }
}

/// The experiment figures counted here, from the captured records.
#[derive(Default, Debug)]
struct Count {
    requests: u64,
    errors: u64,
    fallbacks: u64,
    latencies: Vec<f64>,
    tokens: u64,
    ratings: Vec<f64>,
    thumbs_up: u64,
    thumbs_down: u64,
    negative: (u64, u64),
    agreement: (u64, u64),
}

fn stated_threat_type(answer: &str) -> Option<String> {
    answer
        .lines()
        .find_map(|l| l.strip_prefix("Threat type:"))
        .map(|t| t.trim().to_string())
}

fn count_turn(counts: &mut BTreeMap<String, Count>, turn: &Value) {
    if let Some(failed) = turn["fallback_from"].as_str() {
        let c = counts.entry(failed.to_string()).or_default();
        c.requests += 1;
        c.errors += 1;
        c.fallbacks += 1;
        return;
    }
    let c = counts
        .entry(turn["version"].as_str().unwrap().to_string())
        .or_default();
    c.requests += 1;
    match turn["status"].as_str().unwrap() {
        "ok" => c.latencies.push(turn["latency_ms"].as_f64().unwrap()),
        "client_cancelled" => {}
        _ => c.errors += 1,
    }
    let usage = &turn["response"]["usage"];
    c.tokens += usage["prompt_tokens"].as_u64().unwrap_or(0)
        + usage["completion_tokens"].as_u64().unwrap_or(0);
    let answer = turn["response"]["message"]["content"]
        .as_str()
        .unwrap_or("");
    for f in turn["feedback"].as_array().unwrap() {
        let rating = f["rating"].as_u64();
        let thumbs = f["thumbs"].as_str();
        if let Some(r) = rating {
            c.ratings.push(r as f64);
        }
        match thumbs {
            Some("up") => c.thumbs_up += 1,
            Some("down") => c.thumbs_down += 1,
            _ => {}
        }
        if rating.is_some() || thumbs.is_some() {
            c.negative.1 += 1;
            if thumbs == Some("down") || rating.is_some_and(|r| r <= 2) {
                c.negative.0 += 1;
            }
        }
        if let (Some(label), Some(stated)) = (f["threat_type"].as_str(), stated_threat_type(answer))
        {
            c.agreement.1 += 1;
            c.agreement.0 += u64::from(label == stated);
        }
    }
}

fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

async fn every_conversation(app: &TestApp) -> Vec<Value> {
    let (mut out, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/api/conversations?limit=500&cursor={c}"),
            None => "/admin/api/conversations?limit=500".into(),
        };
        let page = app.admin_get(&path).await;
        for summary in page["data"].as_array().unwrap() {
            let id = summary["id"].as_str().unwrap();
            out.push(
                app.admin_get(&format!("/admin/api/conversations/{id}"))
                    .await,
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_figures_equal_a_count_from_the_captured_records() {
    let app = Arc::new(
        spawn_app_with(Options {
            provider_extra: "max_retries = 0".into(),
            ..Options::default()
        })
        .await,
    );
    put_traffic(&app, "triage", json!({"base": 50, "large": 50})).await;
    futures_util::stream::iter(0..240)
        .for_each_concurrent(16, |i| {
            let app = app.clone();
            async move { request_with_feedback(&app, i).await }
        })
        .await;
    // Failed requests get no feedback to wait on: wait until capture has
    // stored every one.
    eventually("240 turns captured", Duration::from_secs(30), || async {
        let stats = app.admin_get("/admin/api/stats").await;
        (stats["turns_total"] == 240)
            .then_some(())
            .ok_or(stats["turns_total"].to_string())
    })
    .await;

    let mut counts = BTreeMap::<String, Count>::new();
    for conversation in every_conversation(&app).await {
        for turn in conversation["turns"].as_array().unwrap() {
            count_turn(&mut counts, turn);
        }
    }
    assert_eq!(counts.values().map(|c| c.requests).sum::<u64>(), 240);
    let experiment = app.admin_get("/admin/api/models/triage/experiment").await;
    for (name, mut c) in counts {
        let v = experiment["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name && v["shadow"] == false)
            .unwrap_or_else(|| panic!("no figures for {name}: {experiment}"));
        assert_eq!(v["requests"], c.requests, "{name}");
        assert_eq!(v["errors"], c.errors, "{name}");
        assert_eq!(v["fallbacks"], c.fallbacks, "{name}");
        assert_eq!(v["tokens"], c.tokens, "{name}");
        assert_eq!(v["ratings"]["n"], c.ratings.len(), "{name}");
        let mean = c.ratings.iter().sum::<f64>() / c.ratings.len() as f64;
        assert!(
            (v["ratings"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9,
            "{name}"
        );
        assert_eq!(
            (v["thumbs"]["up"].as_u64(), v["thumbs"]["down"].as_u64()),
            (Some(c.thumbs_up), Some(c.thumbs_down))
        );
        assert_eq!(v["negative_feedback"]["n"], c.negative.1);
        let negative = c.negative.0 as f64 / c.negative.1 as f64;
        assert!((v["negative_feedback"]["rate"].as_f64().unwrap() - negative).abs() < 1e-12);
        assert_eq!(v["label_agreement_n"], c.agreement.1, "{name}");
        let agreement = c.agreement.0 as f64 / c.agreement.1 as f64;
        assert!((v["label_agreement"].as_f64().unwrap() - agreement).abs() < 1e-12);
        c.latencies.sort_by(f64::total_cmp);
        for (q, key) in [(0.5, "p50"), (0.95, "p95")] {
            let exact = nearest_rank(&c.latencies, q);
            let reported = v["latency_ms"][key].as_f64().unwrap();
            // The tally keeps a log-linear histogram: within 1% by design.
            assert!(
                (reported - exact).abs() <= exact * 0.01 + 0.001,
                "{name} {key}: {reported} vs {exact}"
            );
        }
    }
    let base_errors = experiment["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "base")
        .unwrap()["errors"]
        .as_u64()
        .unwrap();
    assert!(base_errors > 0, "the fault rate made base fail sometimes");
    let comparisons = experiment["comparisons"].as_array().unwrap();
    let error_rate = comparisons
        .iter()
        .find(|c| c["metric"] == "error_rate" && c["candidate"] == "large")
        .unwrap();
    assert!(["better", "worse", "inconclusive"].contains(&error_rate["verdict"].as_str().unwrap()));
    assert!((0.0..=1.0).contains(&error_rate["p_value"].as_f64().unwrap()));
}

/// A candidate that fails 70% of its requests: every client request still
/// succeeds (production stands in), and the guardrail takes the
/// candidate's traffic away, with an alert (also at the webhook), a
/// history entry and an audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_is_stopped_by_its_guardrail() {
    let (hook, receiver) = webhook_receiver(axum::http::StatusCode::OK).await;
    let app = Arc::new(
        spawn_app_with(Options {
            simulator: SimulatorConfig {
                fail_rates: [("gpt-4o".to_string(), 0.7)].into(),
                ..Options::default().simulator
            },
            provider_extra: "max_retries = 0".into(),
            extra: r#"
[[models]]
name = "guarded"
model_type = "threat_detection"
production = "base"
  [[models.versions]]
  name = "base"
  provider = "sim"
  model = "gpt-4o-mini"
  [[models.versions]]
  name = "candidate"
  provider = "sim"
  model = "gpt-4o"
  [models.guardrails]
  check_interval_s = 1

[evaluation]
webhook_url = "http://{hook}/hook"
"#
            .replace("{hook}", &hook.to_string()),
            ..Options::default()
        })
        .await,
    );
    put_traffic(&app, "guarded", json!({"base": 50, "candidate": 50})).await;
    let statuses = futures_util::stream::iter(0..400)
        .map(|i| {
            let app = app.clone();
            async move {
                app.http
                    .post(app.url("/v1/chat/completions"))
                    .bearer_auth(&app.client_key)
                    .header("x-flywheel-user", format!("u{i}"))
                    .json(&json!({"model": "guarded", "messages": [{"role": "user", "content": "Alert: bitsadmin /transfer from a temp dir"}]}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert!(statuses.iter().all(|s| *s == 200), "a client saw a failure");

    let alert = eventually("a guardrail alert", Duration::from_secs(20), || async {
        let alerts = app.admin_get("/admin/api/alerts?state=open").await;
        alerts["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == "guardrail")
            .cloned()
    })
    .await;
    assert_eq!(alert["version"], "candidate", "no guardrail alert");
    assert_eq!(
        (alert["alias"].as_str(), alert["metric"].as_str()),
        (Some("guarded"), Some("error_rate"))
    );
    let delivered = eventually(
        "the alert at the webhook",
        Duration::from_secs(20),
        || async {
            let bodies = receiver.bodies.lock().unwrap().clone();
            bodies.into_iter().find(|b| b["alert_id"] == alert["id"])
        },
    )
    .await;
    assert_eq!(delivered["kind"], "guardrail", "{delivered}");
    assert!(
        delivered["text"]
            .as_str()
            .unwrap()
            .contains("went to production"),
        "{delivered}"
    );
    let alias = app.admin_get("/admin/api/models/guarded").await;
    let weight = |name: &str| {
        alias["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()["weight"]
            .as_f64()
            .unwrap()
    };
    assert_eq!((weight("base"), weight("candidate")), (100.0, 0.0));
    let history = app.admin_get("/admin/api/models/guarded/history").await;
    assert_eq!(history["data"][0]["action"], "guardrail");
    assert_eq!(history["data"][0]["actor"], "guardrail");
    let audit = app.admin_get("/admin/api/audit").await;
    assert!(
        audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "model.guardrail" && a["actor"] == "guardrail")
    );

    let acked = app
        .send(
            reqwest::Method::POST,
            &format!("/admin/api/alerts/{}/ack", alert["id"].as_str().unwrap()),
            &app.analyst_key,
            None,
        )
        .await;
    assert_eq!(acked.status(), 200);
    let acked: Value = acked.json().await.unwrap();
    assert_eq!(acked["state"], "acknowledged");
}
