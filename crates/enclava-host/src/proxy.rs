//! The node's local proxy (vantage6's proxy server): the one address an algorithm in a sandboxed
//! process can reach. It listens on the sandbox's own loopback for as long as the run lasts and
//! answers the calls vantage6's `AlgorithmClient` makes, for that run only:
//!
//! - `POST task` creates a subtask of the run's task with the run's own algorithm: each target
//!   organisation's input is sealed here to that organisation's key, and the subtask's results to
//!   a key this proxy holds in memory;
//! - `GET task/{id}`, `task/{id}/status`, `result?task_id=`, `run?task_id=`, `result/{run}` answer
//!   for the run's own task and the subtasks it made (results opened here for the algorithm);
//! - `GET organization?collaboration_id=`, `organization/{id}`, `collaboration/{id}` list the
//!   collaboration;
//! - `GET blobstream/status`: no blob store.
//!
//! Every call carries the run's token (`TOKEN_FILE`): a JWT in vantage6's shape, signed with a key
//! that lives in this process, good only for this run and until its deadline. The listener is gone
//! when the run ends, and with it the token. Nothing the algorithm sends reaches the server
//! except as a sealed subtask input.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use enclava_client::fed::{FedClient, TaskRequest};
use enclava_contracts::fed::LeasedRun;
use enclava_core::{Error, ErrorCode};
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// The port the proxy listens on inside the sandbox (the sandbox's loopback is its own).
pub(crate) const PORT: u16 = 7601;
/// The proxy's API path (vantage6's `API_PATH`).
pub(crate) const API_PATH: &str = "/api";
/// Subtasks one run may make.
const MAX_SUBTASKS: usize = 256;

/// One run's proxy.
pub(crate) struct RunProxy {
    client: FedClient,
    run: LeasedRun,
    algorithm: Arc<Vec<u8>>,
    token: Zeroizing<String>,
    /// When the token stops being accepted (its `exp`), even if the run were still going.
    expires: std::time::Instant,
    /// Subtasks made through this proxy, with the seeds of their result keys.
    subtasks: Mutex<BTreeMap<String, Zeroizing<[u8; 32]>>>,
    /// Subtasks asked for, made or under way: the limit is reserved before the server is asked.
    asked: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for RunProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunProxy").field("run", &self.run.run).finish_non_exhaustive()
    }
}

impl RunProxy {
    /// A proxy for `run`, its token valid for `ttl`.
    pub(crate) fn new(
        client: FedClient,
        run: &LeasedRun,
        node: &str,
        algorithm: Arc<Vec<u8>>,
        ttl: Duration,
    ) -> RunProxy {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let databases: Vec<Value> = run.databases.iter().map(|l| json!({"label": l, "type": "csv"})).collect();
        let claims = json!({
            "sub": {
                "image": run.algorithm,
                "databases": databases,
                "node_id": node,
                "collaboration_id": run.collaboration,
                "organization_id": run.organisation,
                "task_id": run.task,
                "run_id": run.run,
            },
            "iat": now,
            "exp": now + ttl.as_secs(),
            "jti": hex::encode(rand::random::<[u8; 16]>()),
        });
        let mut key = Zeroizing::new([0u8; 32]);
        rand::fill(&mut key[..]);
        let signing = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key[..]), signing.as_bytes());
        let token = Zeroizing::new(format!("{signing}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())));
        RunProxy {
            client,
            run: run.clone(),
            algorithm,
            token,
            expires: std::time::Instant::now() + ttl,
            subtasks: Mutex::new(BTreeMap::new()),
            asked: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The run's token, for `TOKEN_FILE`.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Serves `listener` until the returned task is stopped (when the run ends).
    pub(crate) fn serve(self: Arc<Self>, listener: std::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let routes = Router::new()
            .route("/blobstream/status", get(|| async { Json(json!({"blob_store_enabled": false})) }))
            .route("/organization", get(organisations))
            .route("/organization/{id}", get(organisation))
            .route("/collaboration/{id}", get(collaboration))
            .route("/task", post(create_task))
            .route("/task/{id}", get(task))
            .route("/task/{id}/status", get(task_status))
            .route("/result", get(results))
            .route("/run", get(results))
            .route("/result/{id}", get(result))
            .fallback(|| async { refusal(StatusCode::NOT_FOUND, "the node's proxy does not offer this call") })
            // Every call, known or not, carries the run's token.
            .layer(axum::middleware::from_fn_with_state(self.clone(), token_required));
        let app = Router::new().nest(API_PATH, routes).with_state(self);
        tokio::spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    let _ = axum::serve(listener, app).await;
                }
                Err(e) => tracing::warn!(error = %e, "the local proxy cannot listen"),
            }
        })
    }

    /// Whether `headers` carry this run's token.
    fn authorised(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = self.token.as_bytes();
        std::time::Instant::now() < self.expires
            && presented.len() == expected.len()
            && presented.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The seed of subtask `id`'s result key, if this run made it.
    fn seed_of(&self, id: &str) -> Option<Zeroizing<[u8; 32]>> {
        self.subtasks.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned()
    }

    /// Whether this run may see task `id`: its own task or a subtask it made.
    fn sees(&self, id: &str) -> bool {
        id == self.run.task || self.seed_of(id).is_some()
    }
}

