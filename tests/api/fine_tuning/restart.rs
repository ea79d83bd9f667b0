//! A restart mid-job: the job resumes from its stored record, and a
//! submission or upload that may have happened just before the process
//! stopped is found at the provider rather than made again.

use super::*;
use flywheel::store::JobStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_resumes_after_a_restart_without_a_second_submission() {
    // The provider's job must still be going when the app stops: had the
    // poller seen it succeed, the edit below would fall on a finished job
    // with its version registered, and there would be nothing to resume.
    // A status lasts 1.5 s, so the job ends some 4.5 s after its
    // submission, long after the stop that follows seeing it.
    let sim = spawn_simulator(simulator(Duration::from_millis(1500))).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options {
        data_dir: Some(dir.path().to_path_buf()),
        ..options(sim, "")
    };
    let app = spawn_app_with(opts()).await;
    let dataset = stored_dataset(&app, "sft", true, &sft_jsonl(24), &sft_jsonl(6)).await;
    let id = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": dataset, "suffix": "resume"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    until_submitted(&app, &id).await;
    app.stop().await;

    // The worst moment to stop: the submission and the validation upload
    // were sent, but their answers never stored.
    let store = reopen(dir.path()).await;
    let mut record = store.job(&id).unwrap().unwrap();
    assert!(
        !record.status.is_final(),
        "the job ended before the stop: {record:?}"
    );
    assert!(record.attempts.submit && record.attempts.validation_upload);
    record.provider_job_id = None;
    record.provider_files.validation_file = None;
    record.status = JobStatus::Preparing;
    store.put_job(&record).unwrap();
    drop(store);

    let app = spawn_app_with(opts()).await;
    let done = until_finished(&app, &id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert!(
        done["registered_version"]
            .as_str()
            .unwrap()
            .starts_with("ft-resume-")
    );
    assert_eq!(submissions(&app, &id).await.len(), 1, "submitted twice");
    let files = at_simulator(&app, "/files?purpose=fine-tune").await;
    let uploads = files["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["filename"].as_str().unwrap().contains(&id))
        .count();
    assert_eq!(uploads, 2, "{files:#}");
    let messages: Vec<&str> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("Found the job submitted before")),
        "{messages:#?}"
    );
}

/// Opens the store a stopped app released (sled may hold its lock a moment).
pub async fn reopen(dir: &std::path::Path) -> flywheel::store::SharedStore {
    // Against PostgreSQL: the stopped app's schema, opened anew.
    if let Some(db) = crate::helpers::postgres::store_for(dir).await {
        let options = flywheel::store::postgres::PgOptions {
            url: db.url,
            pool_size: 2,
            statement_timeout: Duration::from_secs(5),
            ca_file: None,
        };
        return std::sync::Arc::new(flywheel::store::PgStore::open(&options).unwrap());
    }
    eventually(
        "the stopped app's store to be free to open",
        Duration::from_secs(30),
        || async {
            match flywheel::store::open(dir) {
                Err(e @ flywheel::store::StoreError::Locked { .. }) => Err(e.to_string()),
                opened => Ok(opened.unwrap()),
            }
        },
    )
    .await
}
