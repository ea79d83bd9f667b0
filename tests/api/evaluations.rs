//! Offline evaluations over HTTP: two versions scored on a held-out split
//! of a labelled dataset, the stored figures checked against a computation
//! of their own from the stored per-example predictions; alerts to a
//! webhook (and one that keeps failing); a run stopped mid-way that
//! resumes after a restart without asking again.

use crate::evaluation_fixtures::*;
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub fn options(evaluation: &str) -> Options {
    Options {
        extra: format!("{READY}[evaluation]\nenabled = false\n{evaluation}"),
        ..Options::default()
    }
}

/// Targets no version can miss, so only what a test sets raises alerts.
pub const LOW_TARGETS: &str =
    "[evaluation.targets]\naccuracy = 0.0\nprecision_high_severity = 0.0\nrecall_critical = 0.0\n";

async fn examples(app: &TestApp, id: &str) -> Vec<Value> {
    let response = app
        .admin(
            Method::GET,
            &format!("/admin/api/evaluations/{id}/examples"),
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    let page: Value = response.json().await.unwrap();
    page["data"].as_array().unwrap().clone()
}

fn share(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// The admin API's definitions, computed from the per-example results.
pub fn recompute(results: &[&Value]) -> Value {
    let label = |r: &Value, k: &str| r[k].as_str().map(String::from);
    let pairs: Vec<(String, Option<String>)> = results
        .iter()
        .map(|r| {
            (
                label(r, "expected_threat_type").unwrap(),
                label(r, "predicted_threat_type"),
            )
        })
        .collect();
    let correct = pairs.iter().filter(|(e, p)| Some(e) == p.as_ref()).count();
    let classes: BTreeSet<&String> = pairs
        .iter()
        .flat_map(|(e, p)| std::iter::once(e).chain(p.as_ref()))
        .collect();
    let mut f1s = Vec::new();
    let mut weighted = 0.0;
    for class in &classes {
        let tp = pairs
            .iter()
            .filter(|(e, p)| e == *class && p.as_ref() == Some(class))
            .count();
        let fp = pairs
            .iter()
            .filter(|(e, p)| e != *class && p.as_ref() == Some(class))
            .count();
        let fn_ = pairs
            .iter()
            .filter(|(e, p)| e == *class && p.as_ref() != Some(class))
            .count();
        let f1 = 2.0 * tp as f64 / (2 * tp + fp + fn_) as f64;
        f1s.push(f1);
        weighted += (tp + fn_) as f64 * f1;
    }
    let severities: Vec<(String, Option<String>)> = results
        .iter()
        .filter_map(|r| {
            Some((
                label(r, "expected_severity")?,
                label(r, "predicted_severity"),
            ))
        })
        .collect();
    let high = |s: &str| s == "high" || s == "critical";
    let raised: Vec<_> = severities
        .iter()
        .filter(|(_, p)| p.as_deref().is_some_and(high))
        .collect();
    let critical: Vec<_> = severities.iter().filter(|(e, _)| e == "critical").collect();
    json!({
        "n": pairs.len(),
        "accuracy": share(correct, pairs.len()),
        "macro_f1": f1s.iter().sum::<f64>() / f1s.len() as f64,
        "weighted_f1": weighted / pairs.len() as f64,
        "precision_high_severity": share(raised.iter().filter(|(e, _)| high(e)).count(), raised.len()),
        "recall_critical": share(critical.iter().filter(|(_, p)| p.as_deref() == Some("critical")).count(), critical.len()),
    })
}

pub fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-9,
        _ => a == b,
    }
}

