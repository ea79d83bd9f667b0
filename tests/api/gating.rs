//! Promotion gating over HTTP. On by default whenever evaluation is: a
//! promotion needs the candidate's latest evaluation to beat production on
//! the same dataset (or to meet the targets, as configured); an admin may
//! force it with a reason, audited as a forced promotion; an analyst may
//! do neither.

use crate::evaluation_fixtures::*;
use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Evaluation as configured by default (enabled, so promotions are gated),
/// plus `evaluation` (keys of `[evaluation]`, then any tables).
fn gated(evaluation: &str) -> Options {
    Options {
        extra: format!("{READY}[evaluation]\n{evaluation}"),
        ..Options::default()
    }
}

async fn promote(app: &TestApp, body: Value) -> reqwest::Response {
    app.admin(
        Method::POST,
        "/admin/api/models/triage/promote",
        Some(&body),
    )
    .await
}

async fn verdict(app: &TestApp, version: &str) -> Value {
    app.admin_get(&format!("/admin/api/models/triage/gate?version={version}"))
        .await
}

async fn register_twin(app: &TestApp) {
    let twin = app
        .admin(
            Method::POST,
            "/admin/api/models/triage/versions",
            Some(&json!({"name": "twin", "provider": "sim", "model": "gpt-4o-mini"})),
        )
        .await;
    assert_eq!(twin.status(), 201);
}

