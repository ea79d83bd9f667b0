//! `flywheel demo`: the simulator and the proxy on loopback, a fresh data
//! directory, a client key and an admin token — everything needed to point
//! a chat app at Flywheel and look around — plus, unless `--seed 0`, real
//! alerts sent through it so the admin UI has conversations to show.

mod seed;

use crate::app::{Application, StartError};
use crate::auth::Role;
use crate::config::{Config, Secrets};
use crate::simulate::{self, SimulatorConfig};
use secrecy::SecretString;
use std::io::Write;
use std::net::SocketAddr;
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

    let listener = match bind(config.server.listen).await {
        Ok(l) => l,
        // Another service on the usual port should not spoil the demo.
        Err(_) => bind(SocketAddr::new(config.server.listen.ip(), 0)).await?,
    };
    let admin_token = crate::auth::new_secret_token();
    let secrets = Secrets {
        admin_token: Some(SecretString::from(admin_token.clone())),
        ..Secrets::default()
    };
    let app = Application::build(config, secrets, listener)?;
    let addr = app.local_addr().map_err(DemoError::Run)?;
    let state = app.state();
    let client = state
        .keys
        .create("demo client", Role::Client, "demo")
        .map_err(StartError::from)?;

    let sim_shutdown = state.shutdown.clone();
    let simulator = tokio::spawn(simulate::serve(
        sim_listener,
        SimulatorConfig {
            token_delay,
            ..SimulatorConfig::default()
        },
        async move { sim_shutdown.cancelled().await },
    ));
    let analyst = state
        .keys
        .create("demo analyst", Role::Analyst, "demo")
        .map_err(StartError::from)?;
    print_banner(addr, sim_addr, &client.key, &admin_token);
    let seeding = tokio::spawn(seed::seed(
        state.clone(),
        addr,
        seed::Callers {
            client_key: client.key.clone(),
            analyst_key: analyst.key,
        },
        seed_count,
    ));
    app.run_until_stopped(crate::app::shutdown_signal())
        .await
        .map_err(DemoError::Run)?;
    seeding.abort();
    let _ = seeding.await;
    let _ = simulator.await;
    drop(data);
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, DemoError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DemoError::Listen {
            addr: addr.to_string(),
            source,
        })
}

fn print_banner(proxy: SocketAddr, simulator: SocketAddr, client_key: &str, admin_token: &str) {
    let text = format!(
        "\nFlywheel demo is running (Ctrl-C stops it; its data is thrown away).\n\n\
         \x20 OpenAI base URL   http://{proxy}/v1\n\
         \x20 Admin UI          http://{proxy}/admin/\n\
         \x20 Simulator         http://{simulator}/v1  (the stand-in provider)\n\
         \x20 Client key        {client_key}\n\
         \x20 Admin token       {admin_token}\n\n\
         Try it:\n\
         \x20 curl -s http://{proxy}/v1/chat/completions \\\n\
         \x20   -H 'Authorization: Bearer {client_key}' -H 'Content-Type: application/json' \\\n\
         \x20   -d '{{\"model\":\"triage\",\"messages\":[{{\"role\":\"user\",\"content\":\"Endpoint alert: LSASS memory read by rundll32.exe comsvcs.dll MiniDump\"}}]}}'\n\n"
    );
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
