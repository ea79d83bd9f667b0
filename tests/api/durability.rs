//! Crash durability: a server killed with SIGKILL under feedback load
//! loses no feedback it acknowledged with a 201, and opens cleanly again.

use crate::helpers::eventually;
use crate::helpers::process::{flywheel, free_port, ready, serve, simulate};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_feedback_load_loses_no_acknowledged_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut sim, sim_addr) = simulate().await;
    let config = dir.path().join("flywheel.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n[auth]\nallow_anonymous_clients = true\n\
             [limits]\nrequests_per_minute = 0\n[capture]\nflush_every_ms = 200\n\
             [[providers]]\nname = \"sim\"\nbase_url = \"http://{sim_addr}/v1\"\n\
             [[models]]\nname = \"triage\"\nmodel_type = \"threat_detection\"\n  [[models.versions]]\n  name = \"base\"\n  provider = \"sim\"\n  model = \"gpt-4o-mini\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let key = flywheel()
        .args([
            "keys", "create", "--role", "analyst", "--name", "load", "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    let key = String::from_utf8(key.stdout).unwrap().trim().to_string();
    let mut server = serve(&config);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    ready(&http, &base).await;

    // Inferences to rate, stored (capture flushes each batch it stores)
    // before the load begins.
    let mut inferences = Vec::new();
    for _ in 0..10 {
        let r = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&crate::helpers::triage_request(false))
            .send()
            .await
            .unwrap();
        inferences.push(
            r.headers()["x-flywheel-inference-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    eventually(
        "the 10 inferences to be captured",
        Duration::from_secs(30),
        || async {
            let stats: serde_json::Value = http
                .get(format!("{base}/admin/api/stats"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (stats["turns_total"] == 10)
                .then_some(())
                .ok_or(stats.to_string())
        },
    )
    .await;

    // Feedback and fresh inferences from 8 workers until the kill, which
    // comes after 1.5 s of load (several capture flushes) and once enough
    // feedback was acknowledged to mean anything: a fixed span alone could
    // acknowledge too little on a slow machine.
    let load_from = Instant::now();
    let so_far = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (http, base, key, targets) =
            (http.clone(), base.clone(), key.clone(), inferences.clone());
        let (so_far, killed) = (so_far.clone(), killed.clone());
        workers.push(tokio::spawn(async move {
            let (mut acknowledged, mut answered) = (Vec::new(), Vec::new());
            let mut n = w;
            while !killed.load(Ordering::Acquire) {
                let feedback = serde_json::json!({"inference_id": targets[n % targets.len()], "rating": 1 + n % 5, "notes": format!("worker {w} #{n}")});
                match http.post(format!("{base}/v1/feedback")).bearer_auth(&key).json(&feedback).send().await {
                    Ok(r) if r.status() == 201 => match r.json::<serde_json::Value>().await {
                        Ok(body) => {
                            acknowledged.push(body["id"].as_str().unwrap().to_string());
                            so_far.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => break,
                    },
                    _ => break,
                }
                if let Ok(r) = http.post(format!("{base}/v1/chat/completions")).bearer_auth(&key).json(&crate::helpers::triage_request(false)).send().await
                    && r.status() == 200 {
                        answered.push(r.headers()["x-flywheel-inference-id"].to_str().unwrap().to_string());
                    }
                n += 8;
            }
            (acknowledged, answered)
        }));
    }
    eventually(
        "more than 50 feedback acknowledged under load",
        Duration::from_secs(60),
        || async {
            let n = so_far.load(Ordering::Relaxed);
            (n > 50).then_some(()).ok_or(format!("{n} acknowledged"))
        },
    )
    .await;
    tokio::time::sleep_until((load_from + Duration::from_millis(1500)).into()).await;
    server.kill(); // SIGKILL, the workers still sending
    killed.store(true, Ordering::Release);
    let (mut acknowledged, mut answered) = (Vec::new(), Vec::new());
    for w in workers {
        let (a, b) = w.await.unwrap();
        acknowledged.extend(a);
        answered.extend(b);
    }

    // The store opens cleanly after the crash.
    let mut server = serve(&config);
    ready(&http, &base).await;
    assert!(server.terminate().await.success());
    sim.kill();

    let out = dir.path().join("export.jsonl");
    let status = flywheel()
        .args(["export", "--out"])
        .arg(&out)
        .arg("--config")
        .arg(&config)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    let (mut feedback, mut captured) = (HashSet::new(), HashSet::new());
    for line in text.lines() {
        let conversation: serde_json::Value = serde_json::from_str(line).unwrap();
        for turn in conversation["turns"].as_array().unwrap() {
            captured.insert(turn["inference_id"].as_str().unwrap().to_string());
            for f in turn["feedback"].as_array().unwrap() {
                feedback.insert(f["id"].as_str().unwrap().to_string());
            }
        }
    }
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !feedback.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged feedback lost: {lost:?}",
        lost.len()
    );
    let lost_inferences = answered.iter().filter(|id| !captured.contains(*id)).count();
    eprintln!(
        "crash: {} feedback acknowledged, 0 lost; {} inferences answered under load, {lost_inferences} not captured (the last flush interval)",
        acknowledged.len(),
        answered.len()
    );
    assert!(
        inferences.iter().all(|id| captured.contains(id)),
        "flushed inferences survive"
    );
}