#[tokio::test]
async fn by_default_a_candidate_must_beat_production_on_the_same_dataset() {
    let app = spawn_app_with(gated("")).await;
    let data = labelled_dataset(&app).await;

    // No evaluation yet: refused, and the verdict says why.
    let (status, error) =
        error_of(promote(&app, json!({"version": "large", "reason": "looks good"})).await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (409, Some("promotion_gated"))
    );
    assert_eq!(error["failing"], json!([]));
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no succeeded evaluation"),
        "{error}"
    );
    let v = verdict(&app, "large").await;
    assert_eq!(
        (&v["object"], &v["gated"], &v["allowed"], &v["requires"]),
        (
            &json!("promotion_gate"),
            &json!(true),
            &json!(false),
            &json!("beats_production")
        )
    );

    // A twin of production does not beat it.
    register_twin(&app).await;
    let run = evaluate(&app, &data.dataset_id, &["base", "twin"]).await;
    let (status, error) =
        error_of(promote(&app, json!({"version": "twin", "reason": "same thing"})).await).await;
    assert_eq!(status, 409);
    assert_eq!(error["failing"][0]["metric"], "accuracy");
    assert_eq!(error["failing"][0]["against"], "production");
    assert_eq!(
        error["failing"][0]["target"],
        run["results"]["base"]["accuracy"]
    );
    let v = verdict(&app, "twin").await;
    assert_eq!(v["beats_production"], false);
    assert_eq!(v["candidate"]["evaluation_id"], run["id"]);
    assert_eq!(v["production_figures"]["evaluation_id"], run["id"]);
    assert_eq!(v["mcnemar_p"], run["comparison"]["mcnemar_p"]);

    // `large` beats production on the same dataset, in a run of its own:
    // production's figures come from the earlier run on that dataset.
    let own = evaluate(&app, &data.dataset_id, &["large"]).await;
    let v = verdict(&app, "large").await;
    assert_eq!(
        (&v["allowed"], &v["beats_production"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(v["candidate"]["evaluation_id"], own["id"]);
    assert_eq!(v["production_figures"]["evaluation_id"], run["id"]);
    assert_eq!(v["mcnemar_p"], Value::Null, "no run scored both");
    assert!(
        v["candidate"]["accuracy"].as_f64() > v["production_figures"]["accuracy"].as_f64(),
        "{v}"
    );
    // Forcing what the gate allows is an ordinary promotion.
    let promoted = promote(
        &app,
        json!({"version": "large", "reason": "evaluated", "force": true}),
    )
    .await;
    assert_eq!(promoted.status(), 200);
    let alias: Value = promoted.json().await.unwrap();
    assert_eq!(alias["production"], "large");
    let audit = app.admin_get("/admin/api/audit?limit=5").await;
    assert_eq!(audit["data"][0]["action"], "model.promote", "{audit}");
    assert_eq!(audit["data"][0]["details"]["gate"], Value::Null);
}

#[tokio::test]
async fn an_admin_may_force_a_refused_promotion_with_a_reason_and_it_is_audited() {
    let app = spawn_app_with(gated("")).await;
    // Forcing still needs a reason, as every change does.
    let (status, error) =
        error_of(promote(&app, json!({"version": "large", "force": true})).await).await;
    assert_eq!((status, error["param"].as_str()), (400, Some("reason")));
    // An analyst may not promote, forced or not.
    let by_analyst = app
        .send(
            Method::POST,
            "/admin/api/models/triage/promote",
            &app.analyst_key,
            Some(&json!({"version": "large", "reason": "I insist", "force": true})),
        )
        .await;
    let (status, error) = error_of(by_analyst).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (403, Some("insufficient_permissions"))
    );
    // The analyst may read the verdict, though.
    let read = app
        .send(
            Method::GET,
            "/admin/api/models/triage/gate?version=large",
            &app.analyst_key,
            None,
        )
        .await;
    assert_eq!(read.status(), 200);

    let forced = promote(
        &app,
        json!({"version": "large", "reason": "incident: base is down, large is all we have", "force": true}),
    )
    .await;
    assert_eq!(forced.status(), 200);
    let alias: Value = forced.json().await.unwrap();
    assert_eq!(alias["production"], "large");
    let audit = app.admin_get("/admin/api/audit?limit=5").await;
    let entry = &audit["data"][0];
    assert_eq!(entry["action"], "model.promote.forced", "{audit}");
    assert_eq!(entry["actor"], "admin-token");
    assert_eq!(
        entry["details"]["reason"],
        "incident: base is down, large is all we have"
    );
    assert!(
        entry["details"]["gate"]["message"]
            .as_str()
            .unwrap()
            .contains("no succeeded evaluation"),
        "{entry}"
    );
    let history = app
        .admin_get("/admin/api/models/triage/history?limit=1")
        .await;
    assert_eq!(
        (&history["data"][0]["action"], &history["data"][0]["forced"]),
        (&json!("promote"), &json!(true))
    );
}

#[tokio::test]
async fn targets_gate_when_configured_and_nothing_is_gated_when_turned_off() {
    let app = spawn_app_with(gated(
        "promotion_requires = \"meets_targets\"\n[evaluation.targets]\naccuracy = 0.999\nprecision_high_severity = 0.0\nrecall_critical = 0.0\n",
    ))
    .await;
    let data = labelled_dataset(&app).await;
    let run = evaluate(&app, &data.dataset_id, &["large"]).await;
    let (status, error) =
        error_of(promote(&app, json!({"version": "large", "reason": "r"})).await).await;
    assert_eq!(status, 409);
    assert_eq!(
        error["failing"],
        json!([{"metric": "accuracy", "value": run["results"]["large"]["accuracy"], "target": 0.999, "against": "target", "evaluation_id": run["id"]}])
    );
    assert_eq!(verdict(&app, "large").await["meets_targets"], false);

    // "either": beating production is enough when the targets are missed.
    let either = spawn_app_with(gated(
        "promotion_requires = \"either\"\n[evaluation.targets]\naccuracy = 0.999\n",
    ))
    .await;
    assert_eq!(
        promote(&either, json!({"version": "large", "reason": "r"}))
            .await
            .status(),
        409,
        "no evaluation: neither"
    );
    let data = labelled_dataset(&either).await;
    evaluate(&either, &data.dataset_id, &["base", "large"]).await;
    let v = verdict(&either, "large").await;
    assert_eq!(
        (&v["meets_targets"], &v["beats_production"], &v["allowed"]),
        (&json!(false), &json!(true), &json!(true)),
        "{v}"
    );
    assert_eq!(
        promote(&either, json!({"version": "large", "reason": "r"}))
            .await
            .status(),
        200
    );

    // Gating off, or evaluation off: the same promotion goes through.
    for extra in ["gate_promotion = false\n", "enabled = false\n"] {
        let open = spawn_app_with(gated(extra)).await;
        let v = verdict(&open, "large").await;
        assert_eq!(
            (&v["gated"], &v["allowed"]),
            (&json!(false), &json!(true)),
            "{extra}"
        );
        let promoted = promote(&open, json!({"version": "large", "reason": "r"})).await;
        assert_eq!(promoted.status(), 200, "{extra}");
        let audit = open.admin_get("/admin/api/audit?limit=1").await;
        assert_eq!(audit["data"][0]["action"], "model.promote");
    }
}

#[tokio::test]
async fn the_verdict_names_unknown_aliases_and_versions() {
    let app = spawn_app_with(gated("")).await;
    for (path, status, param) in [
        ("/admin/api/models/nope/gate?version=x", 404, "alias"),
        ("/admin/api/models/triage/gate?version=nope", 400, "version"),
        ("/admin/api/models/triage/gate", 400, "version"),
    ] {
        let r = app.admin(Method::GET, path, None).await;
        let (got, error) = error_of(r).await;
        assert_eq!(
            (got, error["param"].as_str()),
            (status, Some(param)),
            "{path}"
        );
    }
    let v = verdict(&app, "base").await;
    assert_eq!(v["allowed"], true, "production is never gated: {v}");
}
