//! The admin review API: listing with filters and cursors, a conversation
//! with its turns, review edits, bulk approval, hard delete, the stats,
//! roles and the audit trail, all over HTTP on conversations captured
//! through the proxy.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// Six single-turn conversations, alerts #0..#5; even ones by `ana`, odd
/// ones by `bob`. Returns their ids, oldest first, once all are listed.
async fn six_conversations(app: &TestApp) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..6 {
        let user = if n % 2 == 0 { "ana" } else { "bob" };
        let response = app
            .http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.client_key)
            .header("x-flywheel-user", user)
            .json(&json!({"model": "triage", "messages": [{"role": "user", "content": format!("Endpoint alert #{n}: certutil -urlcache on WS-{n}")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        ids.push(
            response.headers()["x-flywheel-conversation-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        // Creation times are kept to the second; distinct seconds make
        // "newest first" a single order to check.
        if n < 5 {
            tokio::time::sleep(Duration::from_millis(1010)).await;
        }
    }
    eventually(
        "the six conversations listed",
        Duration::from_secs(30),
        || async {
            let listed = list(app, "").await["data"].as_array().unwrap().len();
            (listed == 6)
                .then_some(())
                .ok_or(format!("{listed} listed"))
        },
    )
    .await;
    ids
}

async fn list(app: &TestApp, query: &str) -> Value {
    let response = app
        .send(
            Method::GET,
            &format!("/admin/api/conversations?{query}"),
            &app.analyst_key,
            None,
        )
        .await;
    assert_eq!(response.status(), 200, "{query}");
    response.json().await.unwrap()
}

fn ids_of(page: &Value) -> Vec<&str> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn analysts_find_review_and_approve_conversations() {
    let app = spawn_app().await;
    let ids = six_conversations(&app).await;
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();

    let all = list(&app, "").await;
    assert_eq!(ids_of(&all), newest_first);
    let first = &all["data"][5];
    assert_eq!(first["status"], "pending");
    assert_eq!(first["alias"], "triage");
    assert_eq!(first["versions"], json!(["base"]));
    assert_eq!(first["user"], "ana");
    assert_eq!(first["turns"], 1);
    assert!(
        first["preview"]
            .as_str()
            .unwrap()
            .starts_with("Endpoint alert #0")
    );

    // Pages of two, followed by cursor, give the same order.
    let mut paged = Vec::new();
    let mut query = "limit=2".to_string();
    loop {
        let page = list(&app, &query).await;
        paged.extend(ids_of(&page).into_iter().map(String::from));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                assert_eq!(page["has_more"], true);
                query = format!("limit=2&cursor={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(paged, newest_first);

    // Review one conversation.
    let target = &ids[2];
    let patched = app.send(Method::PATCH, &format!("/admin/api/conversations/{target}"), &app.analyst_key, Some(&json!({"threat_type": "command_and_control", "severity": "high", "quality_score": 5, "notes": "certutil download", "correction": "Threat type: command_and_control", "status": "approved"}))).await;
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["status"], "approved");
    assert_eq!(patched["notes"], "certutil download");
    assert_eq!(
        patched["turns"][0]["request"]["messages"][0]["role"],
        "user"
    );
    assert!(patched["turns"][0]["response"]["message"]["content"].is_string());
    assert_eq!(patched["turns"][0]["version"], "base");

    // Filters, alone and together.
    for (query, expected) in [
        ("status=approved", vec![target.as_str()]),
        (
            "threat_type=command_and_control&severity=high",
            vec![target],
        ),
        ("min_quality=4", vec![target]),
        ("user=bob", vec![&ids[5], &ids[3], &ids[1]]),
        ("user=ana&status=pending", vec![&ids[4], &ids[0]]),
        ("q=ALERT%20%233", vec![&ids[3]]),
        ("q=certutil%20download", vec![target]),
        ("alias=triage&version=base&limit=500", newest_first.clone()),
        ("version=large", vec![]),
        ("since=2999-01-01", vec![]),
        ("until=2000-01-01T00:00:00Z", vec![]),
        ("since=2000-01-01&until=2999-01-01", newest_first.clone()),
    ] {
        assert_eq!(ids_of(&list(&app, query).await), expected, "{query}");
    }

    // Detail of a conversation: every turn with its feedback.
    let feedback = app.send(Method::POST, "/v1/feedback", &app.client_key, Some(&json!({"inference_id": patched["turns"][0]["inference_id"], "rating": 2, "thumbs": "down"}))).await;
    assert_eq!(feedback.status(), 201);
    let detail: Value = app
        .send(
            Method::GET,
            &format!("/admin/api/conversations/{target}"),
            &app.analyst_key,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["turns"][0]["feedback"][0]["rating"], 2);
    assert_eq!(detail["mean_rating"], 2.0);
    assert_eq!(detail["thumbs"], json!({"up": 0, "down": 1}));

    // Bulk approval, with an id that does not exist.
    let bulk = app
        .send(
            Method::POST,
            "/admin/api/conversations/bulk",
            &app.analyst_key,
            Some(&json!({"ids": [ids[0], ids[1], "conv_missing"], "action": "approve"})),
        )
        .await;
    assert_eq!(bulk.status(), 200);
    let bulk: Value = bulk.json().await.unwrap();
    assert_eq!(bulk["updated"], 2);
    assert_eq!(bulk["missing"], json!(["conv_missing"]));

    let stats: Value = app
        .send(Method::GET, "/admin/api/stats", &app.analyst_key, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["conversations_total"], 6);
    assert_eq!(
        (stats["approved"].as_i64(), stats["pending"].as_i64()),
        (Some(3), Some(3))
    );
    assert_eq!(stats["high_quality"], 1);
    assert_eq!(stats["approval_rate"], 1.0);
    assert_eq!(stats["mean_rating"], 2.0);
    assert_eq!(stats["by_threat_type"], json!({"command_and_control": 1}));
    assert_eq!(stats["taxonomy_coverage"]["covered"], 1);

    // Hard delete: admins only; the inferences and feedback go with it.
    let path = format!("/admin/api/conversations/{target}");
    let by_analyst = app
        .send(Method::DELETE, &path, &app.analyst_key, Some(&json!({})))
        .await;
    assert_eq!(error_of(by_analyst).await.0, 403);
    let deleted = app
        .send(Method::DELETE, &path, ADMIN_TOKEN, Some(&json!({})))
        .await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        error_of(app.send(Method::GET, &path, &app.analyst_key, None).await)
            .await
            .0,
        404
    );
    let inference_id = patched["turns"][0]["inference_id"].as_str().unwrap();
    assert!(app.state.store.inference(inference_id).unwrap().is_none());
    assert!(
        app.state
            .store
            .feedback_for(inference_id)
            .unwrap()
            .is_empty()
    );
    let stats: Value = app
        .send(Method::GET, "/admin/api/stats", &app.analyst_key, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            stats["conversations_total"].as_i64(),
            stats["approved"].as_i64()
        ),
        (Some(5), Some(2))
    );
    assert_eq!(stats["mean_rating"], Value::Null);

    // Every write is in the audit log, with who did it.
    let audit: Value = app
        .send(Method::GET, "/admin/api/audit", &app.analyst_key, None)
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<(&str, &str)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions[..3],
        [
            ("conversation.delete", target.as_str()),
            ("conversation.bulk", "conversations"),
            ("conversation.update", target.as_str())
        ]
    );
    assert_eq!(audit["data"][0]["actor"], "admin-token");
    assert_eq!(audit["data"][1]["actor"], audit["data"][2]["actor"]);

    // Client keys do not reach the admin API.
    let as_client = app
        .send(
            Method::GET,
            "/admin/api/conversations",
            &app.client_key,
            None,
        )
        .await;
    assert_eq!(error_of(as_client).await.0, 403);
}

#[tokio::test]
async fn bad_review_input_gets_a_clear_error_and_changes_nothing() {
    let app = spawn_app().await;
    let response = app
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    let conversation = response.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    eventually(
        &format!("conversation {conversation} to be captured"),
        Duration::from_secs(30),
        || async { app.state.store.conversation(&conversation).unwrap() },
    )
    .await;
    let path = format!("/admin/api/conversations/{conversation}");
    for (body, param) in [
        (
            json!({"threat_type": "alien_invasion"}),
            Some("threat_type"),
        ),
        (json!({"severity": "apocalyptic"}), Some("severity")),
        (json!({"quality_score": 9}), Some("quality_score")),
        (json!({"notes": "x".repeat(4_001)}), Some("notes")),
        (json!({"status": "maybe"}), Some("status")),
        (json!({"labels": ["x"]}), None),
        (json!({}), None),
    ] {
        let response = app
            .send(Method::PATCH, &path, &app.analyst_key, Some(&body))
            .await;
        let (status, error) = error_of(response).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error["type"], "invalid_request_error");
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{body}");
        }
    }
    let stored = app
        .state
        .store
        .conversation(&conversation)
        .unwrap()
        .unwrap();
    assert_eq!(stored.review, Default::default(), "nothing changed");

    for query in [
        "status=maybe",
        "limit=0",
        "limit=501",
        "cursor=zz",
        "since=yesterday",
        "min_quality=high",
        "colour=red",
    ] {
        let response = app
            .send(
                Method::GET,
                &format!("/admin/api/conversations?{query}"),
                &app.analyst_key,
                None,
            )
            .await;
        let (status, error) = error_of(response).await;
        assert_eq!(status, 400, "{query}: {error}");
    }
    let (status, error) = error_of(
        app.send(
            Method::GET,
            "/admin/api/conversations?since=yesterday",
            &app.analyst_key,
            None,
        )
        .await,
    )
    .await;
    assert_eq!((status, error["param"].as_str()), (400, Some("since")));

    let missing = app
        .send(
            Method::PATCH,
            "/admin/api/conversations/conv_nope",
            &app.analyst_key,
            Some(&json!({"status": "approved"})),
        )
        .await;
    assert_eq!(error_of(missing).await.0, 404);
    for body in [
        json!({"ids": [], "action": "approve"}),
        json!({"ids": [conversation], "action": "delete"}),
    ] {
        let response = app
            .send(
                Method::POST,
                "/admin/api/conversations/bulk",
                &app.analyst_key,
                Some(&body),
            )
            .await;
        assert_eq!(error_of(response).await.0, 400, "{body}");
    }
    let stats: Value = app
        .send(Method::GET, "/admin/api/stats", &app.analyst_key, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (stats["pending"].as_i64(), stats["approved"].as_i64()),
        (Some(1), Some(0))
    );
    assert_eq!(stats["avg_quality_score"], Value::Null);
}
