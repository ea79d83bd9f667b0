//! The command line: config errors, key management, the store lock.

use crate::helpers::eventually;
use crate::helpers::process::{Process, flywheel, free_port, listening, ready, serve, simulate};
use std::time::Duration;

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("flywheel.toml");
    let text = format!(
        r#"
[server]
data_dir = "{data}"
{extra}

[[providers]]
name = "sim"
base_url = "http://127.0.0.1:9/v1"

[[models]]
name = "triage"
model_type = "threat_detection"
  [[models.versions]]
  name = "base"
  provider = "sim"
  model = "gpt-4o-mini"
"#,
        data = dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_shipped_configs_are_valid() {
    for file in [
        "config/flywheel.toml",
        "config/openai.toml",
        "config/vllm.toml",
        "config/azure.toml",
        "config/vllm-lora.toml",
    ] {
        let out = flywheel()
            .args(["check-config", "--config", file])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("[[providers]]"), "{text}");
    }
}

/// The self-hosted guide shows the shipped config whole, as it is.
#[test]
fn the_self_hosted_guide_shows_the_shipped_lora_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(root.join("config/vllm-lora.toml")).unwrap();
    let guide = std::fs::read_to_string(root.join("docs/SELF_HOSTED.md")).unwrap();
    assert!(
        guide.contains(&format!("```toml\n{config}```")),
        "docs/SELF_HOSTED.md no longer shows config/vllm-lora.toml as it is"
    );
}

#[test]
fn bad_config_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("listn = \"x\"", "listn"),
        ("max_body_bytes = \"big\"", "server.max_body_bytes"),
        ("default_provider = \"nope\"", "server.default_provider"),
    ];
    for (extra, key) in cases {
        let path = write_config(dir.path(), extra);
        let out = flywheel()
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{extra}: {stderr}");
    }
    let path = write_config(dir.path(), "");
    let out = flywheel()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("FLYWHEEL__LIMITS__BURST", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("limits.burst") && stderr.contains("FLYWHEEL__LIMITS__BURST"),
        "{stderr}"
    );

    let out = flywheel()
        .args(["check-config", "--config", "no/such/file.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    let out = flywheel()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("FLYWHEEL_ADMIN_TOKEN", "very-secret-admin-token")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("FLYWHEEL_ADMIN_TOKEN: set"), "{stdout}");
    assert!(!stdout.contains("very-secret-admin-token"));
}

#[test]
fn check_config_names_the_managed_identity_endpoint_and_hides_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flywheel.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\ndata_dir = \"{}\"\n\
             [[providers]]\nname = \"azmi\"\nkind = \"azure\"\n\
             base_url = \"https://contoso.openai.azure.com\"\nurl_style = \"v1\"\n\
             [providers.entra]\nmanaged_identity = true\n\
             [[models]]\nname = \"triage\"\nmodel_type = \"threat_detection\"\n\
             [[models.versions]]\nname = \"base\"\nprovider = \"azmi\"\nmodel = \"gpt-4o-mini\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let check = |env: &[(&str, &str)]| {
        let mut command = flywheel();
        command.args(["check-config", "--config"]).arg(&path);
        for var in [
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        ] {
            command.env_remove(var);
        }
        command.envs(env.iter().copied());
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let vm = check(&[]);
    assert!(
        vm.contains("providers.azmi.entra.managed_identity: tokens from the instance metadata service at http://169.254.169.254/metadata/identity/oauth2/token"),
        "{vm}"
    );
    let app_service = check(&[
        ("IDENTITY_ENDPOINT", "http://localhost:4141/msi/token"),
        ("IDENTITY_HEADER", "secret-identity-header"),
    ]);
    assert!(
        app_service.contains("the platform's identity endpoint http://localhost:4141/msi/token"),
        "{app_service}"
    );
    assert!(
        !app_service.contains("secret-identity-header"),
        "{app_service}"
    );
}

