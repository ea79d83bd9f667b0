//! Evaluation of model versions. Plain functions over numbers and labels
//! (no HTTP, no store): the statistics of online experiments that compare a
//! candidate with production while traffic flows (`online`), and the
//! offline metrics of versions over a labelled evaluation set (`metrics`),
//! with the predictions read from the answers by `extract`. Over the store
//! and the upstreams: offline evaluation runs (`run`) and the service that
//! runs them (`runner`), scheduled runs (`schedule`), alerts after a run
//! (`watch`) and their webhook (`notify`), and promotion gating (`gate`).

pub mod extract;
pub mod gate;
pub mod metrics;
pub mod notify;
pub mod online;
pub mod run;
pub mod runner;
pub mod schedule;
pub mod watch;

pub use notify::AlertHook;
pub use runner::Runner;
