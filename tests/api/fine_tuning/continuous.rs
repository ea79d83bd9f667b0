//! Continuous learning: once enough conversations were approved, a
//! dataset is built and a job started without anyone asking, audited by
//! `continuous-learning`; no further job until as many approvals again.

use super::*;
use reqwest::Method;

const CONTINUOUS: &str =
    "\n[fine_tuning.continuous]\nenabled = true\nmin_new_approved = 30\ncheck_interval_s = 1\n";

async fn jobs(app: &TestApp) -> Vec<Value> {
    let list: Value = app
        .admin(Method::GET, "/admin/api/fine-tuning/jobs", None)
        .await
        .json()
        .await
        .unwrap();
    list["data"].as_array().unwrap().clone()
}

/// Waits until the service has made two more checks than when it was
/// called: the first may have begun before what the test just did, the
/// second began after, so what it decided about that is on record.
async fn a_full_check(app: &TestApp) {
    const CHECKS: &str = "flywheel_continuous_learning_checks_total";
    let before = app.metric(CHECKS).await;
    eventually(
        "two more continuous-learning checks",
        Duration::from_secs(30),
        || async {
            let now = app.metric(CHECKS).await;
            (now >= before + 2.0)
                .then_some(())
                .ok_or(format!("{now} checks"))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enough_approvals_start_a_job_by_themselves() {
    let sim = spawn_simulator(simulator(FAST_STEP)).await;
    let app = spawn_app_with(options(sim, CONTINUOUS)).await;
    reviewed_conversations(&app, 29).await;
    a_full_check(&app).await;
    assert!(jobs(&app).await.is_empty(), "started below the threshold");

    reviewed_conversations_from(&app, 29, 1).await;
    let started = eventually("a job to be started", Duration::from_secs(60), || async {
        jobs(&app).await.into_iter().next()
    })
    .await;
    assert_eq!(started["created_by"], "continuous-learning");
    let done = until_finished(&app, started["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert!(done["registered_version"].is_string());

    let path = format!(
        "/admin/api/datasets/{}",
        done["dataset_id"].as_str().unwrap()
    );
    let dataset: Value = app
        .admin(Method::GET, &path, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dataset["created_by"], "continuous-learning");
    assert_eq!(dataset["counts"]["accepted"], 30, "{dataset:#}");

    let audit: Value = app
        .admin(Method::GET, "/admin/api/audit?limit=200", None)
        .await
        .json()
        .await
        .unwrap();
    let by_service: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["actor"] == "continuous-learning")
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for action in [
        "dataset.create",
        "fine_tuning.job.create",
        "fine_tuning.continuous.start",
    ] {
        assert!(
            by_service.contains(&action),
            "{action} not in {by_service:?}"
        );
    }
    let start = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "fine_tuning.continuous.start")
        .unwrap();
    assert_eq!(start["details"]["approved_since"], 30);
    // The tallies count approvals over every alias: the alias with no
    // conversations of its own got a dataset that was not ready, and a skip.
    let skip = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "fine_tuning.continuous.skip")
        .unwrap();
    assert_eq!(skip["target"], "broken", "{skip:#}");

    a_full_check(&app).await;
    assert_eq!(
        jobs(&app).await.len(),
        1,
        "a second job without new approvals"
    );
}
