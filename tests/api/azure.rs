//! Azure OpenAI providers against the simulator in Azure mode, over real
//! HTTP: chat completions (unary, streamed, with tools) through both URL
//! styles, Azure's errors relayed as sent and its `retry-after-ms`
//! honoured; and the fine-tuning loop — job, deployment (through the
//! management API, or registered by an admin), candidate, evaluation,
//! gated promotion, rollback, deployment deleted — with its failures.

use crate::evaluation_fixtures::{evaluate, labelled_dataset};
use crate::evaluations::LOW_TARGETS;
use crate::fine_tuning::{create_job, until_finished};
use crate::helpers::*;
use flywheel_simulator::{AzureMode, SimulatorConfig};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// The simulator in Azure mode: `triage-prod` deploys gpt-4o-mini;
/// the management API takes `management_token`.
fn azure_simulator(management_token: &str) -> SimulatorConfig {
    SimulatorConfig {
        api_key: Some(PROVIDER_KEY.into()),
        job_step: Duration::from_millis(50),
        azure: Some(AzureMode {
            deployments: HashMap::from([("triage-prod".to_string(), "gpt-4o-mini".to_string())]),
            management_token: Some(management_token.into()),
            provisioning_delay: Duration::from_millis(300),
            file_import_delay: Duration::from_millis(300),
            entra: None,
        }),
        ..SimulatorConfig::default()
    }
}

/// Providers `az` (deployments style, `api-key`, fine-tuning,
/// `management` as its `[providers.deployment]` keys, none when empty)
/// and `azv1` (v1 style, an Entra ID bearer token), and an alias `soc`
/// with a version on each.
fn azure_options(sim: SocketAddr, management: &str, extra: &str) -> Options {
    let deployment = if management.is_empty() {
        String::new()
    } else {
        format!(
            "[providers.deployment]\nsubscription_id = \"sub-1\"\nresource_group = \"rg-soc\"\n\
             account = \"soc-openai\"\ncapacity = 2\ntoken_env = \"SIM_KEY\"\n\
             management_url = \"http://{sim}\"\n{management}\n"
        )
    };
    Options {
        upstream: Some(sim),
        extra: format!(
            r#"
[[providers]]
name = "az"
kind = "azure"
base_url = "http://{sim}"
api_key_env = "SIM_KEY"
api_version = "2024-10-21"
fine_tuning = true
max_retries = 2
{deployment}

[[providers]]
name = "azv1"
kind = "azure"
base_url = "http://{sim}"
url_style = "v1"
bearer_token_env = "SIM_KEY"

[[models]]
name = "soc"
model_type = "threat_detection"
production = "dep"
  [[models.versions]]
  name = "dep"
  provider = "az"
  model = "triage-prod"
  [[models.versions]]
  name = "v1"
  provider = "azv1"
  model = "triage-prod"
  [[models.versions]]
  name = "missing"
  provider = "az"
  model = "no-such-deployment"

{extra}
"#
        ),
        ..Options::default()
    }
}

async fn soc(
    app: &TestApp,
    variant: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.analyst_key)
        .header("x-flywheel-variant", variant);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.json(&body).send().await.unwrap()
}

/// An Azure error as the client got it: the status and the `error` object.
async fn azure_error(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error"].clone())
}

fn chat(stream: bool) -> Value {
    json!({"model": "soc", "stream": stream, "messages": [{"role": "user",
        "content": "Endpoint alert: LSASS memory dumped by rundll32.exe via comsvcs.dll on WS-7."}]})
}

