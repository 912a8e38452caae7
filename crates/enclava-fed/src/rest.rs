//! The federation's REST routes, under the role's prefix (`/fed/v1/…`). Users authenticate with
//! their credential, nodes with their API key (`Authorization: Bearer`); every object carries
//! `{id, link}` references to what it names; errors are Enclava's (`{code, message}`). Bodies over
//! [`MAX_BODY`] get 413.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use enclava_contracts::fed::{
    AttestRequest, CollaborationView, CreatedNode, LeasedRun, NewCollaboration, NewNode, NewTask, NodeView,
    OrganisationView, RunDone, RunView, TaskView,
};
use enclava_core::{Error, ErrorBody};
use enclava_identity::Principal;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use crate::Fed;
use enclava_core::json_body;

/// The role's prefix.
pub const PREFIX: &str = "/fed";
/// The largest body (an algorithm of 16 MiB in base64 fits within a task's results with room).
pub const MAX_BODY: usize = 32 << 20;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Enclava federation",
        description = "Organisations, collaborations, nodes, tasks and runs, sealed end to end"
    ),
    paths(
        create_org,
        orgs,
        org,
        set_key,
        add_member,
        create_collab,
        collabs,
        collab,
        create_node,
        nodes,
        add_algorithm,
        algorithm,
        create_task,
        tasks,
        task,
        kill,
        runs,
        me,
        node_nonce,
        attest,
        lease,
        renew,
        complete
    )
)]
struct ApiDoc;

/// The federation's part of the OpenAPI document (paths relative to the role's prefix).
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The routes (relative to [`PREFIX`]).
pub fn router(fed: Arc<Fed>) -> Router {
    Router::new()
        .route("/v1/organisations", post(create_org).get(orgs))
        .route("/v1/organisations/{id}", get(org))
        .route("/v1/organisations/{id}/public_key", put(set_key))
        .route("/v1/organisations/{id}/members", post(add_member))
        .route("/v1/collaborations", post(create_collab).get(collabs))
        .route("/v1/collaborations/{id}", get(collab))
        .route("/v1/nodes", post(create_node).get(nodes))
        .route("/v1/algorithms", post(add_algorithm))
        .route("/v1/algorithms/{hash}", get(algorithm))
        .route("/v1/tasks", post(create_task).get(tasks))
        .route("/v1/tasks/{id}", get(task))
        .route("/v1/tasks/{id}/kill", post(kill))
        .route("/v1/runs", get(runs))
        .route("/v1/node/me", get(me))
        .route("/v1/node/nonce", post(node_nonce))
        .route("/v1/node/attest", post(attest))
        .route("/v1/node/lease", post(lease))
        .route("/v1/node/runs/{id}/renew", post(renew))
        .route("/v1/node/runs/{id}/complete", post(complete))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(fed)
}

