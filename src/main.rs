//! The `flywheel` command line. Parsing only: every command calls into the
//! library. Exit codes: 0 ok, 2 bad usage or config, 1 runtime failure.

use anyhow::Context;
use clap::{Parser, Subcommand};
use flywheel::app::{Application, shutdown_signal};
use flywheel::auth::{KeyService, Role};
use flywheel::config::{Config, Secrets};
use flywheel::export::{ExportError, SplitChoice};
use flywheel_simulator::SimulatorConfig;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "flywheel",
    version,
    about = "OpenAI-compatible proxy that turns analyst feedback into better triage models"
)]
struct Cli {
    /// The config file.
    #[arg(long, global = true, default_value = "config/flywheel.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start-up; the simulator's flags make one variant large"
)]
enum Command {
    /// Run the proxy.
    Serve,
    /// Run the built-in OpenAI-compatible upstream simulator.
    Simulate {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Delay between streamed tokens, in milliseconds.
        #[arg(long, default_value_t = 0)]
        token_delay_ms: u64,
        /// Require `Authorization: Bearer <value of this variable>` on every request.
        #[arg(long)]
        api_key_env: Option<String>,
        /// Make chat completions for MODEL answer 500 with probability P (0–1); repeatable.
        #[arg(long = "fail-rate", value_name = "MODEL=P", value_parser = flywheel_simulator::parse_fail_rate)]
        fail_rates: Vec<(String, f64)>,
        /// How long a fine-tuning job spends in each status, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        job_step_ms: u64,
        /// Answer as an Azure OpenAI resource: `/openai/…` paths, the
        /// `api-key` header, `api-version`, deployments and the management API.
        #[arg(long)]
        azure: bool,
        /// Azure mode: a deployment serving MODEL under NAME, besides the
        /// base models under their own names; repeatable.
        #[arg(long = "azure-deployment", value_name = "NAME=MODEL", value_parser = deployment_arg, requires = "azure")]
        azure_deployments: Vec<(String, String)>,
        /// Azure mode: the variable holding the bearer token the management
        /// API accepts (none: the management API refuses every request).
        #[arg(long, requires = "azure")]
        azure_management_token_env: Option<String>,
        /// Azure mode: how long a created deployment stays `Creating`, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        azure_provisioning_ms: u64,
        /// Azure mode: serve Entra ID's token endpoint
        /// (`POST /{tenant}/oauth2/v2.0/token`) for one app registration
        /// whose client secret is in this variable; its tokens are accepted
        /// as bearers until they expire.
        #[arg(long, requires = "azure")]
        azure_entra_secret_env: Option<String>,
        /// Azure mode: the tenant the token endpoint serves.
        #[arg(long, default_value = "sim-tenant")]
        azure_entra_tenant: String,
        /// Azure mode: the app registration's client id.
        #[arg(long, default_value = "sim-client")]
        azure_entra_client_id: String,
        /// Azure mode: how long an issued token lasts, in seconds.
        #[arg(long, default_value_t = 3600)]
        azure_entra_token_ttl_s: u64,
        /// Azure mode: the variable holding a federated token (client
        /// assertion) the token endpoint also accepts for the app.
        #[arg(long, requires = "azure_entra_secret_env")]
        azure_entra_assertion_env: Option<String>,
        /// Azure mode: also serve App Service's managed identity endpoint
        /// (`GET /msi/token`), which wants the secret in this variable as
        /// `X-IDENTITY-HEADER` (the metadata service's endpoint,
        /// `/metadata/identity/oauth2/token`, is served with the token
        /// endpoint).
        #[arg(long, requires = "azure_entra_secret_env")]
        azure_entra_identity_header_env: Option<String>,
        /// Azure mode: the app roles the app registration holds, comma
        /// separated: its tokens' `roles` claim.
        #[arg(long, value_delimiter = ',', requires = "azure_entra_secret_env")]
        azure_entra_app_roles: Vec<String>,
    },
    /// Simulator + proxy + admin UI on loopback with a fresh data directory.
    Demo {
        #[arg(long, default_value_t = 25)]
        token_delay_ms: u64,
        /// How many real alerts to send through the proxy at start (rated,
        /// two in three labelled and approved); 0 starts empty.
        #[arg(long, default_value_t = 200)]
        seed: usize,
    },
    /// Create, list or revoke API keys (with the embedded store, the server must not be running; with PostgreSQL it may).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Write conversations with their turns and feedback, or one dataset's files, as JSONL (with the embedded store, the server must not be running; with PostgreSQL it may).
    Export {
        #[arg(long)]
        out: PathBuf,
        /// Export this dataset snapshot's JSONL instead of the conversations.
        #[arg(long)]
        dataset: Option<String>,
        /// Which of the dataset's files (with --dataset).
        #[arg(long, value_enum, default_value_t = SplitArg::Train, requires = "dataset")]
        split: SplitArg,
    },
    /// Validate the config and print it as it takes effect (secrets masked).
    CheckConfig,
    /// Copy an embedded store (a data directory) into the PostgreSQL database `store.url_env` names, and verify the counts; safe to run again.
    MigrateStore {
        /// The embedded store's data directory (its server stopped).
        #[arg(long)]
        from: PathBuf,
        /// Where to: the only target is the PostgreSQL database.
        #[arg(long, value_enum)]
        to: StoreTarget,
    },
    /// Create or upgrade the PostgreSQL schema (`[store] kind = "postgres"`) and exit; `serve` also does this at start.
    Migrate,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Print a new key once on stdout; only its hash is stored.
    Create {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        name: String,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StoreTarget {
    Postgres,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SplitArg {
    Train,
    Validation,
    All,
}

impl From<SplitArg> for SplitChoice {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Train => Self::Train,
            SplitArg::Validation => Self::Validation,
            SplitArg::All => Self::All,
        }
    }
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// A failure that already explained itself, with its exit code.
struct Exit(u8);

fn main() -> ExitCode {
    let cli = Cli::parse();
    flywheel::telemetry::init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit(code)) => ExitCode::from(*code),
            None => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

impl std::fmt::Debug for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::error::Error for Exit {}

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path, std::env::vars()).map_err(|e| {
        eprintln!("error: {e}");
        anyhow::Error::new(Exit(2))
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Stops the runtime without waiting on blocking calls that may never
/// return (a store stuck on a failed disk): shutdown has already waited
/// for everything that can finish.
fn stop(runtime: tokio::runtime::Runtime) {
    runtime.shutdown_timeout(Duration::from_secs(2));
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => {
            let config = load_config(&cli.config)?;
            let secrets = Secrets::resolve(&config, |v| std::env::var(v).ok());
            let runtime = runtime()?;
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(config.server.listen)
                    .await
                    .with_context(|| {
                        format!("cannot listen on {} (server.listen)", config.server.listen)
                    })?;
                let app = Application::build(config, secrets, listener).map_err(start_error)?;
                tracing::info!(addr = %app.local_addr()?, "flywheel is serving");
                app.run_until_stopped(shutdown_signal()).await?;
                Ok(())
            });
            stop(runtime);
            served
        }
        Command::Simulate {
            listen,
            token_delay_ms,
            api_key_env,
            fail_rates,
            job_step_ms,
            azure,
            azure_deployments,
            azure_management_token_env,
            azure_provisioning_ms,
            azure_entra_secret_env,
            azure_entra_tenant,
            azure_entra_client_id,
            azure_entra_token_ttl_s,
            azure_entra_assertion_env,
            azure_entra_identity_header_env,
            azure_entra_app_roles,
        } => {
            let variable = |flag: &str, var: Option<String>| match var {
                Some(var) => std::env::var(&var).map(Some).map_err(|_| {
                    eprintln!("error: {flag} names {var}, which is not set");
                    anyhow::Error::new(Exit(2))
                }),
                None => Ok(None),
            };
            let management_token =
                variable("--azure-management-token-env", azure_management_token_env)?;
            let client_assertion =
                variable("--azure-entra-assertion-env", azure_entra_assertion_env)?;
            let identity_header = variable(
                "--azure-entra-identity-header-env",
                azure_entra_identity_header_env,
            )?;
            let entra = variable("--azure-entra-secret-env", azure_entra_secret_env)?.map(
                |client_secret| flywheel_simulator::EntraMode {
                    tenant: azure_entra_tenant,
                    client_id: azure_entra_client_id,
                    client_secret,
                    client_assertion,
                    token_ttl: Duration::from_secs(azure_entra_token_ttl_s),
                    identity_header,
                    app_roles: azure_entra_app_roles,
                },
            );
            let azure = azure.then(|| flywheel_simulator::AzureMode {
                deployments: azure_deployments.into_iter().collect(),
                management_token,
                provisioning_delay: Duration::from_millis(azure_provisioning_ms),
                entra,
                ..flywheel_simulator::AzureMode::default()
            });
            let api_key = variable("--api-key-env", api_key_env)?;
            runtime()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                tracing::info!(addr = %listener.local_addr()?, "simulator is serving");
                let config = SimulatorConfig {
                    token_delay: Duration::from_millis(token_delay_ms),
                    api_key,
                    fail_rates: fail_rates.into_iter().collect(),
                    job_step: Duration::from_millis(job_step_ms),
                    azure,
                };
                flywheel_simulator::serve(listener, config, shutdown_signal()).await?;
                Ok(())
            })
        }
        Command::Demo {
            token_delay_ms,
            seed,
        } => {
            let config = load_config(&cli.config)?;
            let runtime = runtime()?;
            let ran = runtime.block_on(flywheel::demo::run(
                config,
                Duration::from_millis(token_delay_ms),
                seed,
            ));
            stop(runtime);
            Ok(ran?)
        }
        Command::Keys { action } => keys(&load_config(&cli.config)?, action),
        Command::MigrateStore { from, to } => {
            let StoreTarget::Postgres = to;
            migrate_store(&load_config(&cli.config)?, &from)
        }
        Command::Migrate => {
            let config = load_config(&cli.config)?;
            if config.store.kind != flywheel::config::StoreKind::Postgres {
                eprintln!(
                    "error: config key `store.kind`: is \"sled\"; `flywheel migrate` is for \"postgres\" (the embedded store migrates itself when it opens)"
                );
                return Err(anyhow::Error::new(Exit(2)));
            }
            let secrets = Secrets::resolve(&config, |v| std::env::var(v).ok());
            let done = flywheel::store::postgres_options(&config, &secrets)
                .and_then(|options| flywheel::store::postgres::migrate(&options))
                .map_err(store_error)?;
            eprintln!("{done}");
            Ok(())
        }
        Command::Export {
            out,
            dataset,
            split,
        } => export(&load_config(&cli.config)?, &out, dataset.as_deref(), split),
        Command::CheckConfig => {
            let config = load_config(&cli.config)?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "# {} is valid. Effective configuration:",
                cli.config.display()
            )?;
            for line in Secrets::describe(&config, |v| std::env::var(v).ok()) {
                writeln!(out, "# secret {line}")?;
            }
            write!(out, "{}", config.to_toml())?;
            Ok(())
        }
    }
}

