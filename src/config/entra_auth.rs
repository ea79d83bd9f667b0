//! `[auth.entra]`: Microsoft Entra ID access tokens accepted in place of a
//! Flywheel key, from apps that sign in with a managed identity or an app
//! registration (keyless, as Azure OpenAI apps are asked to be).

use super::ConfigError;
use super::azure::{authority, check_http_url};
use crate::auth::Role;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EntraAuthConfig {
    /// The directory whose tokens are accepted.
    pub tenant_id: String,
    /// The `aud` values accepted: Flywheel's application ID URI
    /// (`api://…`) and, for v1 tokens, its client id.
    pub audiences: Vec<String>,
    /// The identity platform's host; a sovereign cloud has its own.
    #[serde(default = "authority")]
    pub authority: String,
    /// Which app role (the token's `roles` claim) grants which Flywheel
    /// role.
    #[serde(default)]
    pub roles: EntraRoles,
    /// The admin UI's own app registration (a single-page application
    /// whose redirect URI is Flywheel's `/admin/`): when set, people sign
    /// in to the UI with their Microsoft account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_ui_client_id: Option<String>,
}

/// App role values, as the app registration defines them, per Flywheel
/// role.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EntraRoles {
    pub client: String,
    pub analyst: String,
    pub admin: String,
}

impl Default for EntraRoles {
    fn default() -> Self {
        Self {
            client: "Flywheel.Client".into(),
            analyst: "Flywheel.Analyst".into(),
            admin: "Flywheel.Admin".into(),
        }
    }
}

impl EntraRoles {
    /// Each app role with the Flywheel role it grants.
    pub fn granted(&self) -> [(&str, Role); 3] {
        [
            (&self.admin, Role::Admin),
            (&self.analyst, Role::Analyst),
            (&self.client, Role::Client),
        ]
    }
}

impl EntraAuthConfig {
    /// Where the tenant publishes the keys its tokens are signed with.
    pub fn keys_url(&self) -> String {
        format!(
            "{}/{}/discovery/v2.0/keys",
            self.authority.trim_end_matches('/'),
            self.tenant_id
        )
    }

    /// Where the admin UI sends people to sign in, and redeems the code.
    pub fn authorize_url(&self) -> String {
        self.endpoint("oauth2/v2.0/authorize")
    }

    pub fn token_url(&self) -> String {
        self.endpoint("oauth2/v2.0/token")
    }

    /// What the admin UI asks a token for: Flywheel's API, with the roles
    /// its user was given.
    pub fn admin_ui_scope(&self) -> String {
        let audience = self.audiences.first().map_or("", String::as_str);
        format!("{}/.default", audience.trim_end_matches('/'))
    }

    /// The identity platform's origin (`scheme://host[:port]`), which the
    /// admin UI's pages must be allowed to call.
    pub fn authority_origin(&self) -> String {
        let uri = self.authority.parse::<http::Uri>().ok();
        match uri
            .as_ref()
            .and_then(|u| Some((u.scheme_str()?, u.authority()?)))
        {
            Some((scheme, host)) => format!("{scheme}://{host}"),
            None => self.authority.clone(),
        }
    }

    fn endpoint(&self, path: &str) -> String {
        format!(
            "{}/{}/{path}",
            self.authority.trim_end_matches('/'),
            self.tenant_id
        )
    }

    /// The issuers of the tenant's tokens: v2.0's, and v1.0's (what an
    /// app registration that leaves `accessTokenAcceptedVersion` unset
    /// is issued) on the public cloud.
    pub fn issuers(&self) -> Vec<String> {
        let authority = self.authority.trim_end_matches('/');
        let mut issuers = vec![format!("{authority}/{}/v2.0", self.tenant_id)];
        if authority == super::azure::authority() {
            issuers.push(format!("https://sts.windows.net/{}/", self.tenant_id));
        }
        issuers
    }
}

