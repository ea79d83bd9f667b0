//! Microsoft Entra ID access tokens in place of a Flywheel key
//! (`[auth.entra]`), for apps that sign in with a managed identity or an
//! app registration, as keyless Azure OpenAI apps do.
//!
//! A token is accepted when it is an RS256 JWT signed by one of the
//! tenant's published keys, for one of `audiences`, from the tenant's
//! issuer and tenant (`tid`), within its lifetime (a minute of clock skew
//! allowed), and holds an app role (`roles`) that grants a Flywheel role;
//! the highest such role is the caller's, and the caller is
//! `entra:{oid}`, the app's or user's object id.
//!
//! The request path never waits on the network: the keys are fetched in
//! the background ([`EntraTokens::refresh`]) at start, every hour, and at
//! once (at most once a minute) after a token named a key not known yet,
//! which is refused meanwhile. A verified token is remembered until it
//! expires, among the newest [`REMEMBERED`], so a client that presents
//! the same token for an hour has its signature checked once.

use super::{Caller, Credential, Role};
use crate::config::EntraAuthConfig;
use crate::openai::ApiError;
use crate::upstream::Published;
use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lru::LruCache;
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Verified tokens remembered at once.
const REMEMBERED: usize = 4096;

/// Clock skew allowed on `exp` and `nbf`, as Microsoft's own libraries do.
const LEEWAY_S: u64 = 60;

/// The least time between two fetches a missing key asks for.
const REFETCH_AFTER: Duration = Duration::from_secs(60);

pub struct EntraTokens {
    audiences: Vec<String>,
    issuers: Vec<String>,
    tenant: String,
    granted: Vec<(String, Role)>,
    /// The tenant's signing keys, as published.
    source: Published,
    /// Signing keys by `kid`, swapped whole by each fetch.
    keys: ArcSwap<HashMap<String, DecodingKey>>,
    /// SHA-256 of a verified token → what it proved and until when.
    verified: Mutex<LruCache<[u8; 32], Verified>>,
    /// A token named a key not known yet: fetch now.
    wanted: Arc<Notify>,
    fetched_at: Mutex<Option<tokio::time::Instant>>,
}

#[derive(Clone)]
struct Verified {
    id: Arc<str>,
    role: Role,
    expires: u64,
}

/// The claims read; the rest are ignored.
#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    tid: Option<String>,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// A tenant's published keys: `{"keys": [{kty, kid, n, e, use?}]}`.
#[derive(Deserialize)]
struct KeySet {
    keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

impl EntraTokens {
    /// How often the keys are fetched when nothing asks sooner.
    pub const REFRESH_EVERY: Duration = Duration::from_secs(3600);

    pub fn new(config: &EntraAuthConfig) -> Result<Self, String> {
        Ok(Self {
            audiences: config.audiences.clone(),
            issuers: config.issuers(),
            tenant: config.tenant_id.clone(),
            granted: config
                .roles
                .granted()
                .into_iter()
                .map(|(value, role)| (value.to_string(), role))
                .collect(),
            source: Published::new(config.keys_url())?,
            keys: ArcSwap::from_pointee(HashMap::new()),
            verified: Mutex::new(LruCache::new(
                NonZeroUsize::new(REMEMBERED).unwrap_or(NonZeroUsize::MIN),
            )),
            wanted: Arc::new(Notify::new()),
            fetched_at: Mutex::new(None),
        })
    }

    /// Whether `token` is shaped as a JWT (three base64url parts, the
    /// first a JSON object): what is tried as an Entra ID token rather
    /// than as a key.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
    }

