//! The farm's REST routes, under the role's prefix (`/farm/v1/…`). Submitters authenticate with
//! their user credential (`Authorization: Bearer`), hosts with the token registration gave them;
//! a job file may be read by a user who stored it or a host running a job that names it. Bodies over [`MAX_BODY`] get 413.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use enclava_contracts::farm::{BatchItem, Completion, HostRegistration, HostView, JobOutput, JobSpec, JobView, Leased};
use enclava_core::Error;
use enclava_core::json_body;
use enclava_identity::Principal;
use enclava_server::Source;
use serde::{Deserialize, Serialize};

use crate::{Farm, Host, Reader};

/// The role's prefix.
pub const PREFIX: &str = "/farm";
/// The largest body: a job file of 32 MiB in base64 within a completion, with room to spare.
pub const MAX_BODY: usize = 48 << 20;

/// `POST /v1/files`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Nonce {
    pub nonce: String,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Registered {
    pub token: String,
    pub lease_ms: u64,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered").field("lease_ms", &self.lease_ms).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub max: u32,
    /// With nothing to place, wait up to this long (at most 5 s) for a job.
    #[serde(default)]
    pub wait_ms: u64,
    /// Files the host has cached (at most [`MAX_CACHED`] are looked at): among the jobs it may
    /// take, those whose files it has go first.
    #[serde(default)]
    pub cached: Vec<String>,
}