#[tokio::test]
async fn two_versions_are_scored_on_a_held_out_split_as_an_independent_count_says() {
    let app = spawn_app_with(options(LOW_TARGETS)).await;
    let data = labelled_dataset(&app).await;
    let held_out = data.validation_ids.len();
    let captured_before = app.state.store.tallies().unwrap().conversations;

    let run = evaluate(&app, &data.dataset_id, &["base", "large"]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["progress"],
        json!({"done": 2 * held_out, "total": 2 * held_out})
    );
    let id = run["id"].as_str().unwrap();

    // Every example is a held-out conversation, its expected labels the
    // review's.
    let results = examples(&app, id).await;
    assert_eq!(results.len(), 2 * held_out);
    let validation: BTreeSet<&str> = data.validation_ids.iter().map(String::as_str).collect();
    for r in &results {
        assert!(validation.contains(r["conversation_id"].as_str().unwrap()));
        assert!(
            !data
                .train_ids
                .iter()
                .any(|t| r["conversation_id"] == *t.as_str())
        );
        let conversation = app
            .state
            .store
            .conversation(r["conversation_id"].as_str().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            r["expected_threat_type"],
            json!(conversation.review.threat_type)
        );
    }

    for version in ["base", "large"] {
        let mine: Vec<&Value> = results.iter().filter(|r| r["version"] == version).collect();
        let expected = recompute(&mine);
        let stored = &run["results"][version];
        for metric in [
            "n",
            "accuracy",
            "macro_f1",
            "weighted_f1",
            "precision_high_severity",
            "recall_critical",
        ] {
            assert!(
                close(&stored[metric], &expected[metric]),
                "{version} {metric}: stored {} computed {}",
                stored[metric],
                expected[metric]
            );
        }
        assert!(stored["per_class"].is_object() && stored["confusion"]["matrix"].is_array());
    }
    // The analyst agreed with `large` except where they corrected it.
    assert!(
        run["results"]["large"]["accuracy"].as_f64() > run["results"]["base"]["accuracy"].as_f64()
    );

    // Every example the versions answered differently is listed.
    let by = |v: &str| -> BTreeMap<u64, Value> {
        results
            .iter()
            .filter(|r| r["version"] == v)
            .map(|r| {
                (
                    r["index"].as_u64().unwrap(),
                    r["predicted_threat_type"].clone(),
                )
            })
            .collect()
    };
    let (base, large) = (by("base"), by("large"));
    let differ = base.iter().filter(|(i, p)| large[*i] != **p).count();
    assert!(differ > 0, "the fixture should make the versions disagree");
    let comparison = &run["comparison"];
    assert_eq!(comparison["versions"], json!(["base", "large"]));
    assert_eq!(
        comparison["disagreements"].as_array().unwrap().len(),
        differ
    );
    let p = comparison["mcnemar_p"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p));
    assert_eq!(
        run["targets"]["accuracy"],
        json!({"target": 0.0, "met": true, "versions": {
            "base": {"value": run["results"]["base"]["accuracy"], "met": true},
            "large": {"value": run["results"]["large"]["accuracy"], "met": true},
        }})
    );

    // Metrics over time, oldest first, one per version and metric.
    let response = app
        .admin(
            Method::GET,
            "/admin/api/performance?alias=triage&version=large&metric=accuracy",
            None,
        )
        .await;
    let performance: Value = response.json().await.unwrap();
    assert_eq!(performance["data"].as_array().unwrap().len(), 1);
    assert_eq!(performance["data"][0]["evaluation_id"], id);
    assert!(close(
        &performance["data"][0]["score"],
        &run["results"]["large"]["accuracy"]
    ));
    let again = evaluate(&app, &data.dataset_id, &["large"]).await;
    let response = app
        .admin(
            Method::GET,
            "/admin/api/performance?alias=triage&version=large&metric=accuracy",
            None,
        )
        .await;
    let performance: Value = response.json().await.unwrap();
    let order: Vec<&Value> = performance["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["evaluation_id"])
        .collect();
    assert_eq!(order, [&json!(id), &again["id"]]);
    let listed: Value = app
        .admin_get("/admin/api/evaluations?alias=triage&version=base")
        .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    // Evaluation requests go straight to the provider: nothing captured.
    // Had any gone through the proxy, it would have been handed to capture
    // before its run finished; once capture has taken everything, it
    // would show.
    app.capture_settled().await;
    assert_eq!(
        app.state.store.tallies().unwrap().conversations,
        captured_before
    );
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_field_named() {
    let app = spawn_app_with(options("")).await;
    let post = async |body: Value| {
        app.admin(Method::POST, "/admin/api/evaluations", Some(&body))
            .await
    };
    let (status, error) =
        error_of(post(json!({"alias": "nope", "versions": ["base"], "dataset_id": "ds_x"})).await)
            .await;
    assert_eq!((status, error["param"].as_str()), (404, Some("alias")));
    let (status, error) =
        error_of(post(json!({"alias": "triage", "versions": ["zzz"], "dataset_id": "ds_x"})).await)
            .await;
    assert_eq!((status, error["param"].as_str()), (404, Some("versions")));
    let (status, error) = error_of(
        post(json!({"alias": "triage", "versions": ["base"], "dataset_id": "ds_x"})).await,
    )
    .await;
    assert_eq!((status, error["param"].as_str()), (404, Some("dataset_id")));
    let (status, _) = error_of(post(json!({"alias": "triage", "versions": ["base"], "dataset_id": "ds_x", "split": "train"})).await).await;
    assert_eq!(status, 400);
    let analyst = app
        .send(
            Method::POST,
            "/admin/api/evaluations",
            &app.analyst_key,
            Some(&json!({"alias": "triage", "versions": ["base"], "dataset_id": "ds_x"})),
        )
        .await;
    assert_eq!(analyst.status(), 403);
}

#[tokio::test]
async fn a_metric_under_its_target_raises_an_alert_that_reaches_the_webhook() {
    let (hook, receiver) = webhook_receiver(StatusCode::OK).await;
    let app = spawn_app_with(options(&format!(
        "webhook_url = \"http://{hook}/hook\"\n[evaluation.targets]\naccuracy = 0.999\nprecision_high_severity = 0.0\nrecall_critical = 0.0\n"
    )))
    .await;
    let data = labelled_dataset(&app).await;
    let run = evaluate(&app, &data.dataset_id, &["base"]).await;
    assert_eq!(run["targets"]["accuracy"]["met"], false);

    // A run's alerts are raised just after it is stored as finished.
    let alert = eventually("the run's alert", Duration::from_secs(30), || async {
        let alerts: Value = app.admin_get("/admin/api/alerts?state=open").await;
        alerts["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == "evaluation")
            .cloned()
    })
    .await;
    assert_eq!(
        (
            alert["alias"].as_str(),
            alert["version"].as_str(),
            alert["metric"].as_str()
        ),
        (Some("triage"), Some("base"), Some("accuracy"))
    );
    assert_eq!(alert["threshold"], 0.999);
    assert!(close(&alert["value"], &run["results"]["base"]["accuracy"]));
    eventually(
        "the alert at the webhook",
        Duration::from_secs(30),
        || async { (!receiver.bodies.lock().unwrap().is_empty()).then_some(()) },
    )
    .await;
    let bodies = receiver.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1);
    assert!(
        bodies[0]["text"].as_str().unwrap().contains("accuracy"),
        "{}",
        bodies[0]
    );
    assert_eq!(bodies[0]["alert_id"], alert["id"]);
    assert_eq!(bodies[0]["metric"], "accuracy");
}

#[tokio::test]
async fn a_failing_webhook_is_retried_a_bounded_number_of_times_and_blocks_nothing() {
    let (hook, receiver) = webhook_receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let app = spawn_app_with(options(&format!(
        "webhook_url = \"http://{hook}/hook\"\nwebhook_attempts = 3\nwebhook_backoff_ms = 300\n[evaluation.targets]\naccuracy = 0.999\nprecision_high_severity = 0.0\nrecall_critical = 0.0\n"
    )))
    .await;
    let data = labelled_dataset(&app).await;
    let first = evaluate(&app, &data.dataset_id, &["base"]).await;
    assert_eq!(first["status"], "succeeded");
    // While the webhook is still being retried, runs and requests go on.
    let second = evaluate(&app, &data.dataset_id, &["large"]).await;
    assert_eq!(second["status"], "succeeded");
    assert_eq!(
        app.post("/v1/chat/completions", &triage_request(false))
            .await
            .status(),
        200
    );
    let third = evaluate(&app, &data.dataset_id, &["base"]).await;
    assert_eq!(third["status"], "succeeded");
    // A run's alerts are raised just after it is stored as finished.
    let ids = eventually(
        "an alert for each of the three runs",
        Duration::from_secs(30),
        || async {
            let alerts: Value = app.admin_get("/admin/api/alerts?state=open").await;
            let alert_of = |run: &Value| {
                alerts["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| {
                        a["message"]
                            .as_str()
                            .unwrap()
                            .contains(run["id"].as_str().unwrap())
                    })
                    .map(|a| a["id"].clone())
            };
            Some([alert_of(&first)?, alert_of(&second)?, alert_of(&third)?])
        },
    )
    .await;
    // Three attempts at each alert, then it is given up: the queue is
    // empty and stays so.
    let bodies = eventually(
        "every alert given up after its attempts",
        Duration::from_secs(60),
        || async {
            let bodies = receiver.bodies.lock().unwrap().clone();
            let queued = app.state.store.queued_webhooks(10).unwrap();
            if queued.is_empty() && metric(&app, "flywheel_webhook_queued").await == Some(0.0) {
                Ok(bodies)
            } else {
                Err(format!(
                    "{} attempts, {} queued",
                    bodies.len(),
                    queued.len()
                ))
            }
        },
    )
    .await;
    let attempts = |id: &Value| bodies.iter().filter(|b| b["alert_id"] == *id).count();
    assert_eq!(
        ids.iter().map(attempts).collect::<Vec<_>>(),
        [3, 3, 3],
        "{bodies:#?}"
    );
    let failures = metric(&app, "flywheel_webhook_failures_total").await;
    assert!(failures >= Some(9.0), "{failures:?}");
}

