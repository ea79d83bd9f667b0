//! Spawning the simulator and the proxy for a test, each on port 0, each
//! test with its own temporary store; the one way tests send requests to
//! the app (`TestApp::send`), the one way they wait for something
//! (`eventually`), and, in `process`, the one way they run the binary.

pub mod postgres;
pub mod process;

use flywheel::app::{AppState, Application};
use flywheel::auth::Role;
use flywheel::config::{Config, Secrets};
use flywheel_simulator::SimulatorConfig;
use secrecy::SecretString;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const ADMIN_TOKEN: &str = "test-admin-token";
pub const PROVIDER_KEY: &str = "sk-provider-secret-0123456789";

pub async fn spawn_simulator(config: SimulatorConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(flywheel_simulator::serve(
        listener,
        config,
        std::future::pending(),
    ));
    addr
}

/// A config whose `sim` provider points at `upstream`, plus a `dead`
/// provider nothing listens on. `options.extra` is appended verbatim,
/// `options.provider_extra` goes inside the `sim` provider table.
pub fn config_toml(upstream: SocketAddr, data_dir: &std::path::Path, options: &Options) -> String {
    let Options {
        provider_extra,
        extra,
        limits,
        server_extra,
        ..
    } = options;
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "{data}"
max_body_bytes = 65536
shutdown_grace_s = 10
{server_extra}

{limits}

[[providers]]
name = "sim"
base_url = "http://{upstream}/v1"
api_key_env = "SIM_KEY"
{provider_extra}

[[providers]]
name = "dead"
base_url = "http://127.0.0.1:1/v1"
max_retries = 0

[[models]]
name = "triage"
model_type = "threat_detection"
production = "base"
  [[models.versions]]
  name = "base"
  provider = "sim"
  model = "gpt-4o-mini"
  [[models.versions]]
  name = "large"
  provider = "sim"
  model = "gpt-4o"

[[models]]
name = "broken"
model_type = "threat_detection"
  [[models.versions]]
  name = "v1"
  provider = "dead"
  model = "gpt-4o-mini"

{extra}
"#,
        data = data_dir.display().to_string().replace('\\', "/"),
    )
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub upstream: SocketAddr,
    pub state: Arc<AppState>,
    pub client_key: String,
    pub analyst_key: String,
    pub http: reqwest::Client,
    pub server: JoinHandle<std::io::Result<()>>,
    pub data_dir: std::path::PathBuf,
    _data: Option<tempfile::TempDir>,
}

impl TestApp {
    /// Shuts the server down as SIGTERM would and waits until the store
    /// is flushed and released.
    /// The data directory comes back, still alive, for a restart.
    pub async fn stop(self) -> (std::path::PathBuf, Option<tempfile::TempDir>) {
        let TestApp {
            state,
            server,
            data_dir,
            _data,
            ..
        } = self;
        state.shutdown.cancel();
        server.await.unwrap().unwrap();
        drop(state);
        (data_dir, _data)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `method path` with `key` as the bearer token and `body`, when
    /// there is one, as JSON. Every request helper below is this one with
    /// some arguments filled in; requests with headers of their own are
    /// built on `http` where the test needs them.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<&serde_json::Value>,
    ) -> reqwest::Response {
        let request = self.http.request(method, self.url(path)).bearer_auth(key);
        let request = match body {
            Some(body) => request.json(body),
            None => request,
        };
        request.send().await.unwrap()
    }

    /// `send` with the bootstrap admin token.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> reqwest::Response {
        self.send(method, path, ADMIN_TOKEN, body).await
    }

    /// GET an admin route with the bootstrap admin token; asserts a 200.
    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        let response = self.admin(reqwest::Method::GET, path, None).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// POST JSON to the proxy with the client key.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, &self.client_key, Some(body))
            .await
    }

    /// The admin view of conversation `id` once `turns` of its turns are
    /// stored (capture writes off the hot path, so a conversation just
    /// answered shows a moment later).
    pub async fn stored_turns(&self, id: &str, turns: usize) -> serde_json::Value {
        let path = format!("/admin/api/conversations/{id}");
        eventually(
            &format!("{turns} stored turns in conversation {id}"),
            Duration::from_secs(30),
            || async {
                let response = self.admin(reqwest::Method::GET, &path, None).await;
                if response.status() != 200 {
                    return Err(format!("status {}", response.status()));
                }
                let body: serde_json::Value = response.json().await.unwrap();
                let ok = body["turns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| t["status"] == "ok")
                    .count();
                if ok >= turns {
                    Ok(body)
                } else {
                    Err(body.to_string())
                }
            },
        )
        .await
    }

    /// The sum of a Prometheus metric over its labels, 0 when `/metrics`
    /// does not show it.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metric_where(name, &[]).await
    }

    /// The sum of a Prometheus metric over the series carrying every one
    /// of `labels` (name, value), 0 when `/metrics` shows none.
    pub async fn metric_where(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until capture has taken every exchange answered so far:
    /// stored it, or set it aside as not to be captured. What was not
    /// stored by then never will be, so a test checks an absence after it.
    pub async fn capture_settled(&self) {
        let in_flight = self.state.exchanges.in_flight();
        eventually(
            "capture to take every exchange answered so far",
            Duration::from_secs(30),
            || async { (in_flight.count() == 0).then_some(()) },
        )
        .await;
    }
}