/// Cached files a lease request is read for, at most.
pub const MAX_CACHED: usize = 256;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Renew {
    pub lease: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Renewed {
    pub lease_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct AddQuery {
    /// Keep the file from collection until unpinned.
    #[serde(default)]
    pin: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct ListQuery {
    limit: Option<u32>,
}

/// The routes (relative to [`PREFIX`]).
pub fn router(farm: Arc<Farm>) -> Router {
    Router::new()
        .route("/v1/files", post(add_file))
        .route("/v1/files/{hash}", get(file))
        .route("/v1/files/{hash}/unpin", post(unpin))
        .route("/v1/hosts", get(hosts))
        .route("/v1/hosts/nonce", post(nonce))
        .route("/v1/hosts/probe", get(probe))
        .route("/v1/hosts/register", post(register))
        .route("/v1/hosts/lease", post(lease))
        .route("/v1/jobs", post(submit).get(jobs))
        .route("/v1/jobs/batch", post(submit_batch))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/jobs/{id}/output", get(output))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/renew", post(renew))
        .route("/v1/jobs/{id}/complete", post(complete))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(farm)
}

fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(enclava_identity::http::bearer)
}

async fn user(farm: &Farm, headers: &HeaderMap) -> Result<Principal, Error> {
    farm.identity().authenticate(token(headers).ok_or_else(enclava_identity::unauthenticated)?).await
}

async fn host(farm: &Farm, headers: &HeaderMap) -> Result<Host, Error> {
    farm.host(token(headers).ok_or_else(enclava_identity::unauthenticated)?).await
}

async fn add_file(
    State(f): State<Arc<Farm>>,
    headers: HeaderMap,
    Query(q): Query<AddQuery>,
    body: Bytes,
) -> Result<Json<Stored>, Error> {
    let p = user(&f, &headers).await?;
    let sha256 = f.add_file(&p.id, &body, q.pin).await?;
    Ok(Json(Stored { sha256, size: body.len() as u64 }))
}

async fn file(State(f): State<Arc<Farm>>, headers: HeaderMap, Path(hash): Path<String>) -> Result<Vec<u8>, Error> {
    let t = token(&headers).ok_or_else(enclava_identity::unauthenticated)?;
    let reader = match f.host(t).await {
        Ok(h) => Reader::Host(h),
        Err(_) => Reader::User(f.identity().authenticate(t).await?),
    };
    f.file(&reader, &hash).await
}

async fn unpin(
    State(f): State<Arc<Farm>>,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> Result<Json<serde_json::Value>, Error> {
    let p = user(&f, &headers).await?;
    f.unpin_file(&p.id, &hash).await?;
    Ok(Json(serde_json::json!({ "unpinned": true })))
}

async fn hosts(State(f): State<Arc<Farm>>, headers: HeaderMap) -> Result<Json<Vec<HostView>>, Error> {
    user(&f, &headers).await?;
    Ok(Json(f.hosts().await?))
}

async fn nonce(State(f): State<Arc<Farm>>, Source(source): Source) -> Result<Json<Nonce>, Error> {
    Ok(Json(Nonce { nonce: f.nonce(source).await? }))
}

/// The largest bandwidth probe.
pub const MAX_PROBE: usize = 16 << 20;

#[derive(Debug, Clone, Deserialize)]
struct ProbeQuery {
    bytes: usize,
}

/// `bytes` (at most [`MAX_PROBE`]) for a host to time its download from this server, within
/// the same per-source limit as nonces.
async fn probe(
    State(f): State<Arc<Farm>>,
    Source(source): Source,
    Query(q): Query<ProbeQuery>,
) -> Result<Vec<u8>, Error> {
    f.allow_probe(source)?;
    Ok(vec![0x5a; q.bytes.min(MAX_PROBE)])
}

async fn register(State(f): State<Arc<Farm>>, headers: HeaderMap, body: Bytes) -> Result<Json<Registered>, Error> {
    let reg: HostRegistration = json_body(&body)?;
    let token = f.register(&reg, token(&headers)).await?;
    Ok(Json(Registered { token, lease_ms: f.config().lease.as_millis() as u64 }))
}

async fn lease(State(f): State<Arc<Farm>>, headers: HeaderMap, body: Bytes) -> Result<Json<Vec<Leased>>, Error> {
    let h = host(&f, &headers).await?;
    let req: LeaseRequest = json_body(&body)?;
    let notified = f.queued().notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let cached: std::collections::BTreeSet<&str> = req.cached.iter().take(MAX_CACHED).map(String::as_str).collect();
    let jobs = f.lease(&h, req.max.min(64), &cached).await?;
    if !jobs.is_empty() || req.wait_ms == 0 {
        return Ok(Json(jobs));
    }
    let _ = tokio::time::timeout(std::time::Duration::from_millis(req.wait_ms.min(5000)), notified).await;
    Ok(Json(f.lease(&h, req.max.min(64), &cached).await?))
}

async fn submit(State(f): State<Arc<Farm>>, headers: HeaderMap, body: Bytes) -> Result<Json<JobView>, Error> {
    let p = user(&f, &headers).await?;
    let spec: JobSpec = json_body(&body)?;
    Ok(Json(f.submit(&p.id, &spec).await?))
}

async fn submit_batch(
    State(f): State<Arc<Farm>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Vec<BatchItem>>, Error> {
    let p = user(&f, &headers).await?;
    let specs: Vec<JobSpec> = json_body(&body)?;
    let answers = f.submit_many(&p.id, &specs).await?;
    Ok(Json(
        answers
            .into_iter()
            .map(|a| match a {
                Ok(view) => BatchItem { view: Some(view), error: None },
                Err(e) => BatchItem { view: None, error: Some(e.body()) },
            })
            .collect(),
    ))
}

async fn jobs(
    State(f): State<Arc<Farm>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<JobView>>, Error> {
    let p = user(&f, &headers).await?;
    Ok(Json(f.jobs(&p, q.limit.unwrap_or(100)).await?))
}

async fn job(State(f): State<Arc<Farm>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<JobView>, Error> {
    let p = user(&f, &headers).await?;
    Ok(Json(f.job(&p, &id).await?))
}

async fn output(
    State(f): State<Arc<Farm>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobOutput>, Error> {
    let p = user(&f, &headers).await?;
    Ok(Json(f.output(&p, &id).await?))
}

async fn cancel(
    State(f): State<Arc<Farm>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobView>, Error> {
    let p = user(&f, &headers).await?;
    Ok(Json(f.cancel(&p, &id).await?))
}

async fn renew(
    State(f): State<Arc<Farm>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Renewed>, Error> {
    let h = host(&f, &headers).await?;
    let r: Renew = json_body(&body)?;
    Ok(Json(Renewed { lease_ms: f.renew(&h, &id, &r.lease).await? }))
}

async fn complete(
    State(f): State<Arc<Farm>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Error> {
    let h = host(&f, &headers).await?;
    let c: Completion = json_body(&body)?;
    f.complete(&h, &id, &c).await?;
    Ok(Json(serde_json::json!({ "recorded": true })))
}
