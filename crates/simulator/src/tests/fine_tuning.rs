//! Fine-tuning through the router: jobs in OpenAI's shape, pagination,
//! the status clock, cancel, every failure point, and the model a job makes
//! answering chat completions.

use super::files::{SFT_LINE, multipart, upload};
use super::*;

/// A router whose jobs move every few milliseconds.
fn fast() -> Router {
    router(SimulatorConfig {
        job_step: Duration::from_millis(15),
        ..SimulatorConfig::default()
    })
}

/// Supervised examples that teach a word the keyword rules do not know.
pub(super) fn teaching_file() -> String {
    let mut lines = Vec::new();
    for i in 0..12 {
        for (alert, threat, severity) in [
            (
                "zorblax pinged from host",
                "command_and_control",
                "critical",
            ),
            ("quuxdump of the vault file", "credential_access", "high"),
        ] {
            lines.push(
                json!({"messages": [
                    {"role": "system", "content": "You are a SOC analyst."},
                    {"role": "user", "content": format!("{alert} WS-{i}")},
                    {"role": "assistant", "content": format!("Threat type: {threat}\nSeverity: {severity}\nRationale: seen before.")}
                ]})
                .to_string(),
            );
        }
    }
    lines.join("\n")
}

async fn create_job(app: &Router, body: Value) -> (u16, Value) {
    call_json(app, post("/v1/fine_tuning/jobs", &body, &[])).await
}

async fn job(app: &Router, id: &str) -> Value {
    call_json(app, get(&format!("/v1/fine_tuning/jobs/{id}")))
        .await
        .1
}

/// Polls until the job is final, and returns it.
async fn finish(app: &Router, id: &str) -> Value {
    for _ in 0..400 {
        let job = job(app, id).await;
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("job {id} did not finish");
}

async fn started_job(app: &Router, extra: Value) -> Value {
    let file = upload(app, teaching_file().as_bytes()).await;
    let mut body = json!({"model": "gpt-4o-mini", "training_file": file["id"], "seed": 7});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, job) = create_job(app, body).await;
    assert_eq!(status, 200, "{job}");
    job
}

async fn events_of(app: &Router, id: &str, query: &str) -> Value {
    call_json(
        app,
        get(&format!("/v1/fine_tuning/jobs/{id}/events{query}")),
    )
    .await
    .1
}

#[tokio::test]
async fn a_job_is_created_in_the_openai_shape() {
    let app = router(SimulatorConfig::default());
    let job = started_job(
        &app,
        json!({"suffix": "soc", "metadata": {"team": "blue"}, "hyperparameters": {"n_epochs": 2}}),
    )
    .await;
    assert_eq!(job["object"], "fine_tuning.job");
    assert!(job["id"].as_str().unwrap().starts_with("ftjob-"));
    assert_eq!(job["status"], "validating_files");
    assert_eq!(job["model"], "gpt-4o-mini");
    for null in [
        "finished_at",
        "fine_tuned_model",
        "trained_tokens",
        "error",
        "validation_file",
    ] {
        assert!(job[null].is_null(), "{null}: {job}");
    }
    assert_eq!(job["result_files"], json!([]));
    assert_eq!(job["seed"], 7);
    assert_eq!(job["metadata"], json!({"team": "blue"}));
    assert_eq!(job["organization_id"], "flywheel-sim");
    assert!(job["estimated_finish"].as_u64().unwrap() >= job["created_at"].as_u64().unwrap());
    assert_eq!(
        job["hyperparameters"],
        json!({"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"})
    );
    assert_eq!(job["method"]["type"], "supervised");
    assert_eq!(
        job["method"]["supervised"]["hyperparameters"],
        job["hyperparameters"]
    );
    let id = job["id"].as_str().unwrap();
    let again = self::job(&app, id).await;
    assert_eq!(
        (again["id"].clone(), again["status"].clone()),
        (json!(id), json!("validating_files"))
    );
}

