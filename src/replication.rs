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

use crate::auth::KeyService;
use crate::registry::Registry;
use crate::store::SharedStore;
use crate::store::postgres::Change;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What another replica may change under this one.
#[derive(Clone)]
pub struct Followed {
    pub registry: Arc<Registry>,
    pub keys: KeyService,
}

/// Follows the store's change feed until `stop`, if it has one.
pub fn follow_changes(store: &SharedStore, followed: Followed, stop: CancellationToken) {
    let Some(feed) = store.change_feed() else {
        return;
    };
    feed.follow(Arc::new(move |change| apply(&followed, change)), stop);
}

/// Reloads what `change` names; a failure is logged and healed by the
/// next reconcile.
fn apply(followed: &Followed, change: Change) {
    if matches!(change, Change::Registry | Change::All)
        && let Err(e) = followed.registry.reload()
    {
        tracing::warn!(error = %e, "cannot reload the model registry");
    }
    if matches!(change, Change::Keys | Change::All)
        && let Err(e) = followed.keys.reload()
    {
        tracing::warn!(error = %e, "cannot reload the API keys");
    }
}
