//! `flywheel demo`: the simulator and the proxy on loopback, a fresh data
//! directory, a client key and an admin token — everything needed to point
//! a chat app at Flywheel and look around — plus, unless `--seed 0`, real
//! alerts sent through it so the admin UI has conversations to show.
//!
//! The terminal is for the person trying it: the addresses, keys and a
//! `curl` that works at once (seeding has keys of its own, exempt from rate
//! limits), one progress line while seeding, then the banner again with
//! the next things to try. Per-request logs go to debug level, so they do
//! not scroll it all away.

mod banner;
mod seed;

use crate::app::{Application, StartError};
use crate::auth::Role;
use crate::config::{Config, RequestLog, Secrets};
use banner::Banner;
use flywheel_simulator::SimulatorConfig;
use secrecy::SecretString;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot create a data directory for the demo: {0}")]
    DataDir(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("{0}")]
    Run(std::io::Error),
}

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Runs until SIGINT/SIGTERM. Every provider of `config` is pointed at the
/// simulator; the data directory lives only as long as the demo.
pub async fn run(
    mut config: Config,
    token_delay: Duration,
    seed_count: usize,
) -> Result<(), DemoError> {
    let data = tempfile::Builder::new()
        .prefix("flywheel-demo-")
        .tempdir()
        .map_err(DemoError::DataDir)?;
    let sim_listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let sim_addr = sim_listener.local_addr().map_err(DemoError::Run)?;
    for provider in &mut config.providers {
        provider.base_url = format!("http://{sim_addr}/v1");
        provider.api_key_env = None;
    }
    config.server.data_dir = data.path().to_path_buf();
    config.auth.allow_anonymous_clients = true;
    config.server.request_log = RequestLog::Debug;

    let wanted = config.server.listen;
    let (listener, busy_port) = match bind(wanted).await {
        Ok(l) => (l, None),
        // Another service on the usual port should not spoil the demo; the
        // banner says where it went instead.
        Err(_) => (
            bind(SocketAddr::new(wanted.ip(), 0)).await?,
            Some(wanted.port()),
        ),
    };
    let admin_token = crate::auth::new_secret_token();
    let secrets = Secrets {
        admin_token: Some(SecretString::from(admin_token.clone())),
        ..Secrets::default()
    };
    let app = Application::build(config, secrets, listener)?;
    let addr = app.local_addr().map_err(DemoError::Run)?;
    let state = app.state();
    let create = |name: &str, role: Role| {
        state
            .keys
            .create(name, role, "demo")
            .map_err(StartError::from)
    };
    let client = create("demo client", Role::Client)?;
    // The seed's own keys: what it sends never counts against the client
    // key the banner prints, and no limit slows it.
    let seeder = create("demo seeder", Role::Client)?;
    let analyst = create("demo analyst", Role::Analyst)?;
    state.limits.exempt(&seeder.id);
    state.limits.exempt(&analyst.id);

    let sim_shutdown = state.shutdown.clone();
    let simulator = tokio::spawn(flywheel_simulator::serve(
        sim_listener,
        SimulatorConfig {
            token_delay,
            ..SimulatorConfig::default()
        },
        async move { sim_shutdown.cancelled().await },
    ));
    let banner = Banner {
        proxy: addr,
        simulator: sim_addr,
        client_key: client.key,
        admin_token,
        busy_port,
    };
    say(&banner.starting(seed_count));
    let callers = seed::Callers {
        client_key: seeder.key,
        analyst_key: analyst.key,
    };
    let newcomer = tokio::spawn(seed_then_greet(
        state.clone(),
        addr,
        callers,
        seed_count,
        banner,
    ));
    app.run_until_stopped(crate::app::shutdown_signal())
        .await
        .map_err(DemoError::Run)?;
    newcomer.abort();
    let _ = newcomer.await;
    let _ = simulator.await;
    drop(data);
    Ok(())
}

/// Seeds with a progress line, then prints the banner with what to try.
async fn seed_then_greet(
    app: Arc<crate::state::AppState>,
    proxy: SocketAddr,
    callers: seed::Callers,
    count: usize,
    banner: Banner,
) {
    let done = Arc::new(AtomicUsize::new(0));
    let seeding = tokio::spawn(seed::seed(
        app.registry.clone(),
        app.evaluation.extractor.clone(),
        proxy,
        callers,
        count,
        done.clone(),
    ));
    let mut progress = Progress::new(count);
    let seeded = loop {
        if seeding.is_finished() {
            break seeding.await.unwrap_or_default();
        }
        progress.show(done.load(Ordering::Relaxed));
        tokio::time::sleep(PROGRESS_EVERY).await;
    };
    progress.show(done.load(Ordering::Relaxed));
    progress.finish();
    say(&banner.ready(&seeded));
}

/// The one line that says how far seeding is: redrawn in place on a
/// terminal, a line per quarter when the output is a file or a pipe.
struct Progress {
    total: usize,
    terminal: bool,
    /// What was last shown (count, or quarter for a pipe).
    shown: Option<usize>,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total,
            terminal: std::io::stdout().is_terminal(),
            shown: None,
        }
    }

    fn show(&mut self, done: usize) {
        if self.total == 0 {
            return;
        }
        let line = format!("  seeding: {done}/{} conversations", self.total);
        if self.terminal {
            if self.shown != Some(done) {
                self.shown = Some(done);
                say(&format!("\r{line}"));
            }
            return;
        }
        let quarter = done * 4 / self.total;
        if self.shown != Some(quarter) {
            self.shown = Some(quarter);
            say(&format!("{line}\n"));
        }
    }

    fn finish(&self) {
        if self.terminal && self.total > 0 {
            say("\n");
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// Writes to the terminal (stdout) at once.
fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
