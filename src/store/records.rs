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

/// One chat completion as captured (DESIGN §5).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InferenceRecord {
    pub id: String,
    /// The upstream's completion id (`chatcmpl-…`), when it sent one.
    pub completion_id: Option<String>,
    pub alias: Option<String>,
    pub version: Option<String>,
    pub provider_model: String,
    /// `{messages, params}`.
    pub request: serde_json::Value,
    /// `{choices: [{index, message, finish_reason}], usage, error}`.
    pub response: serde_json::Value,
    pub streamed: bool,
    /// `ok`, `upstream_error`, `client_cancelled` or `partial`.
    pub status: String,
    pub http_status: u16,
    pub latency_ms: f64,
    pub first_byte_ms: Option<f64>,
    pub key_id: String,
    pub user: Option<String>,
    pub tags: std::collections::BTreeMap<String, String>,
    pub conversation_id: String,
    pub created_at: String,
}

/// A conversation: its turns in order, and the one it branched from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConversationRecord {
    pub id: String,
    pub inference_ids: Vec<String>,
    /// The conversation this one branched from (a regenerated or edited turn).
    pub parent_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// Where a thread key was left: which conversation, after which turn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreadPoint {
    pub conversation_id: String,
    /// Index into the conversation's `inference_ids`.
    pub turn: usize,
}

/// One piece of feedback on an inference (DESIGN §4.3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeedbackRecord {
    pub id: String,
    pub inference_id: String,
    pub conversation_id: String,
    /// The key id of whoever gave it.
    pub author: String,
    pub rating: Option<u8>,
    pub thumbs: Option<String>,
    pub threat_type: Option<String>,
    pub severity: Option<String>,
    pub quality_score: Option<u8>,
    pub notes: Option<String>,
    pub correction: Option<String>,
    pub approved_for_training: Option<bool>,
    pub created_at: String,
}
