//! Turning a request's credentials into a [`Caller`].

use super::{EntraTokens, KEY_PREFIX, KeyRing, Role, hash_key};
use crate::openai::ApiError;
use axum::http::{HeaderMap, HeaderValue, header};
use parking_lot::RwLock;
use secrecy::SecretString;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use subtle::ConstantTimeEq;

/// How a caller proved who it is.
#[derive(Clone, Debug)]
pub enum Credential {
    Key,
    AdminToken,
    /// A Microsoft Entra ID access token (`[auth.entra]`).
    Entra,
    Anonymous,
    /// A client's own provider key, forwarded upstream instead of ours.
    Passthrough(SecretString),
}

/// The authenticated caller, put into request extensions for handlers.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Key id; also the rate-limit bucket.
    pub id: Arc<str>,
    pub role: Role,
    pub credential: Credential,
}

impl Caller {
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs a key with the {} role; yours has {}",
                role.as_str(),
                self.role.as_str()
            )))
        }
    }
}

/// What [`authenticate`] checks against; built once at start-up.
pub struct AuthPolicy {
    pub ring: Arc<KeyRing>,
    /// Hash of the bootstrap admin token, when one is set.
    pub admin_token_hash: Option<String>,
    pub allow_anonymous: bool,
    pub passthrough: bool,
    /// Entra ID tokens accepted in place of a key, when configured.
    pub entra: Option<Arc<EntraTokens>>,
}

