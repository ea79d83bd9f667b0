//! Who is calling: Flywheel keys with roles, the bootstrap admin token,
//! Microsoft Entra ID access tokens, anonymous clients and client-supplied
//! provider keys.
//!
//! Keys are stored as SHA-256 hashes; the live set is held in memory and
//! swapped atomically on change, so authentication never touches the store.

mod entra;
mod keyring;
mod keys;
mod middleware;

pub use entra::EntraTokens;
pub use keyring::KeyRing;
pub use keys::{CreatedKey, KeyError, KeyService, hash_key, new_secret_token};
pub use middleware::{AuthPolicy, Caller, Credential, authenticate};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Analyst,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "client" => Ok(Role::Client),
            "analyst" => Ok(Role::Analyst),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}` (expected client, analyst or admin)"
            )),
        }
    }
}

/// Every Flywheel key starts with this, which tells it apart from a
/// provider key a client may send when pass-through is on.
pub const KEY_PREFIX: &str = "fw-";
