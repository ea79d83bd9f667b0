//! The configuration's typed sections and their defaults, in one place.

use super::azure::{AzureDeploymentConfig, AzureUrlStyle, EntraConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub capture: CaptureConfig,
    #[serde(default)]
    pub taxonomy: TaxonomyConfig,
    #[serde(default)]
    pub fine_tuning: FineTuningConfig,
    #[serde(default)]
    pub evaluation: EvaluationConfig,
    #[serde(default)]
    pub store: StoreConfig,
}

/// Where Flywheel keeps its state: the embedded sled store in
/// `server.data_dir` (one process), or a PostgreSQL database that several
/// replicas share.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// The environment variable holding the PostgreSQL connection URL
    /// (`postgres://user:password@host:port/db`); never the URL itself, so
    /// the password stays out of the config file.
    pub url_env: String,
    /// Connections per process.
    pub pool_size: usize,
    /// The longest one statement may run, and the longest a store call
    /// waits for a connection; beyond it the call fails as unavailable.
    pub statement_timeout_ms: u64,
    /// With PostgreSQL: how long a background service's lease outlives
    /// its holder's last renewal — how soon another replica takes over
    /// the work of one that died.
    pub lease_ttl_s: u64,
    /// With PostgreSQL and `sslmode=require` in the URL: certificates (PEM)
    /// of the CAs that may sign the server's certificate, besides the
    /// public roots.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Sled,
            url_env: "FLYWHEEL_DATABASE_URL".into(),
            pool_size: 8,
            statement_timeout_ms: 5_000,
            lease_ttl_s: 30,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sled,
    Postgres,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    /// Names the provider for model names that are no alias; the first one otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_provider: Option<String>,
    /// How long in-flight requests may run on after SIGTERM/SIGINT.
    pub shutdown_grace_s: u64,
    /// Origins allowed by CORS for browser clients; `["*"]` allows any.
    pub cors_allow_origins: Vec<String>,
    /// A request head must arrive within this long of its first byte.
    pub header_read_timeout_s: u64,
    /// How long a connection may wait for its next request (and a new
    /// one for its first) before it is closed.
    pub idle_timeout_s: u64,
    /// A request body must arrive in full within this long of its head
    /// (408 otherwise). Raise it for large uploads over slow links.
    pub body_read_timeout_s: u64,
    /// Open connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// The largest request head (request line and headers) accepted; a
    /// larger one is answered 431. At least 8192.
    pub max_header_bytes: usize,
    /// The level of the one log line each request gets.
    pub request_log: RequestLog,
}

