//! `POST /v1/responses` through the proxy: the alias routed (split and
//! sticky), unary and streamed answers relayed and captured as chat
//! turns, `previous_response_id` chains, conversation objects and resent
//! histories (a tool loop) threaded, feedback by response id,
//! and a provider without the route named in a clear error.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const ALERT: &str =
    "Endpoint alert: LSASS memory dumped by rundll32.exe via comsvcs.dll MiniDump on host WS-042.";

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers()[name].to_str().unwrap().to_string()
}

/// The `event:` names and `data:` payloads of a Responses stream.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut lines = event.lines();
            let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
            let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
            (name.to_string(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a_unary_response_is_routed_by_alias_and_captured_as_a_chat_turn() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/v1/responses",
            &json!({"model": "triage", "instructions": "You are a SOC analyst.", "input": ALERT}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-flywheel-variant"), "base");
    let conversation = header(&response, "x-flywheel-conversation-id");
    let inference = header(&response, "x-flywheel-inference-id");
    let body: Value = response.json().await.unwrap();
    // The alias was resolved: the provider saw the version's model.
    assert_eq!(body["model"], "gpt-4o-mini");
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("resp_"), "{id}");
    let text = body["output"][0]["content"][0]["text"].as_str().unwrap();

    let detail = app.stored_turns(&conversation, 1).await;
    let turn = &detail["turns"][0];
    assert_eq!(turn["inference_id"], inference.as_str());
    assert_eq!(
        turn["request"]["messages"],
        json!([{"role": "system", "content": "You are a SOC analyst."},
            {"role": "user", "content": ALERT}])
    );
    assert_eq!(turn["response"]["choices"][0]["message"]["content"], text);
    assert_eq!(
        turn["response"]["usage"]["prompt_tokens"],
        body["usage"]["input_tokens"]
    );
    assert_eq!(
        turn["response"]["usage"]["completion_tokens"],
        body["usage"]["output_tokens"]
    );
    let stored = app.state.store.inference_by_completion(id).unwrap();
    assert_eq!(stored.map(|r| r.id), Some(inference));
}

#[tokio::test]
async fn a_streamed_response_is_relayed_event_by_event_and_captured() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/v1/responses",
            &json!({"model": "triage", "stream": true,
                "input": [{"role": "user", "content": [{"type": "input_text", "text": ALERT}]}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let conversation = header(&response, "x-flywheel-conversation-id");
    let events = events(&response.text().await.unwrap());
    assert_eq!(events[0].0, "response.created");
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    let text: String = events
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .map(|(_, data)| data["delta"].as_str().unwrap())
        .collect();
    assert!(!text.is_empty());

    let detail = app.stored_turns(&conversation, 1).await;
    let turn = &detail["turns"][0];
    assert_eq!(turn["streamed"], true);
    assert_eq!(turn["request"]["messages"][0]["content"], ALERT);
    assert_eq!(turn["response"]["choices"][0]["message"]["content"], text);
    assert_eq!(
        turn["response"]["usage"]["completion_tokens"],
        done["response"]["usage"]["output_tokens"]
    );
}

#[tokio::test]
async fn a_previous_response_id_chain_is_one_conversation_and_takes_feedback_by_response_id() {
    let app = spawn_app().await;
    let first = app
        .post("/v1/responses", &json!({"model": "triage", "input": ALERT}))
        .await;
    let conversation = header(&first, "x-flywheel-conversation-id");
    let first: Value = first.json().await.unwrap();
    let follow_up = app
        .post(
            "/v1/responses",
            &json!({"model": "triage", "stream": true, "previous_response_id": first["id"],
                "input": "Is the host isolated already?"}),
        )
        .await;
    assert_eq!(follow_up.status(), 200);
    assert_eq!(
        header(&follow_up, "x-flywheel-conversation-id"),
        conversation
    );
    let second = header(&follow_up, "x-flywheel-inference-id");
    let events = events(&follow_up.text().await.unwrap());
    let second_id = events[0].1["response"]["id"].as_str().unwrap().to_string();
    let detail = app.stored_turns(&conversation, 2).await;
    assert_eq!(detail["turns"].as_array().unwrap().len(), 2);

    let feedback = app
        .post(
            "/v1/feedback",
            &json!({"completion_id": second_id, "rating": 5, "thumbs": "up"}),
        )
        .await;
    assert_eq!(feedback.status(), 201);
    let stored = app.state.store.feedback_for(&second).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].rating, Some(5));
}

#[tokio::test]
async fn a_conversation_objects_turns_are_one_conversation() {
    let app = spawn_app().await;
    let mut conversations = BTreeSet::new();
    for n in 0..3 {
        // The Conversations API passes through to the provider.
        let created = app.post("/v1/conversations", &json!({})).await;
        assert_eq!(created.status(), 200);
        let created: Value = created.json().await.unwrap();
        let object = created["id"].as_str().unwrap().to_string();
        assert!(object.starts_with("conv_"), "{created}");
        let turns = [
            json!({"model": "triage", "input": format!("{ALERT} (case {n})"), "conversation": object}),
            json!({"model": "triage", "input": "Is the host isolated already?", "stream": true,
                "conversation": {"id": object}}),
            json!({"model": "triage", "input": "Then isolate it.", "conversation": object}),
        ];
        let mut seen = Vec::new();
        for turn in &turns {
            let response = app.post("/v1/responses", turn).await;
            assert_eq!(response.status(), 200);
            seen.push(header(&response, "x-flywheel-conversation-id"));
            response.text().await.unwrap();
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
        let conversation = seen.swap_remove(0);
        assert!(
            conversations.insert(conversation.clone()),
            "a new conversation per object"
        );
        let detail = app.stored_turns(&conversation, 3).await;
        let turns = detail["turns"].as_array().unwrap();
        assert_eq!(turns.len(), 3);
        // Each turn keeps what it sent; the provider held the rest.
        assert_eq!(
            turns[1]["request"]["messages"],
            json!([{"role": "user", "content": "Is the host isolated already?"}])
        );
        assert_eq!(
            turns[1]["request"]["params"]["conversation"],
            json!({"id": object})
        );
    }
}

/// Items a conversation object was created with, or given later, are
/// what the model reads in front of the next turn's input: that turn is
/// stored with them there, so a dataset of the conversation holds the
/// alert and not only "Triage the alert above."
#[tokio::test]
async fn items_put_into_a_conversation_object_are_stored_with_its_next_turn() {
    let app = spawn_app().await;
    let item = |text: &str| json!({"type": "message", "role": "user", "content": text});
    let created = app
        .post("/v1/conversations", &json!({"items": [item(ALERT)]}))
        .await;
    assert_eq!(created.status(), 200);
    let created: Value = created.json().await.unwrap();
    let object = created["id"].as_str().unwrap().to_string();
    let first =
        json!({"model": "triage", "input": "Triage the alert above.", "conversation": object});
    let response = app.post("/v1/responses", &first).await;
    assert_eq!(response.status(), 200);
    let conversation = header(&response, "x-flywheel-conversation-id");
    response.text().await.unwrap();
    let note = "EDR: WS-1 was isolated at 10:02.";
    let added = app
        .post(
            &format!("/v1/conversations/{object}/items"),
            &json!({"items": [item(note)]}),
        )
        .await;
    assert_eq!(added.status(), 200);
    let added: Value = added.json().await.unwrap();
    assert_eq!(added["data"][0]["content"], note, "{added}");
    let second = json!({"model": "triage", "input": "Is the host isolated already?",
        "stream": true, "conversation": object});
    let response = app.post("/v1/responses", &second).await;
    assert_eq!(
        header(&response, "x-flywheel-conversation-id"),
        conversation
    );
    response.text().await.unwrap();
    let third = json!({"model": "triage", "input": "Close the case.", "conversation": object});
    app.post("/v1/responses", &third)
        .await
        .text()
        .await
        .unwrap();

    let detail = app.stored_turns(&conversation, 3).await;
    let stored = detail["turns"].as_array().unwrap();
    let messages = |turn: usize| stored[turn]["request"]["messages"].clone();
    let user = |text: &str| json!({"role": "user", "content": text});
    assert_eq!(
        messages(0),
        json!([user(ALERT), user("Triage the alert above.")])
    );
    assert_eq!(
        messages(1),
        json!([user(note), user("Is the host isolated already?")])
    );
    // Taken once: the third turn holds only what it sent.
    assert_eq!(messages(2), json!([user("Close the case.")]));
}

#[tokio::test]
async fn a_tool_loop_resending_its_history_is_one_conversation() {
    // The AI SDK's Responses tool loop sends no `previous_response_id`:
    // the second request carries the first's input, the call the model
    // made and the tool's output; a third, the whole exchange again; a
    // fourth names the third's answer by its item id.
    let app = spawn_app().await;
    let tools = json!([{"type": "function", "name": "lookup_host",
        "description": "Look up the owner and role of a host",
        "parameters": {"type": "object", "properties": {"hostname": {"type": "string"}},
            "required": ["hostname"]}}]);
    let question = json!({"role": "user", "content": format!("{ALERT} Look up the host first.")});
    let first = app
        .post(
            "/v1/responses",
            &json!({"model": "triage", "input": [question], "tools": tools, "tool_choice": "required"}),
        )
        .await;
    assert_eq!(first.status(), 200);
    let conversation = header(&first, "x-flywheel-conversation-id");
    let first: Value = first.json().await.unwrap();
    let call = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["type"] == "function_call")
        .unwrap_or_else(|| panic!("a function call: {first:#}"))
        .clone();
    let output = json!({"type": "function_call_output", "call_id": call["call_id"],
        "output": "{\"owner\":\"alice\",\"role\":\"workstation\"}"});
    let second = app
        .post(
            "/v1/responses",
            &json!({"model": "triage", "stream": true, "tools": tools,
                "input": [question, call, output]}),
        )
        .await;
    assert_eq!(second.status(), 200);
    assert_eq!(header(&second, "x-flywheel-conversation-id"), conversation);
    let answer = events(&second.text().await.unwrap())
        .into_iter()
        .find(|(name, _)| name == "response.completed")
        .map(|(_, data)| data["response"]["output"][0]["content"][0]["text"].clone())
        .unwrap();
    let third = app
        .post(
            "/v1/responses",
            &json!({"model": "triage", "tools": tools, "input": [question, call, output,
                {"role": "assistant", "content": [{"type": "output_text", "text": answer}]},
                {"role": "user", "content": "Is the host isolated already?"}]}),
        )
        .await;
    assert_eq!(third.status(), 200);
    assert_eq!(header(&third, "x-flywheel-conversation-id"), conversation);
    // A client that stores responses names the answer it got by its item
    // id instead of writing it out (the AI SDK with `store: true`).
    let third: Value = third.json().await.unwrap();
    let item = third["output"][0]["id"].clone();
    let fourth = app
        .post(
            "/v1/responses",
            &json!({"model": "triage", "input": [question, call, output,
                {"role": "assistant", "content": [{"type": "output_text", "text": answer}]},
                {"role": "user", "content": "Is the host isolated already?"},
                {"type": "item_reference", "id": item},
                {"role": "user", "content": "Then isolate it."}]}),
        )
        .await;
    assert_eq!(fourth.status(), 200);
    assert_eq!(header(&fourth, "x-flywheel-conversation-id"), conversation);
    let detail = app.stored_turns(&conversation, 4).await;
    let turns = detail["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 4);
    assert_eq!(
        turns[0]["response"]["message"]["tool_calls"][0]["function"]["name"],
        "lookup_host"
    );
    assert_eq!(turns[1]["response"]["message"]["content"], answer);
}

#[tokio::test]
async fn responses_follow_the_split_and_stay_with_their_user() {
    let app = spawn_app().await;
    let traffic = app
        .admin(
            Method::PUT,
            "/admin/api/models/triage/traffic",
            Some(&json!({"weights": {"base": 50, "large": 50}, "reason": "split"})),
        )
        .await;
    assert_eq!(traffic.status(), 200);
    let ask = |user: String| {
        let app = &app;
        async move {
            let response = app
                .post(
                    "/v1/responses",
                    &json!({"model": "triage", "input": ALERT, "user": user}),
                )
                .await;
            assert_eq!(response.status(), 200);
            let variant = header(&response, "x-flywheel-variant");
            let body: Value = response.json().await.unwrap();
            let expected = if variant == "large" {
                "gpt-4o"
            } else {
                "gpt-4o-mini"
            };
            assert_eq!(body["model"], expected);
            variant
        }
    };
    let mut seen = BTreeSet::new();
    for n in 0..40 {
        seen.insert(ask(format!("analyst-{n}")).await);
    }
    assert_eq!(seen.len(), 2, "both versions serve: {seen:?}");
    let sticky = ask("analyst-7".into()).await;
    for _ in 0..5 {
        assert_eq!(ask("analyst-7".into()).await, sticky);
    }
}

#[tokio::test]
async fn a_failing_candidate_falls_back_to_production_before_the_first_byte() {
    let app = spawn_app_with(Options {
        provider_extra: "max_retries = 0".into(),
        ..Options::default()
    })
    .await;
    let traffic = app
        .admin(
            Method::PUT,
            "/admin/api/models/triage/traffic",
            Some(&json!({"weights": {"base": 0, "large": 100}, "reason": "all on large"})),
        )
        .await;
    assert_eq!(traffic.status(), 200);
    let response = app
        .http
        .post(app.url("/v1/responses"))
        .bearer_auth(&app.client_key)
        .header("x-sim-fail-rate", "gpt-4o=1")
        .json(&json!({"model": "triage", "input": ALERT}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-flywheel-variant"), "base");
    let conversation = header(&response, "x-flywheel-conversation-id");
    let detail = app.stored_turns(&conversation, 1).await;
    assert_eq!(detail["turns"][0]["fallback_from"], "large");
    assert_eq!(detail["turns"][0]["version"], "base");
}

#[tokio::test]
async fn a_provider_without_the_responses_api_is_named_in_the_error() {
    let upstream = spawn_simulator(Options::default().simulator).await;
    let app = spawn_app_with(Options {
        upstream: Some(upstream),
        extra: format!(
            r#"
[[providers]]
name = "legacy"
base_url = "http://{upstream}/legacy/v1"
api_key_env = "SIM_KEY"
max_retries = 0

[[models]]
name = "old"
model_type = "threat_detection"
  [[models.versions]]
  name = "v1"
  provider = "legacy"
  model = "gpt-4o-mini"
"#
        ),
        ..Options::default()
    })
    .await;
    let response = app
        .post("/v1/responses", &json!({"model": "old", "input": ALERT}))
        .await;
    assert!(response.headers().contains_key("x-flywheel-inference-id"));
    let (status, error) = error_of(response).await;
    assert_eq!(status, 404);
    assert_eq!(error["code"], "responses_unsupported");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("`legacy`"), "{message}");
    assert!(message.contains("POST /v1/responses"), "{message}");

    // A provider that serves the route says itself what it did not find.
    let response = app
        .post(
            "/v1/responses",
            &json!({"model": "triage", "input": ALERT, "previous_response_id": "resp_gone"}),
        )
        .await;
    let (status, error) = error_of(response).await;
    assert_eq!(status, 404);
    assert_eq!(error["param"], "previous_response_id");
    assert_ne!(error["code"], "responses_unsupported");
}

/// The shadow answers stored beside a conversation's first turn, once
/// there are `at_least`.
async fn shadows_of(app: &TestApp, conversation: &str, turn: usize, at_least: usize) -> Value {
    let path = format!("/admin/api/conversations/{conversation}");
    eventually(
        "the shadows beside the turn",
        std::time::Duration::from_secs(30),
        || async {
            let detail: Value = app
                .admin(Method::GET, &path, None)
                .await
                .json()
                .await
                .unwrap();
            let shadows = detail["turns"][turn]["shadows"].clone();
            if shadows.as_array().is_some_and(|s| s.len() >= at_least) {
                Ok(shadows)
            } else {
                Err(detail.to_string())
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_self_contained_response_is_shadowed_and_a_stored_reference_is_not() {
    let app = spawn_app().await;
    let shadowed = app
        .admin(
            Method::PUT,
            "/admin/api/models/triage/traffic",
            Some(&json!({"weights": {"base": 100}, "shadow": ["large"], "reason": "compare quietly"})),
        )
        .await;
    assert_eq!(shadowed.status(), 200);
    let first = app
        .post(
            "/v1/responses",
            &json!({"model": "triage", "input": ALERT, "stream": true}),
        )
        .await;
    assert_eq!(header(&first, "x-flywheel-variant"), "base");
    let conversation = header(&first, "x-flywheel-conversation-id");
    let streamed = events(&first.text().await.unwrap());
    let (_, done) = streamed.last().unwrap();
    assert_eq!(
        done["response"]["model"], "gpt-4o-mini",
        "the shadow's answer is never returned"
    );
    let shadows = shadows_of(&app, &conversation, 0, 1).await;
    assert_eq!(shadows[0]["version"], "large", "{shadows}");
    assert_eq!(shadows[0]["provider_model"], "gpt-4o");
    assert!(
        shadows[0]["response"]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Threat type:"),
        "the shadow's streamed answer is read as a chat turn: {shadows}"
    );

    // The live response is stored at the provider as the client asked;
    // the shadow's, never returned, is not.
    let first_id = done["response"]["id"].clone();
    let stored = |id: &Value| {
        let path = format!("/v1/responses/{}", id.as_str().unwrap());
        let app = &app;
        async move {
            app.send(Method::GET, &path, &app.client_key, None)
                .await
                .status()
        }
    };
    assert_eq!(stored(&first_id).await, 200);
    assert_eq!(stored(&shadows[0]["completion_id"]).await, 404, "{shadows}");

    // A follow-up naming the stored response: only its provider knows it.
    let follow_up = app
        .post(
            "/v1/responses",
            &json!({"model": "triage", "previous_response_id": first_id, "input": "Isolated yet?"}),
        )
        .await;
    assert_eq!(follow_up.status(), 200);
    let detail = app.stored_turns(&conversation, 2).await;
    assert_eq!(detail["turns"][1]["shadows"], json!([]), "{detail}");
    let sent = app.metric("flywheel_shadow_requests_total").await;
    assert_eq!(sent, 1.0, "one copy, for the self-contained request only");
}

#[tokio::test]
async fn a_stored_response_is_fetched_from_the_provider_that_answered_it() {
    // An alias served by a second provider: only it holds its responses.
    let other = spawn_simulator(flywheel_simulator::SimulatorConfig {
        api_key: Some(PROVIDER_KEY.into()),
        ..Default::default()
    })
    .await;
    let app = spawn_app_with(Options {
        extra: format!(
            "[[providers]]\nname = \"other\"\nbase_url = \"http://{other}/v1\"\n\
             api_key_env = \"SIM_KEY\"\n\
             [[models]]\nname = \"elsewhere\"\nmodel_type = \"threat_detection\"\n\
             versions = [{{name = \"v1\", provider = \"other\", model = \"gpt-4o\"}}]\n"
        ),
        ..Options::default()
    })
    .await;
    let created = app
        .post(
            "/v1/responses",
            &json!({"model": "elsewhere", "input": ALERT}),
        )
        .await;
    assert_eq!(created.status(), 200);
    let conversation = header(&created, "x-flywheel-conversation-id");
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    app.stored_turns(&conversation, 1).await;
    let fetched = app
        .send(
            Method::GET,
            &format!("/v1/responses/{id}"),
            &app.client_key,
            None,
        )
        .await;
    assert_eq!(
        fetched.status(),
        200,
        "the default provider does not hold it"
    );
    let fetched: Value = fetched.json().await.unwrap();
    assert_eq!(fetched["id"], id);
    assert_eq!(fetched["output"], created["output"]);
    // Other routes still go to the default provider.
    let files = app
        .send(Method::GET, "/v1/files", &app.client_key, None)
        .await;
    assert_eq!(files.status(), 200);
}
