//! Request bodies: read under the size limit, and JSON whose every rejection
//! is an [`ApiError`] naming the offending field.

use super::ApiError;
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// Reads the whole body, or 413 once it exceeds `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::PayloadTooLarge { limit }
        } else if let Some(timeout) = body_timeout(&e) {
            ApiError::RequestTimeout(timeout.to_string())
        } else {
            ApiError::invalid(format!("could not read the request body: {e}"), None)
        }
    })
}

/// The body-read timeout behind a body error, if that is what it was.
fn body_timeout<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a crate::server::BodyTimedOut> {
    let mut source = Some(e);
    while let Some(e) = source {
        if let Some(timeout) = e.downcast_ref::<crate::server::BodyTimedOut>() {
            return Some(timeout);
        }
        source = e.source();
    }
    None
}

/// Parses JSON; the error names the path of the field that is wrong.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
        ));
    }
    // Tracking the path costs as much as the parse itself, and only a
    // rejection needs it: parse plainly first, and again with the path
    // only to say what was wrong.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    de.end().map_err(|e| json_error_plain(&e))?;
    Ok(value)
}

fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if inner.is_syntax() || inner.is_eof() || path == "." {
        return json_error_plain(&inner);
    }
    ApiError::invalid(format!("invalid value for `{path}`: {inner}"), Some(&path))
}

fn json_error_plain(e: &serde_json::Error) -> ApiError {
    ApiError::invalid(format!("the request body is not valid JSON: {e}"), None)
}

/// `Json` whose rejections are OpenAI-shaped errors (400/413).
pub struct ApiJson<T>(pub T);

/// The body limit for [`ApiJson`], put in request extensions by the server.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(10 * 1024 * 1024, |l| l.0);
        let bytes = read_body(req.into_body(), limit).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// `Query` whose rejections are OpenAI-shaped 400s.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::invalid(e.body_text(), None))
    }
}