/// The level of the per-request log line: `info` for a server, `debug`
/// where the lines would drown what a person reads (the demo's terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestLog {
    Info,
    Debug,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            max_body_bytes: 10 * 1024 * 1024,
            default_provider: None,
            shutdown_grace_s: 30,
            cors_allow_origins: vec!["*".into()],
            header_read_timeout_s: 10,
            idle_timeout_s: 60,
            body_read_timeout_s: 30,
            max_connections: 4096,
            max_header_bytes: 64 * 1024,
            request_log: RequestLog::Info,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The variable holding the bootstrap admin credential.
    pub admin_token_env: String,
    /// Serve requests that carry no Flywheel key as an anonymous client.
    pub allow_anonymous_clients: bool,
    /// Forward a client's own provider key (one that is no Flywheel key) upstream.
    pub passthrough_client_keys: bool,
    /// Microsoft Entra ID access tokens accepted in place of a key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entra: Option<super::EntraAuthConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            admin_token_env: "FLYWHEEL_ADMIN_TOKEN".into(),
            allow_anonymous_clients: false,
            passthrough_client_keys: false,
            entra: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Per key and per replica (each process keeps its own buckets); 0
    /// turns rate limiting off.
    pub requests_per_minute: u32,
    pub burst: u32,
    /// How many replicas share the traffic: each takes
    /// `requests_per_minute / replicas` (and `burst / replicas`, at least
    /// 1), so a key's limit across the whole deployment is about the one
    /// configured. 1 for a single process.
    pub replicas: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            requests_per_minute: 600,
            burst: 60,
            replicas: 1,
        }
    }
}

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// The OpenAI API shape: `{base_url}/chat/completions`, bearer key.
    #[default]
    Openai,
    /// Azure OpenAI: see `config/azure.rs`.
    Azure,
    /// A trainer run as a child process; it fine-tunes, it serves nothing.
    Command,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    /// What the provider is: an OpenAI-compatible API (the default), Azure
    /// OpenAI, or a trainer command that fine-tunes but serves no chat.
    #[serde(default)]
    pub kind: ProviderKind,
    /// The API root (`…/v1`); a `command` provider has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub base_url: String,
    /// The variable holding this provider's API key; none for local servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Whole request, first byte to last.
    #[serde(default = "defaults::timeout_s")]
    pub timeout_s: u64,
    /// Until the upstream's response headers and first body bytes.
    #[serde(default = "defaults::first_byte_timeout_s")]
    pub first_byte_timeout_s: u64,
    #[serde(default = "defaults::connect_timeout_s")]
    pub connect_timeout_s: u64,
    /// Retries before the first byte reached the client (connect errors, 429, 5xx).
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    /// A `retry-after` longer than this is not waited for: the 429 goes to the client.
    #[serde(default = "defaults::max_retry_wait_s")]
    pub max_retry_wait_s: u64,
    /// The largest answer read whole (a unary reply: 502 past it) or kept
    /// for capture (a stream, relayed whole all the same).
    #[serde(default = "defaults::max_answer_bytes")]
    pub max_answer_bytes: usize,
    /// This provider accepts `/files` and `/fine_tuning/jobs`, or (a
    /// `command` provider) runs its trainer.
    #[serde(default)]
    pub fine_tuning: bool,
    /// Azure: the `api-version` query parameter every request carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Azure: `deployments` (the default) or `v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_style: Option<AzureUrlStyle>,
    /// Azure: the variable holding a Microsoft Entra ID bearer token, used
    /// instead of an `api-key` (`api_key_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_env: Option<String>,
    /// Azure: Entra ID client credentials, which Flywheel exchanges for
    /// tokens and renews, instead of `api_key_env` or `bearer_token_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra: Option<EntraConfig>,
    /// Azure: the management API through which a fine-tuned model is
    /// deployed; without it a succeeded job awaits an admin's deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<AzureDeploymentConfig>,
    /// `kind = "openai"`: the server takes LoRA adapters loaded at run time
    /// (`POST {base_url}/load_lora_adapter`, vLLM with
    /// `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`).
    #[serde(default)]
    pub lora: bool,
    /// `kind = "command"`: the trainer's argv (no shell), with placeholders
    /// (see `finetune::trainer`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// `kind = "command"`: where each job gets a directory of its own (its
    /// data files and its adapter's output directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapters_dir: Option<PathBuf>,
    /// `kind = "command"`: the `lora = true` providers its adapters are
    /// loaded into; the candidate is registered on the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serve_on: Vec<String>,
    /// `kind = "command"`: the longest a trainer may run before it is
    /// stopped and its job fails.
    #[serde(default = "defaults::max_run_s")]
    pub max_run_s: u64,
}

impl ProviderConfig {
    /// Whether chat requests can be sent to it.
    pub fn serves(&self) -> bool {
        self.kind != ProviderKind::Command
    }
}

