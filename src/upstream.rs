//! Provider clients: per provider, the pooled connection that relayed
//! requests go through (`transport`: hyper's client, or reqwest through a
//! proxy), with the timeouts and the retry policy of the config; the files
//! and fine-tuning calls (`fine_tuning`, reqwest), runtime LoRA adapters
//! (`lora`), the alert webhook's client, and documents services publish
//! (`published`: an identity platform's signing keys). Only this module
//! names the HTTP client crates.

mod azure;
mod client;
mod errors;
mod fine_tuning;
pub mod headers;
mod lora;
mod published;
mod retry;
mod signing;
mod transport;
mod webhook;

pub use azure::management::DeploymentObject;
pub use client::{
    BodyStream, CHAT_PATH, Collected, Cut, Provider, Reply, UpstreamRequest, Upstreams,
};
pub use fine_tuning::{EventObject, FileObject, FineTuningError, JobObject, JobSpec, Page};
pub use published::Published;
pub use signing::Signing;
pub use transport::ByteStream;
pub use webhook::Webhook;
