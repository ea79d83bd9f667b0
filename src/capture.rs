//! Capture: every finished exchange becomes an inference record in the
//! store, written by a batching worker off the hot path.

pub mod answer;
pub mod background;
mod items;
mod lenient;
mod priority;
mod recent;
mod record;
mod redact;
pub mod responses;
mod retention;
pub mod threading;
pub mod tokens;
mod usage;
mod writer;

pub use background::BackgroundTasks;
pub use items::PendingItems;
pub use recent::{RecentThreads, Registration};
pub use record::{CaptureMeta, build_record};
pub use redact::Redactor;
pub use retention::{purge_once, run_retention};
#[cfg(any(test, fuzzing))]
pub(crate) use writer::prepare;
pub use writer::{WriterSetup, start_writer};
