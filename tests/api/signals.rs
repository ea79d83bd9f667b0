//! Quality signals over HTTP: kept on each conversation as its turns are
//! captured, shown in its summary, and filtered on by the conversation
//! list and by dataset builds.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

async fn chat(app: &TestApp, body: Value) -> (String, String) {
    let response = app.post("/v1/chat/completions", &body).await;
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
    let ids = (
        header("x-flywheel-conversation-id"),
        header("x-flywheel-inference-id"),
    );
    response.text().await.unwrap();
    ids
}

fn alert(text: &str) -> Value {
    json!({"model": "triage", "messages": [{"role": "user", "content": text}]})
}

async fn list(app: &TestApp, query: &str) -> Vec<Value> {
    let response = app
        .send(
            Method::GET,
            &format!("/admin/api/conversations?{query}"),
            &app.analyst_key,
            None,
        )
        .await;
    assert_eq!(response.status(), 200, "{query}");
    let page: Value = response.json().await.unwrap();
    page["data"].as_array().unwrap().clone()
}

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let mut ids: Vec<String> = list(app, query)
        .await
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn signals_are_kept_per_conversation_and_filter_lists_and_datasets() {
    let app = spawn_app().await;
    let text = "Endpoint alert: mshta.exe fetched a remote HTA on WS-12";
    let (first, first_inference) = chat(&app, alert(text)).await;
    // The same alert again, differing only in case and spacing.
    let (copy, _) = chat(
        &app,
        alert("endpoint ALERT:  mshta.exe fetched a remote HTA on ws-12"),
    )
    .await;
    let mut cut_body = alert("Endpoint alert: vssadmin delete shadows on FS-2");
    cut_body["max_tokens"] = json!(3);
    let (cut, _) = chat(&app, cut_body).await;
    let failed = app
        .post("/v1/chat/completions", &json!({"model": "broken", "messages": [{"role": "user", "content": "Endpoint alert: anything"}]}))
        .await;
    assert_eq!(failed.status(), 502);
    let failed = failed.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    eventually(
        "four conversations listed",
        Duration::from_secs(30),
        || async {
            let listed = list(&app, "").await.len();
            (listed == 4)
                .then_some(())
                .ok_or(format!("{listed} listed"))
        },
    )
    .await;
    let patch = json!({"threat_type": "execution", "severity": "medium"});
    let r = app
        .send(
            Method::PATCH,
            &format!("/admin/api/conversations/{first}"),
            &app.analyst_key,
            Some(&patch),
        )
        .await;
    assert_eq!(r.status(), 200);
    let rated = app
        .send(
            Method::POST,
            "/v1/feedback",
            &app.client_key,
            Some(&json!({"inference_id": first_inference, "rating": 5})),
        )
        .await;
    assert_eq!(rated.status(), 201);

    let all = list(&app, "").await;
    let of = |id: &str| all.iter().find(|c| c["id"] == id).unwrap()["signals"].clone();
    let s = of(&first);
    assert_eq!(s["complete_answer"], true);
    assert!(s["answer_chars"].as_u64().unwrap() > 20);
    assert_eq!(s["duplicate_of"], Value::Null);
    assert_eq!(
        (s["has_labels"].clone(), s["has_rating"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(of(&copy)["duplicate_of"], first.as_str());
    assert_eq!(of(&cut)["complete_answer"], false);
    assert_eq!(of(&failed)["upstream_error"], true);
    let detail: Value = app
        .send(
            Method::GET,
            &format!("/admin/api/conversations/{copy}"),
            &app.analyst_key,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["signals"]["duplicate_of"], first.as_str());

    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<String>>()
    };
    assert_eq!(
        ids(&app, "complete=true").await,
        sorted(vec![&first, &copy])
    );
    assert_eq!(
        ids(&app, "complete=false").await,
        sorted(vec![&cut, &failed])
    );
    assert_eq!(ids(&app, "duplicate=true").await, vec![copy.clone()]);
    assert_eq!(
        ids(&app, "duplicate=false&complete=true").await,
        vec![first.clone()]
    );
    assert_eq!(ids(&app, "has_labels=true").await, vec![first.clone()]);
    assert_eq!(ids(&app, "has_rating=true").await, vec![first.clone()]);
    assert_eq!(ids(&app, "upstream_error=true").await, vec![failed.clone()]);
    let cut_chars = of(&cut)["answer_chars"].as_u64().unwrap();
    assert!(cut_chars < s["answer_chars"].as_u64().unwrap());
    assert_eq!(
        ids(&app, &format!("min_answer_chars={}", cut_chars + 1)).await,
        sorted(vec![&first, &copy])
    );
    let bad = app
        .send(
            Method::GET,
            "/admin/api/conversations?complete=maybe",
            &app.analyst_key,
            None,
        )
        .await;
    assert_eq!(error_of(bad).await.0, 400);

    // The same filters choose a dataset's candidates.
    let body = json!({"ids": [&first, &copy, &cut], "action": "approve"});
    let r = app
        .send(
            Method::POST,
            "/admin/api/conversations/bulk",
            &app.analyst_key,
            Some(&body),
        )
        .await;
    assert_eq!(r.status(), 200);
    for (filter, candidates) in [
        (json!({}), 3),
        (json!({"complete": true}), 2),
        (json!({"complete": true, "duplicate": false}), 1),
        (json!({"has_labels": false}), 2),
        (
            json!({"min_answer_chars": cut_chars + 1, "has_rating": true}),
            1,
        ),
    ] {
        let r = app
            .admin(
                Method::POST,
                "/admin/api/datasets",
                Some(&json!({"name": "signals", "format": "sft", "filter": filter})),
            )
            .await;
        assert_eq!(r.status(), 201);
        let ds: Value = r.json().await.unwrap();
        assert_eq!(ds["counts"]["candidates"], candidates, "{filter}: {ds}");
        assert_eq!(ds["filter"]["status"], "approved");
    }
}

/// Open WebUI's title request after a chat, as it sends it.
const TITLE_TASK: &str = "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n### Guidelines:\n- The title should clearly represent the main theme.\n### Output:\nJSON format: { \"title\": \"your concise title here\" }\n### Chat History:\n<chat_history>\nUSER: Endpoint alert: certutil -urlcache on WS-9\nASSISTANT: Threat type: command_and_control\n</chat_history>";

#[tokio::test]
async fn background_tasks_are_captured_tagged_and_kept_out_of_review_and_datasets() {
    let app = spawn_app().await;
    let (chat_id, _) = chat(&app, alert("Endpoint alert: certutil -urlcache on WS-9")).await;
    let (title_id, title_inference) = chat(&app, alert(TITLE_TASK)).await;
    // LibreChat's title prompt, and an app that tags its own housekeeping.
    let (libre_id, _) = chat(&app, alert("Please generate a concise, 5-word-or-less title for the conversation, using its same language, with no punctuation.")).await;
    let (plain, _) = chat(&app, alert("Summarise the chat in one line")).await;
    let self_tagged = {
        let response = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.client_key)
            .header("x-flywheel-tags", "origin=background_task")
            .json(&alert("Suggest follow-up questions"))
            .send()
            .await
            .unwrap();
        let id = response.headers()["x-flywheel-conversation-id"]
            .to_str()
            .unwrap()
            .to_string();
        response.text().await.unwrap();
        id
    };
    let mut background = vec![title_id.clone(), libre_id.clone(), self_tagged.clone()];
    background.sort();
    eventually(
        "the background tasks listed on request",
        Duration::from_secs(30),
        || async {
            let listed = ids(&app, "background_task=true").await;
            (listed == background)
                .then_some(())
                .ok_or(format!("{listed:?}"))
        },
    )
    .await;
    // The queue shows the real chats only.
    let queue = ids(&app, "").await;
    assert!(queue.contains(&chat_id), "{queue:?}");
    assert!(background.iter().all(|b| !queue.contains(b)), "{queue:?}");
    assert_eq!(queue.len(), 2, "{queue:?}");
    assert!(queue.contains(&plain), "no pattern matched it");
    let pending = ids(&app, "status=pending").await;
    assert!(!pending.contains(&title_id));
    // The dashboard counts them apart: the two real chats are the work.
    let stats: Value = app
        .admin(Method::GET, "/admin/api/stats", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            &stats["conversations_total"],
            &stats["pending"],
            &stats["background_tasks"]
        ),
        (&json!(2), &json!(2), &json!(3)),
        "{stats:#}"
    );
    assert_eq!(stats["turns_total"], 5, "{stats:#}");

    // Captured whole, tagged, and its summary says what it is.
    let detail = app.stored_turns(&title_id, 1).await;
    assert_eq!(detail["signals"]["background_task"], true);
    let turn = &detail["turns"][0];
    assert_eq!(turn["inference_id"], title_inference.as_str());
    assert_eq!(turn["tags"]["origin"], "background_task");
    assert!(turn["response"]["message"]["content"].is_string());

    // Approved or not, datasets leave them out unless asked for.
    let body = json!({"ids": [&chat_id, &title_id, &libre_id], "action": "approve"});
    let r = app
        .send(
            Method::POST,
            "/admin/api/conversations/bulk",
            &app.analyst_key,
            Some(&body),
        )
        .await;
    assert_eq!(r.status(), 200);
    for (filter, candidates) in [(json!({}), 1), (json!({"background_task": true}), 2)] {
        let r = app
            .admin(
                Method::POST,
                "/admin/api/datasets",
                Some(&json!({"name": "housekeeping", "format": "sft", "filter": filter})),
            )
            .await;
        assert_eq!(r.status(), 201);
        let ds: Value = r.json().await.unwrap();
        assert_eq!(ds["counts"]["candidates"], candidates, "{filter}: {ds}");
    }
}

