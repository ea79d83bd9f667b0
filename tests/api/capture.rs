//! Every exchange through the proxy lands in the store as an inference
//! record — streamed or not, failed, partial or cancelled — unless the
//! client or the config says not to.

use crate::helpers::*;
use flywheel::store::InferenceRecord;
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

/// The record of inference `id` once capture has written it (the writer
/// stores a batch every `capture.flush_every_ms`). Nothing may be in
/// flight either: a record is readable as its batch commits, the lookups
/// by completion id a moment later, and the writer is done with a batch
/// only once both are.
async fn stored(app: &TestApp, id: &str) -> InferenceRecord {
    let in_flight = app.state.exchanges.in_flight();
    eventually(
        &format!("inference {id} to be captured"),
        Duration::from_secs(30),
        || async {
            if in_flight.count() > 0 {
                return None;
            }
            app.state.store.inference(id).unwrap()
        },
    )
    .await
}

/// Inference `id` was not stored, for good: capture has taken every
/// exchange answered so far.
async fn never_stored(app: &TestApp, id: &str) {
    app.capture_settled().await;
    assert!(
        app.state.store.inference(id).unwrap().is_none(),
        "{id} was stored"
    );
}

fn inference_id(response: &reqwest::Response) -> String {
    response.headers()["x-flywheel-inference-id"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn unary_and_streamed_answers_are_captured_with_their_metadata() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-flywheel-user", "analyst-7")
        .header("x-flywheel-tags", "team=soc, shift=night")
        .header("x-flywheel-conversation-id", "case-42")
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    let id = inference_id(&response);
    let body: serde_json::Value = response.json().await.unwrap();
    let r = stored(&app, &id).await;
    assert_eq!(
        (r.status.as_str(), r.alias.as_deref(), r.version.as_deref()),
        ("ok", Some("triage"), Some("base"))
    );
    assert_eq!(r.provider_model, "gpt-4o-mini");
    assert_eq!(r.user.as_deref(), Some("analyst-7"));
    assert_eq!(r.tags["shift"], "night");
    assert_eq!(r.conversation_id, "case-42");
    assert_eq!(r.request["messages"][1]["role"], "user");
    assert_eq!(
        r.response["choices"][0]["message"]["content"],
        body["choices"][0]["message"]["content"]
    );
    assert_eq!(r.completion_id.as_deref(), body["id"].as_str());
    let by_completion = app
        .state
        .store
        .inference_by_completion(body["id"].as_str().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(by_completion.id, id);

    let mut request = triage_request(true);
    request["stream_options"] = json!({"include_usage": true});
    let response = app.post("/v1/chat/completions", &request).await;
    let id = inference_id(&response);
    response.text().await.unwrap();
    let r = stored(&app, &id).await;
    assert!(r.streamed);
    assert_eq!(
        r.response["choices"][0]["message"]["content"],
        body["choices"][0]["message"]["content"]
    );
    assert_eq!(r.response["choices"][0]["finish_reason"], "stop");
    assert!(r.response["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(r.request["params"]["stream"], true);
}

#[tokio::test]
async fn failed_partial_and_cancelled_exchanges_are_captured_too() {
    let app = spawn_app().await;
    let mut broken = triage_request(false);
    broken["model"] = "broken".into();
    let response = app.post("/v1/chat/completions", &broken).await;
    assert_eq!(response.status(), 502);
    let id = inference_id(&response);
    let r = stored(&app, &id).await;
    assert_eq!((r.status.as_str(), r.http_status), ("upstream_error", 502));
    assert_eq!(r.response["error"]["code"], "upstream_unreachable");

    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-drop-after", "3")
        .header("x-sim-token-delay-ms", "20")
        .json(&triage_request(true))
        .send()
        .await
        .unwrap();
    let id = inference_id(&response);
    response.text().await.unwrap();
    let r = stored(&app, &id).await;
    assert_eq!(r.status, "partial");
    assert!(
        !r.response["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-sim-token-delay-ms", "100")
        .json(&triage_request(true))
        .send()
        .await
        .unwrap();
    let id = inference_id(&response);
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let r = stored(&app, &id).await;
    assert_eq!(r.status, "client_cancelled");
}

#[tokio::test]
async fn no_capture_header_and_config_keep_exchanges_out_of_the_store() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .header("x-flywheel-no-capture", "1")
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    let skipped = inference_id(&response);
    let response = app
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    let kept = inference_id(&response);
    stored(&app, &kept).await;
    // `kept` being stored proves nothing about `skipped`: the two
    // exchanges reach capture each on its own (the first one's body is
    // never even read).
    never_stored(&app, &skipped).await;

    let app = spawn_app_with(Options {
        extra: "[capture]\nenabled = false".into(),
        ..Options::default()
    })
    .await;
    let response = app
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    never_stored(&app, &inference_id(&response)).await;
}

/// An exchange capture leaves alone still counts its tokens: as it
/// completes, from the usage its answer reports, without waiting in the
/// capture queue (where a saturated proxy's writer could drop it).
#[tokio::test]
async fn an_uncaptured_answer_counts_its_reported_tokens_as_it_completes() {
    let app = spawn_app_with(Options {
        extra: "[capture]\nenabled = false".into(),
        ..Options::default()
    })
    .await;
    let mut reported = [0.0, 0.0];
    for _ in 0..3 {
        let response = app
            .post("/v1/chat/completions", &triage_request(false))
            .await;
        let answer: serde_json::Value = response.json().await.unwrap();
        for (sum, kind) in reported
            .iter_mut()
            .zip(["prompt_tokens", "completion_tokens"])
        {
            *sum += answer["usage"][kind].as_f64().unwrap();
        }
    }
    assert!(reported.iter().all(|n| *n > 0.0), "{reported:?}");
    // Read at once: no writer had to get round to these exchanges.
    for (kind, sum) in ["prompt", "completion"].into_iter().zip(reported) {
        let labels = [("alias", "triage"), ("version", "base"), ("kind", kind)];
        let counted = app.metric_where("flywheel_tokens_total", &labels).await;
        assert_eq!(counted, sum, "{kind} tokens");
    }
    assert_eq!(app.metric("flywheel_exchange_dropped_total").await, 0.0);
}

/// The bytes waiting for capture are bounded, not only their count: an
/// exchange that would pass `capture.queue_max_bytes` is answered as any
/// other, then dropped before capture and counted; a smaller one after it
/// is stored.
#[tokio::test]
async fn an_exchange_too_large_for_the_capture_queue_is_answered_and_not_stored() {
    // The smallest budget allowed, as large as the tests'
    // `server.max_body_bytes`: a request of 65,200 bytes fits, with its
    // answer not.
    let app = spawn_app_with(Options {
        extra: "[capture]\nqueue_max_bytes = 65536".into(),
        ..Options::default()
    })
    .await;
    let envelope = json!({"model": "triage", "messages": [{"role": "user", "content": ""}]});
    let evidence = "x".repeat(65_200 - envelope.to_string().len());
    let large = json!({"model": "triage", "messages": [{"role": "user", "content": evidence}]});
    assert_eq!(large.to_string().len(), 65_200);
    let response = app.post("/v1/chat/completions", &large).await;
    assert_eq!(response.status(), 200);
    let dropped = inference_id(&response);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(answer["choices"][0]["message"]["content"].is_string());
    let response = app
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    stored(&app, &inference_id(&response)).await;
    never_stored(&app, &dropped).await;
    assert_eq!(app.metric("flywheel_exchange_dropped_total").await, 1.0);
}

/// The writer stores a batch as soon as one waits, not at its next tick:
/// with a tick of ten minutes and a queue of 64 (a sixteenth of it, 4
/// exchanges, is a batch), four exchanges are stored at once.
#[tokio::test]
async fn a_full_batch_is_stored_without_waiting_for_the_writers_tick() {
    let app = spawn_app_with(Options {
        extra: "[capture]\nflush_every_ms = 600000\nqueue_capacity = 64".into(),
        ..Options::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let response = app
            .post("/v1/chat/completions", &triage_request(false))
            .await;
        assert_eq!(response.status(), 200);
        ids.push(inference_id(&response));
    }
    for id in &ids {
        stored(&app, id).await;
    }
}

/// An upstream whose answers are about 100 KB: a unary answer whose
/// content is that long, or a stream of 1,000 chunks of 100 characters.
async fn long_winded_upstream() -> std::net::SocketAddr {
    async fn answer(axum::Json(body): axum::Json<serde_json::Value>) -> axum::response::Response {
        use axum::response::IntoResponse;
        let words = "lateral movement seen on WS-7 by a service account; ".repeat(2_000);
        if body["stream"] != true {
            return axum::Json(json!({"id": "chatcmpl-long", "object": "chat.completion", "created": 1,
                "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": words},
                "finish_reason": "stop"}]}))
            .into_response();
        }
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-long", "object": "chat.completion.chunk",
                "created": 1, "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let mut events = chunk(json!({"role": "assistant", "content": ""}), None);
        for _ in 0..1_000 {
            events.push_str(&chunk(json!({"content": "x".repeat(100)}), None));
        }
        events.push_str(&chunk(json!({}), Some("stop")));
        events.push_str("data: [DONE]\n\n");
        ([("content-type", "text/event-stream")], events).into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer));
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// What Flywheel holds of one answer is bounded by the provider's
/// `max_answer_bytes`: a unary answer past it is a 502 naming the key; a
/// stream past it still reaches the client whole, and capture keeps its
/// beginning, as `partial` (so no dataset trains on it uncorrected).
#[tokio::test]
async fn an_answer_past_the_providers_limit_is_refused_or_captured_in_part() {
    let app = spawn_app_with(Options {
        upstream: Some(long_winded_upstream().await),
        provider_extra: "max_answer_bytes = 65536".into(),
        ..Options::default()
    })
    .await;
    let response = app
        .post("/v1/chat/completions", &triage_request(false))
        .await;
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_invalid_response");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("max_answer_bytes (65536 bytes)"),
        "{message}"
    );

    let response = app
        .post("/v1/chat/completions", &triage_request(true))
        .await;
    assert_eq!(response.status(), 200);
    let id = inference_id(&response);
    let events = response.text().await.unwrap();
    assert!(events.len() > 100_000 && events.ends_with("data: [DONE]\n\n"));
    let r = stored(&app, &id).await;
    assert_eq!(r.status, "partial");
    let kept = r.response["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .len();
    // The first 65,536 bytes of events, each about 250 bytes for its 100
    // characters: some 25,000 characters kept of the 100,000 relayed.
    assert!((20_000..30_000).contains(&kept), "{kept} characters kept");
    assert_eq!(app.metric("flywheel_capture_incomplete_total").await, 1.0);
}

#[tokio::test]
async fn credentials_are_redacted_before_storage_and_indicators_kept() {
    let app = spawn_app().await;
    let alert = "Endpoint alert: powershell ran with -Password=Winter2025! and key AKIAIOSFODNN7EXAMPLE, beaconing to 185.220.101.47 (sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855)";
    let request = json!({"model": "triage", "messages": [{"role": "user", "content": alert}]});
    let response = app.post("/v1/chat/completions", &request).await;
    let id = inference_id(&response);
    response.text().await.unwrap();
    let r = stored(&app, &id).await;
    let text = r.request["messages"][0]["content"].as_str().unwrap();
    assert!(
        !text.contains("AKIAIOSFODNN7EXAMPLE") && !text.contains("Winter2025!"),
        "{text}"
    );
    assert!(
        text.contains("[REDACTED:aws_access_key]") && text.contains("[REDACTED:password]"),
        "{text}"
    );
    assert!(
        text.contains("185.220.101.47")
            && text.contains("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("flywheel_redactions_total{kind=\"aws_access_key\"}"),
        "{metrics}"
    );
}

#[test]
fn a_bad_custom_redaction_pattern_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        extra: "[capture]\nredact = [\"credentials\", \"(unclosed\"]".into(),
        ..Options::default()
    };
    let toml = config_toml("127.0.0.1:9".parse().unwrap(), dir.path(), &options);
    let error = flywheel::config::Config::from_toml_str(&toml, "test", Vec::new())
        .unwrap_err()
        .to_string();
    assert!(error.contains("capture.redact[1]"), "{error}");
}

/// One turn of a client that resends the whole history; returns the
/// conversation header, the inference id and the answer.
async fn turn(app: &TestApp, messages: &serde_json::Value) -> (String, String, String) {
    let response = app
        .post(
            "/v1/chat/completions",
            &json!({"model": "triage", "messages": messages}),
        )
        .await;
    let conversation = response.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let id = inference_id(&response);
    let body: serde_json::Value = response.json().await.unwrap();
    stored(app, &id).await;
    let answer = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    (conversation, id, answer)
}

#[tokio::test]
async fn an_unchanged_client_gets_one_conversation_and_a_regenerated_turn_branches() {
    let app = spawn_app().await;
    let mut messages = json!([
        {"role": "system", "content": "You are a SOC analyst."},
        {"role": "user", "content": "Endpoint alert: whoami /all and net group \"domain admins\" on WS-7"}
    ]);
    let (first, id1, answer1) = turn(&app, &messages).await;
    let history = messages.as_array_mut().unwrap();
    history.push(json!({"role": "assistant", "content": answer1}));
    history.push(json!({"role": "user", "content": "Then psexec to DC01 from WS-7. Related?"}));
    let (second, id2, answer2) = turn(&app, &messages).await;
    assert_eq!(second, first, "turn 2 continues the conversation");
    let history = messages.as_array_mut().unwrap();
    history.push(json!({"role": "assistant", "content": answer2}));
    history.push(json!({"role": "user", "content": [{"type": "text", "text": "Severity now?"}]}));
    let (third, id3, _) = turn(&app, &messages).await;
    assert_eq!(third, first);
    let conversation = app.state.store.conversation(&first).unwrap().unwrap();
    assert_eq!(conversation.inference_ids, [id1, id2, id3]);
    assert_eq!(conversation.parent_id, None);

    // Regenerating the last answer resends the same history: a branch.
    let (branch, id4, _) = turn(&app, &messages).await;
    assert_ne!(branch, first);
    let branched = app.state.store.conversation(&branch).unwrap().unwrap();
    assert_eq!(branched.parent_id.as_deref(), Some(first.as_str()));
    assert_eq!(branched.inference_ids, [id4]);

    // An unrelated first turn starts its own conversation.
    let (other, _, _) = turn(
        &app,
        &json!([{"role": "user", "content": "Endpoint alert: rclone to mega.nz"}]),
    )
    .await;
    assert!(other != first && other != branch);
    assert!(
        app.state
            .store
            .conversation(&other)
            .unwrap()
            .unwrap()
            .parent_id
            .is_none()
    );
}

/// 200 clients, each holding a three-turn streamed conversation and rating
/// every answer, then an analyst labelling it: everything captured, each
/// conversation threaded in order, and the stats equal to a count kept here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streamed_conversations_are_captured_and_threaded() {
    let app = std::sync::Arc::new(spawn_app().await);
    let mut clients = Vec::new();
    for c in 0..200 {
        let app = app.clone();
        clients.push(tokio::spawn(async move {
            let mut messages = json!([{"role": "user", "content": format!("Endpoint alert #{c}: psexec from WS-{c} to DC01")}]);
            let (mut conversations, mut ids) = (Vec::new(), Vec::new());
            for t in 0..3 {
                let request = json!({"model": "triage", "stream": true, "stream_options": {"include_usage": true}, "messages": messages});
                let response = app.post("/v1/chat/completions", &request).await;
                conversations.push(response.headers()["x-flywheel-conversation-id"].to_str().unwrap().to_string());
                let id = inference_id(&response);
                let body = response.text().await.unwrap();
                let answer: String = sse_data(&body)
                    .iter()
                    .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
                    .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(String::from))
                    .collect();
                let rated = app.send(Method::POST, "/v1/feedback", &app.client_key, Some(&json!({"inference_id": id, "rating": 1 + (c + t) % 5}))).await;
                assert_eq!(rated.status(), 201);
                ids.push(id);
                let history = messages.as_array_mut().unwrap();
                history.push(json!({"role": "assistant", "content": answer}));
                history.push(json!({"role": "user", "content": format!("Follow-up {t} on alert #{c}")}));
            }
            // The analyst's verdict, on the last turn.
            let verdict = analyst_verdict(&app, c);
            let labelled = app.send(Method::POST, "/v1/feedback", &app.analyst_key, Some(&json!({"inference_id": ids[2], "threat_type": verdict.0, "quality_score": verdict.1, "approved_for_training": verdict.2}))).await;
            assert_eq!(labelled.status(), 201);
            (conversations, ids)
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for client in clients {
        let (conversations, ids) = client.await.unwrap();
        assert!(
            conversations.iter().all(|c| *c == conversations[0]),
            "one conversation per client: {conversations:?}"
        );
        assert!(
            seen.insert(conversations[0].clone()),
            "conversations are not shared between clients"
        );
        let stored = app
            .state
            .store
            .conversation(&conversations[0])
            .unwrap()
            .unwrap();
        assert_eq!(stored.inference_ids, ids, "turns in order");
        for (t, id) in ids.iter().enumerate() {
            let r = app.state.store.inference(id).unwrap().expect("captured");
            assert!(r.streamed && r.status == "ok");
            let given = if t == 2 { 2 } else { 1 };
            assert_eq!(app.state.store.feedback_for(id).unwrap().len(), given);
        }
    }
    assert_eq!(seen.len(), 200);

    // An independent count of what the clients and the analyst sent.
    let ratings: Vec<usize> = (0..200)
        .flat_map(|c| (0..3).map(move |t| 1 + (c + t) % 5))
        .collect();
    let verdicts: Vec<_> = (0..200).map(|c| analyst_verdict(&app, c)).collect();
    let approved = verdicts.iter().filter(|v| v.2 == Some(true)).count();
    let rejected = verdicts.iter().filter(|v| v.2 == Some(false)).count();
    let quality: Vec<usize> = verdicts.iter().map(|v| v.1).collect();
    let mut by_type = std::collections::BTreeMap::<String, usize>::new();
    for v in &verdicts {
        *by_type.entry(v.0.clone()).or_default() += 1;
    }
    let stats: serde_json::Value = app
        .send(Method::GET, "/admin/api/stats", &app.analyst_key, None)
        .await
        .json()
        .await
        .unwrap();
    let mean = |xs: &[usize]| xs.iter().sum::<usize>() as f64 / xs.len() as f64;
    let close = |key: &str, want: f64| {
        let got = stats[key].as_f64().unwrap_or(f64::NAN);
        assert!((got - want).abs() < 1e-9, "{key}: {got} != {want}");
    };
    assert_eq!(stats["conversations_total"], 200);
    assert_eq!(stats["turns_total"], 600);
    assert_eq!(stats["approved"], approved);
    assert_eq!(stats["rejected"], rejected);
    assert_eq!(stats["pending"], 200 - approved - rejected);
    assert_eq!(
        stats["high_quality"],
        quality.iter().filter(|q| **q >= 4).count()
    );
    assert_eq!(stats["by_threat_type"], json!(by_type));
    close("mean_rating", mean(&ratings));
    close("avg_quality_score", mean(&quality));
    close(
        "approval_rate",
        approved as f64 / (approved + rejected) as f64,
    );
    close("feedback_share", 1.0);
    close("fine_tuned_traffic_share", 0.0);
}

/// Threat type, quality score and approval the analyst gives client `c`.
fn analyst_verdict(app: &TestApp, c: usize) -> (String, usize, Option<bool>) {
    let types = &app.state.config.taxonomy.threat_types;
    let approval = [Some(true), Some(false), None][c % 3];
    (types[c % types.len()].clone(), 1 + c % 5, approval)
}

/// A streamed answer, then the next turn sent the moment `[DONE]` is read,
/// fifty times: every follow-up continues its conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_sent_as_soon_as_a_stream_ends_stays_in_its_conversation() {
    let app = spawn_app().await;
    for i in 0..50 {
        let mut messages =
            json!([{"role": "user", "content": format!("Alert {i}: wmic shadowcopy delete")}]);
        let first = app
            .post(
                "/v1/chat/completions",
                &json!({"model": "triage", "stream": true, "messages": messages}),
            )
            .await;
        let conversation = first.headers()["x-flywheel-conversation-id"].clone();
        let body = first.text().await.unwrap();
        let answer: String = sse_data(&body)
            .iter()
            .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        let history = messages.as_array_mut().unwrap();
        history.push(json!({"role": "assistant", "content": answer}));
        history.push(json!({"role": "user", "content": "Contain it?"}));
        let second = app
            .post(
                "/v1/chat/completions",
                &json!({"model": "triage", "messages": messages}),
            )
            .await;
        assert_eq!(
            second.headers()["x-flywheel-conversation-id"],
            conversation,
            "turn {i}"
        );
    }
}
