//! Dataset snapshots over HTTP: conversations captured through the proxy,
//! labelled and approved through the review API, built into SFT and DPO
//! files whose every line is held to OpenAI's fine-tuning format.

mod format_check;

use crate::helpers::*;
use format_check::{check_dpo, check_jsonl, check_sft};
use reqwest::Method;
use serde_json::{Value, json};

const THREATS: [&str; 3] = ["malware", "phishing", "credential_access"];

/// An app whose builds are ready from 12 examples.
async fn app() -> TestApp {
    spawn_app_with(Options {
        extra: "[fine_tuning]\nmin_examples = 12".into(),
        ..Options::default()
    })
    .await
}

/// One single-turn conversation about `alert`; its id.
async fn converse(app: &TestApp, alert: &str, extra: Value) -> String {
    let mut body = json!({"model": "triage", "messages": [{"role": "user", "content": alert}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let response = app.post("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    response.text().await.unwrap();
    id
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let response = app.send(Method::GET, path, &app.analyst_key, None).await;
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

/// Waits until the capture writer has stored every conversation in `ids`
/// with its turn (the turn's record follows its conversation).
async fn captured(app: &TestApp, ids: &[String]) {
    for id in ids {
        app.stored_turns(id, 1).await;
    }
}

async fn label(app: &TestApp, id: &str, patch: Value) {
    let path = format!("/admin/api/conversations/{id}");
    let r = app
        .send(Method::PATCH, &path, &app.analyst_key, Some(&patch))
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn approve(app: &TestApp, ids: &[String]) {
    let body = json!({"ids": ids, "action": "approve"});
    let r = app
        .send(
            Method::POST,
            "/admin/api/conversations/bulk",
            &app.analyst_key,
            Some(&body),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["updated"], ids.len());
}

async fn build(app: &TestApp, body: &Value) -> (u16, Value) {
    let r = app
        .send(Method::POST, "/admin/api/datasets", ADMIN_TOKEN, Some(body))
        .await;
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The analyst's review of the `i`th alert: threat types in turn, none of
/// them what the model said, so each comes with the answer it should have
/// given (an answer the labels contradict is never trained on as it is).
fn review(i: usize) -> Value {
    let threat = THREATS[i % 3];
    let correction = format!(
        "Threat type: {threat}\nSeverity: high\nRationale: the unsigned DLL rundll32 loaded from %TEMP% on WS-{i} is {threat}."
    );
    json!({"threat_type": threat, "severity": "high", "quality_score": 4, "correction": correction})
}

/// The `i`th of the distinct alerts the tests converse about.
fn dll_alert(i: usize) -> String {
    format!("Endpoint alert #{i}: rundll32 loaded an unsigned DLL from %TEMP% on WS-{i}")
}

/// `n` labelled conversations on distinct alerts, threat types in turn.
async fn labelled(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let alert = dll_alert(i);
        ids.push(converse(app, &alert, json!({})).await);
    }
    captured(app, &ids).await;
    for (i, id) in ids.iter().enumerate() {
        label(app, id, review(i)).await;
    }
    ids
}

/// A download: its content type and body.
async fn file(app: &TestApp, id: &str, name: &str) -> (String, String) {
    let r = app
        .send(
            Method::GET,
            &format!("/admin/api/datasets/{id}/{name}"),
            &app.analyst_key,
            None,
        )
        .await;
    assert_eq!(r.status(), 200, "{name}");
    let kind = r.headers()["content-type"].to_str().unwrap().to_string();
    (kind, r.text().await.unwrap())
}

#[tokio::test]
async fn a_dataset_is_built_from_approved_conversations_and_downloaded() {
    let app = app().await;
    let mut ids = labelled(&app, 15).await;
    // A copy of the first alert, labelled alike, is dropped as a duplicate;
    // a truncated answer is rejected; a pending conversation is no candidate.
    let copy = converse(
        &app,
        "Endpoint alert #0: rundll32 loaded an unsigned DLL from %TEMP% on WS-0",
        json!({}),
    )
    .await;
    let cut = converse(
        &app,
        "Endpoint alert: a long PowerShell command line on WS-99",
        json!({"max_tokens": 3}),
    )
    .await;
    let pending = converse(
        &app,
        "Endpoint alert: certutil -urlcache on WS-77",
        json!({}),
    )
    .await;
    let uncorrected = converse(
        &app,
        "Endpoint alert: mimikatz sekurlsa::logonpasswords on DC-01",
        json!({}),
    )
    .await;
    captured(
        &app,
        &[copy.clone(), cut.clone(), pending, uncorrected.clone()],
    )
    .await;
    label(&app, &copy, review(0)).await;
    label(
        &app,
        &cut,
        json!({"threat_type": "phishing", "severity": "low"}),
    )
    .await;
    // The analyst disagrees with the answer but gives no right one.
    label(
        &app,
        &uncorrected,
        json!({"threat_type": "discovery", "severity": "low"}),
    )
    .await;
    ids.extend([copy.clone(), cut.clone(), uncorrected.clone()]);
    approve(&app, &ids).await;

    let request = json!({"name": "triage-sft", "format": "sft", "filter": {"min_quality": 1}, "validation_split": 0.2});
    let (status, ds) = build(&app, &json!({"name": "triage-sft", "format": "sft"})).await;
    assert_eq!(status, 201, "{ds}");
    assert!(ds["id"].as_str().unwrap().starts_with("ds_"));
    assert_eq!(ds["object"], "dataset");
    assert_eq!(ds["format"], "sft");
    assert_eq!(ds["alias"], "triage");
    assert_eq!(ds["base_model"], "gpt-4o-mini");
    assert_eq!(ds["filter"]["status"], "approved");
    assert_eq!(ds["created_by"], "admin-token", "{ds}");
    let counts = &ds["counts"];
    assert_eq!(counts["candidates"], 18, "{ds}");
    assert_eq!(counts["accepted"], 15);
    assert_eq!(counts["rejected"], 2);
    assert_eq!(counts["duplicates"], 1);
    assert_eq!(
        counts["train"].as_u64().unwrap() + counts["validation"].as_u64().unwrap(),
        15
    );
    assert_eq!(
        ds["by_threat_type"],
        json!({"credential_access": 5, "malware": 5, "phishing": 5})
    );
    assert_eq!(ds["coverage"]["covered"], 3);
    assert_eq!(ds["coverage"]["total"], 16);
    assert!(
        ds["coverage"]["missing"]
            .as_array()
            .unwrap()
            .contains(&json!("ransomware"))
    );
    let rejections = ds["rejections"].as_array().unwrap();
    let reason = |id: &str| {
        rejections
            .iter()
            .find(|r| r["conversation_id"] == id)
            .map(|r| r["reason"].as_str().unwrap().to_string())
    };
    assert!(
        reason(&cut).unwrap().contains("finish_reason \"length\""),
        "{rejections:?}"
    );
    assert!(reason(&copy).unwrap().contains(&ids[0]), "{rejections:?}");
    assert_eq!(
        reason(&uncorrected).as_deref(),
        Some("labels disagree with the answer; add a correction")
    );
    assert_eq!(ds["ready_for_training"], true, "{ds}");
    assert_eq!(ds["problems"], json!([]));
    assert_eq!(ds["content_hash"].as_str().unwrap().len(), 64);

    // The same input builds the same files; a new snapshot all the same.
    let (status, again) = build(&app, &request).await;
    assert_eq!(status, 201);
    assert_ne!(again["id"], ds["id"]);
    assert_eq!(again["content_hash"], ds["content_hash"]);

    let id = ds["id"].as_str().unwrap();
    let (kind, train) = file(&app, id, "train.jsonl").await;
    assert_eq!(kind, "application/jsonl");
    assert_eq!(
        check_jsonl(&train, check_sft) as u64,
        counts["train"].as_u64().unwrap()
    );
    let (_, validation) = file(&app, id, "validation.jsonl").await;
    assert_eq!(
        check_jsonl(&validation, check_sft) as u64,
        counts["validation"].as_u64().unwrap()
    );
    assert!(
        counts["validation"].as_u64().unwrap() >= 3,
        "each class gives validation examples"
    );

    // Reads for analysts: the snapshot as built, and the list newest first.
    assert_eq!(
        get_json(&app, &format!("/admin/api/datasets/{id}")).await,
        ds
    );
    let list = get_json(&app, "/admin/api/datasets?limit=1").await;
    assert_eq!(list["data"][0]["id"], again["id"]);
    assert_eq!(list["has_more"], true);
    let cursor = list["next_cursor"].as_str().unwrap();
    let rest = get_json(
        &app,
        &format!("/admin/api/datasets?limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(rest["data"][0]["id"], ds["id"]);
    assert_eq!(rest["has_more"], false);

    let audit = get_json(&app, "/admin/api/audit").await;
    let created = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "dataset.create")
        .count();
    assert_eq!(created, 2);
}

#[tokio::test]
async fn unknown_datasets_are_404() {
    let app = app().await;
    for path in ["", "/train.jsonl", "/validation.jsonl"] {
        let r = app
            .send(
                Method::GET,
                &format!("/admin/api/datasets/ds_nope{path}"),
                &app.analyst_key,
                None,
            )
            .await;
        let (status, error) = error_of(r).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(error["code"], "not_found");
    }
}

#[tokio::test]
async fn dpo_datasets_prefer_the_analysts_corrections() {
    let app = app().await;
    let ids = labelled(&app, 14).await;
    // The first keeps its labels but loses its correction.
    label(&app, &ids[0], json!({"correction": null})).await;
    for (i, id) in ids.iter().enumerate().skip(1) {
        let correction = format!(
            "Threat type: {}. Severity: high. The DLL in %TEMP% on WS-{i} is a loader; isolate the host.",
            THREATS[i % 3]
        );
        label(&app, id, json!({"correction": correction})).await;
    }
    approve(&app, &ids).await;
    let (status, ds) = build(
        &app,
        &json!({"name": "prefs", "format": "dpo", "filter": {"threat_types": THREATS}}),
    )
    .await;
    assert_eq!(status, 201, "{ds}");
    assert_eq!(ds["counts"]["accepted"], 13, "{ds}");
    let reason = ds["rejections"][0]["reason"].as_str().unwrap();
    assert_eq!(ds["rejections"][0]["conversation_id"], ids[0].as_str());
    assert!(reason.contains("add a correction"), "{reason}");
    let id = ds["id"].as_str().unwrap();
    let (_, train) = file(&app, id, "train.jsonl").await;
    let (_, validation) = file(&app, id, "validation.jsonl").await;
    assert_eq!(
        check_jsonl(&train, check_dpo) + check_jsonl(&validation, check_dpo),
        13
    );
    let line: Value = serde_json::from_str(train.lines().next().unwrap()).unwrap();
    assert!(
        line["preferred_output"][0]["content"]
            .as_str()
            .unwrap()
            .contains("isolate the host")
    );

    // One threat type only: the filter walks that type's conversations.
    let (_, one) = build(
        &app,
        &json!({"name": "malware", "format": "dpo", "filter": {"threat_types": ["malware"]}}),
    )
    .await;
    assert_eq!(one["counts"]["candidates"], 5, "{one}");
    assert_eq!(one["by_threat_type"], json!({"malware": 4}));
}

#[tokio::test]
async fn too_few_examples_make_a_snapshot_that_is_not_ready() {
    let app = app().await;
    let ids = labelled(&app, 3).await;
    approve(&app, &ids).await;
    let (status, ds) = build(&app, &json!({"name": "small", "format": "sft"})).await;
    assert_eq!(status, 201);
    assert_eq!(ds["ready_for_training"], false);
    let problems: Vec<&str> = ds["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("9 short of the minimum of 12")),
        "{problems:?}"
    );
    // A base model named in the request is the one checked against.
    let body = json!({"name": "small", "format": "sft", "base_model": "gpt-4o", "filter": {"alias": "triage"}});
    let (status, named) = build(&app, &body).await;
    assert_eq!(status, 201);
    assert_eq!(
        (named["alias"].clone(), named["base_model"].clone()),
        (json!("triage"), json!("gpt-4o"))
    );
    assert_eq!(named["content_hash"], ds["content_hash"]);
    // Nothing approved in this window: an empty snapshot, still a snapshot.
    let (status, empty) = build(
        &app,
        &json!({"name": "none", "format": "sft", "filter": {"until": "2000-01-01"}}),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(empty["counts"]["candidates"], 0);
    assert_eq!(empty["ready_for_training"], false);
}

#[tokio::test]
async fn bad_requests_name_their_field_and_analysts_cannot_build() {
    let app = app().await;
    let cases = [
        (json!({"name": "x", "format": "xml"}), "format"),
        (json!({"format": "sft"}), "name"),
        (json!({"name": " ", "format": "sft"}), "name"),
        (
            json!({"name": "x", "format": "sft", "validation_split": 0}),
            "validation_split",
        ),
        (
            json!({"name": "x", "format": "sft", "validation_split": 1.5}),
            "validation_split",
        ),
        (
            json!({"name": "x", "format": "sft", "filter": {"since": "yesterday"}}),
            "filter.since",
        ),
        (
            json!({"name": "x", "format": "sft", "filter": {"until": "2026-13-01"}}),
            "filter.until",
        ),
        (
            json!({"name": "x", "format": "sft", "filter": {"since": "2026-02-01", "until": "2026-01-01"}}),
            "filter.since",
        ),
        (
            json!({"name": "x", "format": "sft", "filter": {"threat_types": ["aliens"]}}),
            "filter.threat_types",
        ),
        (
            json!({"name": "x", "format": "sft", "filter": {"threat_types": []}}),
            "filter.threat_types",
        ),
        (
            json!({"name": "x", "format": "sft", "filter": {"severities": ["dire"]}}),
            "filter.severities",
        ),
        (
            json!({"name": "x", "format": "sft", "filter": {"status": "maybe"}}),
            "filter.status",
        ),
        (
            json!({"name": "x", "format": "sft", "filter": {"min_quality": 9}}),
            "filter.min_quality",
        ),
        (
            json!({"name": "x", "format": "sft", "filter": {"alias": "nope"}}),
            "filter.alias",
        ),
        (
            json!({"name": "x", "format": "sft", "filter": {"colour": "red"}}),
            "filter",
        ),
        (
            json!({"name": "x", "format": "sft", "base_model": ""}),
            "base_model",
        ),
    ];
    for (body, param) in cases {
        let r = app
            .send(
                Method::POST,
                "/admin/api/datasets",
                ADMIN_TOKEN,
                Some(&body),
            )
            .await;
        let (status, error) = error_of(r).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert!(
            error["param"].as_str().unwrap_or("").starts_with(param),
            "{body}: {error}"
        );
        assert_eq!(error["type"], "invalid_request_error");
    }
    let body = json!({"name": "x", "format": "sft"});
    for key in [&app.analyst_key, &app.client_key] {
        let r = app
            .send(Method::POST, "/admin/api/datasets", key, Some(&body))
            .await;
        assert_eq!(error_of(r).await.0, 403);
    }
    let r = app
        .send(
            Method::GET,
            "/admin/api/datasets?limit=0",
            &app.analyst_key,
            None,
        )
        .await;
    assert_eq!(error_of(r).await.1["param"], "limit");
    assert_eq!(
        get_json(&app, "/admin/api/datasets").await["data"],
        json!([])
    );
}

/// The SFT lines of the two-turn conversations `ids`, once stored,
/// labelled and approved: every one an example, each line in OpenAI's
/// format.
async fn sft_examples(app: &TestApp, ids: &[String], name: &str) -> Vec<Value> {
    for id in ids {
        app.stored_turns(id, 2).await;
    }
    for (i, id) in ids.iter().enumerate() {
        label(app, id, review(i)).await;
    }
    approve(app, ids).await;
    let (status, ds) = build(app, &json!({"name": name, "format": "sft"})).await;
    assert_eq!(status, 201, "{ds}");
    assert_eq!(ds["counts"]["accepted"], ids.len(), "{ds}");
    let id = ds["id"].as_str().unwrap();
    let (_, train) = file(app, id, "train.jsonl").await;
    let (_, validation) = file(app, id, "validation.jsonl").await;
    assert_eq!(
        check_jsonl(&train, check_sft) + check_jsonl(&validation, check_sft),
        ids.len()
    );
    train
        .lines()
        .chain(validation.lines())
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A two-turn Responses conversation: `first`, then the follow-up `then`
/// writes from the first response, both threaded as one conversation;
/// the conversation's id and the first answer's text and item id.
async fn two_turns(
    app: &TestApp,
    first: Value,
    then: impl FnOnce(&Value) -> Value,
) -> (String, String, Value) {
    let response = app.post("/v1/responses", &first).await;
    assert_eq!(response.status(), 200);
    let conversation = response.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let first: Value = response.json().await.unwrap();
    let item = &first["output"][0];
    let answer = item["content"][0]["text"].as_str().unwrap().to_string();
    let second = app.post("/v1/responses", &then(&first)).await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        second.headers()["x-flywheel-conversation-id"],
        conversation.as_str()
    );
    second.text().await.unwrap();
    (conversation, answer, item["id"].clone())
}

#[tokio::test]
async fn a_chain_of_stored_responses_is_trained_on_everything_its_model_saw() {
    let app = app().await;
    let mut ids = Vec::new();
    let mut first_answers = std::collections::HashMap::new();
    for i in 0..12 {
        let alert = dll_alert(i);
        let (id, answer, _) = two_turns(
            &app,
            json!({"model": "triage", "instructions": "Triage the alert.", "input": alert}),
            |first| {
                json!({"model": "triage", "instructions": "Answer in one line.",
                    "input": "Is the host isolated already?", "previous_response_id": first["id"]})
            },
        )
        .await;
        ids.push(id);
        first_answers.insert(alert, answer);
    }
    for line in sft_examples(&app, &ids, "chains").await {
        let messages = line["messages"].as_array().unwrap();
        let said = |m: &Value| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        };
        let said: Vec<_> = messages.iter().map(said).collect();
        // The follow-up's own instructions, the alert and the first
        // answer the provider put in front, the follow-up, the target.
        assert_eq!(said.len(), 5, "{said:?}");
        // The earlier answer is context: only the reviewed target is learnt.
        let weights: Vec<&Value> = messages.iter().map(|m| &m["weight"]).collect();
        assert_eq!(
            weights,
            [
                &Value::Null,
                &Value::Null,
                &json!(0),
                &Value::Null,
                &Value::Null
            ]
        );
        assert_eq!(said[0], ("system".into(), "Answer in one line.".into()));
        assert_eq!(said[1].0, "user");
        let answer = first_answers.remove(&said[1].1);
        assert_eq!(answer.as_ref(), Some(&said[2].1), "{said:?}");
        assert_eq!(said[2].0, "assistant");
        assert_eq!(
            said[3],
            ("user".into(), "Is the host isolated already?".into())
        );
        assert_eq!(said[4].0, "assistant");
    }
    assert!(first_answers.is_empty(), "every chain is an example once");
}

#[tokio::test]
async fn a_conversation_object_created_with_its_alert_is_trained_with_it() {
    // The alert is the object's first item; the turns send only questions.
    let app = app().await;
    let mut ids = Vec::new();
    let mut alerts = std::collections::HashSet::new();
    for i in 0..12 {
        let alert = dll_alert(i);
        let created = app
            .post(
                "/v1/conversations",
                &json!({"items": [{"type": "message", "role": "user", "content": alert}]}),
            )
            .await;
        let object: Value = created.json().await.unwrap();
        let object = object["id"].clone();
        let (id, _, _) = two_turns(
            &app,
            json!({"model": "triage", "input": "Triage the alert above.", "conversation": object}),
            |_| json!({"model": "triage", "input": "Is the host isolated already?", "conversation": object}),
        )
        .await;
        ids.push(id);
        alerts.insert(alert);
    }
    for line in sft_examples(&app, &ids, "objects").await {
        let said: Vec<(&str, &str)> = line["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        // The system prompt, the alert the object held, the question, the
        // first answer, the follow-up, the target.
        assert_eq!(said.len(), 6, "{said:?}");
        assert_eq!(said[1].0, "user");
        assert!(alerts.remove(said[1].1), "{said:?}");
        assert_eq!(said[2], ("user", "Triage the alert above."));
        assert_eq!(said[4], ("user", "Is the host isolated already?"));
    }
    assert!(alerts.is_empty(), "every object is an example once");
}

#[tokio::test]
async fn a_history_naming_earlier_answers_by_item_id_is_trained_with_their_text() {
    // A client that stores responses resends the history with each
    // earlier answer named by its output item id (the AI SDK with
    // `store: true`); the example holds the answer's text in its place.
    let app = app().await;
    let mut ids = Vec::new();
    let mut first_answers = std::collections::HashMap::new();
    for i in 0..12 {
        let alert = dll_alert(i);
        let (conversation, answer, _) =
            two_turns(&app, json!({"model": "triage", "input": alert}), |first| {
                json!({"model": "triage", "input": [
                    {"role": "user", "content": alert},
                    {"type": "item_reference", "id": first["output"][0]["id"]},
                    {"role": "user", "content": "Is the host isolated already?"}]})
            })
            .await;
        first_answers.insert(alert.clone(), answer);
        ids.push(conversation);
    }
    for line in sft_examples(&app, &ids, "references").await {
        let messages = line["messages"].as_array().unwrap();
        let roles: Vec<&str> = messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);
        let alert = messages[1]["content"].as_str().unwrap();
        let answer = first_answers.remove(alert);
        assert_eq!(answer.as_deref(), messages[2]["content"].as_str(), "{line}");
    }
    assert!(
        first_answers.is_empty(),
        "every conversation is an example once"
    );
}
