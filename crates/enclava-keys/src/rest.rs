//! The REST/JSON face of the key broker (what `enclava keys` uses), mounted under the role's
//! prefix (`/keys/v1/…`), with its part of the server's `/openapi.json`. Callers authenticate with
//! `Authorization: Bearer <token>` from `register`.
//! The calls anyone may make (registration, challenges, releases) are rate-limited per source
//! address; bodies over [`MAX_BODY`] get 413.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use enclava_identity::http::Caller;
use enclava_identity::{Operation, Target};
use enclava_server::Source;
use utoipa::OpenApi;
use zeroize::Zeroizing;

use crate::broker::{Broker, RateKind, ReleaseRequest};
use crate::error::{ErrorBody, ErrorCode, KeysError};
use enclava_contracts::keys::rest::*;

/// The largest request body accepted (a release carries at most 256 KiB of evidence, in base64).
pub const MAX_BODY: usize = 1 << 20;

/// The REST routes (relative to the role's prefix, [`PREFIX`]).
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route(path::USERS, post(register))
        .route(path::INVITES, post(invite))
        .route(path::ME, get(whoami))
        .route(path::MODEL_KEYS, post(put_model_key))
        .route(path::GRANTS, post(grant))
        .route(path::REVOCATIONS, post(revoke))
        .route(path::REQUEST_KEYS, post(put_request_key))
        .route(path::MODELS, get(list))
        .route(path::AUDIT, get(audit))
        .route(path::AUDIT_VERIFY, get(verify_audit))
        .route(path::CHALLENGE, post(challenge))
        .route(path::RELEASE, post(release))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(enclava_identity::http::layer(broker.identity().clone()))
        .with_state(broker)
}

/// The broker's part of the OpenAPI document (paths relative to the role's prefix).
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Enclava key broker", description = "Model and request keys, released only to attested enclaves"),
    paths(
        register,
        invite,
        whoami,
        put_model_key,
        grant,
        revoke,
        put_request_key,
        list,
        audit,
        verify_audit,
        challenge,
        release
    ),
    components(schemas(
        Registered,
        RegisterBody,
        InviteBody,
        Invite,
        WhoAmI,
        ModelKeyUpload,
        ModelKeyVersion,
        GrantRequest,
        RevokeRequest,
        Revoked,
        RequestKeyUpload,
        Listing,
        ModelView,
        GrantView,
        RequestKeyView,
        AuditRecord,
        AuditCheck,
        Challenge,
        ReleaseBody,
        Released,
        ErrorBody,
        ErrorCode
    ))
)]
struct ApiDoc;

/// The caller's user id, when one of its roles lets it do `op` on its own `resource` (a service
/// identity, a node's or a run's, manages no keys).
fn acting(Caller(p): Caller, op: Operation, resource: &str) -> Result<String, KeysError> {
    if p.may(op, resource, &Target::owned_by(&p.id)) {
        Ok(p.id)
    } else {
        Err(KeysError::forbidden(format!("a {} identity cannot do this: use a user's credential", p.kind.as_str())))
    }
}

fn body<T>(j: Result<Json<T>, JsonRejection>) -> Result<T, KeysError> {
    j.map(|Json(t)| t).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            KeysError::new(ErrorCode::PayloadTooLarge, format!("the request body is larger than {MAX_BODY} bytes"))
        } else {
            KeysError::invalid(format!("bad request body: {}", enclava_core::text::quote_n(&e.body_text(), 200)))
        }
    })
}

fn key_bytes(b64: &str) -> Result<Zeroizing<Vec<u8>>, KeysError> {
    STANDARD.decode(b64.trim()).map(Zeroizing::new).map_err(|_| KeysError::invalid("the key is not base64"))
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>, KeysError> {
    STANDARD.decode(s.trim()).map_err(|_| KeysError::invalid(format!("{field} is not base64")))
}

/// Registers a new user; the token is shown once. With invite-only registration the body names a
/// one-time invite; an administrator invite makes an administrator. Rate-limited per source.
#[utoipa::path(post, path = "/v1/users", request_body(content = Option<RegisterBody>),
    responses((status = 201, body = Registered), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn register(
    State(b): State<Arc<Broker>>,
    Source(source): Source,
    raw: axum::body::Bytes,
) -> Result<(StatusCode, Json<Registered>), KeysError> {
    b.rate(RateKind::Register, source)?;
    let req: RegisterBody = if raw.iter().all(u8::is_ascii_whitespace) {
        RegisterBody::default()
    } else {
        serde_json::from_slice(&raw).map_err(|e| KeysError::invalid(format!("bad request body: {e}")))?
    };
    let (user_id, token) = b.register(req.invite.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(Registered { user_id, token })))
}

/// Makes a one-time invite (administrators only); the token is shown once.
#[utoipa::path(post, path = "/v1/invites", request_body = InviteBody,
    responses((status = 201, body = Invite), (status = 403, body = ErrorBody)))]
async fn invite(
    State(b): State<Arc<Broker>>,
    Caller(by): Caller,
    j: Result<Json<InviteBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Invite>), KeysError> {
    let req = body(j)?;
    let (token, expires_at_ms) = b.identity().invite(&by, req.admin).await?;
    Ok((StatusCode::CREATED, Json(Invite { token, expires_at_ms })))
}

/// The caller's user id.
#[utoipa::path(get, path = "/v1/users/me", responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
async fn whoami(caller: Caller) -> Result<Json<WhoAmI>, KeysError> {
    Ok(Json(WhoAmI { user_id: acting(caller, Operation::View, "user")? }))
}

/// Uploads a new version of a model's key; the first uploader owns the model.
#[utoipa::path(post, path = "/v1/model-keys", request_body = ModelKeyUpload,
    responses((status = 201, body = ModelKeyVersion), (status = 403, body = ErrorBody)))]