    /// The caller a token proves, or why it proves nothing (401) or is not
    /// allowed in (403: no app role that grants a Flywheel role).
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        if let Some(v) = self.verified.lock().get(&digest).cloned()
            && now <= v.expires + LEEWAY_S
        {
            return Ok(caller(v));
        }
        let verified = self.check(token)?;
        self.verified.lock().put(digest, verified.clone());
        Ok(caller(verified))
    }

    fn check(&self, token: &str) -> Result<Verified, ApiError> {
        let refused = |why: String| {
            ApiError::Unauthorized(format!("Microsoft Entra ID token refused: {why}."))
        };
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refused(format!("it is not a readable JWT ({e})")))?;
        if header.alg != Algorithm::RS256 {
            return Err(refused(format!(
                "it is signed with {:?}, not RS256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| refused("its header names no signing key (`kid`)".into()))?;
        let keys = self.keys.load();
        let Some(key) = keys.get(&kid) else {
            self.wanted.notify_one();
            return Err(refused(format!(
                "it is signed with key `{kid}`, which is not among the tenant's keys \
                 Flywheel has fetched; they are being fetched again, try again shortly"
            )));
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&self.audiences);
        validation.set_issuer(&self.issuers);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_S;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| refused(explain(e.kind(), &self.audiences)))?
            .claims;
        if claims.tid.as_deref() != Some(self.tenant.as_str()) {
            return Err(refused(format!(
                "it was issued in tenant `{}`, not `{}`",
                claims.tid.unwrap_or_default(),
                self.tenant
            )));
        }
        let subject = claims
            .oid
            .or(claims.sub)
            .ok_or_else(|| refused("it names no object id (`oid`)".into()))?;
        let role = self
            .granted
            .iter()
            .filter(|(value, _)| claims.roles.contains(value))
            .map(|(_, role)| *role)
            .max()
            .ok_or_else(|| {
                let wanted: Vec<&str> = self.granted.iter().map(|(v, _)| v.as_str()).collect();
                ApiError::Forbidden(format!(
                    "the Microsoft Entra ID token of `{subject}` holds none of the app roles \
                     that grant access ({}); assign one to the app or user",
                    wanted.join(", ")
                ))
            })?;
        Ok(Verified {
            id: format!("entra:{subject}").into(),
            role,
            expires: claims.exp,
        })
    }

    /// Wakes the refresher when a token named a key not known yet.
    pub fn wanted(&self) -> Arc<Notify> {
        self.wanted.clone()
    }

    /// Fetches the tenant's keys and swaps them in: how many there are
    /// now. Asked again within [`REFETCH_AFTER`] of the last fetch, it
    /// does nothing (a flood of tokens signed by an unknown key is not a
    /// flood of fetches).
    pub async fn refresh(&self) -> Result<usize, String> {
        let now = tokio::time::Instant::now();
        {
            let mut fetched_at = self.fetched_at.lock();
            if fetched_at.is_some_and(|at| now < at + REFETCH_AFTER) {
                return Ok(self.keys.load().len());
            }
            *fetched_at = Some(now);
        }
        let keys = signing_keys(self.source.fetch::<KeySet>().await?);
        if keys.is_empty() {
            return Err("the tenant's published key set lists no RSA signing key".into());
        }
        let count = keys.len();
        self.keys.store(Arc::new(keys));
        Ok(count)
    }
}

/// The RSA signing keys of a key set, by `kid`; others are skipped.
fn signing_keys(set: KeySet) -> HashMap<String, DecodingKey> {
    set.keys
        .into_iter()
        .filter(|k| k.kty == "RSA" && k.usage.as_deref().is_none_or(|u| u == "sig"))
        .filter_map(|k| {
            let key = DecodingKey::from_rsa_components(k.n.as_deref()?, k.e.as_deref()?).ok()?;
            Some((k.kid?, key))
        })
        .collect()
}

fn explain(kind: &ErrorKind, audiences: &[String]) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "it has expired".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet (`nbf`)".into(),
        ErrorKind::InvalidAudience => format!(
            "it is for another audience (`aud`); Flywheel accepts {}",
            audiences.join(", ")
        ),
        ErrorKind::InvalidIssuer => "it comes from another issuer (`iss`)".into(),
        ErrorKind::InvalidSignature => "its signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no `{claim}` claim"),
        other => format!("it cannot be read ({other:?})"),
    }
}

