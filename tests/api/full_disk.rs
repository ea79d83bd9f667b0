//! A full disk, survived: with the data directory on a small filesystem
//! that fills up, chats go on being served, feedback is refused with a
//! 503 rather than acknowledged falsely, `/readyz` says the store cannot
//! write, nothing hangs — and once space is freed the store takes writes
//! again by itself, with every acknowledged feedback still there.

use crate::helpers::*;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs of a few MiB mounted for the test, unmounted when dropped.
struct SmallDisk {
    root: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (with the reason printed) where this process may not mount.
    fn mount(mib: u32) -> Option<Self> {
        let root = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(root.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self { root }),
            Ok(out) => {
                eprintln!(
                    "skipped: cannot mount a {mib} MiB tmpfs here ({}); run the tests as root to exercise a full disk",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!(
                    "skipped: cannot run mount ({e}); run the tests as root to exercise a full disk"
                );
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_data())
            .is_ok()
        {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.root.path())
            .status();
    }
}

async fn ready(app: &TestApp) -> u16 {
    app.http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Sends a chat and feedback on it; the feedback's status and id.
async fn chat_and_rate(app: &TestApp, n: usize) -> (u16, Option<String>, String) {
    let mut request = triage_request(false);
    request["messages"][1]["content"] = json!(format!(
        "Endpoint alert #{n}: rundll32 comsvcs.dll MiniDump on WS-{n}"
    ));
    let chat = app.post("/v1/chat/completions", &request).await;
    assert_eq!(
        chat.status(),
        200,
        "chats are served whatever the disk does"
    );
    let inference = chat.headers()["x-flywheel-inference-id"]
        .to_str()
        .unwrap()
        .to_string();
    let feedback = app.send(reqwest::Method::POST, "/v1/feedback", &app.analyst_key, Some(&json!({"inference_id": inference, "rating": 1 + n % 5, "threat_type": "credential_access"}))).await;
    let status = feedback.status().as_u16();
    let body: Value = feedback.json().await.unwrap();
    assert!(
        status == 201 || (status == 503 && body["error"]["code"] == "unavailable"),
        "feedback answered {status}: {body}"
    );
    (status, body["id"].as_str().map(String::from), inference)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_survived_and_the_store_recovers_without_a_restart() {
    full_disk_survived("").await;
}

/// A batch the store refused is retried as its backoff ends, not at the
/// writer's next tick, here ten minutes away; every exchange wakes the
/// writer (a sixteenth of a queue of 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_captures_are_retried_without_waiting_for_the_writers_tick() {
    full_disk_survived("[capture]\nflush_every_ms = 600000\nqueue_capacity = 16").await;
}

async fn full_disk_survived(extra: &str) {
    let Some(disk) = SmallDisk::mount(24) else {
        return;
    };
    let data_dir = disk.path().join("data");
    let app = spawn_app_with(Options {
        data_dir: Some(data_dir),
        extra: extra.into(),
        ..Options::default()
    })
    .await;
    let mut acknowledged = Vec::new();
    for n in 0..5 {
        let (status, id, inference) = chat_and_rate(&app, n).await;
        assert_eq!(status, 201);
        acknowledged.push((id.unwrap(), inference));
    }

    let filler = disk.fill();
    // Keep chatting and rating until the store refuses a write.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = None;
    for n in 5.. {
        assert!(
            Instant::now() < deadline,
            "the full disk never refused feedback"
        );
        let (status, id, inference) = chat_and_rate(&app, n).await;
        if status != 201 {
            refused = Some(status);
            break;
        }
        acknowledged.push((id.unwrap(), inference));
    }
    let refused = refused.unwrap();
    assert_eq!(refused, 503);
    // Chats go on; capture holds what it cannot store meanwhile.
    let mut held = Vec::new();
    for n in 0..3 {
        held.push(held_chat(&app, n).await);
    }
    assert_eq!(
        ready(&app).await,
        503,
        "/readyz says the store cannot write"
    );
    // Nothing waits forever on the failed store.
    let started = Instant::now();
    let stats = app
        .admin(reqwest::Method::GET, "/admin/api/stats", None)
        .await;
    assert!(
        stats.status() == 200 || stats.status() == 503,
        "{}",
        stats.status()
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    std::fs::remove_file(filler).unwrap();
    eventually(
        "the store writable again",
        Duration::from_secs(60),
        || async { (ready(&app).await == 200).then_some(()) },
    )
    .await;
    // What capture held is stored, and every acknowledged feedback, on its
    // captured inference, before anything new wakes the capture writer.
    for inference_id in &held {
        eventually(
            &format!("held inference {inference_id} stored"),
            Duration::from_secs(30),
            || async { app.state.store.inference(inference_id).ok().flatten() },
        )
        .await;
    }
    all_stored(&app, &acknowledged).await;
    let (status, id, inference) = chat_and_rate(&app, 1_000).await;
    assert_eq!(status, 201, "feedback is taken again without a restart");
    all_stored(&app, &[(id.unwrap(), inference)]).await;
    let started = Instant::now();
    let (_dir, _temp) = app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown completes"
    );
}

/// A chat served while the store cannot write; its inference id.
async fn held_chat(app: &TestApp, n: usize) -> String {
    let mut request = triage_request(false);
    request["messages"][1]["content"] = json!(format!("held #{n}"));
    let chat = app.post("/v1/chat/completions", &request).await;
    assert_eq!(chat.status(), 200);
    chat.headers()["x-flywheel-inference-id"]
        .to_str()
        .unwrap()
        .to_string()
}

/// Waits for each inference to be stored, then checks its feedback is.
async fn all_stored(app: &TestApp, acknowledged: &[(String, String)]) {
    for (feedback_id, inference_id) in acknowledged {
        let stored = eventually(
            &format!("inference {inference_id} stored"),
            Duration::from_secs(30),
            || async { app.state.store.inference(inference_id).ok().flatten() },
        )
        .await;
        let feedback = app.state.store.feedback_for(&stored.id).unwrap();
        assert!(
            feedback.iter().any(|f| f.id == *feedback_id),
            "feedback {feedback_id} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_completes_while_the_store_is_failing() {
    let Some(disk) = SmallDisk::mount(24) else {
        return;
    };
    let app = spawn_app_with(Options {
        data_dir: Some(disk.path().join("data")),
        ..Options::default()
    })
    .await;
    let _filler = disk.fill();
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        assert!(
            Instant::now() < deadline,
            "the full disk never refused feedback"
        );
        if chat_and_rate(&app, n).await.0 == 503 {
            break;
        }
    }
    // Chats answered now are held by capture, which cannot store them.
    for n in 0..20 {
        held_chat(&app, n).await;
    }
    let started = Instant::now();
    let (_dir, _temp) = app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        started.elapsed()
    );
}