#[tokio::test]
async fn job_requests_name_their_bad_field() {
    let app = router(SimulatorConfig::default());
    let file = upload(&app, SFT_LINE.as_bytes()).await;
    let batch = call_json(
        &app,
        multipart(&[("purpose", "batch")], Some(("b.jsonl", b"x"))),
    )
    .await
    .1;
    for (body, status, param) in [
        (json!({"training_file": file["id"]}), 400, "model"),
        (
            json!({"model": "gpt-4o", "training_file": file["id"], "suffix": ""}),
            400,
            "suffix",
        ),
        (
            json!({"model": "gpt-4o", "training_file": file["id"], "hyperparameters": {"n_epochs": "x"}}),
            400,
            "hyperparameters.n_epochs",
        ),
        (
            json!({"model": "gpt-4o", "training_file": "file-nope"}),
            404,
            "training_file",
        ),
        (
            json!({"model": "gpt-4o", "training_file": file["id"], "validation_file": "file-nope"}),
            404,
            "validation_file",
        ),
        (
            json!({"model": "gpt-4o", "training_file": batch["id"]}),
            400,
            "training_file",
        ),
    ] {
        let (got, error) = create_job(&app, body.clone()).await;
        assert_eq!(got, status, "{body} → {error}");
        assert_eq!(error["error"]["param"], param, "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    let (status, body) = call(&app, get("/v1/fine_tuning/jobs/ftjob-nope")).await;
    assert_error(status, &body, 404, "invalid_request_error");
    for path in ["events", "checkpoints"] {
        let (status, body) = call(
            &app,
            get(&format!("/v1/fine_tuning/jobs/ftjob-nope/{path}")),
        )
        .await;
        assert_error(status, &body, 404, "invalid_request_error");
    }
    let cancel = post("/v1/fine_tuning/jobs/ftjob-nope/cancel", &json!({}), &[]);
    let (status, body) = call(&app, cancel).await;
    assert_error(status, &body, 404, "invalid_request_error");
    assert_eq!(
        call_json(&app, get("/v1/fine_tuning/jobs")).await.1["data"],
        json!([])
    );
}

#[tokio::test]
async fn jobs_are_listed_newest_first_and_pages_follow_after() {
    let app = router(SimulatorConfig::default());
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(started_job(&app, json!({})).await["id"].clone());
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut path = "/v1/fine_tuning/jobs?limit=2".to_string();
    loop {
        let (status, page) = call_json(&app, get(&path)).await;
        assert_eq!((status, &page["object"]), (200, &json!("list")));
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|j| j["id"].clone()));
        if page["has_more"] == false {
            break;
        }
        let last = data.last().unwrap()["id"].as_str().unwrap();
        path = format!("/v1/fine_tuning/jobs?limit=2&after={last}");
    }
    assert_eq!(seen, ids);
    let (_, all) = call_json(&app, get("/v1/fine_tuning/jobs")).await;
    assert_eq!(
        (all["data"].as_array().unwrap().len(), &all["has_more"]),
        (5, &json!(false))
    );
    let (status, body) = call(&app, get("/v1/fine_tuning/jobs?limit=0")).await;
    assert_eq!(
        assert_error(status, &body, 400, "invalid_request_error")["param"],
        "limit"
    );
}