pub fn authenticate(
    policy: &AuthPolicy,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<Caller, ApiError> {
    let Some(token) = presented_key(headers)? else {
        return anonymous(policy, peer).ok_or_else(|| {
            ApiError::Unauthorized(
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>` \
                 (or `api-key: <key>`, as Azure OpenAI clients do)."
                    .into(),
            )
        });
    };
    if let Some(entra) = &policy.entra
        && EntraTokens::looks_like_jwt(token)
    {
        return entra.verify(token);
    }
    let hash = hash_key(token);
    if let Some(admin) = &policy.admin_token_hash
        && bool::from(hash.as_bytes().ct_eq(admin.as_bytes()))
    {
        return Ok(Caller {
            id: "admin-token".into(),
            role: Role::Admin,
            credential: Credential::AdminToken,
        });
    }
    if token.starts_with(KEY_PREFIX) {
        return policy
            .ring
            .find(&hash)
            .map(|entry| Caller {
                id: entry.id,
                role: entry.role,
                credential: Credential::Key,
            })
            .ok_or_else(|| {
                ApiError::Unauthorized("Incorrect API key provided, or the key was revoked.".into())
            });
    }
    if policy.passthrough {
        return Ok(Caller {
            id: format!("passthrough-{}", &hash[..12]).into(),
            role: Role::Client,
            credential: Credential::Passthrough(SecretString::from(token)),
        });
    }
    anonymous(policy, peer)
        .ok_or_else(|| ApiError::Unauthorized("Incorrect API key provided.".into()))
}

fn anonymous(policy: &AuthPolicy, peer: Option<IpAddr>) -> Option<Caller> {
    policy.allow_anonymous.then(|| Caller {
        id: match peer {
            Some(ip) => anonymous_id(ip),
            None => "anonymous".into(),
        },
        role: Role::Client,
        credential: Credential::Anonymous,
    })
}

/// Addresses whose anonymous id is kept; past this many the set starts over.
const ANONYMOUS_KEPT: usize = 4096;

/// `anonymous-{ip}`, written once per address: formatting an address
/// showed in the request path's profile.
fn anonymous_id(ip: IpAddr) -> Arc<str> {
    static KEPT: LazyLock<RwLock<HashMap<IpAddr, Arc<str>>>> = LazyLock::new(RwLock::default);
    if let Some(id) = KEPT.read().get(&ip) {
        return id.clone();
    }
    let id: Arc<str> = format!("anonymous-{ip}").into();
    let mut kept = KEPT.write();
    if kept.len() >= ANONYMOUS_KEPT {
        kept.clear();
    }
    kept.insert(ip, id.clone());
    id
}

/// The key a request presents: `Authorization: Bearer <key>`, or else
/// the `api-key` header Azure OpenAI's clients send it in.
fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    if let Some(authorization) = headers.get(header::AUTHORIZATION) {
        return bearer(authorization);
    }
    let Some(value) = headers.get(AZURE_API_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("The api-key header is not valid text.".into()))?
        .trim();
    Ok((!key.is_empty()).then_some(key))
}

/// Where Azure OpenAI's clients put the key.
const AZURE_API_KEY: &str = "api-key";

fn bearer(value: &HeaderValue) -> Result<Option<&str>, ApiError> {
    let text = value.to_str().map_err(|_| {
        ApiError::Unauthorized("The Authorization header is not valid text.".into())
    })?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::Unauthorized("The Authorization header must be `Bearer <key>`.".into())
        })?;
    Ok((!token.is_empty()).then_some(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ApiKeyRecord;

    fn policy(anonymous: bool, passthrough: bool) -> AuthPolicy {
        let ring = KeyRing::from_records(&[ApiKeyRecord {
            id: "key_1".into(),
            name: "n".into(),
            role: "analyst".into(),
            hash: hash_key("fw-good"),
            created_at: String::new(),
            revoked_at: None,
        }]);
        AuthPolicy {
            ring: Arc::new(ring),
            admin_token_hash: Some(hash_key("root-token")),
            allow_anonymous: anonymous,
            passthrough,
            entra: None,
        }
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn keys_tokens_and_their_absence() {
        let p = policy(false, false);
        let c = authenticate(&p, &headers(Some("Bearer fw-good")), None).unwrap();
        assert_eq!((&*c.id, c.role), ("key_1", Role::Analyst));
        let c = authenticate(&p, &headers(Some("Bearer root-token")), None).unwrap();
        assert_eq!(c.role, Role::Admin);
        for bad in [
            None,
            Some("Bearer fw-bad"),
            Some("Bearer sk-other"),
            Some("Basic x"),
        ] {
            let e = authenticate(&p, &headers(bad), None).unwrap_err();
            assert_eq!(e.status(), 401, "{bad:?}");
        }
    }

    #[test]
    fn anonymous_and_passthrough_never_rescue_a_bad_flywheel_key() {
        let p = policy(true, true);
        let c = authenticate(&p, &headers(Some("Bearer sk-mine")), None).unwrap();
        assert!(matches!(c.credential, Credential::Passthrough(_)));
        assert!(!c.id.contains("sk-mine"));
        let c = authenticate(&p, &headers(None), Some([10, 0, 0, 1].into())).unwrap();
        assert!(matches!(c.credential, Credential::Anonymous));
        assert_eq!(
            authenticate(&p, &headers(Some("Bearer fw-revoked")), None)
                .unwrap_err()
                .status(),
            401
        );
    }

    #[test]
    fn azure_clients_present_the_key_as_api_key() {
        let p = policy(false, true);
        let azure = |key: &str| {
            let mut h = HeaderMap::new();
            h.insert(AZURE_API_KEY, key.parse().unwrap());
            h
        };
        let c = authenticate(&p, &azure("fw-good"), None).unwrap();
        assert_eq!((&*c.id, c.role), ("key_1", Role::Analyst));
        // Their own provider key, with pass-through on, as with a bearer.
        let c = authenticate(&p, &azure("azure-resource-key"), None).unwrap();
        assert!(matches!(c.credential, Credential::Passthrough(_)));
        assert_eq!(
            authenticate(&p, &azure("fw-bad"), None)
                .unwrap_err()
                .status(),
            401
        );
        // `Authorization` decides when both are sent.
        let mut both = azure("fw-good");
        both.insert(header::AUTHORIZATION, "Bearer fw-bad".parse().unwrap());
        assert_eq!(authenticate(&p, &both, None).unwrap_err().status(), 401);
    }

    #[test]
    fn roles_are_ordered() {
        let p = policy(false, false);
        let c = authenticate(&p, &headers(Some("Bearer fw-good")), None).unwrap();
        assert!(c.require(Role::Client).is_ok() && c.require(Role::Analyst).is_ok());
        assert_eq!(c.require(Role::Admin).unwrap_err().status(), 403);
    }
}