fn export(
    config: &Config,
    out: &std::path::Path,
    dataset: Option<&str>,
    split: SplitArg,
) -> anyhow::Result<()> {
    let store = open_store(config)?;
    // A dataset id is checked before the output file is created, so a
    // mistyped id leaves nothing behind.
    if let Some(id) = dataset
        && store.dataset(id)?.is_none()
    {
        eprintln!("error: {}", ExportError::UnknownDataset(id.to_string()));
        return Err(anyhow::Error::new(Exit(2)));
    }
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    match dataset {
        Some(id) => {
            let store = store.as_ref();
            let lines = flywheel::export::export_dataset(store, id, split.into(), &mut writer)?;
            eprintln!(
                "exported {lines} lines of dataset {id} to {}",
                out.display()
            );
        }
        None => {
            let count = flywheel::export::export_conversations(store.as_ref(), &mut writer)?;
            eprintln!("exported {count} conversations to {}", out.display());
        }
    }
    Ok(())
}

/// A store that cannot be used as configured exits 2 with what the
/// config key is and what is wrong; other failures are runtime ones.
fn store_error(e: flywheel::store::StoreError) -> anyhow::Error {
    match e {
        e @ flywheel::store::StoreError::Config { .. } => {
            eprintln!("error: {e}");
            anyhow::Error::new(Exit(2))
        }
        other => other.into(),
    }
}