type Shared = Arc<RunProxy>;

/// A refusal in vantage6's shape (`{"msg": …}`), which its client logs.
fn refusal(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"msg": msg}))).into_response()
}

/// Refuses a call without the run's token.
async fn token_required(
    State(p): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if p.authorised(request.headers()) {
        next.run(request).await
    } else {
        refusal(StatusCode::UNAUTHORIZED, "this call does not carry the run's token")
    }
}

fn failure(e: Error) -> Response {
    let status = match e.code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::FailedPrecondition => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refusal(status, &e.message)
}

/// One page holding everything (vantage6's list shape: no `next` link).
fn page(data: Vec<Value>) -> Json<Value> {
    Json(json!({"data": data, "links": {"first": null, "previous": null, "next": null, "last": null}}))
}

/// vantage6's words for a status.
fn status_word(status: &str) -> &str {
    match status {
        "killed" => "killed by user",
        other => other,
    }
}

async fn organisations(State(p): State<Shared>) -> Response {
    let listed = async {
        let collab = p.client.collaboration(&p.run.collaboration).await?;
        let all = p.client.organisations().await?;
        Ok::<_, Error>(
            all.into_iter()
                .filter(|o| collab.organisations.iter().any(|m| m.id == o.id))
                .map(|o| org_json(&o, &collab.id))
                .collect::<Vec<_>>(),
        )
    };
    match listed.await {
        Ok(data) => page(data).into_response(),
        Err(e) => failure(e),
    }
}

fn org_json(o: &enclava_contracts::fed::OrganisationView, collab: &str) -> Value {
    json!({"id": o.id, "name": o.name, "public_key": STANDARD.encode(&o.public_key), "collaborations": [{"id": collab}]})
}

async fn organisation(State(p): State<Shared>, Path(id): Path<String>) -> Response {
    let found = async {
        let collab = p.client.collaboration(&p.run.collaboration).await?;
        if !collab.organisations.iter().any(|m| m.id == id) {
            return Err(Error::not_found("no such organisation in this run's collaboration"));
        }
        Ok(org_json(&p.client.organisation(&id).await?, &collab.id))
    };
    match found.await {
        Ok(v) => Json(v).into_response(),
        Err(e) => failure(e),
    }
}