/// A figure from `/metrics` without labels.
async fn metric(app: &TestApp, name: &str) -> Option<f64> {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn an_alert_the_webhook_missed_before_a_restart_reaches_it_after() {
    let dir = tempfile::tempdir().unwrap();
    // An address nothing listens on: every attempt is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let with_hook = |hook: std::net::SocketAddr| Options {
        data_dir: Some(dir.path().to_path_buf()),
        ..options(&format!(
            "webhook_url = \"http://{hook}/hook\"\nwebhook_attempts = 100\nwebhook_backoff_ms = 200\n[evaluation.targets]\naccuracy = 0.999\nprecision_high_severity = 0.0\nrecall_critical = 0.0\n"
        ))
    };
    let app = spawn_app_with(with_hook(dead)).await;
    let data = labelled_dataset(&app).await;
    let run = evaluate(&app, &data.dataset_id, &["base"]).await;
    let queued = eventually(
        "the alert queued after a refused attempt",
        Duration::from_secs(30),
        || async {
            let queued = app.state.store.queued_webhooks(10).unwrap();
            queued.first().filter(|q| q.attempts >= 1).cloned()
        },
    )
    .await;
    let alert = app.state.store.alert(&queued.alert_id).unwrap().unwrap();
    assert!(alert.message.contains(run["id"].as_str().unwrap()));
    app.state.shutdown.cancel();
    let TestApp { server, state, .. } = app;
    server.await.unwrap().unwrap();
    drop(state);

    // The webhook is back (at a new address, as config may change across
    // a restart): the queued alert is delivered, once.
    let (hook, receiver) = webhook_receiver(StatusCode::OK).await;
    let app = spawn_app_with(with_hook(hook)).await;
    eventually(
        "the missed alert at the webhook, off the queue",
        Duration::from_secs(60),
        || async {
            let delivered = !receiver.bodies.lock().unwrap().is_empty();
            let queued = app.state.store.queued_webhooks(10).unwrap();
            (delivered && queued.is_empty()).then_some(())
        },
    )
    .await;
    let bodies = receiver.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    assert_eq!(bodies[0]["alert_id"], alert.id.as_str());
}