impl ProviderConfig {
    pub(super) fn placeholder() -> Self {
        Self {
            name: String::new(),
            kind: ProviderKind::Openai,
            base_url: String::new(),
            api_key_env: None,
            timeout_s: defaults::timeout_s(),
            first_byte_timeout_s: defaults::first_byte_timeout_s(),
            connect_timeout_s: defaults::connect_timeout_s(),
            max_retries: defaults::max_retries(),
            max_retry_wait_s: defaults::max_retry_wait_s(),
            max_answer_bytes: defaults::max_answer_bytes(),
            fine_tuning: false,
            api_version: None,
            url_style: None,
            bearer_token_env: None,
            entra: None,
            deployment: None,
            lora: false,
            command: Vec::new(),
            adapters_dir: None,
            serve_on: Vec::new(),
            max_run_s: defaults::max_run_s(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The alias clients ask for.
    pub name: String,
    pub model_type: ModelType,
    pub versions: Vec<VersionConfig>,
    /// The version serving production traffic on first start; the first one otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production: Option<String>,
    /// When a candidate is stopped automatically.
    #[serde(default)]
    pub guardrails: GuardrailConfig,
}

/// Automatic protection of an alias's traffic: a candidate whose error
/// rate or negative-feedback rate is significantly worse than
/// production's (always-valid sequential test at `alpha`) loses its
/// traffic, with an alert and an audit entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardrailConfig {
    pub enabled: bool,
    /// Watch the error rate (errors and fallbacks per request).
    pub error_rate: bool,
    /// Watch the share of negative feedback (thumbs down, ratings ≤ 2).
    pub negative_feedback: bool,
    /// The false-alarm bound of the sequential test, in (0, 0.5].
    pub alpha: f64,
    /// How often candidates are checked.
    pub check_interval_s: u64,
}

impl Default for GuardrailConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            error_rate: true,
            negative_feedback: true,
            alpha: 0.05,
            check_interval_s: 10,
        }
    }
}

