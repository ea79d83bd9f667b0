//! A DPO dataset trains with the `dpo` method, end to end.

use super::*;

fn dpo_jsonl(n: usize) -> String {
    (0..n)
        .map(|i| {
            let (text, threat, severity) = alert(i);
            let line = json!({
                "input": {"messages": [{"role": "user", "content": text}]},
                "preferred_output": [{"role": "assistant", "content": format!("Threat type: {threat}\nSeverity: {severity}\nRationale: the alert shows it.")}],
                "non_preferred_output": [{"role": "assistant", "content": "Threat type: benign\nSeverity: low\nRationale: nothing to see."}],
            });
            format!("{line}\n")
        })
        .collect()
}

#[tokio::test]
async fn a_dpo_dataset_trains_with_the_dpo_method() {
    let sim = spawn_simulator(simulator(FAST_STEP)).await;
    let app = spawn_app_with(options(sim, "")).await;
    let dataset = stored_dataset(&app, "dpo", true, &dpo_jsonl(24), "").await;
    let created = create_job(&app, json!({"alias": "triage", "dataset_id": dataset})).await;
    assert_eq!(created["method"], "dpo");
    let done = until_finished(&app, created["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let remote = at_simulator(
        &app,
        &format!(
            "/fine_tuning/jobs/{}",
            done["provider_job_id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(remote["method"]["type"], "dpo", "{remote:#}");
    assert!(
        done["provider_file_ids"]["validation_file"].is_null(),
        "an empty validation file is not sent"
    );
}