#[tokio::test]
async fn a_job_runs_to_success_and_reports_honest_metrics() {
    let app = fast();
    let job = started_job(&app, json!({"suffix": "soc-v1"})).await;
    let id = job["id"].as_str().unwrap();
    // Time moves even when nobody polls: wait past the whole schedule.
    tokio::time::sleep(Duration::from_millis(80)).await;
    let done = self::job(&app, id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["error"].is_null() && done["estimated_finish"].is_null());
    let name = done["fine_tuned_model"].as_str().unwrap();
    let short = id[id.len() - 8..].to_lowercase();
    assert_eq!(name, format!("ft:gpt-4o-mini:flywheel-sim:soc-v1:{short}"));
    assert!(done["finished_at"].as_u64().unwrap() >= done["created_at"].as_u64().unwrap());
    // 24 examples, 3 automatic epochs of batches of 3.
    assert_eq!(
        done["hyperparameters"],
        json!({"n_epochs": 3, "batch_size": 3, "learning_rate_multiplier": 1.0})
    );
    // System, user and assistant tokens of each pair of examples.
    let per_pair = (5 + 5 + 8) + (5 + 6 + 8);
    assert_eq!(done["trained_tokens"], 12 * per_pair * 3);

    let events = events_of(&app, id, "?limit=100").await;
    assert_eq!(events["has_more"], false);
    let events = events["data"].as_array().unwrap();
    assert!(
        events
            .iter()
            .all(|e| e["object"] == "fine_tuning.job.event")
    );
    assert_eq!(events[0]["message"], "The job has successfully completed");
    assert_eq!(
        events.last().unwrap()["message"],
        format!("Created fine-tuning job: {id}")
    );
    let metrics: Vec<&Value> = events
        .iter()
        .rev()
        .filter(|e| e["type"] == "metrics")
        .collect();
    assert_eq!(metrics.len(), 24);
    assert_eq!(metrics[0]["data"]["step"], 1);
    assert_eq!(metrics[0]["data"]["total_steps"], 24);
    let first = metrics[0]["data"]["train_loss"].as_f64().unwrap();
    let last = metrics[23]["data"]["train_loss"].as_f64().unwrap();
    // The first batch meets the base model, whose rules know none of the
    // examples' words: its head start of 2 votes goes to the wrong answer,
    // and each of the sixteen threat types has a floor of 0.1.
    assert!(
        (first - (3.6f64 / 0.1).ln()).abs() < 1e-9,
        "the base is sure and wrong: {first}"
    );
    assert!(last < first / 2.0, "{first} → {last}");
    assert_eq!(metrics[23]["data"]["train_accuracy"], 1.0);
    assert!(
        events
            .iter()
            .filter(|e| e["type"] == "message")
            .all(|e| e["data"] == json!({}))
    );

    let results = done["result_files"][0].as_str().unwrap();
    let (status, csv) = call(&app, get(&format!("/v1/files/{results}/content"))).await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("step,train_loss,train_accuracy,valid_loss,valid_accuracy\n1,"));
    assert_eq!(csv.lines().count(), 25);
    let (_, file) = call_json(&app, get(&format!("/v1/files/{results}"))).await;
    assert_eq!(file["purpose"], "fine-tune-results");

    let (status, checkpoints) =
        call_json(&app, get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))).await;
    assert_eq!((status, &checkpoints["has_more"]), (200, &json!(false)));
    let checkpoint = &checkpoints["data"][0];
    assert_eq!(checkpoint["object"], "fine_tuning.job.checkpoint");
    assert_eq!(checkpoint["fine_tuned_model_checkpoint"], name);
    assert_eq!(checkpoint["step_number"], 24);
    assert_eq!(checkpoint["fine_tuning_job_id"], id);
    assert_eq!(checkpoint["metrics"]["train_loss"].as_f64(), Some(last));

    let cancel = post(
        &format!("/v1/fine_tuning/jobs/{id}/cancel"),
        &json!({}),
        &[],
    );
    let (status, body) = call(&app, cancel).await;
    assert_error(status, &body, 400, "invalid_request_error");
}

#[tokio::test]
async fn events_page_newest_first_with_after() {
    let app = fast();
    let id = started_job(&app, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    finish(&app, &id).await;
    let all: Vec<Value> = events_of(&app, &id, "?limit=100").await["data"]
        .as_array()
        .unwrap()
        .clone();
    assert!(all.len() > 20);
    let first = events_of(&app, &id, "").await;
    assert_eq!(
        first["data"].as_array().unwrap().len(),
        20,
        "OpenAI's default page"
    );
    assert_eq!(first["has_more"], true);
    let mut seen = Vec::new();
    let mut query = "?limit=7".to_string();
    loop {
        let page = events_of(&app, &id, &query).await;
        let data = page["data"].as_array().unwrap();
        seen.extend(data.iter().cloned());
        if page["has_more"] == false {
            break;
        }
        query = format!(
            "?limit=7&after={}",
            data.last().unwrap()["id"].as_str().unwrap()
        );
    }
    assert_eq!(seen, all);
    let created: Vec<u64> = all
        .iter()
        .map(|e| e["created_at"].as_u64().unwrap())
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "newest first");
}

#[tokio::test]
async fn a_cancelled_job_stops_where_it_was() {
    // Steps long enough that the cancel lands while the job validates.
    let app = router(SimulatorConfig {
        job_step: Duration::from_millis(150),
        ..SimulatorConfig::default()
    });
    let id = started_job(&app, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cancel = || {
        post(
            &format!("/v1/fine_tuning/jobs/{id}/cancel"),
            &json!({}),
            &[],
        )
    };
    let (status, cancelled) = call_json(&app, cancel()).await;
    assert_eq!(
        (status, &cancelled["status"]),
        (200, &json!("cancelled")),
        "{cancelled}"
    );
    assert!(cancelled["finished_at"].is_u64());
    // Past the whole schedule: nothing moves any more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = job(&app, &id).await;
    assert_eq!(later["status"], "cancelled");
    assert!(later["fine_tuned_model"].is_null());
    let events = events_of(&app, &id, "").await;
    assert_eq!(events["data"][0]["message"], "Fine-tuning job cancelled");
    assert!(
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] == "message")
    );
    let (status, body) = call(&app, cancel()).await;
    assert_error(status, &body, 400, "invalid_request_error");
}

