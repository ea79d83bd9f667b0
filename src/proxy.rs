//! The OpenAI-compatible routes clients call: chat completions (routed,
//! streamed, observed), the model list, and byte-for-byte pass-through of
//! every other `/v1/*` route to the default provider; and the same under
//! Azure OpenAI's paths (`azure`).

mod azure;
mod chat;
mod models;
mod passthrough;
mod relay;
mod request;
mod shadow;
mod thread;

pub use azure::{chat_completions as azure_chat_completions, embeddings as azure_embeddings};
pub use chat::{chat_completions, responses};
pub use models::{get_model, list_models};
pub use passthrough::passthrough;
#[cfg(any(test, fuzzing))]
pub(crate) use relay::completes;
pub use request::ChatRequest;
pub use shadow::Mirror;

use std::sync::Arc;

/// Labels a handler leaves in its response for the request metrics.
#[derive(Clone, Debug, Default)]
pub struct RouteLabels {
    pub alias: Option<Arc<str>>,
    pub version: Option<Arc<str>>,
}
