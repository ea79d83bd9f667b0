//! Microsoft Entra ID access tokens as the identity platform writes them:
//! RS256-signed JWTs that a relying party verifies with the key its
//! tenant publishes (`GET /{tenant}/discovery/v2.0/keys`, [`jwks`]).
//!
//! The simulator's key pair ships with its source (`entra_key.pem`), so a
//! token it signs proves nothing outside tests and demos: nothing but a
//! test should trust its JWKS.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The `kid` of the one signing key.
pub const KEY_ID: &str = "flywheel-simulator-1";

const PRIVATE_KEY: &str = include_str!("entra_key.pem");
const JWKS: &str = include_str!("entra_jwks.json");

/// What a token says of whom it was issued to, and for what.
pub struct Grant<'a> {
    /// `{authority}/{tenant}/v2.0`, as the client reached the authority.
    pub issuer: &'a str,
    /// The resource (`aud`): the scope without `/.default`.
    pub audience: &'a str,
    pub tenant: &'a str,
    /// The app the token was issued to (`azp`, `appid`).
    pub client_id: &'a str,
    /// The person signed in to it (`preferred_username`, and the `oid`
    /// derived from it); `None`: the app itself.
    pub subject: Option<&'a str>,
    /// The app roles the app was granted on the resource (`roles`).
    pub roles: &'a [String],
    pub ttl: Duration,
}

/// The signed token; `None` only if the published key could not sign,
/// which a test of this module rules out.
pub fn sign(grant: &Grant<'_>) -> Option<String> {
    let now = super::wire::now_unix();
    let object_id = object_id(grant.subject.unwrap_or(grant.client_id));
    let mut claims = json!({
        "aud": grant.audience,
        "iss": grant.issuer,
        "iat": now,
        "nbf": now,
        "exp": now + grant.ttl.as_secs().max(1),
        "tid": grant.tenant,
        "azp": grant.client_id,
        "appid": grant.client_id,
        "oid": object_id,
        "sub": object_id,
        "ver": "2.0",
        // Unique per token, as Entra's `uti` is: two tokens asked for in
        // the same second still differ.
        "uti": format!("{:032x}", rand::random::<u128>()),
    });
    if !grant.roles.is_empty() {
        claims["roles"] = json!(grant.roles);
    }
    if let Some(user) = grant.subject {
        claims["preferred_username"] = json!(user);
        claims["scp"] = json!("user_impersonation");
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KEY_ID.into());
    let key = EncodingKey::from_rsa_pem(PRIVATE_KEY.as_bytes()).ok()?;
    jsonwebtoken::encode(&header, &claims, &key).ok()
}

/// The tenant's signing keys, as `…/discovery/v2.0/keys` serves them.
pub fn jwks() -> Value {
    serde_json::from_str(JWKS).unwrap_or(Value::Null)
}

/// The app's service principal id (`oid`): the same for every token of
/// one client id, shaped as Entra's GUIDs are.
fn object_id(client_id: &str) -> String {
    let digest = hex(&Sha256::digest(client_id.as_bytes())[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &digest[..8],
        &digest[8..12],
        &digest[12..16],
        &digest[16..20],
        &digest[20..32]
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode};

    #[test]
    fn a_token_is_verified_by_the_published_key_and_says_what_was_granted() {
        let roles = vec!["Flywheel.Client".to_string()];
        let token = sign(&Grant {
            issuer: "http://127.0.0.1:9/tenant-1/v2.0",
            audience: "api://flywheel",
            tenant: "tenant-1",
            client_id: "app-1",
            subject: None,
            roles: &roles,
            ttl: Duration::from_secs(60),
        })
        .unwrap();
        let jwks = jwks();
        let key = &jwks["keys"][0];
        assert_eq!(key["kid"], KEY_ID);
        let decoding = DecodingKey::from_rsa_components(
            key["n"].as_str().unwrap(),
            key["e"].as_str().unwrap(),
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["api://flywheel"]);
        validation.set_issuer(&["http://127.0.0.1:9/tenant-1/v2.0"]);
        let data = decode::<Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(data.header.kid.as_deref(), Some(KEY_ID));
        let claims = data.claims;
        assert_eq!(claims["tid"], "tenant-1");
        assert_eq!(claims["azp"], "app-1");
        assert_eq!(claims["roles"], json!(["Flywheel.Client"]));
        assert_eq!(claims["oid"].as_str().unwrap().len(), 36);
        assert_eq!(claims["oid"], object_id("app-1"));
    }
}