#[tokio::test]
async fn sim_fail_fails_a_job_at_each_status() {
    let app = fast();
    for point in ["validating_files", "queued", "running"] {
        let id = started_job(&app, json!({"metadata": {"sim_fail": point}})).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let failed = finish(&app, &id).await;
        assert_eq!(failed["status"], "failed", "{point}");
        assert_eq!(failed["error"]["code"], "simulated_failure");
        assert!(
            failed["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&point.replace('_', " "))
        );
        assert!(failed["error"]["param"].is_null());
        assert!(failed["fine_tuned_model"].is_null() && failed["finished_at"].is_u64());
        let events = events_of(&app, &id, "?limit=100").await;
        let events = events["data"].as_array().unwrap();
        assert_eq!(events[0]["level"], "error");
        let metrics = events.iter().filter(|e| e["type"] == "metrics").count();
        assert_eq!(
            metrics > 0,
            point == "running",
            "{point}: {metrics} metrics"
        );
        let started = events
            .iter()
            .any(|e| e["message"] == "Fine-tuning job started");
        assert_eq!(started, point == "running", "{point}");
    }
    let (_, models) = call_json(&app, get("/v1/models")).await;
    assert_eq!(models["data"].as_array().unwrap().len(), MODELS.len());
}

#[tokio::test]
async fn a_file_the_trainer_cannot_use_fails_validation() {
    let app = fast();
    let unlabelled =
        r#"{"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"no idea"}]}"#;
    let dpo = r#"{"input":{"messages":[{"role":"user","content":"whoami"}]},"preferred_output":[{"role":"assistant","content":"Threat type: discovery"}],"non_preferred_output":[{"role":"assistant","content":"Threat type: benign"}]}"#;
    for (content, method, says) in [
        (unlabelled, "supervised", "states a threat type"),
        (dpo, "supervised", "line 1 is a dpo example"),
        (SFT_LINE, "dpo", "line 1 is a supervised example"),
    ] {
        let file = upload(&app, content.as_bytes()).await;
        let body =
            json!({"model": "gpt-4o", "training_file": file["id"], "method": {"type": method}});
        let (_, created) = create_job(&app, body).await;
        let failed = finish(&app, created["id"].as_str().unwrap()).await;
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["error"]["code"], "invalid_training_file");
        assert_eq!(failed["error"]["param"], "training_file");
        let message = failed["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
        assert!(message.contains(file["id"].as_str().unwrap()));
    }

    // A training file deleted before validation is gone by then.
    let slow = router(SimulatorConfig {
        job_step: Duration::from_millis(150),
        ..SimulatorConfig::default()
    });
    let job = started_job(&slow, json!({})).await;
    let training = job["training_file"].as_str().unwrap();
    let delete = Request::delete(format!("/v1/files/{training}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&slow, delete).await.0, 200);
    let failed = finish(&slow, job["id"].as_str().unwrap()).await;
    assert_eq!(failed["error"]["code"], "invalid_training_file");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no longer exists")
    );
}

pub(super) fn chat_with(model: &str, alert: &str, stream: bool) -> Request<Body> {
    post(
        "/v1/chat/completions",
        &json!({"model": model, "stream": stream, "messages": [
            {"role": "system", "content": "You are a SOC analyst."},
            {"role": "user", "content": alert}
        ]}),
        &[],
    )
}

pub(super) async fn answer_of(app: &Router, model: &str, alert: &str) -> String {
    let (status, body) = call_json(app, chat_with(model, alert, false)).await;
    assert_eq!(status, 200, "{body}");
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn end_to_end_upload_train_poll_and_chat_with_the_new_model() {
    let app = fast();
    let file = upload(&app, teaching_file().as_bytes()).await;
    let (status, created) = create_job(
        &app,
        json!({"model": "gpt-4o-mini", "training_file": file["id"], "suffix": "e2e"}),
    )
    .await;
    assert_eq!(status, 200);
    let done = finish(&app, created["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let model = done["fine_tuned_model"].as_str().unwrap();

    let (_, models) = call_json(&app, get("/v1/models")).await;
    let listed = models["data"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(listed["id"], model);
    assert_eq!(
        (&listed["object"], &listed["owned_by"]),
        (&json!("model"), &json!("flywheel-sim"))
    );
    assert_eq!(
        call_json(&app, get(&format!("/v1/models/{model}"))).await,
        (200, listed)
    );

    // The base model does not know the word; the tuned one learned it.
    let alert = "zorblax seen on host WS-77";
    let base = answer_of(&app, "gpt-4o-mini", alert).await;
    assert!(
        base.starts_with("Threat type: suspicious_activity"),
        "{base}"
    );
    let tuned = answer_of(&app, model, alert).await;
    assert!(
        tuned.starts_with(
            "Threat type: command_and_control\nSeverity: critical\nRationale: Learned from 24"
        ),
        "{tuned}"
    );
    assert!(tuned.contains("'zorblax'"), "{tuned}");
    let other = answer_of(&app, model, "quuxdump spotted").await;
    assert!(
        other.starts_with("Threat type: credential_access\nSeverity: high"),
        "{other}"
    );

    // Streamed, the same answer in the same wire format.
    let (status, _, _) = send_with(SimulatorConfig::default(), chat_with(model, alert, true)).await;
    assert_eq!(status, 404, "another router has no such model");
    let response = app
        .clone()
        .oneshot(chat_with(model, alert, true))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    let events = sse(&body);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["model"] == model && c["object"] == "chat.completion.chunk")
    );
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, tuned);

    // Where nothing it learned applies, it is its base, word for word.
    let base = answer_of(&app, "gpt-4o-mini", "mimikatz on DC01").await;
    assert!(base.starts_with("Threat type: credential_access"), "{base}");
    assert_eq!(answer_of(&app, model, "mimikatz on DC01").await, base);
}

#[tokio::test]
async fn a_dpo_job_learns_the_preferred_answers_and_answers_in_json() {
    let app = fast();
    let lines: Vec<String> = (0..10)
        .flat_map(|i| {
            [("plimbus sweep of subnet", "discovery", "low"), ("vexor spread to disks", "impact", "critical")].map(
                |(alert, threat, severity)| {
                    let preferred = format!("{{\"threat_type\": \"{threat}\", \"severity\": \"{severity}\"}}");
                    json!({
                        "input": {"messages": [{"role": "user", "content": format!("{alert} {i}")}]},
                        "preferred_output": [{"role": "assistant", "content": preferred}],
                        "non_preferred_output": [{"role": "assistant", "content": "Threat type: benign\nSeverity: informational"}],
                    })
                    .to_string()
                },
            )
        })
        .collect();
    let training = upload(&app, lines.join("\n").as_bytes()).await;
    let validation = upload(&app, lines[..4].join("\n").as_bytes()).await;
    let (status, created) = create_job(
        &app,
        json!({"model": "gpt-4o", "training_file": training["id"], "validation_file": validation["id"],
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 5}}}}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["method"]["dpo"]["hyperparameters"]["beta"], 0.2);
    let done = finish(&app, created["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["hyperparameters"],
        json!({"n_epochs": 1, "batch_size": 5, "learning_rate_multiplier": 1.0, "beta": 0.2})
    );
    assert_eq!(done["validation_file"], validation["id"]);
    let events = events_of(&app, created["id"].as_str().unwrap(), "?limit=100").await;
    let last_metrics = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "metrics")
        .unwrap()
        .clone();
    assert_eq!(last_metrics["data"]["step"], 4);
    assert!(
        last_metrics["data"]["full_valid_loss"].is_f64(),
        "{last_metrics}"
    );
    assert_eq!(last_metrics["data"]["full_valid_accuracy"], 1.0);

    let model = done["fine_tuned_model"].as_str().unwrap();
    assert!(model.starts_with("ft:gpt-4o:flywheel-sim::"), "{model}");
    let base = answer_of(&app, "gpt-4o", "vexor spread to disks of FS01").await;
    assert!(
        base.starts_with("Threat type: suspicious_activity"),
        "{base}"
    );
    let answer = answer_of(&app, model, "vexor spread to disks of FS01").await;
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (&answer["threat_type"], &answer["severity"]),
        (&json!("impact"), &json!("critical"))
    );
    assert!(
        answer["rationale"].as_str().unwrap().contains("'vexor'"),
        "{answer}"
    );
}
