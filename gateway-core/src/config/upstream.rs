//! `upstream_credentials`: what each backend pool receives instead of the
//! caller's token.

use std::path::PathBuf;

use serde::Deserialize;

/// The credential each backend pool gets on every request, set by ext-authz
/// after the rules ran (rules never see it) in place of the caller's token, which
/// never goes upstream. A pool not named here gets no credential.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamCredentialsConfig {
    /// The session era's pool (Envoy cluster `mcp_backends`).
    pub session: Option<CredentialConfig>,
    /// The stateless era's pool (Envoy cluster `mcp_stateless_backends`).
    pub stateless: Option<CredentialConfig>,
    /// Memory for exchanged and fetched tokens, in bytes (each until shortly
    /// before it expires).
    #[serde(default = "default_credential_cache_bytes")]
    pub cache_bytes: u64,
}

impl UpstreamCredentialsConfig {
    /// The headers credentials go in (lower case): rules must never read them.
    pub fn headers(&self) -> Vec<String> {
        [&self.session, &self.stateless]
            .into_iter()
            .flatten()
            .filter_map(CredentialConfig::header)
            .collect()
    }
}

/// One pool's credential: exactly one of the three kinds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// A fixed secret (an API key, a bearer token) in a header.
    #[serde(rename = "static")]
    pub static_secret: Option<StaticCredentialConfig>,
    /// The gateway's own token for the backend's audience (OAuth 2 client
    /// credentials grant), shared by every caller.
    pub client_credentials: Option<TokenEndpointConfig>,
    /// The caller's token exchanged (RFC 8693) for one scoped to the backend:
    /// same subject, the backend's audience.
    pub token_exchange: Option<TokenEndpointConfig>,
}

/// Which kind a [`CredentialConfig`] is.
#[derive(Debug, Clone, Copy)]
pub enum CredentialKind<'a> {
    Static(&'a StaticCredentialConfig),
    ClientCredentials(&'a TokenEndpointConfig),
    TokenExchange(&'a TokenEndpointConfig),
}

impl CredentialConfig {
    /// The one kind given; an error says what is wrong otherwise.
    pub fn kind(&self) -> Result<CredentialKind<'_>, String> {
        match (
            &self.static_secret,
            &self.client_credentials,
            &self.token_exchange,
        ) {
            (Some(c), None, None) => Ok(CredentialKind::Static(c)),
            (None, Some(c), None) => Ok(CredentialKind::ClientCredentials(c)),
            (None, None, Some(c)) => Ok(CredentialKind::TokenExchange(c)),
            _ => Err("give exactly one of static, client_credentials, token_exchange".into()),
        }
    }

    /// The header the credential goes in, lower case.
    pub fn header(&self) -> Option<String> {
        match self.kind().ok()? {
            CredentialKind::Static(c) => Some(c.header.to_ascii_lowercase()),
            CredentialKind::ClientCredentials(c) | CredentialKind::TokenExchange(c) => {
                Some(c.header.to_ascii_lowercase())
            }
        }
    }
}

/// A secret in a header.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCredentialConfig {
    /// Header name, e.g. `authorization` or `x-api-key`.
    pub header: String,
    /// Written before the secret, e.g. `"Bearer "`.
    #[serde(default)]
    pub prefix: String,
    /// File holding the secret (trimmed), relative to the config file.
    pub value_file: Option<PathBuf>,
    /// Environment variable holding the secret.
    pub value_env: Option<String>,
}

impl std::fmt::Debug for StaticCredentialConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only where the secret is, never the secret.
        f.debug_struct("StaticCredentialConfig")
            .field("header", &self.header)
            .field("value_file", &self.value_file)
            .field("value_env", &self.value_env)
            .finish_non_exhaustive()
    }
}

/// The gateway as an OAuth 2 client of a token endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEndpointConfig {
    pub token_endpoint: String,
    pub client_id: String,
    /// File holding the client secret (trimmed), relative to the config file;
    /// sent with HTTP Basic authentication.
    pub client_secret_file: PathBuf,
    /// The backend's audience (`audience` parameter, RFC 8693).
    pub audience: Option<String>,
    /// The backend's resource URI (`resource` parameter, RFC 8707).
    pub resource: Option<String>,
    /// Scopes to ask for.
    pub scope: Option<String>,
    /// PEM file of CAs to trust for the token endpoint, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Header the token goes in, as `Bearer <token>`.
    #[serde(default = "default_credential_header")]
    pub header: String,
}

fn default_credential_header() -> String {
    "authorization".into()
}

fn default_credential_cache_bytes() -> u64 {
    16 << 20
}