#[test]
fn keys_are_created_listed_and_revoked_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    let out = flywheel()
        .args([
            "keys", "create", "--role", "analyst", "--name", "ana", "--config",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.trim();
    assert!(
        key.starts_with("fw-") && !key.contains(' '),
        "only the key on stdout: {stdout:?}"
    );

    let list = flywheel()
        .args(["keys", "list", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let listing = String::from_utf8(list.stdout).unwrap();
    assert!(listing.contains("ana") && listing.contains("analyst"));
    assert!(!listing.contains(key), "the key is never listed");
    let id = listing
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();

    let revoke = flywheel()
        .args(["keys", "revoke", id, "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(revoke.status.success());
    let again = flywheel()
        .args(["keys", "revoke", "key_nope", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));

    let bad_role = flywheel()
        .args([
            "keys", "create", "--role", "emperor", "--name", "x", "--config",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(bad_role.status.code(), Some(2));
}

#[tokio::test]
async fn a_store_held_by_a_server_is_reported_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = write_config(dir.path(), &format!("listen = \"127.0.0.1:{port}\""));
    let mut server = serve(&path);
    // Once it accepts connections, the server holds the store.
    listening(port).await;
    let out = flywheel()
        .args(["keys", "list", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let export = flywheel()
        .args(["export", "--dataset", "ds_1", "--out"])
        .arg(dir.path().join("ds.jsonl"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    server.kill();
    assert_eq!(out.status.code(), Some(1));
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("in use") && message.contains("/admin/api/keys"),
        "{message}"
    );
    assert_eq!(export.status.code(), Some(1));
    let message = String::from_utf8_lossy(&export.stderr);
    assert!(message.contains("in use"), "{message}");
}

/// The demo as a user runs it: read the banner, chat with the printed key,
/// reach the admin page and API, then stop it with SIGTERM.
#[tokio::test]
async fn the_demo_prints_working_urls_and_keys_and_stops_on_sigterm() {
    use std::io::BufRead;
    let mut demo = Process::spawn(
        "flywheel demo",
        flywheel()
            .args(["demo", "--token-delay-ms", "0", "--seed", "75"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null()),
    );
    let stdout = demo.take_stdout();
    let banner = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let done = line.contains("Admin token");
            banner.push(line);
            if done {
                break;
            }
        }
        banner
    })
    .await
    .unwrap();
    let field = |name: &str| {
        banner
            .iter()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_else(|| panic!("no {name} in {banner:?}"))
            .to_string()
    };
    let (base, key, token, admin) = (
        field("OpenAI base URL"),
        field("Client key"),
        field("Admin token"),
        field("Admin UI"),
    );
    let http = reqwest::Client::new();
    let answer: serde_json::Value = http
        .post(format!("{base}/chat/completions"))
        .bearer_auth(&key)
        .json(&crate::helpers::triage_request(false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Threat type:")
    );
    let page = http.get(&admin).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let keys = http
        .get(admin.replace("/admin/", "/admin/api/keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(keys.status(), 200);

    // The seed: 75 real alerts through the proxy, two in three reviewed
    // and approved, split 80/20 between the versions.
    let stats_url = admin.replace("/admin/", "/admin/api/stats");
    let stats = eventually(
        "the demo's seed: 50 approved",
        Duration::from_secs(180),
        || async {
            let stats: serde_json::Value = http
                .get(&stats_url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if stats["approved"] == 50 {
                Ok(stats)
            } else {
                Err(stats.to_string())
            }
        },
    )
    .await;
    assert_eq!(
        stats["conversations_total"], 76,
        "the seed and the chat above"
    );
    let experiment: serde_json::Value = http
        .get(admin.replace("/admin/", "/admin/api/models/triage/experiment"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let served: Vec<u64> = experiment["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["requests"].as_u64().unwrap())
        .collect();
    assert!(
        served.iter().all(|n| *n > 0),
        "both versions served: {experiment}"
    );

    let status = demo.terminate().await;
    assert!(status.success(), "demo exited with {status}");
}

/// Capture through the real binaries, stop the server with SIGTERM (which
/// flushes), then export without a server.
#[tokio::test]
async fn export_writes_conversations_with_turns_and_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut sim, sim_addr) = simulate().await;
    let path = dir.path().join("flywheel.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[auth]\nallow_anonymous_clients = true\n\
             [[providers]]\nname = \"sim\"\nbase_url = \"http://{sim_addr}/v1\"\n\
             [[models]]\nname = \"triage\"\nmodel_type = \"threat_detection\"\n  [[models.versions]]\n  name = \"base\"\n  provider = \"sim\"\n  model = \"gpt-4o-mini\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let analyst = flywheel()
        .args([
            "keys", "create", "--role", "analyst", "--name", "a", "--config",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let analyst = String::from_utf8(analyst.stdout)
        .unwrap()
        .trim()
        .to_string();
    let mut server = serve(&path);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    ready(&http, &base).await;
    let mut messages = serde_json::json!([{"role": "user", "content": "Endpoint alert: schtasks /create /tn updater on WS-3"}]);
    let first = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "triage", "messages": messages}))
        .send()
        .await
        .unwrap();
    let conversation = first.headers()["x-flywheel-conversation-id"]
        .to_str()
        .unwrap()
        .to_string();
    let first: serde_json::Value = first.json().await.unwrap();
    let answer = first["choices"][0]["message"]["content"].clone();
    let history = messages.as_array_mut().unwrap();
    history.push(serde_json::json!({"role": "assistant", "content": answer}));
    history.push(serde_json::json!({"role": "user", "content": "Is it persistence?"}));
    // The first turn is threaded before its record is written: once the
    // record shows in its conversation, the follow-up will find it.
    eventually(
        "the first turn's record in its conversation",
        Duration::from_secs(30),
        || async {
            let detail = http
                .get(format!("{base}/admin/api/conversations/{conversation}"))
                .bearer_auth(&analyst)
                .send()
                .await
                .unwrap();
            if detail.status() != 200 {
                return None;
            }
            let detail: serde_json::Value = detail.json().await.unwrap();
            (detail["turns"][0]["status"] == "ok").then_some(())
        },
    )
    .await;
    let second = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "triage", "messages": messages}))
        .send()
        .await
        .unwrap();
    let inference = second.headers()["x-flywheel-inference-id"]
        .to_str()
        .unwrap()
        .to_string();
    second.text().await.unwrap();
    let feedback = http
        .post(format!("{base}/v1/feedback"))
        .bearer_auth(&analyst)
        .json(&serde_json::json!({"inference_id": inference, "threat_type": "persistence", "approved_for_training": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(feedback.status(), 201);
    assert!(server.terminate().await.success());
    sim.kill();

    let out_file = dir.path().join("export.jsonl");
    let out = flywheel()
        .args(["export", "--out"])
        .arg(&out_file)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "two turns, one conversation: {text}");
    let turns = lines[0]["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1]["inference_id"], inference.as_str());
    assert_eq!(turns[1]["feedback"][0]["threat_type"], "persistence");
    assert_eq!(
        turns[0]["response"]["choices"][0]["message"]["content"],
        answer
    );
}

/// A snapshot written straight into a store, then exported by the binary
/// without a server: each split, both, and an unknown id.
#[test]
fn export_writes_a_datasets_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "");
    let train = "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\",\"content\":\"b\"}]}\n".repeat(3);
    let validation = "{\"messages\":[{\"role\":\"user\",\"content\":\"c\"},{\"role\":\"assistant\",\"content\":\"d\"}]}\n";
    {
        let store = flywheel::store::open(&dir.path().join("data")).unwrap();
        let record = flywheel::store::DatasetRecord {
            id: "ds_01TEST".into(),
            name: "cli".into(),
            format: "sft".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            created_by: "test".into(),
            filter: serde_json::json!({"status": "approved"}),
            alias: Some("triage".into()),
            base_model: Some("gpt-4o-mini".into()),
            validation_split: 0.2,
            report: serde_json::json!({}),
            train_ids: vec!["conv_1".into(), "conv_2".into(), "conv_3".into()],
            validation_ids: vec!["conv_4".into()],
        };
        store
            .insert_dataset(&record, train.as_bytes(), validation.as_bytes())
            .unwrap();
    }
    let export = |extra: &[&str]| {
        let out_file = dir.path().join("ds.jsonl");
        let _ = std::fs::remove_file(&out_file);
        let out = flywheel()
            .args(["export", "--out"])
            .arg(&out_file)
            .args(extra)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let text = std::fs::read_to_string(&out_file).ok();
        (out, text)
    };
    let (out, text) = export(&["--dataset", "ds_01TEST"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.unwrap(), train);
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 lines"));
    let (_, text) = export(&["--dataset", "ds_01TEST", "--split", "validation"]);
    assert_eq!(text.unwrap(), validation);
    let (_, text) = export(&["--dataset", "ds_01TEST", "--split", "all"]);
    assert_eq!(text.unwrap(), format!("{train}{validation}"));

    let (out, text) = export(&["--dataset", "ds_nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`ds_nope`"));
    assert_eq!(text, None, "nothing is written for an unknown id");
    let (out, _) = export(&["--split", "all"]);
    assert_eq!(out.status.code(), Some(2), "--split needs --dataset");
}
