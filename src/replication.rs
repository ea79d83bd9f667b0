//! Several replicas on one PostgreSQL store: what one replica keeps in
//! memory and another may change — the registry's routing table and the
//! key ring — is reloaded when the store's change feed says so (within
//! a moment of the change), after each reconnection of the feed and
//! periodically, so a missed notification heals by itself. An embedded
//! store has no feed and this does nothing.
//!
//! Background work that must run once across replicas asks
//! [`crate::store::Store::try_lease`] before each round (see
//! docs/POSTGRES.md for where each service takes its lease).

use crate::app::AppState;
use crate::store::postgres::Change;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Follows the store's change feed until `stop`, if it has one.
pub fn follow_changes(state: &Arc<AppState>, stop: CancellationToken) {
    let Some(feed) = state.store.change_feed() else {
        return;
    };
    let weak = Arc::downgrade(state);
    feed.follow(
        Arc::new(move |change| {
            if let Some(state) = weak.upgrade() {
                apply(&state, change);
            }
        }),
        stop,
    );
}

/// Reloads what `change` names; a failure is logged and healed by the
/// next reconcile.
fn apply(state: &AppState, change: Change) {
    if matches!(change, Change::Registry | Change::All)
        && let Err(e) = state.registry.reload()
    {
        tracing::warn!(error = %e, "cannot reload the model registry");
    }
    if matches!(change, Change::Keys | Change::All)
        && let Err(e) = state.keys.reload()
    {
        tracing::warn!(error = %e, "cannot reload the API keys");
    }
}
