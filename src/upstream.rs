//! Provider clients: one pooled HTTP client per provider, with the timeouts
//! and the retry policy of the config; the alert webhook's client. Only
//! this module uses reqwest.

mod client;
mod errors;
pub mod headers;
mod retry;
mod webhook;

pub use client::{BodyStream, CHAT_PATH, Provider, Reply, UpstreamRequest, Upstreams};
pub use webhook::Webhook;
