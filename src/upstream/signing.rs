//! How a provider's requests are signed, and whether they can be now: for
//! operators (`GET /admin/api/providers`), who otherwise learn of a
//! missing key or a failing Entra ID renewal from failed chats.

use super::azure::entra::Entra;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signing {
    /// `key` (a key or token from the environment), `entra` (client
    /// credentials), `managed_identity`, or `none` (nothing is sent).
    pub source: &'static str,
    /// Whether a request would be signed now.
    pub ready: bool,
    /// How long the current token stays valid, in seconds (Entra ID).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_for_s: Option<u64>,
    /// Why requests cannot be signed now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Signing {
    /// A key read from the environment at start: set, or missing
    /// (`problem` says which variable).
    pub fn key(missing: Option<String>) -> Self {
        Self {
            source: "key",
            ready: missing.is_none(),
            valid_for_s: None,
            problem: missing,
        }
    }

    /// Nothing configured: requests go unsigned, as to a local server.
    pub fn none() -> Self {
        Self {
            source: "none",
            ready: true,
            valid_for_s: None,
            problem: None,
        }
    }

    /// Entra ID tokens: the current one's remaining life, or why there is none.
    pub fn entra(entra: &Entra) -> Self {
        let source = if entra.is_managed_identity() {
            "managed_identity"
        } else {
            "entra"
        };
        match entra.valid_for() {
            Ok(left) => Self {
                source,
                ready: true,
                valid_for_s: Some(left.as_secs()),
                problem: None,
            },
            Err(why) => Self {
                source,
                ready: false,
                valid_for_s: None,
                problem: Some(why),
            },
        }
    }
}