async fn collaboration(State(p): State<Shared>, Path(id): Path<String>) -> Response {
    if id != p.run.collaboration {
        return refusal(StatusCode::NOT_FOUND, "an algorithm sees only its own collaboration");
    }
    match p.client.collaboration(&id).await {
        Ok(c) => Json(json!({
            "id": c.id,
            "name": c.name,
            "encrypted": c.encrypted,
            "organizations": c.organisations.iter().map(|o| json!({"id": o.id})).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => failure(e),
    }
}

/// `POST task`: a subtask of this run's task, with this run's algorithm, sealed per organisation.
async fn create_task(State(p): State<Shared>, Json(body): Json<Value>) -> Response {
    if p.run.attested {
        // The node would have to judge each target node's evidence under a policy of its own;
        // until it has one, it does not seal anything to them.
        return refusal(
            StatusCode::CONFLICT,
            "subtasks are not made in attested collaborations yet: the initiator starts each task",
        );
    }
    if body.get("image").and_then(Value::as_str).is_some_and(|i| i != p.run.algorithm) {
        return refusal(StatusCode::FORBIDDEN, "a subtask runs this run's own algorithm, no other");
    }
    if body.get("collaboration_id").and_then(Value::as_str).is_some_and(|c| c != p.run.collaboration) {
        return refusal(StatusCode::FORBIDDEN, "a subtask runs in this run's collaboration");
    }
    if p.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= MAX_SUBTASKS {
        return refusal(StatusCode::TOO_MANY_REQUESTS, "this run has made as many subtasks as it may");
    }
    let Some(orgs) = body.get("organizations").and_then(Value::as_array) else {
        return refusal(StatusCode::BAD_REQUEST, "a subtask names its organizations: [{id, input}]");
    };
    let mut inputs: Vec<(String, Value)> = Vec::new();
    for o in orgs {
        let id = match o.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return refusal(StatusCode::BAD_REQUEST, "each organization has an id"),
        };
        // vantage6's client sends each input as base64 of its JSON serialisation.
        let input = match o.get("input").and_then(Value::as_str).map(|s| STANDARD.decode(s)) {
            Some(Ok(bytes)) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => v,
                Err(_) => return refusal(StatusCode::BAD_REQUEST, "an organization's input is not base64 of JSON"),
            },
            None => Value::Null,
            Some(Err(_)) => return refusal(StatusCode::BAD_REQUEST, "an organization's input is not base64"),
        };
        inputs.push((id, input));
    }
    let name = body.get("name").and_then(Value::as_str).unwrap_or("subtask");
    let name: String = name.chars().take(100).collect();
    let named: Vec<(&str, Value)> = inputs.iter().map(|(o, v)| (o.as_str(), v.clone())).collect();
    let databases: Vec<&str> = p.run.databases.iter().map(String::as_str).collect();
    let request = TaskRequest {
        collaboration: &p.run.collaboration,
        name: &name,
        kind: &p.run.kind,
        algorithm: &p.algorithm,
        inputs: &named,
        databases: &databases,
        readable: false,
        policy: None,
        parent: Some(&p.run.task),
    };
    match p.client.start_task(&request).await {
        Ok((view, seed)) => {
            tracing::info!(run = %p.run.run, subtask = %view.id, organisations = inputs.len(), "subtask created");
            p.subtasks.lock().unwrap_or_else(|e| e.into_inner()).insert(view.id.clone(), seed);
            (StatusCode::CREATED, Json(task_json(&view))).into_response()
        }
        Err(e) => failure(e),
    }
}

fn task_json(t: &enclava_contracts::fed::TaskView) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "status": status_word(&t.status),
        "job_id": t.job,
        "parent": t.parent.as_ref().map(|l| json!({"id": l.id})),
        "collaboration": {"id": t.collaboration.id},
        "image": t.algorithm,
        "databases": t.databases.iter().map(|l| json!({"label": l})).collect::<Vec<_>>(),
    })
}

/// Task `id`, if this run may see it: its own task or a subtask it made.
async fn visible_task(p: &RunProxy, id: &str) -> Result<enclava_contracts::fed::TaskView, Response> {
    if !p.sees(id) {
        return Err(refusal(StatusCode::NOT_FOUND, "an algorithm sees only its own task and the subtasks it made"));
    }
    p.client.task(id).await.map_err(failure)
}

async fn task(State(p): State<Shared>, Path(id): Path<String>) -> Response {
    match visible_task(&p, &id).await {
        Ok(t) => Json(task_json(&t)).into_response(),
        Err(r) => r,
    }
}

