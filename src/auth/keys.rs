//! Creating, listing and revoking keys: shared by the CLI (no server) and
//! the admin API, so both store and audit the same way.

use super::{KEY_PREFIX, KeyRing, Role};
use crate::ids::{new_id, now_rfc3339};
use crate::store::{ApiKeyRecord, SharedStore, StoreError};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no key with id `{0}`")]
    NotFound(String),
    #[error("`name` must be 1 to 100 characters")]
    BadName,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The response to a creation: the only time the key itself is shown.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedKey {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub key: String,
    pub created_at: String,
}

/// SHA-256 hex of a presented key. Keys are 256 random bits, so a fast hash
/// is enough: there is nothing to brute-force.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn generate_key() -> String {
    format!("{KEY_PREFIX}{}", random_hex())
}

/// A random admin token for the demo: deliberately not key-shaped, so it can
/// only ever match the bootstrap token.
pub fn new_secret_token() -> String {
    format!("fwadmin-{}", random_hex())
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[derive(Clone)]
pub struct KeyService {
    store: SharedStore,
    ring: Arc<KeyRing>,
    /// Held while the keys are read and the ring replaced, so a read from
    /// before a change never replaces the ring after it.
    reloading: Arc<parking_lot::Mutex<()>>,
}

impl KeyService {
    /// Loads the live keys from the store into a fresh ring.
    pub fn open(store: SharedStore) -> Result<Self, KeyError> {
        let ring = Arc::new(KeyRing::from_records(&store.keys()?));
        Ok(Self {
            store,
            ring,
            reloading: Arc::new(parking_lot::Mutex::new(())),
        })
    }

    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.clone()
    }

    pub fn create(&self, name: &str, role: Role, actor: &str) -> Result<CreatedKey, KeyError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(KeyError::BadName);
        }
        let key = generate_key();
        let record = ApiKeyRecord {
            id: new_id("key"),
            name: name.to_string(),
            role: role.as_str().to_string(),
            hash: hash_key(&key),
            created_at: now_rfc3339(),
            revoked_at: None,
        };
        self.store.insert_key(&record)?;
        self.audit(
            actor,
            "key.create",
            &record.id,
            serde_json::json!({"name": name, "role": role}),
        )?;
        self.reload()?;
        Ok(CreatedKey {
            id: record.id,
            name: record.name,
            role,
            key,
            created_at: record.created_at,
        })
    }

    /// Every key ever created, revoked ones included, oldest first; never the key itself.
    pub fn list(&self) -> Result<Vec<ApiKeyRecord>, KeyError> {
        Ok(self.store.keys()?)
    }

    pub fn revoke(&self, id: &str, actor: &str) -> Result<ApiKeyRecord, KeyError> {
        let record = self
            .store
            .revoke_key(id, &now_rfc3339())
            .map_err(|e| match e {
                StoreError::NotFound => KeyError::NotFound(id.to_string()),
                other => KeyError::Store(other),
            })?;
        self.audit(actor, "key.revoke", id, serde_json::Value::Null)?;
        self.reload()?;
        Ok(record)
    }

    /// Reads the keys again (another replica may have changed them).
    pub fn reload(&self) -> Result<(), KeyError> {
        let _held = self.reloading.lock();
        self.ring.replace(&self.store.keys()?);
        Ok(())
    }

    fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        details: serde_json::Value,
    ) -> Result<(), StoreError> {
        crate::audit::record(self.store.as_ref(), actor, action, target, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_keys_authenticate_until_revoked_and_are_never_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).unwrap();
        let service = KeyService::open(store.clone()).unwrap();
        let created = service.create("ci", Role::Analyst, "test").unwrap();
        assert!(created.key.starts_with(KEY_PREFIX));
        let entry = service.ring().find(&hash_key(&created.key)).unwrap();
        assert_eq!(entry.role, Role::Analyst);

        let stored = serde_json::to_string(&store.keys().unwrap()).unwrap();
        assert!(!stored.contains(&created.key));

        service.revoke(&created.id, "test").unwrap();
        assert!(service.ring().find(&hash_key(&created.key)).is_none());
        assert!(matches!(
            service.revoke("key_nope", "t"),
            Err(KeyError::NotFound(_))
        ));
        let actions: Vec<_> = store
            .audit(None, 10)
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect();
        assert_eq!(actions, ["key.revoke", "key.create"]);
    }

    #[test]
    fn names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let service = KeyService::open(crate::store::open(dir.path()).unwrap()).unwrap();
        assert!(matches!(
            service.create("  ", Role::Client, "t"),
            Err(KeyError::BadName)
        ));
    }
}
