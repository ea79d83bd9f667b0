//! Capture: every finished exchange becomes an inference record in the
//! store, written by a batching worker off the hot path.

mod record;
mod redact;
pub mod threading;
mod writer;

pub use record::{CaptureMeta, build_record};
pub use redact::Redactor;
pub use writer::run_writer;
