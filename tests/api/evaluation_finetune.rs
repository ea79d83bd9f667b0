//! A simulated fine-tune evaluated against its base: the dataset's train
//! file goes to the simulator's Files and fine-tuning API (over HTTP, as to
//! any provider), the model it makes is registered as a version, and both
//! versions are scored on the held-out split. The stored figures must equal
//! a computation from the stored per-example predictions, and the stats
//! count the fine-tuned model's traffic.

use crate::evaluation_fixtures::*;
use crate::evaluations::{LOW_TARGETS, close, options, recompute};
use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const BOUNDARY: &str = "evalboundary5c1e";

fn multipart(file: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n\
         --{BOUNDARY}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"train.jsonl\"\r\n\
         content-type: application/jsonl\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Trains on `train` at the simulator; the fine-tuned model's name.
async fn fine_tune(app: &TestApp, train: Vec<u8>) -> String {
    let sim = |path: &str| format!("http://{}/v1/{path}", app.upstream);
    let file: Value = app
        .http
        .post(sim("files"))
        .bearer_auth(PROVIDER_KEY)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(multipart(&train))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job: Value = app
        .http
        .post(sim("fine_tuning/jobs"))
        .bearer_auth(PROVIDER_KEY)
        .json(&json!({"model": "gpt-4o-mini", "training_file": file["id"], "seed": 7}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{job} for {file}"));
    eventually(
        &format!("fine-tune {id} at the simulator to succeed"),
        Duration::from_secs(120),
        || async {
            let job: Value = app
                .http
                .get(sim(&format!("fine_tuning/jobs/{id}")))
                .bearer_auth(PROVIDER_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            match job["status"].as_str() {
                Some("succeeded") => Ok(job["fine_tuned_model"].as_str().unwrap().to_string()),
                Some("failed" | "cancelled") => panic!("the fine-tune ended: {job}"),
                _ => Err(job["status"].to_string()),
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_simulated_fine_tune_is_scored_against_its_base_on_the_held_out_split() {
    let app = spawn_app_with(Options {
        simulator: flywheel_simulator::SimulatorConfig {
            api_key: Some(PROVIDER_KEY.into()),
            job_step: Duration::from_millis(10),
            ..Default::default()
        },
        ..options(LOW_TARGETS)
    })
    .await;
    let data = labelled_dataset(&app).await;
    let train = app
        .admin(
            Method::GET,
            &format!("/admin/api/datasets/{}/train.jsonl", data.dataset_id),
            None,
        )
        .await;
    assert_eq!(train.status(), 200);
    let model = fine_tune(&app, train.bytes().await.unwrap().to_vec()).await;
    assert!(model.starts_with("ft:"), "{model}");
    let registered = app
        .admin(
            Method::POST,
            "/admin/api/models/triage/versions",
            Some(&json!({"name": "tuned", "provider": "sim", "model": model})),
        )
        .await;
    assert_eq!(registered.status(), 201);

    let run = evaluate(&app, &data.dataset_id, &["base", "tuned"]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let id = run["id"].as_str().unwrap();
    let page: Value = app
        .admin_get(&format!("/admin/api/evaluations/{id}/examples"))
        .await;
    let results = page["data"].as_array().unwrap();
    assert_eq!(results.len(), 2 * data.validation_ids.len());
    for version in ["base", "tuned"] {
        let mine: Vec<&Value> = results.iter().filter(|r| r["version"] == version).collect();
        assert!(
            mine.iter().all(|r| r["error"].is_null()),
            "{version} failed to answer"
        );
        let expected = recompute(&mine);
        for metric in [
            "n",
            "accuracy",
            "macro_f1",
            "weighted_f1",
            "precision_high_severity",
            "recall_critical",
        ] {
            assert!(
                close(&run["results"][version][metric], &expected[metric]),
                "{version} {metric}"
            );
        }
    }
    assert!(run["comparison"]["mcnemar_p"].as_f64().is_some());

    // Traffic the fine-tuned model serves shows in the stats.
    let before: Value = app.admin_get("/admin/api/stats").await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.analyst_key)
        .header("x-flywheel-variant", "tuned")
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let turns = before["turns_total"].as_i64().unwrap() + 1;
    let stats = eventually(
        "the fine-tuned turn in the stats",
        Duration::from_secs(30),
        || async {
            let stats: Value = app.admin_get("/admin/api/stats").await;
            if stats["turns_total"] == turns {
                Ok(stats)
            } else {
                Err(stats.to_string())
            }
        },
    )
    .await;
    assert_eq!(before["fine_tuned_traffic_share"], 0.0);
    assert!(
        close(
            &stats["fine_tuned_traffic_share"],
            &json!(1.0 / turns as f64)
        ),
        "{stats}"
    );
    for field in [
        "avg_quality_score",
        "approval_rate",
        "mean_rating",
        "feedback_share",
        "taxonomy_coverage",
    ] {
        assert!(stats.get(field).is_some(), "{field}");
    }
    assert_eq!(stats["approval_rate"], 1.0);
}
