//! The in-memory set of live keys, read lock-free on every request.

use super::Role;
use crate::store::ApiKeyRecord;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct KeyEntry {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub role: Role,
}

/// Hash → key, rebuilt from the store whenever a key is created or revoked.
#[derive(Default)]
pub struct KeyRing {
    by_hash: ArcSwap<HashMap<String, KeyEntry>>,
}

impl KeyRing {
    pub fn from_records(records: &[ApiKeyRecord]) -> Self {
        let ring = Self::default();
        ring.replace(records);
        ring
    }

    pub fn replace(&self, records: &[ApiKeyRecord]) {
        let live = records
            .iter()
            .filter(|r| r.revoked_at.is_none())
            .filter_map(|r| {
                let role = r.role.parse().ok()?;
                let entry = KeyEntry {
                    id: r.id.as_str().into(),
                    name: r.name.as_str().into(),
                    role,
                };
                Some((r.hash.clone(), entry))
            })
            .collect();
        self.by_hash.store(Arc::new(live));
    }

    pub fn find(&self, hash: &str) -> Option<KeyEntry> {
        self.by_hash.load().get(hash).cloned()
    }
}
