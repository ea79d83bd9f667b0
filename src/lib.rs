//! Flywheel: a drop-in OpenAI-compatible proxy for security-triage assistants
//! that captures conversations and turns analyst feedback into better models.
//!
//! `main.rs` only parses the command line; everything else lives here so that
//! tests build the very same application on an ephemeral port.

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod capture;
pub mod config;
pub mod curation;
pub mod demo;
pub mod evaluation;
pub mod exchange;
pub mod experiment;
pub mod export;
pub mod feedback;
pub mod finetune;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod health;
pub mod ids;
pub mod limits;
pub mod openai;
pub mod proxy;
pub mod registry;
pub mod replication;
pub mod review;
pub mod routing;
pub mod server;
pub mod service;
pub mod state;
pub mod store;
pub mod telemetry;
#[cfg(test)]
mod testing;
#[allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "the one module that names the HTTP client crates (clippy.toml)"
)]
pub mod upstream;
/// jemalloc, for the binary and the tests alike (so what the tests
/// measure is what runs): capture builds and drops many small JSON values
/// per exchange, and glibc's allocator spent a fifth of the capture
/// writer's CPU growing, trimming and faulting in its heap.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
