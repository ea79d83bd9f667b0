//! Provider clients: one pooled HTTP client per provider, with the timeouts
//! and the retry policy of the config, the files and fine-tuning calls
//! (`fine_tuning`), and the alert webhook's client. Only this module uses
//! reqwest.

mod client;
mod errors;
mod fine_tuning;
pub mod headers;
mod retry;
mod webhook;

pub use client::{BodyStream, CHAT_PATH, Provider, Reply, UpstreamRequest, Upstreams};
pub use fine_tuning::{EventObject, FileObject, FineTuningError, JobObject, JobSpec, Page};
pub use webhook::Webhook;
