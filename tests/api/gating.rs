//! Promotion gating over HTTP: with `evaluation.gate_promotion`, a
//! promotion needs a succeeded evaluation that meets the targets and, with
//! `require_beats_production`, beats production on the same dataset.

use crate::evaluation_fixtures::*;
use crate::evaluations::{LOW_TARGETS, close, options};
use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};

async fn promote(app: &TestApp, version: &str) -> reqwest::Response {
    admin(
        app,
        Method::POST,
        "/admin/api/models/triage/promote",
        Some(json!({"version": version, "reason": "evaluated"})),
    )
    .await
}

#[tokio::test]
async fn promotion_gating_refuses_and_accepts_as_configured() {
    let app = spawn_app_with(options(&format!(
        "gate_promotion = true\nrequire_beats_production = true\n{LOW_TARGETS}"
    )))
    .await;
    let data = labelled_dataset(&app).await;

    let (status, error) = error_of(promote(&app, "large").await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (409, Some("promotion_gated"))
    );
    assert_eq!(error["failing"], json!([]));

    // A twin of production does not beat it.
    let twin = admin(
        &app,
        Method::POST,
        "/admin/api/models/triage/versions",
        Some(json!({"name": "twin", "provider": "sim", "model": "gpt-4o-mini"})),
    )
    .await;
    assert_eq!(twin.status(), 201);
    let run = evaluate(&app, &data.dataset_id, &["base", "twin"]).await;
    let (status, error) = error_of(promote(&app, "twin").await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (409, Some("promotion_gated"))
    );
    assert_eq!(error["failing"][0]["metric"], "accuracy");
    assert_eq!(error["failing"][0]["against"], "production");
    assert!(close(
        &error["failing"][0]["target"],
        &run["results"]["base"]["accuracy"]
    ));

    // `large` beats production on the same dataset, in a run of its own.
    evaluate(&app, &data.dataset_id, &["large"]).await;
    let promoted = promote(&app, "large").await;
    assert_eq!(promoted.status(), 200);
    let alias: Value = promoted.json().await.unwrap();
    assert_eq!(alias["production"], "large");
}

#[tokio::test]
async fn targets_gate_a_promotion_without_production_in_the_picture() {
    let app = spawn_app_with(options(
        "gate_promotion = true\n[evaluation.targets]\naccuracy = 0.999\nprecision_high_severity = 0.0\nrecall_critical = 0.0\n",
    ))
    .await;
    let data = labelled_dataset(&app).await;
    let run = evaluate(&app, &data.dataset_id, &["large"]).await;
    let (status, error) = error_of(promote(&app, "large").await).await;
    assert_eq!(status, 409);
    assert_eq!(
        error["failing"],
        json!([{"metric": "accuracy", "value": run["results"]["large"]["accuracy"], "target": 0.999, "against": "target", "evaluation_id": run["id"]}])
    );
    // Ungated config: the same promotion goes through.
    let open = spawn_app_with(options("")).await;
    assert_eq!(promote(&open, "large").await.status(), 200);
}