async fn task_status(State(p): State<Shared>, Path(id): Path<String>) -> Response {
    match visible_task(&p, &id).await {
        Ok(t) => Json(json!({"id": t.id, "status": status_word(&t.status)})).into_response(),
        Err(r) => r,
    }
}

/// A subtask's runs, each result opened with the subtask's key (base64 of what the algorithm
/// wrote, as vantage6's client expects).
async fn opened_runs(p: &RunProxy, task: &str) -> Result<Vec<Value>, Error> {
    let Some(seed) = p.seed_of(task) else {
        return Err(Error::not_found("an algorithm reads the results only of the subtasks it made"));
    };
    let outcomes = p.client.results(task, &seed, false, None).await?;
    Ok(outcomes
        .into_iter()
        .map(|o| {
            json!({
                "id": o.run,
                "status": status_word(&o.status),
                "task": {"id": task},
                "organization": {"id": o.organisation},
                "result": o.result.map(|b| STANDARD.encode(b)),
                "log": o.reasons.join("; "),
                "blob_storage_used": false,
            })
        })
        .collect())
}

async fn results(State(p): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(task) = q.get("task_id") else {
        return refusal(StatusCode::BAD_REQUEST, "name the subtask: result?task_id=…");
    };
    match opened_runs(&p, task).await {
        Ok(runs) => page(runs).into_response(),
        Err(e) => failure(e),
    }
}

async fn result(State(p): State<Shared>, Path(id): Path<String>) -> Response {
    // A run id is `{task}-{i}`.
    let Some((task, _)) = id.rsplit_once('-') else {
        return refusal(StatusCode::NOT_FOUND, "no such run");
    };
    match opened_runs(&p, task).await {
        Ok(runs) => match runs.into_iter().find(|r| r["id"] == id.as_str()) {
            Some(r) => Json(r).into_response(),
            None => refusal(StatusCode::NOT_FOUND, "no such run"),
        },
        Err(e) => failure(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> LeasedRun {
        serde_json::from_value(json!({
            "run": "0123456789abcdef0123456789abcdef-0", "task": "0123456789abcdef0123456789abcdef",
            "job": "0123456789abcdef0123456789abcdef", "organisation": "o1", "collaboration": "c1",
            "initiator": "u1", "initiator_organisation": "o1", "kind": "process", "algorithm": "ab",
            "databases": ["trial"], "encrypted": true, "attested": false, "sealed": null, "plain": "{}",
            "result_key": "", "lease": "l", "lease_ms": 1000
        }))
        .expect("a leased run")
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().expect("header"));
        h
    }

    #[test]
    fn only_the_runs_own_unexpired_token_is_accepted() {
        let client = FedClient::new("http://127.0.0.1:9", None);
        let algorithm = Arc::new(b"true".to_vec());
        let proxy = RunProxy::new(client.clone(), &run(), "n1", algorithm.clone(), Duration::from_secs(60));
        let other = RunProxy::new(client.clone(), &run(), "n1", algorithm.clone(), Duration::from_secs(60));
        assert!(proxy.authorised(&bearer(proxy.token())));
        assert!(!proxy.authorised(&bearer(other.token())), "another run's token");
        assert!(!proxy.authorised(&HeaderMap::new()), "no token");
        let mut cut = proxy.token().to_owned();
        cut.pop();
        assert!(!proxy.authorised(&bearer(&cut)));
        let expired = RunProxy::new(client, &run(), "n1", algorithm, Duration::ZERO);
        assert!(!expired.authorised(&bearer(expired.token())), "an expired token");
        // The token is a JWT in vantage6's shape: its `sub` names the run's collaboration.
        let payload = proxy.token().split('.').nth(1).expect("payload");
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json");
        assert_eq!(claims["sub"]["collaboration_id"], "c1");
        assert_eq!(claims["sub"]["organization_id"], "o1");
        assert!(claims["exp"].as_u64() > claims["iat"].as_u64());
        assert!(!format!("{proxy:?}").contains(proxy.token()), "the token stays out of Debug");
    }
}