fn caller(v: Verified) -> Caller {
    Caller {
        id: v.id,
        role: v.role,
        credential: Credential::Entra,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    /// The simulator's published key pair: tokens a test signs as the
    /// tenant would.
    const PRIVATE_KEY: &str = include_str!("../../crates/simulator/src/entra_key.pem");
    const KEY_SET: &str = include_str!("../../crates/simulator/src/entra_jwks.json");
    const KID: &str = "flywheel-simulator-1";

    fn config() -> EntraAuthConfig {
        EntraAuthConfig {
            tenant_id: "soc-tenant".into(),
            audiences: vec!["api://flywheel".into()],
            authority: "https://login.microsoftonline.com".into(),
            roles: Default::default(),
            admin_ui_client_id: None,
        }
    }

    fn tokens() -> EntraTokens {
        let tokens = EntraTokens::new(&config()).unwrap();
        let set: KeySet = serde_json::from_str(KEY_SET).unwrap();
        tokens.keys.store(Arc::new(signing_keys(set)));
        tokens
    }

    fn claims() -> Value {
        let now = unix_now();
        json!({"aud": "api://flywheel", "iss": "https://login.microsoftonline.com/soc-tenant/v2.0",
            "iat": now, "nbf": now, "exp": now + 3600, "tid": "soc-tenant",
            "oid": "0b1c-app", "roles": ["Flywheel.Client"]})
    }

    fn sign(claims: &Value, kid: &str) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        let key = EncodingKey::from_rsa_pem(PRIVATE_KEY.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn refusal(tokens: &EntraTokens, claims: &Value) -> (u16, String) {
        match tokens.verify(&sign(claims, KID)) {
            Ok(caller) => panic!("accepted as {}", caller.id),
            Err(ApiError::Unauthorized(why)) => (401, why),
            Err(ApiError::Forbidden(why)) => (403, why),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_tenants_token_for_flywheel_is_its_app_with_its_highest_role() {
        let tokens = tokens();
        let token = sign(&claims(), KID);
        assert!(EntraTokens::looks_like_jwt(&token));
        assert!(!EntraTokens::looks_like_jwt("fw-0123456789abcdef"));
        let caller = tokens.verify(&token).unwrap();
        assert_eq!(&*caller.id, "entra:0b1c-app");
        assert_eq!(caller.role, Role::Client);
        assert!(matches!(caller.credential, Credential::Entra));
        // Remembered: the keys gone, the same token still proves the same.
        tokens.keys.store(Arc::new(HashMap::new()));
        assert_eq!(tokens.verify(&token).unwrap().role, Role::Client);

        let tokens = self::tokens();
        let mut both = claims();
        both["roles"] = json!(["Flywheel.Client", "Flywheel.Admin", "Other.Role"]);
        assert_eq!(tokens.verify(&sign(&both, KID)).unwrap().role, Role::Admin);
        // A v1.0 token of the same tenant, for the same audience.
        let mut v1 = claims();
        v1["iss"] = json!("https://sts.windows.net/soc-tenant/");
        assert_eq!(tokens.verify(&sign(&v1, KID)).unwrap().role, Role::Client);
    }

    #[test]
    fn each_way_a_token_fails_is_said() {
        let tokens = tokens();
        let with = |key: &str, value: Value| {
            let mut c = claims();
            c[key] = value;
            c
        };
        let now = unix_now();
        for (claims, status, says) in [
            (
                with("aud", json!("https://cognitiveservices.azure.com")),
                401,
                "another audience",
            ),
            (with("exp", json!(now - 2 * LEEWAY_S)), 401, "expired"),
            (with("nbf", json!(now + 2 * LEEWAY_S)), 401, "not valid yet"),
            (
                with("iss", json!("https://login.example/soc-tenant/v2.0")),
                401,
                "another issuer",
            ),
            (
                with("tid", json!("other-tenant")),
                401,
                "tenant `other-tenant`",
            ),
            (with("roles", json!(["Other.Role"])), 403, "Flywheel.Client"),
            (with("roles", json!([])), 403, "assign one"),
        ] {
            let (got, why) = refusal(&tokens, &claims);
            assert_eq!(got, status, "{why}");
            assert!(why.contains(says), "{why}");
        }
        // Another token's claims (an admin's) under this one's signature.
        let signed = sign(&claims(), KID);
        let admin = sign(&with("roles", json!(["Flywheel.Admin"])), KID);
        let (head, rest) = signed.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let admin_claims = admin.split('.').nth(1).unwrap();
        let forged = format!("{head}.{admin_claims}.{signature}");
        let Err(ApiError::Unauthorized(why)) = tokens.verify(&forged) else {
            panic!("a forged token is accepted");
        };
        assert!(why.contains("signature"), "{why}");
        let hmac = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"shared"),
        )
        .unwrap();
        let Err(ApiError::Unauthorized(why)) = tokens.verify(&hmac) else {
            panic!("an HS256 token is accepted");
        };
        assert!(why.contains("not RS256"), "{why}");
    }

    #[tokio::test]
    async fn a_key_not_known_yet_is_refused_and_fetched() {
        let tokens = tokens();
        let Err(ApiError::Unauthorized(why)) = tokens.verify(&sign(&claims(), "rotated-key"))
        else {
            panic!("a token of an unknown key is accepted");
        };
        assert!(why.contains("try again shortly"), "{why}");
        let wanted = tokens.wanted();
        let woken = tokio::time::timeout(Duration::from_secs(1), wanted.notified());
        assert!(woken.await.is_ok(), "the refresher is not woken");
    }
}
