//! The HTTP edge's state: what the route handlers and the middleware
//! (`server`, `admin`, `proxy`'s handlers, `feedback::route`, `health`)
//! reach through axum's `State`. `app::Application::build` makes it once;
//! the services below the edge never see it, only their own context
//! (`tests/api/layout.rs` keeps it so).

use crate::auth::{AuthPolicy, KeyService};
use crate::capture::{RecentThreads, Redactor};
use crate::config::Config;
use crate::exchange::ExchangeSink;
use crate::limits::RateLimits;
use crate::registry::Registry;
use crate::store::SharedStore;
use crate::upstream::Upstreams;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Read-mostly state behind every handler: the HTTP edge's, and only
/// its — services below the edge get their own context, never this.
/// What changes at run time (routes, keys) is swapped atomically inside;
/// nothing here is locked.
pub struct AppState {
    pub config: Arc<Config>,
    /// Model versions, traffic and the live routing table.
    pub registry: Arc<Registry>,
    pub upstreams: Arc<Upstreams>,
    pub keys: KeyService,
    pub auth: AuthPolicy,
    pub limits: RateLimits,
    pub store: SharedStore,
    pub exchanges: ExchangeSink,
    /// Turns answered a moment ago, for their follow-ups to thread onto
    /// before the capture writer has stored them.
    pub recent: Arc<RecentThreads>,
    /// Items put into provider-kept conversations, for their next turn.
    pub conversation_items: Arc<crate::capture::PendingItems>,
    /// Copies of live requests for shadow versions.
    pub mirror: Arc<crate::proxy::Mirror>,
    /// Applied to every captured record before it is stored.
    pub redactor: Arc<Redactor>,
    /// Offline evaluation: queuing, running, alerting.
    pub evaluation: Arc<crate::evaluation::Context>,
    /// Fine-tuning jobs and continuous learning.
    pub fine_tuning: Arc<crate::finetune::Context>,
    /// The service that stops a significantly worse candidate.
    pub guardrails: Arc<crate::experiment::Guardrails>,
    /// Analyst feedback, by route or header.
    pub feedback: Arc<crate::feedback::Context>,
    pub metrics: PrometheusHandle,
    pub started_unix: u64,
    /// Cancelled when shutdown begins; every background service watches it.
    pub shutdown: CancellationToken,
}
