//! Store calls from the HTTP side: they block, so they run off the async
//! workers, bounded by [`crate::store::CALL_LIMIT`], and what goes wrong
//! comes back as an [`ApiError`] through its `From` impls.

use super::ApiError;

/// Runs `f` (store calls) on the blocking pool, for at most
/// [`crate::store::CALL_LIMIT`].
pub async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::time::timeout(crate::store::CALL_LIMIT, tokio::task::spawn_blocking(f)).await {
        Ok(joined) => joined?.map_err(Into::into),
        Err(_) => Err(store_too_slow()),
    }
}

/// A store call that outlived [`crate::store::CALL_LIMIT`].
fn store_too_slow() -> ApiError {
    ApiError::Unavailable(format!(
        "the store did not answer within {} s; retry shortly",
        crate::store::CALL_LIMIT.as_secs()
    ))
}