fn start_error(e: flywheel::app::StartError) -> anyhow::Error {
    match e {
        flywheel::app::StartError::Store(e) => store_error(e),
        other => other.into(),
    }
}

fn migrate_store(config: &Config, from: &std::path::Path) -> anyhow::Result<()> {
    // The target is PostgreSQL whatever `store.kind` says: the config names
    // the variable holding its URL.
    let postgres = Config {
        store: flywheel::config::StoreConfig {
            kind: flywheel::config::StoreKind::Postgres,
            ..config.store.clone()
        },
        ..config.clone()
    };
    let secrets = Secrets::resolve(&postgres, |v| std::env::var(v).ok());
    let options = flywheel::store::postgres_options(&postgres, &secrets).map_err(store_error)?;
    let source = flywheel::store::open(from)?;
    let target = flywheel::store::PgStore::open(&options).map_err(store_error)?;
    let report = flywheel::store::transfer::copy_into(source.as_ref(), &target)?;
    eprintln!(
        "copied {} conversations, {} inferences, {} feedback, {} keys, {} audit entries, {} aliases, {} alerts ({} deliveries queued), {} datasets, {} jobs, {} evaluations, {} continuation keys, {} idempotency keys; the database's counts match",
        report.source.conversations,
        report.source.inferences,
        report.source.feedback,
        report.keys,
        report.audit,
        report.aliases,
        report.alerts,
        report.webhooks,
        report.datasets,
        report.jobs,
        report.evaluations,
        report.continuation_keys,
        report.idempotency_keys
    );
    Ok(())
}

