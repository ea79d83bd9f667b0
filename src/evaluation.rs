//! Evaluation of model versions. Plain functions over numbers and labels
//! (no HTTP, no store): the statistics of online experiments that compare a
//! candidate with production while traffic flows (`online`), and the
//! offline metrics of versions over a labelled evaluation set (`metrics`),
//! with the predictions read from the answers by `extract`. Over the store
//! and the upstreams: offline evaluation runs (`run`) and the service that
//! runs them (`runner`), scheduled runs (`schedule`), alerts after a run
//! (`watch`) and their webhook (`notify`), and promotion gating (`gate`).

pub mod extract;
pub mod gate;
pub mod metrics;
pub mod notify;
pub mod online;
pub mod run;
pub mod runner;
pub mod schedule;
pub mod watch;

pub use notify::AlertHook;
pub use runner::Runner;

use crate::config::EvaluationConfig;
use crate::registry::Registry;
use crate::store::SharedStore;
use crate::upstream::Upstreams;
use extract::Extractor;
use std::sync::Arc;

/// What offline evaluation needs, built once by the application: queuing
/// a run (the admin API, the schedule), running it (the runner) and the
/// alerts after it.
pub struct Context {
    pub store: SharedStore,
    /// The aliases and their versions, and the routes to them.
    pub registry: Arc<Registry>,
    /// Where an example is sent.
    pub upstreams: Arc<Upstreams>,
    /// `evaluation`: concurrency, targets, alerts, the schedule.
    pub config: EvaluationConfig,
    /// `taxonomy.threat_types`, the classes a run is scored over.
    pub threat_types: Vec<String>,
    /// Reads the threat type and severity an answer states.
    pub extractor: Arc<Extractor>,
    /// Woken when a run is queued.
    pub runner: Runner,
    /// Sends evaluation alerts to the webhook, when one is configured.
    pub alert_hook: Arc<AlertHook>,
}