pub struct Options {
    pub simulator: SimulatorConfig,
    pub provider_extra: String,
    pub extra: String,
    /// The `[limits]` section.
    pub limits: String,
    /// More keys of the `[server]` section.
    pub server_extra: String,
    /// Serve against this upstream instead of a fresh simulator.
    pub upstream: Option<SocketAddr>,
    /// Use this data directory (kept afterwards) instead of a fresh one.
    pub data_dir: Option<std::path::PathBuf>,
    /// Use PostgreSQL with this URL (`postgres::database_in`) whatever
    /// `FLYWHEEL_TEST_STORE` says.
    pub database: Option<String>,
    /// `store.ca_file` for that database.
    pub database_ca: Option<std::path::PathBuf>,
    /// Environment variables the app reads its secrets from, beside
    /// `SIM_KEY` (the provider key) and the database URL.
    pub env: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            simulator: SimulatorConfig {
                api_key: Some(PROVIDER_KEY.into()),
                ..SimulatorConfig::default()
            },
            provider_extra: String::new(),
            extra: String::new(),
            limits: "[limits]\nrequests_per_minute = 60000\nburst = 10000".into(),
            server_extra: String::new(),
            upstream: None,
            data_dir: None,
            database: None,
            database_ca: None,
            env: Vec::new(),
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let upstream = match options.upstream {
        Some(addr) => addr,
        None => spawn_simulator(options.simulator.clone()).await,
    };
    let (data, data_dir) = match &options.data_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let temp = tempfile::tempdir().unwrap();
            let dir = temp.path().to_path_buf();
            (Some(temp), dir)
        }
    };
    let mut toml = config_toml(upstream, &data_dir, &options);
    // With FLYWHEEL_TEST_STORE=postgres, the same tests run against a
    // schema of their own in the test database (the same one again for
    // the same data directory, so a restart finds its state).
    let database = match &options.database {
        Some(url) => Some(postgres::TestDatabase::at(url)),
        None => postgres::store_for(&data_dir).await,
    };
    if let Some(store) = &database {
        toml.push_str(&store.toml);
        if let Some(ca) = &options.database_ca {
            toml.push_str(&format!("ca_file = \"{}\"\n", ca.display()));
        }
    }
    let config = Config::from_toml_str(&toml, "test", Vec::new()).unwrap();
    let mut env: HashMap<&str, &str> = [("SIM_KEY", PROVIDER_KEY)].into();
    env.extend(
        options
            .env
            .iter()
            .map(|(name, value)| (*name, value.as_str())),
    );
    if let Some(store) = &database {
        env.insert(postgres::URL_ENV, &store.url);
    }
    let mut secrets = Secrets::resolve(&config, |v| env.get(v).map(|s| s.to_string()));
    secrets.admin_token = Some(SecretString::from(ADMIN_TOKEN));
    // A store just released by a stopped app may stay locked a moment
    // while sled's flusher lets go.
    let app = eventually(
        "the store to be free to open",
        Duration::from_secs(30),
        || async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            match Application::build(config.clone(), secrets.clone(), listener) {
                Err(flywheel::app::StartError::Store(
                    e @ flywheel::store::StoreError::Locked { .. },
                )) => Err(e.to_string()),
                built => Ok(built.unwrap()),
            }
        },
    )
    .await;
    let addr = app.local_addr().unwrap();
    let state = app.state();
    let client_key = state
        .keys
        .create("test client", Role::Client, "test")
        .unwrap()
        .key;
    let analyst_key = state
        .keys
        .create("test analyst", Role::Analyst, "test")
        .unwrap()
        .key;
    let server = tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp {
        addr,
        upstream,
        state,
        client_key,
        analyst_key,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        server,
        data_dir,
        _data: data,
    }
}

pub fn triage_request(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "triage",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are a SOC analyst. Classify the alert."},
            {"role": "user", "content": "Endpoint alert: LSASS memory dumped by rundll32.exe via comsvcs.dll MiniDump on host WS-042."}
        ]
    })
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:").map(str::trim_start))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

pub async fn error_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    let error = body["error"].clone();
    for key in ["message", "type", "param", "code"] {
        assert!(error.get(key).is_some(), "error lacks `{key}`: {body}");
    }
    (status, error)
}

/// What one look of [`eventually`] found: `Some`/`Ok` is done with its
/// value; `None` is not yet, and `Err` is not yet with what was seen,
/// which the failure message then shows.
pub trait Progress<T> {
    fn progress(self) -> Result<T, Option<String>>;
}

impl<T> Progress<T> for Option<T> {
    fn progress(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T> Progress<T> for Result<T, String> {
    fn progress(self) -> Result<T, Option<String>> {
        self.map_err(Some)
    }
}

/// Polls `check` until it is done, and gives its value; fails the test
/// naming `label` (and what the last look saw) once `within` has passed.
/// The pause between looks starts short and grows, so that quick things
/// are seen at once and slow ones are not polled hard.
pub async fn eventually<T, P: Progress<T>>(
    label: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> P,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(10);
    loop {
        let last = match check().await.progress() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            match last {
                Some(seen) => {
                    panic!("timed out after {within:?} waiting for {label}; last seen: {seen}")
                }
                None => panic!("timed out after {within:?} waiting for {label}"),
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
