//! Upgrading keeps everything: a data directory written by an earlier
//! release — before the compressed layout (`tests/fixtures/store-v1.tar.gz`)
//! or before records were grouped (`store-v2.tar.gz`), each made by
//! `tests/fixtures/make_store.py` with that release's binary — opens, is
//! migrated in place, and the admin API shows exactly what that release
//! showed of it; its conversations go on threading and taking feedback.
//! A data directory of a newer layout is refused with what to do.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn fixture(name: &str) -> (tempfile::TempDir, Value) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(root.join(format!("store-{name}.tar.gz")))
        .arg("-C")
        .arg(dir.path())
        .status()
        .expect("tar runs");
    assert!(status.success(), "the fixture unpacks");
    let views = std::fs::read_to_string(root.join(format!("store-{name}-views.json"))).unwrap();
    (dir, serde_json::from_str(&views).unwrap())
}

#[tokio::test]
async fn a_store_of_layout_1_is_migrated_with_nothing_lost() {
    migrated_with_nothing_lost("v1").await;
}

#[tokio::test]
async fn a_store_of_layout_2_opens_with_nothing_lost() {
    migrated_with_nothing_lost("v2").await;
}

async fn migrated_with_nothing_lost(name: &str) {
    let (dir, before) = fixture(name);
    let app = spawn_app_with(Options {
        data_dir: Some(dir.path().join("data")),
        ..Options::default()
    })
    .await;
    let conversations = app.admin_get("/admin/api/conversations?limit=500").await;
    assert_eq!(
        conversations["data"], before["conversations"],
        "the list, in order"
    );
    for (id, detail) in before["details"].as_object().unwrap() {
        let now = app
            .admin_get(&format!("/admin/api/conversations/{id}"))
            .await;
        assert_eq!(&now, detail, "conversation {id}");
    }
    // The same figures; stats since added a count layout 1's release had
    // none of (chat apps' housekeeping requests).
    let mut stats = before["stats"].clone();
    stats["background_tasks"] = json!(0);
    assert_eq!(app.admin_get("/admin/api/stats").await, stats);
    assert_eq!(
        app.admin_get("/admin/api/datasets").await["data"],
        before["datasets"]
    );
    let dataset = before["datasets"][0]["id"].as_str().unwrap();
    let train = app
        .admin(
            Method::GET,
            &format!("/admin/api/datasets/{dataset}/train.jsonl"),
            None,
        )
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(train, before["train_jsonl"].as_str().unwrap());
    assert_eq!(
        app.admin_get("/admin/api/fine-tuning/jobs").await["data"],
        before["jobs"]
    );
    let evaluation = before["evaluation"]["id"].as_str().unwrap();
    assert_eq!(
        app.admin_get(&format!("/admin/api/evaluations/{evaluation}"))
            .await,
        before["evaluation"]
    );
    let models = app.admin_get("/admin/api/models").await;
    let triage = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["alias"] == "triage");
    assert_eq!(triage, before["models"].as_array().unwrap().first());
    let keys = app.admin_get("/admin/api/keys").await;
    for key in before["keys"].as_array().unwrap() {
        assert!(
            keys["data"].as_array().unwrap().contains(key),
            "key {}",
            key["id"]
        );
    }

    // A migrated conversation goes on: the follow-up of its last turn
    // threads onto it, with the client key of the old release.
    let (id, detail) = before["details"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(id, d)| d["turns"].as_array().unwrap().len() == 2 && !id.starts_with("ticket-"))
        .expect("a two-turn conversation in the fixture");
    let last = &detail["turns"][1];
    let mut messages = last["request"]["messages"].as_array().unwrap().clone();
    messages.push(last["response"]["message"].clone());
    messages.push(json!({"role": "user", "content": "And the next step?"}));
    let client_key = before["client_key"].as_str().unwrap();
    let follow_up = app
        .send(
            Method::POST,
            "/v1/chat/completions",
            client_key,
            Some(&json!({"model": "triage", "messages": messages})),
        )
        .await;
    assert_eq!(follow_up.status(), 200);
    assert_eq!(
        follow_up.headers()["x-flywheel-conversation-id"],
        id.as_str()
    );
    // Feedback by a migrated inference's completion id.
    let completion = last["completion_id"].as_str().unwrap();
    let rated = app
        .send(
            Method::POST,
            "/v1/feedback",
            before["analyst_key"].as_str().unwrap(),
            Some(&json!({"completion_id": completion, "rating": 5})),
        )
        .await;
    assert_eq!(rated.status(), 201);
    let rated: Value = rated.json().await.unwrap();
    assert_eq!(rated["inference_id"], last["inference_id"]);

    // New turns are stored beside the old records (grouped, from layout
    // 3 on), and both read back.
    for n in 0..12 {
        let sent = app
            .send(
                Method::POST,
                "/v1/chat/completions",
                client_key,
                Some(&json!({"model": "triage", "messages": [
                    {"role": "user", "content": format!("Alert {n} after the upgrade")}]})),
            )
            .await;
        assert_eq!(sent.status(), 200);
    }
    let detail = eventually(
        "the follow-up to be stored",
        Duration::from_secs(10),
        || async {
            let now = app
                .admin_get(&format!("/admin/api/conversations/{id}"))
                .await;
            (now["turns"].as_array().map(Vec::len) == Some(3)).then_some(now)
        },
    )
    .await;
    for turn in 0..2 {
        assert_eq!(
            detail["turns"][turn]["request"], before["details"][id]["turns"][turn]["request"],
            "turn {turn} of {id}"
        );
    }
    let listed = eventually(
        "the new conversations to be listed",
        Duration::from_secs(10),
        || async {
            let listed = app.admin_get("/admin/api/conversations?limit=500").await;
            let total = listed["data"].as_array().map_or(0, Vec::len);
            (total == before["conversations"].as_array().unwrap().len() + 12).then_some(listed)
        },
    )
    .await;
    for conversation in listed["data"].as_array().unwrap() {
        let id = conversation["id"].as_str().unwrap();
        let detail = app
            .admin_get(&format!("/admin/api/conversations/{id}"))
            .await;
        assert!(
            !detail["turns"].as_array().unwrap().is_empty(),
            "conversation {id} reads with its turns"
        );
    }
    drop(dir);
}
