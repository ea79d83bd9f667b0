//! Provider clients: one pooled HTTP client per provider, with the timeouts
//! and the retry policy of the config, and the files and fine-tuning calls
//! (`fine_tuning`). Only this module uses reqwest.

mod client;
mod errors;
mod fine_tuning;
pub mod headers;
mod retry;

pub use client::{BodyStream, CHAT_PATH, Provider, Reply, UpstreamRequest, Upstreams};
pub use fine_tuning::{EventObject, FileObject, FineTuningError, JobObject, JobSpec, Page};