pub(super) fn check(e: &EntraAuthConfig) -> Result<(), ConfigError> {
    let tenant = e.tenant_id.trim();
    if tenant.is_empty() || tenant.contains(['/', '?', '#']) {
        return Err(ConfigError::invalid(
            "auth.entra.tenant_id",
            "must be the directory's id (or its domain)",
        ));
    }
    if e.audiences.is_empty() || e.audiences.iter().any(|a| a.trim().is_empty()) {
        return Err(ConfigError::invalid(
            "auth.entra.audiences",
            "must list the token audiences accepted (Flywheel's application ID URI, `api://…`)",
        ));
    }
    check_http_url("auth.entra.authority", &e.authority)?;
    if e.admin_ui_client_id
        .as_deref()
        .is_some_and(|id| id.trim().is_empty())
    {
        return Err(ConfigError::invalid(
            "auth.entra.admin_ui_client_id",
            "must be the admin UI's app registration's client id",
        ));
    }
    let roles = e.roles.granted();
    for (i, (value, role)) in roles.iter().enumerate() {
        let key = format!("auth.entra.roles.{}", role.as_str());
        if value.trim().is_empty() {
            return Err(ConfigError::invalid(&key, "must name an app role"));
        }
        if roles[..i].iter().any(|(other, _)| other == value) {
            return Err(ConfigError::invalid(
                &key,
                format!("`{value}` already grants another role"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(entra: &str) -> Result<Config, String> {
        let text = format!(
            "[[providers]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
             [[models]]\nname = \"triage\"\nmodel_type = \"threat_detection\"\n\
             versions = [{{name = \"base\", provider = \"p\", model = \"m\"}}]\n\
             [auth.entra]\n{entra}"
        );
        Config::from_toml_str(&text, "test", []).map_err(|e| e.to_string())
    }

    const COMPLETE: &str = "tenant_id = \"soc-tenant\"\naudiences = [\"api://flywheel\"]";

    #[test]
    fn a_tenant_and_audiences_are_enough_and_the_defaults_are_entras() {
        let c = load(COMPLETE).unwrap();
        let e = c.auth.entra.unwrap();
        assert_eq!(
            e.keys_url(),
            "https://login.microsoftonline.com/soc-tenant/discovery/v2.0/keys"
        );
        assert_eq!(
            e.issuers(),
            [
                "https://login.microsoftonline.com/soc-tenant/v2.0",
                "https://sts.windows.net/soc-tenant/"
            ]
        );
        assert_eq!(e.roles.client, "Flywheel.Client");
        assert_eq!(e.admin_ui_scope(), "api://flywheel/.default");
        assert_eq!(e.authority_origin(), "https://login.microsoftonline.com");
        assert_eq!(
            e.authorize_url(),
            "https://login.microsoftonline.com/soc-tenant/oauth2/v2.0/authorize"
        );
        let sovereign = load(&format!(
            "{COMPLETE}\nauthority = \"https://login.microsoftonline.us/\""
        ))
        .unwrap()
        .auth
        .entra
        .unwrap();
        assert_eq!(
            sovereign.issuers(),
            ["https://login.microsoftonline.us/soc-tenant/v2.0"]
        );
    }

    #[test]
    fn each_wrong_key_is_named() {
        for (entra, key) in [
            ("audiences = [\"api://flywheel\"]", "tenant_id"),
            (
                "tenant_id = \"\"\naudiences = [\"api://f\"]",
                "auth.entra.tenant_id",
            ),
            ("tenant_id = \"t\"\naudiences = []", "auth.entra.audiences"),
            (
                &format!("{COMPLETE}\nauthority = \"login.example\""),
                "auth.entra.authority",
            ),
            (
                &format!("{COMPLETE}\nroles = {{ analyst = \"Flywheel.Client\" }}"),
                "auth.entra.roles.client",
            ),
            (
                &format!("{COMPLETE}\nroles = {{ admin = \"\" }}"),
                "auth.entra.roles.admin",
            ),
            (&format!("{COMPLETE}\nscope = \"x\""), "scope"),
            (
                &format!("{COMPLETE}\nadmin_ui_client_id = \" \""),
                "auth.entra.admin_ui_client_id",
            ),
        ] {
            let error = load(entra).unwrap_err();
            assert!(error.contains(key), "{entra}: {error}");
        }
    }
}
