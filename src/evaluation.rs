//! Evaluation of model versions, as plain functions over numbers and labels
//! (no HTTP, no store): the statistics of online experiments that compare a
//! candidate with production while traffic flows (`online`).

pub mod online;
