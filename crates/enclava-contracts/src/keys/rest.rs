//! The key broker's REST bodies (JSON, camelCase), shared by the broker, the
//! OpenAPI document and the `enclava keys` client. Key bytes travel as base64 strings.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where the key broker role mounts its routes on the server (`/keys/v1/users`, …).
pub const PREFIX: &str = "/keys";

/// The routes, relative to [`PREFIX`] (the broker's OpenAPI part lists each of them).
pub mod path {
    pub const USERS: &str = "/v1/users";
    pub const INVITES: &str = "/v1/invites";
    pub const ME: &str = "/v1/users/me";
    pub const MODEL_KEYS: &str = "/v1/model-keys";
    pub const GRANTS: &str = "/v1/grants";
    pub const REVOCATIONS: &str = "/v1/revocations";
    pub const REQUEST_KEYS: &str = "/v1/request-keys";
    pub const MODELS: &str = "/v1/models";
    pub const AUDIT: &str = "/v1/audit";
    pub const AUDIT_VERIFY: &str = "/v1/audit/verify";
    pub const CHALLENGE: &str = "/v1/challenge";
    pub const RELEASE: &str = "/v1/release";
    /// Every route.
    pub const ALL: [&str; 12] = [
        USERS,
        INVITES,
        ME,
        MODEL_KEYS,
        GRANTS,
        REVOCATIONS,
        REQUEST_KEYS,
        MODELS,
        AUDIT,
        AUDIT_VERIFY,
        CHALLENGE,
        RELEASE,
    ];
}

/// `POST /v1/users`: a new identity. The token is shown once; the broker keeps only its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    pub user_id: String,
    pub token: String,
}

/// `POST /v1/users` body (optional): the invite, where registration needs one.
#[derive(Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterBody {
    #[serde(default)]
    pub invite: Option<String>,
}

impl std::fmt::Debug for RegisterBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterBody").field("invite", &self.invite.as_ref().map(|_| "…")).finish()
    }
}

/// `POST /v1/invites` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InviteBody {
    /// The invite makes an administrator.
    #[serde(default)]
    pub admin: bool,
}

/// A one-time invite, shown once.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Invite {
    pub token: String,
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite").field("expires_at_ms", &self.expires_at_ms).finish_non_exhaustive()
    }
}

/// `GET /v1/users/me`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    pub user_id: String,
}

/// `POST /v1/model-keys`: a new version of a model's key (creating the model when new).
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelKeyUpload {
    pub model: String,
    /// The 32-byte key, base64.
    pub key: String,
    /// The model's release policy (TOML or JSON, as `enclava evidence` reads); the broker's
    /// default when never set.
    #[serde(default)]
    pub policy: Option<String>,
    /// Rotation: the model must exist already.
    #[serde(default)]
    pub rotate: bool,
}

impl std::fmt::Debug for ModelKeyUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelKeyUpload")
            .field("model", &self.model)
            .field("rotate", &self.rotate)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelKeyVersion {
    pub model: String,
    pub version: u64,
}

/// `POST /v1/grants`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantRequest {
    pub model: String,
    /// The enclave measurement (hex) allowed to serve the model.
    pub measurement: String,
    /// The user whose requests it may serve.
    pub user: String,
}

/// `POST /v1/revocations`: revoke active grants; omitted fields match any.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokeRequest {
    pub model: String,
    #[serde(default)]
    pub measurement: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revoked {
    pub revoked: u64,
}

/// `POST /v1/request-keys`: the caller's key for requests to a model on one enclave identity.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestKeyUpload {
    pub model: String,
    pub measurement: String,
    /// The 32-byte key, base64.
    pub key: String,
}

impl std::fmt::Debug for RequestKeyUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestKeyUpload")
            .field("model", &self.model)
            .field("measurement", &self.measurement)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantView {
    pub measurement: String,
    pub user: String,
    pub granted_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelView {
    pub id: String,
    pub current_version: u64,
    pub has_policy: bool,
    pub created_at_ms: i64,
    pub grants: Vec<GrantView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestKeyView {
    pub model: String,
    pub measurement: String,
    pub created_at_ms: i64,
}

/// `GET /v1/models`: what the caller owns and the request keys they stored. Never key bytes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    pub models: Vec<ModelView>,
    pub request_keys: Vec<RequestKeyView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub model: String,
    pub measurement: String,
    pub subject: String,
    pub detail: String,
}

/// `GET /v1/audit/verify`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditCheck {
    pub ok: bool,
    pub records: i64,
    pub problem: Option<String>,
}

/// `POST /v1/challenge` (the REST twin of gRPC `Challenge`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Challenge {
    /// base64
    pub nonce: String,
    pub expires_at_ms: u64,
}

/// `POST /v1/release` (the REST twin of gRPC `Release`). Binary fields base64.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseBody {
    pub nonce: String,
    pub evidence: String,
    pub public_key: String,
    pub model: String,
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub users: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    pub model: String,
    pub version: u64,
    /// HPKE encapsulated key, base64.
    pub enc: String,
    /// HPKE ciphertext of the release payload, base64.
    pub ciphertext: String,
}