#[tokio::test]
async fn background_task_patterns_are_configurable_and_checked() {
    let app = spawn_app_with(Options {
        extra: "[capture.background_tasks]\npatterns = [\"^Housekeeping:\"]\n".into(),
        ..Options::default()
    })
    .await;
    let (ours, _) = chat(&app, alert("Housekeeping: name this chat")).await;
    let (webui, _) = chat(&app, alert(TITLE_TASK)).await;
    eventually(
        "ours listed as a background task",
        Duration::from_secs(30),
        || async {
            let listed = ids(&app, "background_task=true").await;
            (listed == vec![ours.clone()])
                .then_some(())
                .ok_or(format!("{listed:?}"))
        },
    )
    .await;
    // Both turns stored (the wait above saw only ours), then the check.
    app.capture_settled().await;
    assert!(
        ids(&app, "").await.contains(&webui),
        "the defaults were replaced"
    );
}

#[test]
fn a_bad_background_task_pattern_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        extra: "[capture.background_tasks]\npatterns = [\"ok\", \"(unclosed\"]".into(),
        ..Options::default()
    };
    let toml = config_toml("127.0.0.1:9".parse().unwrap(), dir.path(), &options);
    let error = flywheel::config::Config::from_toml_str(&toml, "test", Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("capture.background_tasks.patterns[1]"),
        "{error}"
    );
}