async fn put_model_key(
    State(b): State<Arc<Broker>>,
    caller: Caller,
    j: Result<Json<ModelKeyUpload>, JsonRejection>,
) -> Result<(StatusCode, Json<ModelKeyVersion>), KeysError> {
    let req = body(j)?;
    let user = acting(caller, if req.rotate { Operation::Edit } else { Operation::Create }, "model")?;
    let key = key_bytes(&req.key)?;
    let version = b.put_model_key(&user, &req.model, &key, req.policy.as_deref(), req.rotate).await?;
    Ok((StatusCode::CREATED, Json(ModelKeyVersion { model: req.model, version })))
}

/// Grants a user's requests, served by an enclave measurement, access to a model (owner only).
#[utoipa::path(post, path = "/v1/grants", request_body = GrantRequest,
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn grant(
    State(b): State<Arc<Broker>>,
    caller: Caller,
    j: Result<Json<GrantRequest>, JsonRejection>,
) -> Result<StatusCode, KeysError> {
    let user = acting(caller, Operation::Edit, "model")?;
    let req = body(j)?;
    b.grant(&user, &req.model, &req.measurement, &req.user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes active grants of a model (owner only); omitted fields match any.
#[utoipa::path(post, path = "/v1/revocations", request_body = RevokeRequest, responses((status = 200, body = Revoked)))]
async fn revoke(
    State(b): State<Arc<Broker>>,
    caller: Caller,
    j: Result<Json<RevokeRequest>, JsonRejection>,
) -> Result<Json<Revoked>, KeysError> {
    let user = acting(caller, Operation::Edit, "model")?;
    let req = body(j)?;
    let revoked = b.revoke(&user, &req.model, req.measurement.as_deref(), req.user.as_deref()).await?;
    Ok(Json(Revoked { revoked }))
}

/// Stores the caller's key for requests to a model on one enclave measurement.
#[utoipa::path(post, path = "/v1/request-keys", request_body = RequestKeyUpload,
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn put_request_key(
    State(b): State<Arc<Broker>>,
    caller: Caller,
    j: Result<Json<RequestKeyUpload>, JsonRejection>,
) -> Result<StatusCode, KeysError> {
    let user = acting(caller, Operation::Create, "request-key")?;
    let req = body(j)?;
    let key = key_bytes(&req.key)?;
    b.put_request_key(&user, &req.model, &req.measurement, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
struct ListQuery {
    model: Option<String>,
}

/// The caller's models with their grants, and the caller's request keys (never key bytes).
#[utoipa::path(get, path = "/v1/models", params(ListQuery), responses((status = 200, body = Listing)))]
async fn list(
    State(b): State<Arc<Broker>>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Listing>, KeysError> {
    let user = acting(caller, Operation::View, "model")?;
    Ok(Json(b.list(&user, q.model.as_deref()).await?))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
struct AuditQuery {
    limit: Option<i64>,
}

/// Audit records about the caller and the caller's models, oldest first.
#[utoipa::path(get, path = "/v1/audit", params(AuditQuery), responses((status = 200, body = Vec<AuditRecord>)))]
async fn audit(
    State(b): State<Arc<Broker>>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditRecord>>, KeysError> {
    let user = acting(caller, Operation::View, "audit")?;
    Ok(Json(b.audit(&user, q.limit.unwrap_or(100)).await?))
}

/// Checks the whole audit chain: no record edited, deleted or rolled back.
#[utoipa::path(get, path = "/v1/audit/verify", responses((status = 200, body = AuditCheck)))]
async fn verify_audit(State(b): State<Arc<Broker>>, caller: Caller) -> Result<Json<AuditCheck>, KeysError> {
    acting(caller, Operation::View, "audit")?;
    Ok(Json(b.verify_audit().await?))
}

/// A single-use nonce for a release (nodes; no user credential). Rate-limited per source.
#[utoipa::path(post, path = "/v1/challenge", responses((status = 200, body = Challenge), (status = 429, body = ErrorBody)))]
async fn challenge(State(b): State<Arc<Broker>>, Source(source): Source) -> Result<Json<Challenge>, KeysError> {
    b.rate(RateKind::Release, source)?;
    let (nonce, expires_at_ms) = b.challenge()?;
    Ok(Json(Challenge { nonce: STANDARD.encode(nonce), expires_at_ms }))
}

/// Attested release: keys sealed to the key the evidence binds (nodes; no user credential).
#[utoipa::path(post, path = "/v1/release", request_body = ReleaseBody,
    responses((status = 200, body = Released), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn release(
    State(b): State<Arc<Broker>>,
    Source(source): Source,
    j: Result<Json<ReleaseBody>, JsonRejection>,
) -> Result<Json<Released>, KeysError> {
    b.rate(RateKind::Release, source)?;
    let r = body(j)?;
    let release = b
        .release(ReleaseRequest {
            nonce: b64("nonce", &r.nonce)?,
            evidence: b64("evidence", &r.evidence)?,
            public_key: b64("publicKey", &r.public_key)?,
            model: r.model,
            version: r.version,
            users: r.users,
        })
        .await?;
    Ok(Json(Released {
        model: release.model,
        version: release.version,
        enc: STANDARD.encode(&release.sealed.enc),
        ciphertext: STANDARD.encode(&release.sealed.ciphertext),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_route_is_documented() {
        let doc = openapi();
        for p in path::ALL {
            assert!(doc.paths.paths.contains_key(p), "{p} is routed and called but not in the OpenAPI part");
        }
        assert_eq!(doc.paths.paths.len(), path::ALL.len(), "a documented route the contract does not name");
    }
}
