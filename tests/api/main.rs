//! Integration tests: the real application on an ephemeral port, in front
//! of the real simulator on another, driven over real HTTP. One test binary
//! for all of them keeps link time down.

// Test helpers outside #[test] functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![expect(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "the tests are HTTP clients of the proxy and the simulator, like any chat app"
)]

mod helpers;

mod auth;
mod azure;
mod azure_clients;
mod capture;
mod chat;
mod cli;
mod datasets;
mod demo;
mod durability;
mod entra_apps;
mod errors;
mod evaluation_finetune;
mod evaluation_fixtures;
mod evaluations;
mod experiments;
mod feedback;
mod fine_tuning;
mod full_disk;
mod gating;
mod hardening;
mod layout;
mod leases;
mod models;
mod operations;
mod postgres;
mod postgres_cli;
mod replicas;
mod responses;
mod review;
mod self_hosted;
mod signals;
mod store_conformance;
mod streaming;
mod upgrade;