#[tokio::test]
async fn chats_reach_azure_deployments_through_both_url_styles() {
    let sim = spawn_simulator(azure_simulator(PROVIDER_KEY)).await;
    let app = spawn_app_with(azure_options(sim, "", "")).await;
    for variant in ["dep", "v1"] {
        let unary = soc(&app, variant, chat(false), &[]).await;
        assert_eq!(unary.status(), 200, "{variant}");
        let body: Value = unary.json().await.unwrap();
        assert_eq!(body["model"], "gpt-4o-mini", "{variant}: {body}");
        assert!(
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .contains("Threat type")
        );

        let streamed = soc(&app, variant, chat(true), &[]).await;
        assert_eq!(streamed.status(), 200, "{variant}");
        let events = sse_data(&streamed.text().await.unwrap());
        assert_eq!(
            events.last().map(String::as_str),
            Some("[DONE]"),
            "{variant}"
        );
        assert!(events.len() > 3, "{variant}: {events:?}");

        let mut tools = chat(false);
        tools["tools"] = json!([{"type": "function", "function": {"name": "lookup_host",
            "description": "Look a host up in the CMDB",
            "parameters": {"type": "object", "properties": {"host": {"type": "string"}}, "required": ["host"]}}}]);
        tools["tool_choice"] = json!({"type": "function", "function": {"name": "lookup_host"}});
        let answered = soc(&app, variant, tools, &[]).await;
        assert_eq!(answered.status(), 200, "{variant}");
        let body: Value = answered.json().await.unwrap();
        assert_eq!(
            body["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "lookup_host",
            "{variant}: {body}"
        );
    }

    // The Responses API: Azure's v1 path, and the dated one.
    for variant in ["v1", "dep"] {
        let response = app
            .http
            .post(app.url("/v1/responses"))
            .bearer_auth(&app.analyst_key)
            .header("x-flywheel-variant", variant)
            .json(&json!({"model": "soc", "input": "Endpoint alert: PsExec service created on SRV-2."}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{variant}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["object"], "response", "{variant}: {body}");
    }

    // Azure's content-filter error reaches the client as Azure sent it.
    let filtered = soc(&app, "dep", chat(false), &[("x-sim-content-filter", "1")]).await;
    let (status, error) = azure_error(filtered).await;
    assert_eq!(status, 400);
    assert_eq!(error["code"], "content_filter", "{error}");
    assert_eq!(
        error["innererror"]["code"], "ResponsibleAIPolicyViolation",
        "{error}"
    );
    assert_eq!(
        error["innererror"]["content_filter_result"]["violence"]["filtered"],
        true
    );

    // A deployment Azure does not know: its 404 as sent.
    let (status, error) = azure_error(soc(&app, "missing", chat(false), &[]).await).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (404, Some("DeploymentNotFound")),
        "{error}"
    );

    // A 429 with `retry-after-ms` is waited out and retried unseen.
    let retried_before = app.metric("flywheel_upstream_retries_total").await;
    let retried = soc(
        &app,
        "dep",
        chat(false),
        &[
            ("x-sim-status", "429"),
            ("x-sim-retry-after-ms", "40"),
            ("x-sim-fail-times", "1"),
            ("x-sim-fault-id", "azure-429"),
        ],
    )
    .await;
    assert_eq!(retried.status(), 200);
    assert_eq!(
        app.metric("flywheel_upstream_retries_total").await,
        retried_before + 1.0
    );
}

#[tokio::test]
async fn the_azure_simulator_asks_what_azure_asks() {
    let sim = spawn_simulator(azure_simulator(PROVIDER_KEY)).await;
    let http = reqwest::Client::new();
    let url = format!("http://{sim}/openai/deployments/triage-prod/chat/completions");
    let body = json!({"messages": [{"role": "user", "content": "hello"}]});
    let no_version = http
        .post(&url)
        .header("api-key", PROVIDER_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_version.status(), 400);
    let error: Value = no_version.json().await.unwrap();
    assert_eq!(error["error"]["code"], "MissingApiVersionParameter");
    let no_key = http
        .post(format!("{url}?api-version=2024-10-21"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let ok = http
        .post(format!("{url}?api-version=2024-10-21"))
        .header("api-key", PROVIDER_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Every credential presented must be good: a stray bearer is refused.
    let stray = http
        .post(format!("{url}?api-version=2024-10-21"))
        .header("api-key", PROVIDER_KEY)
        .bearer_auth("fw-a-flywheel-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(stray.status(), 401);
}

const FT: &str = "[fine_tuning]\nmin_examples = 10\npoll_interval_s = 1\ncanary_weight = 10\n";

fn gated() -> String {
    format!("{FT}[evaluation]\npromotion_requires = \"meets_targets\"\n{LOW_TARGETS}")
}

async fn admin_json(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let response = app.admin(method, path, body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The deployment the management API holds, as the simulator shows it.
async fn deployment_at(sim: SocketAddr, name: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!(
            "http://{sim}/subscriptions/sub-1/resourceGroups/rg-soc/providers/Microsoft.CognitiveServices/accounts/soc-openai/deployments/{name}?api-version=2023-05-01"
        ))
        .bearer_auth(PROVIDER_KEY)
        .send()
        .await
        .unwrap()
}

/// Evaluates `version` against production, promotes it through the gate,
/// rolls it back and deletes its deployment.
async fn evaluate_promote_roll_back_delete(
    app: &TestApp,
    dataset: &str,
    id: &str,
    version: &str,
) -> Value {
    let (status, refused) = admin_json(
        app,
        Method::POST,
        "/admin/api/models/triage/promote",
        Some(&json!({"version": version, "reason": "unevaluated"})),
    )
    .await;
    assert_eq!(
        status, 409,
        "the gate refuses an unevaluated candidate: {refused}"
    );
    let run = evaluate(app, dataset, &["base", version]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        run["results"][version]["accuracy"].as_f64().is_some(),
        "{run}"
    );
    let (status, alias) = admin_json(
        app,
        Method::POST,
        "/admin/api/models/triage/promote",
        Some(&json!({"version": version, "reason": "evaluated on Azure"})),
    )
    .await;
    assert_eq!(status, 200, "{alias}");
    assert_eq!(alias["production"], version);
    let served = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.client_key)
        .json(&triage_request(false))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let (status, refused) = admin_json(
        app,
        Method::DELETE,
        &format!("/admin/api/fine-tuning/jobs/{id}/deployment"),
        None,
    )
    .await;
    assert_eq!(
        status, 409,
        "production's deployment is not deleted: {refused}"
    );
    let (status, alias) = admin_json(
        app,
        Method::POST,
        "/admin/api/models/triage/rollback",
        Some(&json!({"reason": "back to base"})),
    )
    .await;
    assert_eq!(status, 200, "{alias}");
    assert_eq!(alias["production"], "base");
    let (status, job) = admin_json(
        app,
        Method::DELETE,
        &format!("/admin/api/fine-tuning/jobs/{id}/deployment"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{job}");
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_azure_is_deployed_through_the_management_api_evaluated_promoted_and_rolled_back()
{
    let sim = spawn_simulator(azure_simulator(PROVIDER_KEY)).await;
    let app = spawn_app_with(azure_options(sim, "sku = \"standard\"", &gated())).await;
    let data = labelled_dataset(&app).await;
    let created = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": data.dataset_id, "provider": "az", "suffix": "soc", "seed": 7,
               "hyperparameters": {"n_epochs": 2}}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let done = until_finished(&app, id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let version = done["registered_version"].as_str().unwrap().to_string();
    assert_eq!(done["deployment"]["state"], "succeeded", "{done:#}");
    assert_eq!(done["deployment"]["name"], version.as_str());
    assert_eq!(done["deployment"]["managed"], true);
    let messages: Vec<&str> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.iter().any(|m| m.starts_with("Deploying ft:")),
        "{messages:#?}"
    );
    // Azure refuses a job whose files it is still importing: it waited.
    assert!(
        messages.contains(&"Waiting for Azure to import the uploaded files"),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| *m == format!("Deployment {version} succeeded")),
        "{messages:#?}"
    );
    // The dated api-version got its hyperparameters at the top level.
    let trained: Value = reqwest::Client::new()
        .get(format!(
            "http://{sim}/v1/fine_tuning/jobs/{}",
            done["provider_job_id"].as_str().unwrap()
        ))
        .bearer_auth(PROVIDER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(trained["hyperparameters"]["n_epochs"], 2, "{trained}");
    let at_azure: Value = deployment_at(sim, &version).await.json().await.unwrap();
    assert_eq!(at_azure["properties"]["provisioningState"], "Succeeded");
    assert_eq!(
        at_azure["properties"]["model"]["name"],
        done["fine_tuned_model"]
    );
    assert_eq!(at_azure["sku"], json!({"name": "standard", "capacity": 2}));
    let alias = app.admin_get("/admin/api/models/triage").await;
    let registered = alias["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version.as_str())
        .unwrap();
    assert_eq!(
        (&registered["provider"], &registered["model"]),
        (&json!("az"), &json!(version))
    );

    let job = evaluate_promote_roll_back_delete(&app, &data.dataset_id, id, &version).await;
    assert_eq!(job["deployment"]["state"], "deleted");
    assert_eq!(deployment_at(sim, &version).await.status(), 404);
    let audit = app.admin_get("/admin/api/audit?limit=5").await;
    assert_eq!(
        audit["data"][0]["action"], "fine_tuning.job.deployment.delete",
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_management_access_a_job_awaits_the_deployment_an_admin_registers() {
    let sim = spawn_simulator(azure_simulator(PROVIDER_KEY)).await;
    let app = spawn_app_with(azure_options(sim, "", &gated())).await;
    let data = labelled_dataset(&app).await;
    let created = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": data.dataset_id, "provider": "az", "seed": 7}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let done = until_finished(&app, id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(
        done["deployment"]["state"], "awaiting_deployment",
        "{done:#}"
    );
    assert_eq!(done["registered_version"], Value::Null);
    let model = done["fine_tuned_model"].as_str().unwrap();

    // The admin deploys it in Azure (here: the management API by hand).
    let put = reqwest::Client::new()
        .put(format!(
            "http://{sim}/subscriptions/sub-1/resourceGroups/rg-soc/providers/Microsoft.CognitiveServices/accounts/soc-openai/deployments/soc-tuned?api-version=2023-05-01"
        ))
        .bearer_auth(PROVIDER_KEY)
        .json(&json!({"sku": {"name": "standard", "capacity": 1}, "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);

    let path = format!("/admin/api/fine-tuning/jobs/{id}/deployment");
    let analyst = app
        .send(
            Method::POST,
            &path,
            &app.analyst_key,
            Some(&json!({"name": "soc-tuned"})),
        )
        .await;
    assert_eq!(analyst.status(), 403);
    let (status, bad) = admin_json(
        &app,
        Method::POST,
        &path,
        Some(&json!({"name": "no/slashes"})),
    )
    .await;
    assert_eq!(
        (status, &bad["error"]["param"]),
        (400, &json!("name")),
        "{bad}"
    );
    eventually(
        "the admin's deployment to provision",
        Duration::from_secs(30),
        || async {
            let d: Value = deployment_at(sim, "soc-tuned").await.json().await.unwrap();
            (d["properties"]["provisioningState"] == "Succeeded").then_some(())
        },
    )
    .await;
    let (status, job) = admin_json(
        &app,
        Method::POST,
        &path,
        Some(&json!({"name": "soc-tuned"})),
    )
    .await;
    assert_eq!(status, 200, "{job}");
    let version = job["registered_version"].as_str().unwrap().to_string();
    assert_eq!(job["deployment"]["name"], "soc-tuned", "{job:#}");
    let alias = app.admin_get("/admin/api/models/triage").await;
    let registered = alias["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == version.as_str())
        .unwrap();
    assert_eq!(registered["model"], "soc-tuned");
    assert_eq!(
        registered["weight"], 10.0,
        "the configured canary share: {alias}"
    );
    let (status, again) =
        admin_json(&app, Method::POST, &path, Some(&json!({"name": "other"}))).await;
    assert_eq!(status, 409, "{again}");

    let (status, refused) = admin_json(
        &app,
        Method::POST,
        "/admin/api/models/triage/promote",
        Some(&json!({"version": version, "reason": "unevaluated"})),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    let run = evaluate(&app, &data.dataset_id, &["base", &version]).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        run["results"][version.as_str()]["accuracy"]
            .as_f64()
            .is_some(),
        "{run}"
    );
    let audit = app.admin_get("/admin/api/audit?limit=20").await;
    assert!(
        audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "fine_tuning.job.deployment.register"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_failures_end_the_job_with_a_clear_error_and_nothing_registered() {
    // The management token Flywheel holds has expired.
    let sim = spawn_simulator(azure_simulator("a-fresher-token")).await;
    let app = spawn_app_with(azure_options(sim, "sku = \"standard\"", FT)).await;
    let data = labelled_dataset(&app).await;
    let versions_before = app.admin_get("/admin/api/models/triage").await["versions"]
        .as_array()
        .unwrap()
        .len();
    let expired = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": data.dataset_id, "provider": "az"}),
    )
    .await;
    let failed = until_finished(&app, expired["id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["stage"], "deploy", "{failed:#}");
    assert_eq!(failed["error"]["status"], 401);
    assert_eq!(
        failed["error"]["provider_error"]["code"], "ExpiredAuthenticationToken",
        "{failed:#}"
    );
    assert_eq!(failed["registered_version"], Value::Null);

    // The job itself fails at Azure.
    let run_fails = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": data.dataset_id, "provider": "az", "metadata": {"sim_fail": "running"}}),
    )
    .await;
    let failed = until_finished(&app, run_fails["id"].as_str().unwrap()).await;
    assert_eq!(
        (&failed["status"], &failed["error"]["stage"]),
        (&json!("failed"), &json!("run")),
        "{failed:#}"
    );
    assert_eq!(failed["deployment"], Value::Null);
    let after = app.admin_get("/admin/api/models/triage").await;
    assert_eq!(
        after["versions"].as_array().unwrap().len(),
        versions_before,
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_that_fails_to_provision_fails_the_job_and_registers_nothing() {
    let sim = spawn_simulator(azure_simulator(PROVIDER_KEY)).await;
    let app = spawn_app_with(azure_options(sim, "sku = \"standard\"", FT)).await;
    let data = labelled_dataset(&app).await;
    let versions_before = app.admin_get("/admin/api/models/triage").await["versions"]
        .as_array()
        .unwrap()
        .len();
    // The simulator fails a deployment whose name asks for it; the name
    // carries the job's suffix.
    let created = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": data.dataset_id, "provider": "az", "suffix": "sim-fail"}),
    )
    .await;
    let failed = until_finished(&app, created["id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    assert_eq!(failed["error"]["stage"], "deploy", "{failed:#}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(message.contains("ended Failed"), "{message}");
    assert_eq!(failed["deployment"]["state"], "failed");
    assert_eq!(failed["registered_version"], Value::Null);
    let after = app.admin_get("/admin/api/models/triage").await;
    assert_eq!(
        after["versions"].as_array().unwrap().len(),
        versions_before,
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_deploying_finds_the_deployment_instead_of_creating_it_again() {
    let mut config = azure_simulator(PROVIDER_KEY);
    // The app must stop while Azure still provisions: the poller follows
    // the deployment every second and, once it serves, finishes the job,
    // which leaves nothing to resume. The stop comes a moment after the
    // creation is seen; ten seconds leave that moment room on a loaded
    // machine (the restarted app then waits out the rest).
    if let Some(mode) = config.azure.as_mut() {
        mode.provisioning_delay = Duration::from_secs(10);
    }
    let sim = spawn_simulator(config).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options {
        data_dir: Some(dir.path().to_path_buf()),
        ..azure_options(sim, "sku = \"standard\"", FT)
    };
    let app = spawn_app_with(opts()).await;
    let data = labelled_dataset(&app).await;
    let id = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": data.dataset_id, "provider": "az", "suffix": "resume"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(
        "the deployment to be created",
        Duration::from_secs(30),
        || async {
            let job = crate::fine_tuning::job(&app, &id).await;
            (job["deployment"]["created"] == true).then_some(())
        },
    )
    .await;
    app.stop().await;

    // The worst moment to stop: the creation was sent, its answer never stored.
    let store = crate::fine_tuning::restart::reopen(dir.path()).await;
    let mut record = store.job(&id).unwrap().unwrap();
    assert!(
        !record.status.is_final(),
        "the job ended before the stop: {record:?}"
    );
    let deployment = record.deployment.as_mut().unwrap();
    assert!(deployment.attempted);
    deployment.created = false;
    store.put_job(&record).unwrap();
    drop(store);

    let app = spawn_app_with(opts()).await;
    let done = until_finished(&app, &id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let version = done["registered_version"].as_str().unwrap();
    assert!(version.starts_with("ft-resume-"), "{version}");
    let messages: Vec<&str> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    let deploying = messages
        .iter()
        .filter(|m| m.starts_with("Deploying "))
        .count();
    assert_eq!(deploying, 1, "{messages:#?}");
    assert!(
        messages
            .iter()
            .any(|m| *m == format!("Found deployment {version} created before")),
        "{messages:#?}"
    );
}

/// `flywheel simulate --azure` as an operator runs it, in front of
/// `flywheel serve` with an Azure provider.
#[tokio::test]
async fn flywheel_simulate_azure_serves_the_real_binary() {
    use crate::helpers::process::{Process, flywheel, free_port, listening, ready};
    let sim_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _sim = Process::spawn(
        "flywheel simulate --azure",
        flywheel()
            .args(["simulate", "--azure", "--listen", &sim_addr.to_string()])
            .args([
                "--api-key-env",
                "AZ_KEY",
                "--azure-management-token-env",
                "ARM_TOKEN",
            ])
            .args([
                "--azure-deployment",
                "soc-prod=gpt-4o",
                "--azure-provisioning-ms",
                "100",
            ])
            .env("AZ_KEY", "az-secret")
            .env("ARM_TOKEN", "arm-secret"),
    );
    listening(sim_addr.port()).await;
    let http = reqwest::Client::new();
    let missing = http
        .post(format!(
            "http://{sim_addr}/openai/deployments/soc-prod/chat/completions"
        ))
        .header("api-key", "az-secret")
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = dir.path().join("flywheel.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[auth]\nallow_anonymous_clients = true\n\
             [[providers]]\nname = \"azure\"\nkind = \"azure\"\nbase_url = \"http://{sim_addr}\"\n\
             api_version = \"2024-10-21\"\napi_key_env = \"AZ_KEY\"\n\
             [[models]]\nname = \"soc\"\nmodel_type = \"threat_detection\"\n  [[models.versions]]\n  name = \"base\"\n  provider = \"azure\"\n  model = \"soc-prod\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let _server = Process::spawn(
        "flywheel serve",
        flywheel()
            .args(["serve", "--config"])
            .arg(&path)
            .env("AZ_KEY", "az-secret")
            .stderr(std::process::Stdio::inherit()),
    );
    let base = format!("http://127.0.0.1:{port}");
    ready(&http, &base).await;
    let answered = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    let body: Value = answered.json().await.unwrap();
    assert_eq!(body["model"], "gpt-4o", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_deploying_registers_nothing_and_its_deployment_can_be_deleted() {
    let mut config = azure_simulator(PROVIDER_KEY);
    if let Some(mode) = config.azure.as_mut() {
        mode.provisioning_delay = Duration::from_secs(3600);
    }
    let sim = spawn_simulator(config).await;
    let app = spawn_app_with(azure_options(sim, "sku = \"standard\"", FT)).await;
    let data = labelled_dataset(&app).await;
    let id = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": data.dataset_id, "provider": "az"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deploying = eventually(
        "the deployment to be created",
        Duration::from_secs(30),
        || async {
            let job = crate::fine_tuning::job(&app, &id).await;
            (job["deployment"]["created"] == true).then_some(job)
        },
    )
    .await;
    let name = deploying["deployment"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, cancelled) = admin_json(
        &app,
        Method::POST,
        &format!("/admin/api/fine-tuning/jobs/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["registered_version"], Value::Null);
    let at_azure: Value = deployment_at(sim, &name).await.json().await.unwrap();
    assert_eq!(
        at_azure["properties"]["provisioningState"], "Creating",
        "left for the admin"
    );
    let (status, deleted) = admin_json(
        &app,
        Method::DELETE,
        &format!("/admin/api/fine-tuning/jobs/{id}/deployment"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["deployment"]["state"], "deleted");
    assert_eq!(deployment_at(sim, &name).await.status(), 404);
    let alias = app.admin_get("/admin/api/models/triage").await;
    assert!(
        alias["versions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["origin"] != id.as_str()),
        "{alias}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_submitting_to_azure_finds_the_job_by_its_training_file() {
    let mut config = azure_simulator(PROVIDER_KEY);
    // Still training when the app stops (see the same test in
    // `fine_tuning/restart.rs`): 1.5 s a status.
    config.job_step = Duration::from_millis(1500);
    let sim = spawn_simulator(config).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options {
        data_dir: Some(dir.path().to_path_buf()),
        ..azure_options(sim, "", FT)
    };
    let app = spawn_app_with(opts()).await;
    let data = labelled_dataset(&app).await;
    let id = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": data.dataset_id, "provider": "az"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let submitted = crate::fine_tuning::until_submitted(&app, &id).await;
    app.stop().await;

    // Submitted, but the answer never stored; Azure's dated api-versions
    // keep no metadata to find it by.
    let store = crate::fine_tuning::restart::reopen(dir.path()).await;
    let mut record = store.job(&id).unwrap().unwrap();
    assert!(
        !record.status.is_final(),
        "the job ended before the stop: {record:?}"
    );
    assert!(record.attempts.submit);
    record.provider_job_id = None;
    record.status = flywheel::store::JobStatus::Preparing;
    store.put_job(&record).unwrap();
    drop(store);

    let app = spawn_app_with(opts()).await;
    let done = until_finished(&app, &id).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["provider_job_id"], submitted["provider_job_id"]);
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
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.starts_with("Submitted to az"))
            .count(),
        1,
        "{messages:#?}"
    );
}

/// The simulator in Azure mode whose token endpoint knows one app
/// registration (`flywheel-app` in `soc-tenant`, the provider key as its
/// secret) and issues tokens lasting `ttl`.
fn entra_simulator(management_token: &str, ttl: Duration) -> SimulatorConfig {
    let mut simulator = azure_simulator(management_token);
    if let Some(azure) = &mut simulator.azure {
        azure.entra = Some(flywheel_simulator::EntraMode {
            tenant: "soc-tenant".into(),
            client_id: "flywheel-app".into(),
            client_secret: PROVIDER_KEY.into(),
            client_assertion: Some(FEDERATED.into()),
            token_ttl: ttl,
            identity_header: Some(IDENTITY_HEADER.into()),
            app_roles: Vec::new(),
        });
    }
    simulator
}

/// The secret App Service hands its apps in `IDENTITY_HEADER`, as the
/// simulator's identity endpoint wants it.
const IDENTITY_HEADER: &str = "identity-header-of-the-host";

/// A provider's `[providers.entra]` section for `client` at the simulator.
fn entra_section(sim: SocketAddr, client: &str) -> String {
    format!(
        "[providers.entra]\ntenant_id = \"soc-tenant\"\nclient_id = \"{client}\"\n\
         client_secret_env = \"SIM_KEY\"\nauthority = \"http://{sim}\"\n"
    )
}

/// Two Azure providers at the simulator, each signing in as its
/// `[providers.entra]` section says — `good` as the simulator knows,
/// `bad` as it refuses — and an alias `alias` with a version on each
/// (`good` and `bad`).
fn good_and_bad(sim: SocketAddr, alias: &str, good: (&str, &str), bad: (&str, &str)) -> String {
    let provider = |(name, entra): (&str, &str)| {
        format!(
            "[[providers]]\nname = \"{name}\"\nkind = \"azure\"\nbase_url = \"http://{sim}\"\n\
             url_style = \"v1\"\nmax_retries = 1\n{entra}"
        )
    };
    format!(
        "{}\n{}\n[[models]]\nname = \"{alias}\"\nmodel_type = \"threat_detection\"\nproduction = \"good\"\n\
         [[models.versions]]\nname = \"good\"\nprovider = \"{}\"\nmodel = \"triage-prod\"\n\
         [[models.versions]]\nname = \"bad\"\nprovider = \"{}\"\nmodel = \"triage-prod\"\n",
        provider(good),
        provider(bad),
        good.0,
        bad.0
    )
}

/// Providers whose Entra ID client credentials the simulator's token
/// endpoint knows (`azent`) or does not (`azbad`, an unknown client id),
/// and an alias `entra` with a version on each.
fn entra_extra(sim: SocketAddr) -> String {
    good_and_bad(
        sim,
        "entra",
        ("azent", &entra_section(sim, "flywheel-app")),
        ("azbad", &entra_section(sim, "nobody")),
    )
}

#[tokio::test]
async fn entra_client_credentials_are_exchanged_for_tokens_renewed_before_they_expire() {
    let sim = spawn_simulator(entra_simulator(PROVIDER_KEY, Duration::from_secs(2))).await;
    let app = spawn_app_with(azure_options(sim, "", &entra_extra(sim))).await;
    let entra = |variant: &'static str| {
        let mut body = chat(false);
        body["model"] = json!("entra");
        soc(&app, variant, body, &[])
    };
    // The first token is asked for at start; a request a moment early
    // waits through its retries.
    let first = eventually(
        "a chat under the first token",
        Duration::from_secs(10),
        || async {
            let response = entra("good").await;
            (response.status() == 200).then_some(response)
        },
    )
    .await;
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["model"], "gpt-4o-mini", "{body}");

    answered_under_renewed_tokens(async || entra("good").await).await;

    // Credentials the identity platform refuses: nothing is sent to the
    // deployment, and the client is told why.
    refused_unsent(
        entra("bad").await,
        &["Microsoft Entra ID", "unauthorized_client", "AADSTS700016"],
    )
    .await;
    let signing = providers_signing(&app, "signing").await;
    assert_eq!(signing["azent"]["source"], "entra");
    assert_eq!(signing["azent"]["ready"], true, "{signing}");
    assert!(
        signing["azent"]["valid_for_s"].as_u64().unwrap() <= 2,
        "{signing}"
    );
    assert_eq!(signing["azbad"]["ready"], false, "{signing}");
    assert!(
        signing["azbad"]["problem"]
            .as_str()
            .unwrap()
            .contains("AADSTS700016"),
        "{signing}"
    );

    // Renewals are counted per provider and outcome.
    let app = &app;
    let renewals = |provider: &'static str, outcome: &'static str| async move {
        let labels = [("provider", provider), ("outcome", outcome)];
        app.metric_where("flywheel_upstream_token_renewals_total", &labels)
            .await
    };
    assert!(renewals("azent", "ok").await >= 3.0);
    // The current token's expiry, for an alert before it runs out.
    let labels = [("provider", "azent"), ("api", "inference")];
    let expiry = app
        .metric_where("flywheel_upstream_token_expiry_timestamp_seconds", &labels)
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now - 1.0 && expiry <= now + 2.5,
        "{expiry} against {now}"
    );
    assert!(renewals("azbad", "failed").await >= 1.0);
    assert_eq!(renewals("azbad", "ok").await, 0.0);
}

/// `options` with provider `az` signing in with Entra ID client
/// credentials instead of its `api-key`, for the data plane and, when it
/// has a `[providers.deployment]` section, for the management API too.
fn signed_in_with_entra(mut options: Options, sim: SocketAddr) -> Options {
    options.extra = options
        .extra
        .replacen("api_key_env = \"SIM_KEY\"\napi_version", "api_version", 1)
        .replacen(
            "max_retries = 2\n",
            &format!("max_retries = 2\n{}", entra_section(sim, "flywheel-app")),
            1,
        )
        .replace("\ntoken_env = \"SIM_KEY\"\n", "\n");
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_credentials_also_sign_in_to_the_management_api_for_deployments() {
    let no_token = "a management token nobody has";
    let sim = spawn_simulator(entra_simulator(no_token, Duration::from_secs(3600))).await;
    let options = azure_options(sim, "sku = \"standard\"", FT);
    assert!(options.extra.contains("token_env"));
    let app = spawn_app_with(signed_in_with_entra(options, sim)).await;
    let data = labelled_dataset(&app).await;
    let created = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": data.dataset_id, "provider": "az", "suffix": "soc"}),
    )
    .await;
    let done = until_finished(&app, created["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["deployment"]["state"], "succeeded", "{done:#}");
    assert_eq!(done["deployment"]["managed"], true, "{done:#}");
    let labels = [("provider", "az"), ("api", "management")];
    let expiry = app
        .metric_where("flywheel_upstream_token_expiry_timestamp_seconds", &labels)
        .await;
    assert!(expiry > 1.7e9, "the management token's expiry: {expiry}");
    let management = providers_signing(&app, "management_signing").await;
    assert_eq!(management["az"]["source"], "entra", "{management}");
    assert_eq!(management["az"]["ready"], true, "{management}");
    assert!(done["registered_version"].is_string(), "{done:#}");
}

/// A fine-tuning provider whose Entra ID credentials are refused: the
/// job's calls are not sent unsigned (Azure's bare 401 would hide why);
/// the job waits out the failure with the identity platform's reason.
#[tokio::test]
async fn a_fine_tuning_job_without_an_entra_token_sends_nothing_and_says_why() {
    let sim = spawn_simulator(entra_simulator(PROVIDER_KEY, Duration::from_secs(3600))).await;
    let extra = format!(
        "{FT}[[providers]]\nname = \"azbadft\"\nkind = \"azure\"\nbase_url = \"http://{sim}\"\n\
         url_style = \"v1\"\nfine_tuning = true\n{}",
        entra_section(sim, "nobody")
    );
    let app = spawn_app_with(azure_options(sim, "", &extra)).await;
    let data = labelled_dataset(&app).await;
    let created = create_job(
        &app,
        json!({"alias": "triage", "dataset_id": data.dataset_id, "provider": "azbadft"}),
    )
    .await;
    let id = created["id"].as_str().unwrap();
    let waiting = eventually(
        "the job to note why it cannot upload",
        Duration::from_secs(20),
        || async {
            let job = crate::fine_tuning::job(&app, id).await;
            let events = job["events"].as_array().cloned().unwrap_or_default();
            let noted = events.iter().find_map(|e| {
                let message = e["message"].as_str()?;
                message
                    .contains("AADSTS700016")
                    .then(|| message.to_string())
            });
            noted.map(|message| (job, message))
        },
    )
    .await;
    let (job, message) = waiting;
    assert!(
        message.contains("not sent") && message.contains("trying again"),
        "{message}"
    );
    assert_ne!(job["status"], "failed", "{job:#}");
    assert!(
        job["provider_file_ids"]["training_file"].is_null(),
        "{job:#}"
    );
}

/// With tokens lasting 2 s, chats `send` makes 5 s on and later still
/// go out, under renewed tokens.
async fn answered_under_renewed_tokens(send: impl AsyncFn() -> reqwest::Response) {
    tokio::time::sleep(Duration::from_secs(5)).await;
    for _ in 0..3 {
        let later = send().await;
        assert_eq!(later.status(), 200, "{}", later.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

/// Each provider's `field` (`signing`, `management_signing`), by name, as
/// `GET /admin/api/providers` shows it.
async fn providers_signing(app: &TestApp, field: &str) -> Value {
    let listed = app.admin_get("/admin/api/providers").await;
    let by_name = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p[field].clone()))
        .collect::<serde_json::Map<_, _>>();
    Value::Object(by_name)
}

/// A chat answered 502 as not sent, for want of a token, with a message
/// holding each of `reasons`.
async fn refused_unsent(response: reqwest::Response, reasons: &[&str]) {
    let (status, error) = azure_error(response).await;
    assert_eq!(status, 502, "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("not sent: no valid Microsoft Entra ID token"),
        "{message}"
    );
    for reason in reasons {
        assert!(message.contains(reason), "{reason}: {message}");
    }
}

/// Providers signing in with the host's managed identity: the
/// system-assigned one (`azmi`) and a user-assigned one the host does not
/// have (`azmibad`), and an alias `managed` with a version on each.
fn managed_identity_extra(sim: SocketAddr) -> String {
    let system_assigned = "[providers.entra]\nmanaged_identity = true\n";
    let unknown = format!("{system_assigned}client_id = \"nobody\"\n");
    good_and_bad(
        sim,
        "managed",
        ("azmi", system_assigned),
        ("azmibad", &unknown),
    )
}

/// Flywheel on a host whose managed identity is announced by `env`
/// (the simulator's short-lived tokens): chats go out under tokens renewed
/// before they expire, and an identity the host lacks gives the client
/// the endpoint's reason with nothing sent.
async fn chats_signed_in_with_a_managed_identity(env: Vec<(&'static str, String)>, refusal: &str) {
    let sim = spawn_simulator(entra_simulator(PROVIDER_KEY, Duration::from_secs(2))).await;
    let mut options = azure_options(sim, "", &managed_identity_extra(sim));
    options.env = env
        .into_iter()
        .map(|(name, value)| (name, value.replace("{sim}", &sim.to_string())))
        .collect();
    let app = spawn_app_with(options).await;
    let managed = |variant: &'static str| {
        let mut body = chat(false);
        body["model"] = json!("managed");
        soc(&app, variant, body, &[])
    };
    eventually(
        "a chat under the managed identity's first token",
        Duration::from_secs(10),
        || async { (managed("good").await.status() == 200).then_some(()) },
    )
    .await;
    answered_under_renewed_tokens(async || managed("good").await).await;
    refused_unsent(
        managed("bad").await,
        &["refused the managed identity", refusal],
    )
    .await;
    let signing = providers_signing(&app, "signing").await;
    assert_eq!(signing["azmi"]["source"], "managed_identity");
    assert_eq!(signing["azmi"]["ready"], true, "{signing}");
    assert_eq!(signing["azmibad"]["ready"], false, "{signing}");
    let labels = [("provider", "azmi"), ("outcome", "ok")];
    assert!(
        app.metric_where("flywheel_upstream_token_renewals_total", &labels)
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn a_vms_managed_identity_signs_in_through_the_instance_metadata_service() {
    let env = vec![(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "http://{sim}".to_string(),
    )];
    chats_signed_in_with_a_managed_identity(env, "invalid_request: Identity not found").await;
}

#[tokio::test]
async fn an_app_services_managed_identity_signs_in_through_the_endpoint_it_announces() {
    let env = vec![
        ("IDENTITY_ENDPOINT", "http://{sim}/msi/token".to_string()),
        ("IDENTITY_HEADER", IDENTITY_HEADER.to_string()),
    ];
    chats_signed_in_with_a_managed_identity(env, "(400 Bad Request): Identity not found").await;
}

/// The real binary behind an egress proxy that answers nothing, as a
/// SOC's network often has (`HTTP_PROXY`, the provider excepted by
/// `NO_PROXY`): its managed identity's tokens still come, because the
/// host's endpoint is never asked through a proxy.
#[tokio::test]
async fn a_managed_identity_is_asked_directly_whatever_proxy_the_environment_names() {
    use crate::helpers::process::{Process, flywheel, free_port, ready};
    let sim = spawn_simulator(entra_simulator(PROVIDER_KEY, Duration::from_secs(3600))).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("flywheel.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\
             [auth]\nallow_anonymous_clients = true\n\
             [[providers]]\nname = \"azmi\"\nkind = \"azure\"\n\
             base_url = \"http://localhost:{}\"\nurl_style = \"v1\"\nmax_retries = 0\n\
             [providers.entra]\nmanaged_identity = true\n\
             [[models]]\nname = \"soc\"\nmodel_type = \"threat_detection\"\n\
             [[models.versions]]\nname = \"base\"\nprovider = \"azmi\"\nmodel = \"triage-prod\"\n",
            dir.path().join("data").display(),
            sim.port()
        ),
    )
    .unwrap();
    let _server = Process::spawn(
        "flywheel serve",
        flywheel()
            .args(["serve", "--config"])
            .arg(&config)
            .env("HTTP_PROXY", format!("http://127.0.0.1:{}", free_port()))
            .env("NO_PROXY", "localhost")
            .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", format!("http://{sim}"))
            .stderr(std::process::Stdio::inherit()),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    ready(&http, &base).await;
    let answered = eventually(
        "a chat under the managed identity's token",
        Duration::from_secs(20),
        || async {
            let response = http
                .post(format!("{base}/v1/chat/completions"))
                .json(&chat(false))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response.text().await.map_err(|e| e.to_string())?;
            if status == 200 {
                Ok(body)
            } else {
                Err(format!("{status}: {body}"))
            }
        },
    )
    .await;
    assert!(answered.contains("chat.completion"), "{answered}");
}

/// The federated token the simulator's token endpoint accepts for
/// `flywheel-app`, as a workload identity's token file would hold it.
const FEDERATED: &str = "federated-token-of-the-pod";

#[tokio::test]
async fn a_federated_token_file_signs_in_and_is_read_again_when_it_changes() {
    let sim = spawn_simulator(entra_simulator(PROVIDER_KEY, Duration::from_secs(3600))).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "an expired token\n").unwrap();
    let extra = format!(
        "[[providers]]\nname = \"azfed\"\nkind = \"azure\"\nbase_url = \"http://{sim}\"\n\
         url_style = \"v1\"\nmax_retries = 0\n[providers.entra]\ntenant_id = \"soc-tenant\"\n\
         client_id = \"flywheel-app\"\nclient_assertion_file = \"{}\"\nauthority = \"http://{sim}\"\n\
         [[models]]\nname = \"fed\"\nmodel_type = \"threat_detection\"\n\
         [[models.versions]]\nname = \"base\"\nprovider = \"azfed\"\nmodel = \"triage-prod\"\n",
        token_file.display()
    );
    let app = spawn_app_with(azure_options(sim, "", &extra)).await;
    let fed = || {
        let mut body = chat(false);
        body["model"] = json!("fed");
        app.http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.client_key)
            .json(&body)
            .send()
    };
    // The token endpoint refuses what the file holds: nothing is sent.
    let refused = eventually(
        "the refusal to be known",
        Duration::from_secs(10),
        || async {
            let (status, error) = azure_error(fed().await.unwrap()).await;
            let message = error["message"].as_str().unwrap_or_default().to_string();
            (status == 502 && message.contains("AADSTS700027")).then_some(message)
        },
    )
    .await;
    assert!(refused.contains("invalid_client"), "{refused}");

    // The file is rotated, as the cluster does: the next renewal reads it.
    std::fs::write(&token_file, format!("{FEDERATED}\n")).unwrap();
    let answered = eventually(
        "a chat under the federated token",
        Duration::from_secs(20),
        || async {
            let response = fed().await.unwrap();
            (response.status() == 200).then_some(response)
        },
    )
    .await;
    let body: Value = answered.json().await.unwrap();
    assert_eq!(body["model"], "gpt-4o-mini", "{body}");
}
