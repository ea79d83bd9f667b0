//! Evaluation of model versions, as plain functions over numbers and labels
//! (no HTTP, no store): the statistics of online experiments that compare a
//! candidate with production while traffic flows (`online`), and the
//! offline metrics of versions over a labelled evaluation set (`metrics`),
//! with the predictions read from the answers by `extract`.

pub mod extract;
pub mod metrics;
pub mod online;