impl ModelConfig {
    pub fn production_version(&self) -> Option<&VersionConfig> {
        match &self.production {
            Some(name) => self.versions.iter().find(|v| &v.name == name),
            None => self.versions.first(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    ThreatDetection,
    LogAnalysis,
    TriagePriority,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VersionConfig {
    pub name: String,
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    pub enabled: bool,
    /// `"credentials"` selects the built-in secret patterns; anything else is a regex.
    pub redact: Vec<String>,
    pub flush_every_ms: u64,
    /// Finished exchanges waiting for the capture writer.
    pub queue_capacity: usize,
    /// The bytes of requests and answers those exchanges (and the records
    /// the writer made of them, until stored) may hold.
    pub queue_max_bytes: usize,
    /// What happens to an exchange when the queue is full.
    pub on_queue_full: QueueFullPolicy,
    /// With `wait`: how long an exchange may wait for room before it is dropped.
    pub queue_wait_ms: u64,
    /// Unlabelled, unapproved inferences older than this are purged; none
    /// is purged when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// The capture writer's CPU priority.
    pub writer_priority: WriterPriority,
    /// Chat apps' housekeeping requests, captured tagged and kept out of
    /// review and datasets.
    pub background_tasks: BackgroundTasksConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackgroundTasksConfig {
    pub enabled: bool,
    /// Regexes matched against the newest user message.
    pub patterns: Vec<String>,
}

impl Default for BackgroundTasksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            patterns: crate::capture::background::DEFAULT_PATTERNS
                .iter()
                .map(|p| (*p).to_string())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriterPriority {
    /// Only CPU the request path leaves over (`SCHED_IDLE` on Linux).
    Background,
    /// The same priority as request handling.
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Drop the newest exchange at once (counted and logged).
    Drop,
    /// Park it in a background task until there is room or `queue_wait_ms`
    /// passes; the response never waits either way.
    Wait,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            redact: vec!["credentials".into()],
            flush_every_ms: 200,
            queue_capacity: 8192,
            queue_max_bytes: 256 * 1024 * 1024,
            on_queue_full: QueueFullPolicy::Drop,
            queue_wait_ms: 1000,
            retention_days: None,
            writer_priority: WriterPriority::Background,
            background_tasks: BackgroundTasksConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaxonomyConfig {
    pub threat_types: Vec<String>,
    pub severities: Vec<String>,
}

impl Default for TaxonomyConfig {
    fn default() -> Self {
        let threat_types = [
            "benign",
            "false_positive",
            "malware",
            "ransomware",
            "phishing",
            "credential_access",
            "lateral_movement",
            "privilege_escalation",
            "persistence",
            "defense_evasion",
            "command_and_control",
            "exfiltration",
            "discovery",
            "execution",
            "impact",
            "suspicious_activity",
        ];
        let severities = ["informational", "low", "medium", "high", "critical"];
        Self {
            threat_types: threat_types.map(String::from).to_vec(),
            severities: severities.map(String::from).to_vec(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FineTuningConfig {
    pub enabled: bool,
    pub min_examples: usize,
    pub max_examples: usize,
    pub validation_split: f64,
    pub poll_interval_s: u64,
    /// Put first in every example whose conversation brought no system message.
    pub system_prompt: String,
    /// How an example's target is written: the presets `answer` (the
    /// default: the correction or the answer verbatim, in the app's own
    /// format), `labelled` and `json`, or text with `{threat_type}`,
    /// `{severity}`, `{answer}` and `{rationale}` placeholders.
    pub answer_template: String,
    /// Every message of an example must have at least this many characters…
    pub min_message_chars: usize,
    /// …and at most this many.
    pub max_message_chars: usize,
    /// Tokens one example may have for a base model not in `token_limits`.
    pub default_token_limit: usize,
    /// Tokens one example may have, by base model; the longest name that
    /// starts the base model's name applies, so snapshots find their family.
    pub token_limits: BTreeMap<String, usize>,
    /// Percent of the alias's traffic a fine-tuned model gets, taken from
    /// production, as soon as its job succeeds; 0 registers it without
    /// traffic.
    pub canary_weight: f64,
    /// Jobs started automatically as approved conversations accumulate.
    pub continuous: ContinuousConfig,
}

/// Continuous learning: once `min_new_approved` conversations were
/// approved since an alias's last job, a dataset is built and a job
/// started for it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContinuousConfig {
    pub enabled: bool,
    pub min_new_approved: u64,
    pub check_interval_s: u64,
}

impl Default for ContinuousConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            min_new_approved: 100,
            check_interval_s: 3600,
        }
    }
}

impl Default for FineTuningConfig {
    fn default() -> Self {
        let token_limits = [
            ("gpt-4o-mini", 65_536),
            ("gpt-4o", 65_536),
            ("gpt-3.5-turbo", 16_385),
        ];
        Self {
            enabled: true,
            min_examples: 50,
            max_examples: 1000,
            validation_split: 0.2,
            poll_interval_s: 30,
            system_prompt: "You are a security analyst. For each alert, state its threat type and severity, then explain the evidence for them.".into(),
            answer_template: "answer".into(),
            min_message_chars: 10,
            max_message_chars: 4000,
            default_token_limit: 16_385,
            token_limits: token_limits
                .map(|(model, tokens)| (model.to_string(), tokens))
                .into(),
            canary_weight: 0.0,
            continuous: ContinuousConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationConfig {
    /// Scheduled evaluations; runs asked for through the API happen anyway.
    pub enabled: bool,
    pub interval_s: u64,
    pub targets: EvaluationTargets,
    pub extractor: ExtractorConfig,
    /// Requests an evaluation has in flight towards the upstreams at once.
    pub concurrency: usize,
    /// A metric that fell by more than this since the version's previous
    /// run raises an alert, as one under its target does.
    pub alert_drop: f64,
    /// Where evaluation alerts are POSTed as Slack-compatible JSON.
    pub webhook_url: Option<String>,
    /// Attempts per alert before the webhook gives up on it.
    pub webhook_attempts: u32,
    /// The wait before the first retry; each further one doubles it.
    pub webhook_backoff_ms: u64,
    /// With `enabled`, refuse a promotion unless the candidate's latest
    /// evaluation passes `promotion_requires` (an admin may force it).
    pub gate_promotion: bool,
    /// What a candidate's latest evaluation must show to be promoted.
    pub promotion_requires: PromotionRule,
}

/// What gating asks of a candidate's latest evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionRule {
    /// Higher accuracy than production on the same dataset and split, and
    /// no lower macro-F1.
    BeatsProduction,
    /// Every configured target met.
    MeetsTargets,
    /// Either of the two.
    Either,
    /// Both.
    Both,
}

impl PromotionRule {
    pub fn name(self) -> &'static str {
        match self {
            Self::BeatsProduction => "beats_production",
            Self::MeetsTargets => "meets_targets",
            Self::Either => "either",
            Self::Both => "both",
        }
    }
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_s: 86_400,
            targets: EvaluationTargets::default(),
            extractor: ExtractorConfig::default(),
            concurrency: 4,
            alert_drop: 0.05,
            webhook_url: None,
            webhook_attempts: 5,
            webhook_backoff_ms: 500,
            gate_promotion: true,
            promotion_requires: PromotionRule::BeatsProduction,
        }
    }
}

/// How the predicted threat type and severity are read from a model's
/// answer. The defaults read a JSON verdict and the simulator's
/// `Threat type: …` / `Severity: …` lines, also as Markdown bullets,
/// headings or bold; a line that starts with other punctuation (a JSON
/// object's `{"threat_type": …`) is left to the JSON reader.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractorConfig {
    /// The readers tried for each field, first to last, until one yields a
    /// taxonomy value.
    pub order: Vec<ExtractorSource>,
    /// Dotted path of the threat type in a JSON answer (`verdict.threat_type`
    /// reaches into nested objects).
    pub json_threat_type_field: String,
    pub json_severity_field: String,
    /// The first capture group is the threat type.
    pub threat_type_regex: String,
    /// The first capture group is the severity.
    pub severity_regex: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractorSource {
    /// The answer as a JSON object, or the first JSON object inside it
    /// (surrounding prose or a fenced code block).
    Json,
    /// The configured regexes over the answer text.
    Regex,
}

impl Default for ExtractorConfig {
    fn default() -> Self {
        Self {
            order: vec![ExtractorSource::Json, ExtractorSource::Regex],
            json_threat_type_field: "threat_type".into(),
            json_severity_field: "severity".into(),
            threat_type_regex:
                r#"(?im)^[ \t>*_#-]*threat[ _-]?type[ \t*_]*:[ \t*_"'`]*([a-z](?:[a-z _-]*[a-z])?)"#
                    .into(),
            severity_regex:
                r#"(?im)^[ \t>*_#-]*severity[ \t*_]*:[ \t*_"'`]*([a-z](?:[a-z _-]*[a-z])?)"#.into(),
        }
    }
}

/// The seed's success metrics, shown against live numbers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluationTargets {
    pub accuracy: f64,
    pub precision_high_severity: f64,
    pub recall_critical: f64,
}

impl Default for EvaluationTargets {
    fn default() -> Self {
        Self {
            accuracy: 0.90,
            precision_high_severity: 0.85,
            recall_critical: 0.95,
        }
    }
}

mod defaults {
    pub fn timeout_s() -> u64 {
        600
    }
    pub fn first_byte_timeout_s() -> u64 {
        60
    }
    pub fn connect_timeout_s() -> u64 {
        10
    }
    /// 64 MiB: far above a chat answer's size, even with log probabilities.
    pub fn max_answer_bytes() -> usize {
        64 * 1024 * 1024
    }
    pub fn max_retries() -> u32 {
        2
    }
    pub fn max_retry_wait_s() -> u64 {
        20
    }
    pub fn max_run_s() -> u64 {
        86_400
    }
}
