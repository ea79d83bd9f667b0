//! `flywheel demo` as a newcomer meets it: the real binary, its terminal
//! read line by line. The `curl` it prints answers at once while it
//! seeds; the terminal shows progress, not request logs, and ends with
//! the banner (saying where the demo went when its port was busy); and
//! the README's steps, run as they stand, fine-tune a model that beats
//! production on the held-out split and promote it.

use crate::helpers::process::{Process, flywheel};
use serde_json::Value;
use std::io::BufRead;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// A running demo, its configured port held busy by the test (so it falls
/// back to another, and never competes for the usual one).
struct Demo {
    /// Killed when the test ends, however it ends.
    _process: Process,
    /// Each stdout line with the moment it was read.
    lines: Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
    busy_port: u16,
    stderr: std::path::PathBuf,
    _busy: std::net::TcpListener,
    _dir: tempfile::TempDir,
}

impl Demo {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("demo.log");
        let mut command = flywheel();
        command
            .arg("demo")
            .args(args)
            .env("FLYWHEEL__SERVER__LISTEN", format!("127.0.0.1:{busy_port}"))
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut process = Process::spawn("flywheel demo", &mut command);
        let stdout = process.take_stdout();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Demo {
            _process: process,
            lines,
            seen: Vec::new(),
            busy_port,
            stderr,
            _busy: busy,
            _dir: dir,
        }
    }

    /// Reads lines until one contains `what`; that line's index in `seen`.
    fn until(&mut self, what: &str, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.1.contains(what);
                    self.seen.push(line);
                    if found {
                        return self.seen.len() - 1;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "the demo printed no line with {what:?} within {within:?}; it printed:\n{}",
                    self.text()
                ),
            }
        }
    }

    fn text(&self) -> String {
        let lines: Vec<&str> = self.seen.iter().map(|(_, l)| l.as_str()).collect();
        lines.join("\n")
    }

    /// The last word of the first line seen that starts with `label`.
    fn field(&self, label: &str) -> String {
        self.seen
            .iter()
            .find(|(_, l)| l.trim_start().starts_with(label))
            .and_then(|(_, l)| l.split_whitespace().last())
            .unwrap_or_else(|| panic!("no {label} in:\n{}", self.text()))
            .to_string()
    }
}

