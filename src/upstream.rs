//! Provider clients: one pooled HTTP client per provider, with the timeouts
//! and the retry policy of the config. Only this module uses reqwest.

mod client;
mod errors;
pub mod headers;
mod retry;

pub use client::{BodyStream, CHAT_PATH, Provider, Reply, UpstreamRequest, Upstreams};