#[tokio::test]
async fn an_interrupted_run_resumes_without_asking_finished_examples_again() {
    let dir = tempfile::tempdir().unwrap();
    let evaluation = format!("concurrency = 1\n{LOW_TARGETS}");
    // The dataset is made against a simulator that answers at once...
    let app = spawn_app_with(Options {
        data_dir: Some(dir.path().to_path_buf()),
        ..options(&evaluation)
    })
    .await;
    let data = labelled_dataset(&app).await;
    app.stop().await;
    // ...and the run against one that takes about half a second an
    // example, so that the test's stop lands mid-run however late a
    // loaded machine lets it see the third example done.
    let slow = || Options {
        simulator: flywheel_simulator::SimulatorConfig {
            api_key: Some(PROVIDER_KEY.into()),
            token_delay: Duration::from_millis(16),
            ..Default::default()
        },
        data_dir: Some(dir.path().to_path_buf()),
        ..options(&evaluation)
    };
    let app = spawn_app_with(slow()).await;
    let response = app.admin(Method::POST, "/admin/api/evaluations", Some(&json!({"alias": "triage", "versions": ["base", "large"], "dataset_id": data.dataset_id}))).await;
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(
        "three examples of the run done",
        Duration::from_secs(60),
        || async {
            let run = run_of(&app, &id).await;
            assert_ne!(run["status"], "succeeded", "the run should still be going");
            (run["progress"]["done"].as_u64().unwrap() >= 3).then_some(())
        },
    )
    .await;
    app.state.shutdown.cancel();
    let TestApp { server, state, .. } = app;
    server.await.unwrap().unwrap();
    let before = state.store.example_results(&id).unwrap();
    let stopped = state.store.evaluation(&id).unwrap().unwrap();
    drop(state);
    assert_eq!(stopped.status, "running");
    assert!(
        before.len() >= 3 && (before.len() as u64) < stopped.total,
        "{} of {}",
        before.len(),
        stopped.total
    );

    let app = spawn_app_with(slow()).await;
    let run = finished(&app, &id).await;
    assert_eq!(run["status"], "succeeded");
    let after = examples(&app, &id).await;
    assert_eq!(after.len() as u64, stopped.total);
    let keys: BTreeSet<(String, u64)> = after
        .iter()
        .map(|r| {
            (
                r["version"].as_str().unwrap().to_string(),
                r["index"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys.len(),
        after.len(),
        "each example answered once per version"
    );
    for earlier in &before {
        let now = after
            .iter()
            .find(|r| r["version"] == earlier.version && r["index"] == earlier.index)
            .unwrap();
        assert_eq!(
            now["answered_at"], earlier.answered_at,
            "finished examples were not asked again"
        );
    }
    for version in ["base", "large"] {
        let mine: Vec<&Value> = after.iter().filter(|r| r["version"] == version).collect();
        assert!(close(
            &run["results"][version]["accuracy"],
            &recompute(&mine)["accuracy"]
        ));
    }
}

#[tokio::test]
async fn production_and_its_candidates_with_traffic_are_evaluated_on_schedule() {
    let app = spawn_app_with(Options {
        extra: format!("{READY}[evaluation]\nenabled = true\ninterval_s = 1\n{LOW_TARGETS}"),
        ..Options::default()
    })
    .await;
    // The split comes first: a run scheduled the moment the dataset exists
    // must already see the candidate.
    let traffic = app
        .admin(
            Method::PUT,
            "/admin/api/models/triage/traffic",
            Some(&json!({"weights": {"base": 80, "large": 20}, "reason": "try large"})),
        )
        .await;
    assert_eq!(traffic.status(), 200);
    let data = labelled_dataset(&app).await;
    let run = eventually(
        "a scheduled evaluation to succeed",
        Duration::from_secs(60),
        || async {
            let listed: Value = app.admin_get("/admin/api/evaluations?alias=triage").await;
            listed["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["status"] == "succeeded")
                .cloned()
        },
    )
    .await;
    assert_eq!(run["created_by"], "scheduler");
    assert_eq!(run["versions"], json!(["base", "large"]));
    assert_eq!(run["dataset_id"], json!(data.dataset_id));
    assert_eq!(run["split"], "validation");
    let performance: Value = app
        .admin_get("/admin/api/performance?alias=triage&metric=accuracy")
        .await;
    assert!(performance["data"].as_array().unwrap().len() >= 2);
}
