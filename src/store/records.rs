//! The records the store keeps, serialised as JSON values in their trees.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// `client`, `analyst` or `admin`.
    pub role: String,
    /// SHA-256 of the key, hex. The key itself is never stored.
    pub hash: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub id: String,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[serde(default)]
    pub details: serde_json::Value,
}
