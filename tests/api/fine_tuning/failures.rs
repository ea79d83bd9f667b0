//! A provider that refuses at upload, at create or mid-run ends the job
//! `failed` with its error as sent; cancel; and the checks on creation.

use super::*;
use reqwest::Method;

async fn failed_with(app: &TestApp, body: Value) -> Value {
    let created = create_job(app, body).await;
    let done = until_finished(app, created["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(
        done["events"].as_array().unwrap().last().unwrap()["level"],
        "error"
    );
    assert!(done["registered_version"].is_null());
    done["error"].clone()
}

#[tokio::test]
async fn a_refused_upload_fails_the_job_with_the_providers_error() {
    let sim = spawn_simulator(simulator(FAST_STEP)).await;
    let app = spawn_app_with(options(sim, "")).await;
    let broken = stored_dataset(&app, "sft", true, "{\"messages\": \"not a list\"}\n", "").await;
    let error = failed_with(&app, json!({"alias": "triage", "dataset_id": broken})).await;
    assert_eq!(
        (&error["stage"], &error["status"]),
        (&json!("upload"), &json!(400)),
        "{error:#}"
    );
    assert_eq!(error["provider_error"]["param"], "file", "{error:#}");
    assert!(
        error["provider_error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{error:#}"
    );
}

#[tokio::test]
async fn a_refused_create_fails_the_job_with_the_providers_error() {
    let sim = spawn_simulator(simulator(FAST_STEP)).await;
    let app = spawn_app_with(options(sim, "")).await;
    let dataset = stored_dataset(&app, "sft", true, &sft_jsonl(24), "").await;
    let error = failed_with(
        &app,
        json!({"alias": "triage", "dataset_id": dataset, "base_model": "gpt-2-legacy"}),
    )
    .await;
    assert_eq!(
        (&error["stage"], &error["status"]),
        (&json!("create"), &json!(400)),
        "{error:#}"
    );
    assert_eq!(
        error["provider_error"]["code"], "model_not_available",
        "{error:#}"
    );
}

#[tokio::test]
async fn a_run_that_fails_at_the_provider_fails_the_job() {
    let sim = spawn_simulator(simulator(FAST_STEP)).await;
    let app = spawn_app_with(options(sim, "")).await;
    let dataset = stored_dataset(&app, "sft", true, &sft_jsonl(24), &sft_jsonl(6)).await;
    let error = failed_with(
        &app,
        json!({"alias": "triage", "dataset_id": dataset, "metadata": {"sim_fail": "running"}}),
    )
    .await;
    assert_eq!(error["stage"], "run", "{error:#}");
    assert_eq!(
        error["provider_error"]["code"], "simulated_failure",
        "{error:#}"
    );
    let alias: Value = app
        .admin(Method::GET, "/admin/api/models/triage", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        alias["versions"].as_array().unwrap().len(),
        2,
        "nothing was registered"
    );
}

#[tokio::test]
async fn a_cancelled_job_is_cancelled_at_the_provider_too() {
    let sim = spawn_simulator(simulator(Duration::from_secs(30))).await;
    let app = spawn_app_with(options(sim, "")).await;
    let dataset = stored_dataset(&app, "sft", true, &sft_jsonl(24), "").await;
    let id = create_job(&app, json!({"alias": "triage", "dataset_id": dataset})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    until_submitted(&app, &id).await;
    let analyst = app
        .send(
            Method::POST,
            &format!("/admin/api/fine-tuning/jobs/{id}/cancel"),
            &app.analyst_key,
            None,
        )
        .await;
    assert_eq!(analyst.status(), 403);
    let path = format!("/admin/api/fine-tuning/jobs/{id}/cancel");
    let cancelled: Value = app
        .admin(Method::POST, &path, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
    assert!(cancelled["finished_at"].is_string());
    let remote = at_simulator(
        &app,
        &format!(
            "/fine_tuning/jobs/{}",
            cancelled["provider_job_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(remote["status"], "cancelled");
    let (status, error) = error_of(app.admin(Method::POST, &path, None).await).await;
    assert_eq!((status, error["code"].as_str()), (409, Some("conflict")));
}

#[tokio::test]
async fn creation_refuses_what_cannot_be_trained() {
    let sim = spawn_simulator(simulator(FAST_STEP)).await;
    let app = spawn_app_with(options(sim, "")).await;
    let ready = stored_dataset(&app, "sft", true, &sft_jsonl(24), "").await;
    let too_few = stored_dataset(&app, "sft", false, &sft_jsonl(3), "").await;
    let jobs = "/admin/api/fine-tuning/jobs";
    let refused = |body: Value| {
        let app = &app;
        async move { error_of(app.admin(Method::POST, jobs, Some(&body)).await).await }
    };
    let (status, e) = refused(json!({"alias": "triage", "dataset_id": too_few})).await;
    assert_eq!(
        (status, e["code"].as_str()),
        (400, Some("not_ready")),
        "{e}"
    );
    assert!(
        e["message"].as_str().unwrap().contains("at least 20"),
        "{e}"
    );
    let (status, e) = refused(json!({"alias": "triage", "dataset_id": "ds_nope"})).await;
    assert_eq!((status, e["param"].as_str()), (404, Some("dataset_id")));
    let (status, e) = refused(json!({"alias": "nope", "dataset_id": ready})).await;
    assert_eq!((status, e["param"].as_str()), (404, Some("alias")));
    let (status, e) =
        refused(json!({"alias": "triage", "dataset_id": ready, "provider": "dead"})).await;
    assert_eq!(
        (status, e["param"].as_str()),
        (400, Some("provider")),
        "{e}"
    );
    let (status, e) =
        refused(json!({"alias": "triage", "dataset_id": ready, "method": "dpo"})).await;
    assert_eq!((status, e["param"].as_str()), (400, Some("method")), "{e}");
    let (status, e) = refused(
        json!({"alias": "triage", "dataset_id": ready, "hyperparameters": {"n_epochs": 0}}),
    )
    .await;
    assert_eq!(
        (status, e["param"].as_str()),
        (400, Some("hyperparameters.n_epochs")),
        "{e}"
    );
    let (status, e) =
        refused(json!({"alias": "triage", "dataset_id": ready, "hyperparameters": {"epochs": 2}}))
            .await;
    assert_eq!(status, 400, "{e}");
    let analyst = app
        .send(
            Method::POST,
            jobs,
            &app.analyst_key,
            Some(&json!({"alias": "triage", "dataset_id": ready})),
        )
        .await;
    assert_eq!(analyst.status(), 403);
    let listed: Value = app
        .admin(Method::GET, jobs, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]), "nothing refused was stored");
    let (status, _) = error_of(
        app.admin(Method::GET, &format!("{jobs}/job_nope"), None)
            .await,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn disabled_fine_tuning_refuses_new_jobs() {
    let sim = spawn_simulator(simulator(FAST_STEP)).await;
    let app = spawn_app_with(options(sim, "enabled = false")).await;
    let ready = stored_dataset(&app, "sft", true, &sft_jsonl(24), "").await;
    let response = app
        .admin(
            Method::POST,
            "/admin/api/fine-tuning/jobs",
            Some(&json!({"alias": "triage", "dataset_id": ready})),
        )
        .await;
    let (status, e) = error_of(response).await;
    assert_eq!(
        (status, e["code"].as_str()),
        (400, Some("fine_tuning_disabled")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("fine_tuning.enabled"),
        "{e}"
    );
}

#[tokio::test]
async fn jobs_list_newest_first_with_a_cursor() {
    let sim = spawn_simulator(simulator(FAST_STEP)).await;
    let app = spawn_app_with(options(sim, "")).await;
    let ready = stored_dataset(&app, "sft", true, &sft_jsonl(24), "").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            create_job(&app, json!({"alias": "triage", "dataset_id": ready})).await["id"].clone(),
        );
    }
    let page: Value = app
        .admin(Method::GET, "/admin/api/fine-tuning/jobs?limit=2", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].clone())
            .collect::<Vec<_>>(),
        [ids[2].clone(), ids[1].clone()]
    );
    assert_eq!(page["has_more"], true);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: Value = app
        .admin(
            Method::GET,
            &format!("/admin/api/fine-tuning/jobs?limit=2&cursor={cursor}"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["data"][0]["id"], ids[0]);
    assert_eq!(rest["has_more"], false);
}

#[tokio::test]
async fn an_unreachable_provider_is_tried_again_rather_than_failing_the_job() {
    let sim = spawn_simulator(simulator(FAST_STEP)).await;
    let extra = "\n[[providers]]\nname = \"down\"\nbase_url = \"http://127.0.0.1:1/v1\"\nfine_tuning = true\n";
    let mut opts = options(sim, "");
    opts.extra.push_str(extra);
    let app = spawn_app_with(opts).await;
    let dataset = stored_dataset(&app, "sft", true, &sft_jsonl(24), "").await;
    let id = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": dataset, "provider": "down"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (job, warns) = eventually(
        "two retries noted in the job's events",
        Duration::from_secs(60),
        || async {
            let job = job(&app, &id).await;
            let warns: Vec<Value> = job["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["level"] == "warn")
                .cloned()
                .collect();
            if warns.len() >= 2 {
                Ok((job, warns))
            } else {
                Err(format!("{job:#}"))
            }
        },
    )
    .await;
    assert_eq!(job["status"], "preparing", "{job:#}");
    assert!(job["error"].is_null());
    let message = warns[1]["message"].as_str().unwrap();
    assert!(
        message.contains("could not be reached") && message.contains("(2 of 10)"),
        "{message}"
    );
}
