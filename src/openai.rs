//! The OpenAI wire format as Flywheel speaks it: the error type every handler
//! returns (mapped once to the OpenAI error JSON), a JSON extractor whose
//! rejections are that error, and the SSE framing details.

mod blocking;
mod body;
mod error;
pub mod sse;

pub use blocking::blocking;
pub use body::{ApiJson, ApiQuery, BodyLimit, parse_json, read_body};
pub use error::{ApiError, ErrorBody, UpstreamFailure, error_json};