/// The store the config names, for a command that runs beside the server.
fn open_store(config: &Config) -> anyhow::Result<flywheel::store::SharedStore> {
    let secrets = Secrets::resolve(config, |v| std::env::var(v).ok());
    flywheel::store::open_configured(config, &secrets).map_err(store_error)
}

fn keys(config: &Config, action: KeysAction) -> anyhow::Result<()> {
    let store = open_store(config)?;
    let service = KeyService::open(store)?;
    let mut out = std::io::stdout().lock();
    match action {
        KeysAction::Create { role, name } => {
            let created = service.create(&name, role, "cli")?;
            eprintln!(
                "created {} ({}, role {}); the key is shown only now:",
                created.id,
                created.name,
                created.role.as_str()
            );
            writeln!(out, "{}", created.key)?;
        }
        KeysAction::List => {
            writeln!(
                out,
                "{:<30}  {:<8}  {:<20}  {:<20}  name",
                "id", "role", "created", "revoked"
            )?;
            for k in service.list()? {
                let revoked = k.revoked_at.as_deref().unwrap_or("-");
                writeln!(
                    out,
                    "{:<30}  {:<8}  {:<20}  {:<20}  {}",
                    k.id, k.role, k.created_at, revoked, k.name
                )?;
            }
        }
        KeysAction::Revoke { id } => {
            let revoked = service.revoke(&id, "cli")?;
            eprintln!("revoked {} ({})", revoked.id, revoked.name);
        }
    }
    Ok(())
}

/// `--azure-deployment NAME=MODEL`.
fn deployment_arg(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, model)) if !name.trim().is_empty() && !model.trim().is_empty() => {
            Ok((name.trim().to_string(), model.trim().to_string()))
        }
        _ => Err(format!("expected NAME=MODEL, got `{text}`")),
    }
}