/// The printed `curl`, read back: its URL, its key and its body.
fn printed_curl(demo: &Demo) -> (String, String, Value) {
    let text = demo.text();
    let url = text
        .split("curl -s ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no curl in:\n{text}"))
        .to_string();
    let key = text
        .split("Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap()
        .to_string();
    let body = text
        .split("-d '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap();
    (url, key, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn the_printed_curl_answers_at_once_while_the_demo_seeds_and_the_terminal_stays_readable() {
    // Debug for the server's module: the request lines must be there, at
    // debug level, and only there.
    let mut demo = Demo::start(
        &["--token-delay-ms", "0"],
        &[("RUST_LOG", "info,flywheel::server=debug")],
    );
    let curl_body = demo.until("-d '", Duration::from_secs(60));
    assert!(
        demo.text().contains(&format!(
            "Port {} was busy, so the demo listens on port",
            demo.busy_port
        )),
        "{}",
        demo.text()
    );
    let (url, key, body) = printed_curl(&demo);
    let answered = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let at = Instant::now();
    assert_eq!(answered.status(), 200, "the printed curl, run at once");
    let answer: Value = answered.json().await.unwrap();
    assert!(
        answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Threat type: credential_access")
    );
    let ready = demo.until("Flywheel demo is ready", Duration::from_secs(180));
    assert!(
        demo.seen[ready].0 > at,
        "the curl was answered while the demo was still seeding"
    );
    let progress: Vec<&str> = demo.seen[curl_body..ready]
        .iter()
        .map(|(_, l)| l.as_str())
        .filter(|l| l.contains("seeding: "))
        .collect();
    assert!(
        progress.iter().any(|l| l.contains("/200 conversations"))
            && progress.last().is_some_and(|l| l.contains("200/200")),
        "{progress:?}"
    );
    demo.until("  3. ", Duration::from_secs(10));
    let end = demo.until("promotes it if it is better", Duration::from_secs(10));
    let banner: String = demo.seen[ready..=end]
        .iter()
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    for expected in [
        "Admin token",
        "Client key",
        "Seeded 200 conversations through the proxy: 134 labelled and approved",
        "was busy, so the demo listens on port",
        "Next:",
        "curl -s",
    ] {
        assert!(banner.contains(expected), "{expected} in:\n{banner}");
    }

    let log = std::fs::read_to_string(&demo.stderr).unwrap();
    let requests: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("flywheel::server") && l.contains(" request "))
        .collect();
    assert!(requests.len() > 200, "the seed's requests are logged");
    for line in &requests {
        assert!(
            line.contains("DEBUG"),
            "a request logged above debug: {line}"
        );
        let ms = line
            .split(" ms=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no ms= in {line}"));
        let decimals = ms.split('.').nth(1).map_or(0, str::len);
        assert!(
            decimals <= 1 && ms.parse::<f64>().is_ok(),
            "ms={ms} in {line}"
        );
    }
}

/// The README's block under "From reviewed chats to a better model in
/// production", with its first two lines pointed at `api` and `admin`.
fn readme_steps(api: &str, admin: &str) -> String {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## From reviewed chats to a better model in production")
        .nth(1)
        .expect("the README has the section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the section has a shell block");
    let mut replaced = (false, false);
    let lines: Vec<String> = block
        .lines()
        .map(|line| {
            if line.starts_with("API=") {
                replaced.0 = true;
                format!("API={api}")
            } else if line.starts_with("ADMIN=") {
                replaced.1 = true;
                format!("ADMIN={admin}")
            } else {
                line.to_string()
            }
        })
        .collect();
    assert_eq!(replaced, (true, true), "the block sets API= and ADMIN=");
    lines.join("\n")
}

#[tokio::test]
async fn the_readme_steps_fine_tune_a_better_model_from_the_demo_and_promote_it() {
    for tool in ["bash", "curl", "jq"] {
        let found = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "the README's steps need {tool} (scripts/test.sh installs it)"
        );
    }
    let mut demo = Demo::start(&["--token-delay-ms", "0"], &[]);
    demo.until("Flywheel demo is ready", Duration::from_secs(180));
    demo.until("Admin token", Duration::from_secs(10));
    let admin = demo.field("Admin token");
    let api = demo.field("Admin UI").replace("/admin/", "/admin/api");
    let script = readme_steps(&api, &admin);
    let run = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the README's steps finish within 5 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let http = reqwest::Client::new();
    let get = |path: String| {
        let request = http.get(format!("{api}{path}")).bearer_auth(&admin);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let job = &get("/fine-tuning/jobs".into()).await["data"][0];
    let tuned = job["registered_version"].as_str().unwrap().to_string();
    let dataset = get(format!("/datasets/{}", job["dataset_id"].as_str().unwrap())).await;
    assert_eq!(
        (
            &dataset["counts"]["accepted"],
            &dataset["counts"]["validation"]
        ),
        (&Value::from(134), &Value::from(27)),
        "{dataset}"
    );
    let run = &get("/evaluations".into()).await["data"][0];
    assert_eq!(
        (&run["status"], &run["split"]),
        (&Value::from("succeeded"), &Value::from("validation"))
    );
    let (base, ft) = (&run["results"]["base"], &run["results"][&tuned]);
    eprintln!(
        "on the demo's held-out split: base accuracy {}, macro-F1 {}; {tuned} accuracy {}, macro-F1 {}; McNemar p {}",
        base["accuracy"],
        base["macro_f1"],
        ft["accuracy"],
        ft["macro_f1"],
        run["comparison"]["mcnemar_p"]
    );
    for metric in ["accuracy", "macro_f1"] {
        assert!(
            ft[metric].as_f64().unwrap() > base[metric].as_f64().unwrap(),
            "the fine-tune beats base on {metric}: {run}"
        );
    }
    let alias = get("/models/triage".into()).await;
    assert_eq!(alias["production"], tuned.as_str(), "promoted: {stdout}");
    let audit = get("/audit?limit=20".into()).await;
    let promotion = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("model.promote"))
        })
        .unwrap();
    assert_eq!(
        promotion["action"], "model.promote",
        "through the gate, not forced"
    );
}
