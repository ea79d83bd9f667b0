//! The audit log: every admin write, with who did it, to what, and how.

use crate::ids::{new_id, now_rfc3339};
use crate::store::{AuditRecord, Store, StoreError};
use serde_json::Value;

/// Appends an entry and makes it durable with everything written before.
pub fn record(
    store: &dyn Store,
    actor: &str,
    action: &str,
    target: &str,
    details: Value,
) -> Result<(), StoreError> {
    store.append_audit(&AuditRecord {
        id: new_id("audit"),
        at: now_rfc3339(),
        actor: actor.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        details,
    })?;
    store.flush()
}