async fn caller(f: &Fed, headers: &HeaderMap) -> Result<Principal, Error> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(enclava_identity::http::bearer)
        .ok_or_else(enclava_identity::unauthenticated)?;
    f.caller(token).await
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewOrganisation {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicKey {
    #[serde(with = "enclava_contracts::base64_bytes")]
    #[schema(value_type = String, format = Byte)]
    pub public_key: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewMember {
    pub user: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stored {
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseRequest {
    pub max: u32,
    /// With nothing pending, wait up to this long (at most 10 s) for a run.
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Renew {
    pub lease: String,
}

#[derive(Debug, Clone, Deserialize)]
struct CollabQuery {
    collaboration: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct TaskQuery {
    collaboration: Option<String>,
    parent: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
struct RunQuery {
    task: String,
}

#[utoipa::path(post, path = "/v1/organisations", request_body = NewOrganisation, responses((status = 200, body = OrganisationView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_org(State(f): State<Arc<Fed>>, h: HeaderMap, body: Bytes) -> Result<Json<OrganisationView>, Error> {
    let p = caller(&f, &h).await?;
    let n: NewOrganisation = json_body(&body)?;
    Ok(Json(f.create_organisation(&p, &n.name).await?))
}

#[utoipa::path(get, path = "/v1/organisations", responses((status = 200, body = Vec<OrganisationView>)))]
async fn orgs(State(f): State<Arc<Fed>>, h: HeaderMap) -> Result<Json<Vec<OrganisationView>>, Error> {
    let p = caller(&f, &h).await?;
    Ok(Json(f.organisations(&p).await?))
}

#[utoipa::path(get, path = "/v1/organisations/{id}", params(("id" = String, Path)), responses((status = 200, body = OrganisationView), (status = 404, body = ErrorBody)))]
async fn org(State(f): State<Arc<Fed>>, h: HeaderMap, Path(id): Path<String>) -> Result<Json<OrganisationView>, Error> {
    let p = caller(&f, &h).await?;
    Ok(Json(f.organisation(&p, &id).await?))
}

#[utoipa::path(put, path = "/v1/organisations/{id}/public_key", params(("id" = String, Path)), request_body = PublicKey, responses((status = 200, body = OrganisationView), (status = 403, body = ErrorBody), (status = 412, body = ErrorBody)))]
async fn set_key(
    State(f): State<Arc<Fed>>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<OrganisationView>, Error> {
    let p = caller(&f, &h).await?;
    let k: PublicKey = json_body(&body)?;
    f.set_public_key(&p, &id, &k.public_key).await?;
    Ok(Json(f.organisation(&p, &id).await?))
}

#[utoipa::path(post, path = "/v1/organisations/{id}/members", params(("id" = String, Path)), request_body = NewMember, responses((status = 200), (status = 403, body = ErrorBody)))]
async fn add_member(
    State(f): State<Arc<Fed>>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Error> {
    let p = caller(&f, &h).await?;
    let m: NewMember = json_body(&body)?;
    f.add_member(&p, &id, &m.user, &m.roles).await?;
    Ok(Json(serde_json::json!({ "added": true })))
}

#[utoipa::path(post, path = "/v1/collaborations", request_body = NewCollaboration, responses((status = 200, body = CollaborationView), (status = 403, body = ErrorBody)))]
async fn create_collab(State(f): State<Arc<Fed>>, h: HeaderMap, body: Bytes) -> Result<Json<CollaborationView>, Error> {
    let p = caller(&f, &h).await?;
    let c: NewCollaboration = json_body(&body)?;
    Ok(Json(f.create_collaboration(&p, &c).await?))
}

#[utoipa::path(get, path = "/v1/collaborations", responses((status = 200, body = Vec<CollaborationView>)))]
async fn collabs(State(f): State<Arc<Fed>>, h: HeaderMap) -> Result<Json<Vec<CollaborationView>>, Error> {
    let p = caller(&f, &h).await?;
    Ok(Json(f.collaborations(&p).await?))
}

#[utoipa::path(get, path = "/v1/collaborations/{id}", params(("id" = String, Path)), responses((status = 200, body = CollaborationView), (status = 404, body = ErrorBody)))]
async fn collab(
    State(f): State<Arc<Fed>>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<CollaborationView>, Error> {
    let p = caller(&f, &h).await?;
    Ok(Json(f.collaboration(&p, &id).await?))
}

#[utoipa::path(post, path = "/v1/nodes", request_body = NewNode, responses((status = 200, body = CreatedNode), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_node(State(f): State<Arc<Fed>>, h: HeaderMap, body: Bytes) -> Result<Json<CreatedNode>, Error> {
    let p = caller(&f, &h).await?;
    let n: NewNode = json_body(&body)?;
    Ok(Json(f.create_node(&p, &n).await?))
}

#[utoipa::path(get, path = "/v1/nodes", params(("collaboration" = Option<String>, Query)), responses((status = 200, body = Vec<NodeView>)))]
async fn nodes(
    State(f): State<Arc<Fed>>,
    h: HeaderMap,
    Query(q): Query<CollabQuery>,
) -> Result<Json<Vec<NodeView>>, Error> {
    let p = caller(&f, &h).await?;
    Ok(Json(f.nodes(&p, q.collaboration.as_deref()).await?))
}

#[utoipa::path(post, path = "/v1/algorithms", request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 200, body = Stored), (status = 403, body = ErrorBody)))]
async fn add_algorithm(State(f): State<Arc<Fed>>, h: HeaderMap, body: Bytes) -> Result<Json<Stored>, Error> {
    let p = caller(&f, &h).await?;
    Ok(Json(Stored { sha256: f.add_algorithm(&p, &body).await? }))
}

#[utoipa::path(get, path = "/v1/algorithms/{hash}", params(("hash" = String, Path)), responses((status = 200, content_type = "application/octet-stream"), (status = 404, body = ErrorBody)))]
async fn algorithm(State(f): State<Arc<Fed>>, h: HeaderMap, Path(hash): Path<String>) -> Result<Vec<u8>, Error> {
    let p = caller(&f, &h).await?;
    f.algorithm(&p, &hash).await
}

#[utoipa::path(post, path = "/v1/tasks", request_body = NewTask, responses((status = 200, body = TaskView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_task(State(f): State<Arc<Fed>>, h: HeaderMap, body: Bytes) -> Result<Json<TaskView>, Error> {
    let p = caller(&f, &h).await?;
    let t: NewTask = json_body(&body)?;
    Ok(Json(f.create_task(&p, &t).await?))
}

#[utoipa::path(get, path = "/v1/tasks", params(("collaboration" = Option<String>, Query), ("parent" = Option<String>, Query), ("limit" = Option<u32>, Query), ("offset" = Option<u32>, Query)), responses((status = 200, body = Vec<TaskView>)))]
async fn tasks(
    State(f): State<Arc<Fed>>,
    h: HeaderMap,
    Query(q): Query<TaskQuery>,
) -> Result<(HeaderMap, Json<Vec<TaskView>>), Error> {
    let p = caller(&f, &h).await?;
    let (limit, offset) = (q.limit.unwrap_or(100).clamp(1, 1000), q.offset.unwrap_or(0));
    let page = f.tasks(&p, q.collaboration.as_deref(), q.parent.as_deref(), limit, offset).await?;
    // The next page, as a link (RFC 8288), while this one is full.
    let mut headers = HeaderMap::new();
    if page.len() == limit as usize {
        let mut query = format!("limit={limit}&offset={}", offset.saturating_add(limit));
        for (k, v) in [("collaboration", &q.collaboration), ("parent", &q.parent)] {
            if let Some(v) = v.as_deref().filter(|v| v.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)))
            {
                query.push_str(&format!("&{k}={v}"));
            }
        }
        if let Ok(v) = format!("</fed/v1/tasks?{query}>; rel=\"next\"").parse() {
            headers.insert(axum::http::header::LINK, v);
        }
    }
    Ok((headers, Json(page)))
}

#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = String, Path)), responses((status = 200, body = TaskView), (status = 404, body = ErrorBody)))]
async fn task(State(f): State<Arc<Fed>>, h: HeaderMap, Path(id): Path<String>) -> Result<Json<TaskView>, Error> {
    let p = caller(&f, &h).await?;
    Ok(Json(f.task(&p, &id).await?))
}

#[utoipa::path(post, path = "/v1/tasks/{id}/kill", params(("id" = String, Path)), responses((status = 200, body = TaskView), (status = 403, body = ErrorBody)))]
async fn kill(State(f): State<Arc<Fed>>, h: HeaderMap, Path(id): Path<String>) -> Result<Json<TaskView>, Error> {
    let p = caller(&f, &h).await?;
    Ok(Json(f.kill(&p, &id).await?))
}

#[utoipa::path(get, path = "/v1/runs", params(("task" = String, Query)), responses((status = 200, body = Vec<RunView>), (status = 404, body = ErrorBody)))]
async fn runs(State(f): State<Arc<Fed>>, h: HeaderMap, Query(q): Query<RunQuery>) -> Result<Json<Vec<RunView>>, Error> {
    let p = caller(&f, &h).await?;
    Ok(Json(f.runs(&p, &q.task).await?))
}

#[utoipa::path(get, path = "/v1/node/me", responses((status = 200, body = NodeView), (status = 403, body = ErrorBody)))]
async fn me(State(f): State<Arc<Fed>>, h: HeaderMap) -> Result<Json<NodeView>, Error> {
    let p = caller(&f, &h).await?;
    let node = f.node(&p).await?;
    Ok(Json(f.node_view(&node.id).await?))
}

#[utoipa::path(post, path = "/v1/node/nonce", responses((status = 200)))]
async fn node_nonce(State(f): State<Arc<Fed>>, h: HeaderMap) -> Result<Json<serde_json::Value>, Error> {
    let p = caller(&f, &h).await?;
    let node = f.node(&p).await?;
    Ok(Json(serde_json::json!({ "nonce": f.node_nonce(&node).await? })))
}

#[utoipa::path(post, path = "/v1/node/attest", request_body = AttestRequest, responses((status = 200), (status = 403, body = ErrorBody)))]
async fn attest(State(f): State<Arc<Fed>>, h: HeaderMap, body: Bytes) -> Result<Json<serde_json::Value>, Error> {
    let p = caller(&f, &h).await?;
    let node = f.node(&p).await?;
    let a: AttestRequest = json_body(&body)?;
    Ok(Json(serde_json::json!({ "until_ms": f.attest(&node, &a).await? })))
}

#[utoipa::path(post, path = "/v1/node/lease", request_body = LeaseRequest, responses((status = 200), (status = 412, body = ErrorBody)))]
async fn lease(State(f): State<Arc<Fed>>, h: HeaderMap, body: Bytes) -> Result<Json<Vec<LeasedRun>>, Error> {
    let p = caller(&f, &h).await?;
    let node = f.node(&p).await?;
    let req: LeaseRequest = json_body(&body)?;
    let notified = f.queued().notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let runs = f.lease(&node, req.max).await?;
    if !runs.is_empty() || req.wait_ms == 0 {
        return Ok(Json(runs));
    }
    let _ = tokio::time::timeout(std::time::Duration::from_millis(req.wait_ms.min(10_000)), notified).await;
    Ok(Json(f.lease(&node, req.max).await?))
}

#[utoipa::path(post, path = "/v1/node/runs/{id}/renew", params(("id" = String, Path)), request_body = Renew, responses((status = 200), (status = 412, body = ErrorBody)))]
async fn renew(
    State(f): State<Arc<Fed>>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Error> {
    let p = caller(&f, &h).await?;
    let node = f.node(&p).await?;
    let r: Renew = json_body(&body)?;
    Ok(Json(serde_json::json!({ "lease_ms": f.renew(&node, &id, &r.lease).await? })))
}

#[utoipa::path(post, path = "/v1/node/runs/{id}/complete", params(("id" = String, Path)), request_body = RunDone, responses((status = 200), (status = 412, body = ErrorBody)))]
async fn complete(
    State(f): State<Arc<Fed>>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, Error> {
    let p = caller(&f, &h).await?;
    let node = f.node(&p).await?;
    let d: RunDone = json_body(&body)?;
    f.complete(&node, &id, &d).await?;
    Ok(Json(serde_json::json!({ "recorded": true })))
}
