//! Analyst feedback: `POST /v1/feedback` and the `x-flywheel-feedback`
//! header on any request. Both go through [`submit`], which checks the
//! values against the taxonomy and the author's role, finds the inference
//! (by its id or the upstream completion id), and answers only once the
//! record is durable.

mod header;
mod route;
mod submit;

pub use header::parse_header;
pub use route::post_feedback;
pub use submit::{FeedbackRequest, feedback_view, submit};

use crate::config::TaxonomyConfig;
use crate::evaluation::extract::Extractor;
use crate::exchange::InFlight;
use crate::store::SharedStore;
use std::sync::Arc;
use std::time::Duration;

/// What taking feedback needs, built once by the application and used by
/// the route and the header alike.
pub struct Context {
    pub store: SharedStore,
    /// What the values are checked against.
    pub taxonomy: TaxonomyConfig,
    /// How often capture flushes (`capture.flush_every_ms`): a lookup
    /// waits for an inference still on its way.
    pub flush_every: Duration,
    /// Exchanges capture has not stored yet.
    pub in_flight: InFlight,
    /// Reads the labels an answer states, for the experiment tallies.
    pub extractor: Arc<Extractor>,
}
