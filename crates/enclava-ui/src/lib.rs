//! The dashboard (seed note 2), the `ui` role of `enclava server`: one page under `/ui`, served
//! from assets built into the binary (no CDN, works offline), showing every live enclave with what
//! its evidence proved, the signed-in user's models and where they are hot, the farm, the
//! federation and the pools, updated live by server-sent events.
//!
//! # Security
//!
//! - Sign-in takes an Enclava credential (the token `enclava keys register` kept) once and gives an
//!   `HttpOnly`, `SameSite=Strict` session cookie scoped to `/ui`; the token stays on the server,
//!   the cookie is random and only its hash is kept. Sessions end on sign-out or after 12 hours.
//! - State-changing calls (sign-in, sign-out) need `Content-Type: application/json`, a same-origin
//!   `Origin` when the browser sends one, and (sign-out) the session's CSRF token in
//!   `X-CSRF-Token`.
//! - Every page and answer carries a strict Content-Security-Policy (scripts and styles from this
//!   origin only, no inline code, no frames); the page writes everything from the registry, the
//!   database or a user with `textContent`, so an info entry with `<script>` in it is shown, never
//!   run.
//! - What a user sees is what the REST APIs give that user's credential: the dashboard calls them
//!   with it (models, audit, farm, federation, pools), so their rules apply unchanged; an admin
//!   sees everything they show an admin. Enclaves are public (FindEnclave is).
//!
//! # Routes (under `/ui`)
//!
//! `GET /` the page, `/app.js`, `/app.css`; `POST /api/session` `{token}` signs in, `GET
//! /api/session` says who, `POST /api/session/end` signs out; `GET /api/enclaves?after=&platform=
//! &q=&size=`, `/api/models`, `/api/farm`, `/api/fed`, `/api/pools`; `GET /api/events` (SSE:
//! `changed` whenever the live enclaves, their hot models or a pool's load change).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use enclava_core::{Error, ErrorCode, Platform};
use enclava_identity::Identity;
use enclava_registry::list::{ListQuery, list};
use enclava_registry::{Index, Registry};
use enclava_server::{Health, Role, StopSignal};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use zeroize::Zeroizing;

/// Where the role is mounted.
pub const PREFIX: &str = "/ui";
/// The session cookie's name.
pub const COOKIE: &str = "enclava_ui";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions one user may hold at once.
pub const MAX_SESSIONS: usize = 16;
/// The page size of the enclaves list, unless asked otherwise (at most 500).
pub const PAGE: usize = 50;
/// The Content-Security-Policy of every answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The registry's presence TTL (the seed's 3 s).
const PRESENCE_TTL: Duration = Duration::from_secs(3);
/// How often the watcher looks for changes to push.
const WATCH_EVERY: Duration = Duration::from_millis(300);
/// How long a verdict on one enclave's evidence is reused.
const VERDICT_TTL: Duration = Duration::from_secs(60);

struct Session {
    user: String,
    admin: bool,
    token: Zeroizing<String>,
    csrf: String,
    expires: Instant,
}

#[derive(Clone)]
struct Verdict {
    at: Instant,
    at_unix: u64,
    result: Result<Value, Vec<String>>,
}

struct Ui {
    registry: Arc<dyn Registry>,
    identity: Arc<Identity>,
    /// The server's own URL, for calling the other roles' REST APIs with a user's credential.
    self_url: OnceLock<String>,
    /// The deployment's policy: enclaves' evidence is verified against it, when it is set.
    policy: OnceLock<enclava_attest::Policy>,
    verifier: enclava_collateral::EvidenceVerifier,
    /// Sessions by the hash of their cookie.
    sessions: Mutex<HashMap<String, Session>>,
    verdicts: Mutex<HashMap<String, Verdict>>,
    http: Client<HttpConnector, Empty<Bytes>>,
    changes: watch::Sender<u64>,
    /// The server's stop signal: event streams end when it drains (else it would wait on them).
    stop: OnceLock<StopSignal>,
}

/// The dashboard role.
#[derive(Clone)]
pub struct UiRole {
    ui: Arc<Ui>,
}

impl std::fmt::Debug for UiRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UiRole").finish_non_exhaustive()
    }
}

impl UiRole {
    pub fn new(registry: Arc<dyn Registry>, identity: Arc<Identity>) -> UiRole {
        let http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        UiRole {
            ui: Arc::new(Ui {
                registry,
                identity,
                self_url: OnceLock::new(),
                policy: OnceLock::new(),
                verifier: enclava_collateral::EvidenceVerifier::default(),
                sessions: Mutex::new(HashMap::new()),
                verdicts: Mutex::new(HashMap::new()),
                http,
                changes: watch::Sender::new(0),
                stop: OnceLock::new(),
            }),
        }
    }

    /// The server's own URL (`http://host:port`), once it listens.
    pub fn set_self_url(&self, url: &str) {
        let _ = self.ui.self_url.set(url.trim_end_matches('/').to_owned());
    }

    /// Verify enclaves' evidence against `policy` (the deployment's), and show the verdicts.
    pub fn set_policy(&self, policy: enclava_attest::Policy) {
        let _ = self.ui.policy.set(policy);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The signed-in caller of a dashboard API call.
struct Signed {
    user: String,
    admin: bool,
    token: Zeroizing<String>,
    csrf: String,
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(';').map(str::trim).find_map(|kv| kv.strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_owned))
    })
}

impl FromRequestParts<Arc<Ui>> for Signed {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, ui: &Arc<Ui>) -> Result<Signed, Error> {
        let cookie = cookie_value(&parts.headers).ok_or_else(not_signed_in)?;
        let key = enclava_identity::token_hash(&cookie);
        let mut sessions = lock(&ui.sessions);
        let s = sessions.get(&key).ok_or_else(not_signed_in)?;
        if s.expires <= Instant::now() {
            sessions.remove(&key);
            return Err(not_signed_in());
        }
        Ok(Signed { user: s.user.clone(), admin: s.admin, token: s.token.clone(), csrf: s.csrf.clone() })
    }
}

fn not_signed_in() -> Error {
    Error::new(ErrorCode::Unauthenticated, "not signed in: sign in with your Enclava credential")
}

/// A state-changing call must come from this origin, as JSON.
fn same_origin_json(headers: &HeaderMap) -> Result<(), Error> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(Error::invalid("send JSON (Content-Type: application/json)"));
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let origin_host = origin.split("://").nth(1).unwrap_or("");
        if host.is_empty() || origin_host != host {
            return Err(Error::forbidden("a request from another site is refused"));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

async fn sign_in(State(ui): State<Arc<Ui>>, headers: HeaderMap, body: Bytes) -> Result<Response, Error> {
    same_origin_json(&headers)?;
    let body: SignIn = enclava_core::json_body(&body)?;
    let token = Zeroizing::new(body.token);
    let who = ui.identity.authenticate(token.trim()).await?;
    let cookie = random_hex();
    let csrf = random_hex();
    let admin = who.is_admin();
    {
        let mut sessions = lock(&ui.sessions);
        sessions.retain(|_, s| s.expires > Instant::now());
        // At most MAX_SESSIONS per user: signing in again ends the oldest.
        let mut mine: Vec<(Instant, String)> =
            sessions.iter().filter(|(_, s)| s.user == who.id).map(|(k, s)| (s.expires, k.clone())).collect();
        mine.sort();
        for (_, k) in mine.iter().take((mine.len() + 1).saturating_sub(MAX_SESSIONS)) {
            sessions.remove(k);
        }
        sessions.insert(
            enclava_identity::token_hash(&cookie),
            Session {
                user: who.id.clone(),
                admin,
                token: Zeroizing::new(token.trim().to_owned()),
                csrf: csrf.clone(),
                expires: Instant::now() + SESSION_TTL,
            },
        );
    }
    tracing::info!(user = %who.id, "dashboard sign-in");
    let set = format!("{COOKIE}={cookie}; Path={PREFIX}; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_TTL.as_secs());
    let mut resp = Json(json!({ "user": who.id, "admin": admin, "csrf": csrf })).into_response();
    if let Ok(v) = HeaderValue::from_str(&set) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

async fn session(s: Signed) -> Json<Value> {
    Json(json!({ "user": s.user, "admin": s.admin, "csrf": s.csrf }))
}

async fn sign_out(State(ui): State<Arc<Ui>>, s: Signed, headers: HeaderMap) -> Result<Response, Error> {
    same_origin_json(&headers)?;
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
    if sent != s.csrf {
        return Err(Error::forbidden("missing or wrong X-CSRF-Token"));
    }
    if let Some(cookie) = cookie_value(&headers) {
        lock(&ui.sessions).remove(&enclava_identity::token_hash(&cookie));
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("{COOKIE}=; Path={PREFIX}; HttpOnly; SameSite=Strict; Max-Age=0")) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

impl Ui {
    /// `GET {self}{path}` with the user's credential: the answer's JSON, or its error.
    async fn api(&self, token: &str, path: &str) -> Result<Value, Error> {
        let base = self.self_url.get().ok_or_else(|| Error::unavailable("the dashboard is starting"))?;
        let req = axum::http::Request::get(format!("{base}{path}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::new())
            .map_err(|e| Error::internal(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.http.request(req))
            .await
            .map_err(|_| Error::unavailable(format!("{path} did not answer in time")))?
            .map_err(|e| Error::unavailable(format!("{path}: {e}")))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 16 << 20)
            .collect()
            .await
            .map_err(|e| Error::unavailable(format!("{path}: {e}")))?
            .to_bytes();
        if status == StatusCode::NOT_FOUND && body.is_empty() {
            return Ok(Value::Null); // the role does not run here
        }
        if !status.is_success() {
            let e: enclava_core::ErrorBody = serde_json::from_slice(&body).unwrap_or(enclava_core::ErrorBody {
                code: ErrorCode::from_http(status.as_u16()),
                message: status.to_string(),
            });
            return Err(e.into());
        }
        serde_json::from_slice(&body).map_err(|e| Error::internal(format!("{path} answered something else: {e}")))
    }

    /// What the enclave's evidence proves against the deployment's policy (cached a minute).
    async fn verdict(&self, info: &enclava_registry::EnclaveInfoJson) -> Value {
        let Some(policy) = self.policy.get() else {
            return json!({ "state": "unchecked", "why": "the server has no --policy to verify against" });
        };
        // Everything the verdict depends on: the evidence, the key it must bind, the measurement.
        let key = enclava_identity::token_hash(&format!(
            "{}:{}:{}:{}",
            info.instance_id,
            hex::encode(&info.attestation),
            hex::encode(&info.pubkey),
            info.policy.mrenclave
        ));
        let cached = lock(&self.verdicts).get(&key).filter(|v| v.at.elapsed() < VERDICT_TTL).cloned();
        let v = match cached {
            Some(v) => v,
            None => {
                let pb = enclava_contracts::discovery::v1::EnclaveInfo {
                    instance_id: info.instance_id.clone(),
                    platform: info.platform.clone(),
                    policy: Some(enclava_contracts::discovery::v1::EnclavePolicy {
                        mrenclave: info.policy.mrenclave.clone(),
                    }),
                    attestation: info.attestation.clone(),
                    pubkey: info.pubkey.clone(),
                    connection_string: info.connection_string.clone(),
                    ..Default::default()
                };
                let at_unix = now_unix();
                let result = enclava_client::verify_enclave(&pb, policy, &self.verifier, at_unix).await.map(|c| {
                    json!({
                        "platform": c.platform.as_str(),
                        "measurement": c.measurement_hex(),
                        "tcbStatus": c.tcb_status,
                        "advisories": c.advisories,
                        "debug": c.debug,
                        "securityVersion": c.security_version,
                    })
                });
                let v = Verdict { at: Instant::now(), at_unix, result };
                let mut verdicts = lock(&self.verdicts);
                if verdicts.len() > 20_000 {
                    verdicts.clear();
                }
                verdicts.insert(key, v.clone());
                v
            }
        };
        match v.result {
            Ok(claims) => json!({ "state": "verified", "atUnix": v.at_unix, "claims": claims }),
            Err(reasons) => json!({ "state": "refused", "atUnix": v.at_unix, "reasons": reasons }),
        }
    }

    /// A digest of what the enclaves page and the pools show: live ids, hot models, pool loads.
    async fn digest(&self) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut indexes = self.registry.indexes().await.ok()?;
        indexes.sort();
        for index in indexes.iter().filter(|i| !matches!(i, Index::Measurement(_))) {
            let mut entries = self.registry.index(index).await.ok()?;
            entries.sort();
            index.hash(&mut h);
            entries.hash(&mut h);
            if matches!(index, Index::Platform(_)) {
                let ids: Vec<String> = entries.into_iter().map(|(id, _)| id).collect();
                let live: Vec<bool> =
                    self.registry.probe(&ids, false).await.ok()?.iter().map(|p| p.presence_ttl.is_some()).collect();
                live.hash(&mut h);
            }
        }
        // The pools as their pages show them (not their liveness notes, rewritten every sync).
        for view in self.pool_views().await {
            serde_json::to_string(&view.status).ok().hash(&mut h);
            view.endpoints.hash(&mut h);
        }
        Some(h.finish())
    }

    /// Every pool as the pools role keeps it (read only; this role does not route).
    async fn pool_views(&self) -> Vec<enclava_pool::pool::PoolView> {
        let store = enclava_pool::role::RegistryStore(self.registry.clone());
        let mut views = Vec::new();
        for name in enclava_pool::pool::names(&store, "").await.unwrap_or_default() {
            if let Ok(view) = enclava_pool::pool::view(&store, "", &name).await {
                views.push(view);
            }
        }
        views
    }
}

#[derive(Deserialize)]
struct EnclavesQuery {
    after: Option<String>,
    platform: Option<String>,
    q: Option<String>,
    size: Option<usize>,
}

/// One page of live enclaves, each with its security status in words and what its evidence
/// proved; the fleet's counts by platform. Public, as FindEnclave is.
async fn enclaves(State(ui): State<Arc<Ui>>, Query(q): Query<EnclavesQuery>) -> Result<Json<Value>, Error> {
    let started = Instant::now();
    let platform = q.platform.filter(|p| !p.is_empty());
    if let Some(p) = &platform
        && !enclava_registry::schema::is_known_platform(p)
    {
        return Err(Error::invalid(format!("unknown platform {}", enclava_core::text::quote(p))));
    }
    let filter = q.q.unwrap_or_default().to_ascii_lowercase();
    let size = q.size.unwrap_or(PAGE).clamp(1, 200);
    let registry_error = |e: enclava_registry::RegistryError| Error::unavailable(e.to_string());
    // The fleet picture: every platform index's size (read by the first page when it reads them
    // all anyway).
    let mut sizes: Option<Vec<(Index, usize)>> = None;
    // Load: requests in flight on each instance through the pools (nodes publish no load).
    let mut load: HashMap<String, u64> = HashMap::new();
    for view in ui.pool_views().await {
        for i in view.status.instances {
            *load.entry(i.id).or_default() += u64::from(i.in_flight);
        }
    }
    let mut items = Vec::new();
    let mut after = q.after.filter(|a| !a.is_empty());
    // Pages until this one is full of live matches (a filter may skip many), a bounded number.
    for _ in 0..5 {
        let page = list(
            &*ui.registry,
            &ListQuery { platform: platform.clone(), page_size: size, after: after.clone(), ..Default::default() },
        )
        .await
        .map_err(registry_error)?;
        if sizes.is_none() && platform.is_none() {
            sizes = Some(page.sizes.clone());
        }
        let mut full = false;
        for l in page.items {
            if full {
                break;
            }
            // The next page starts after the last entry looked at, shown or not.
            after = Some(l.instance_id.clone());
            let ttl = l.presence_ttl;
            let Some(info) = l.info.filter(|_| l.present) else { continue };
            if !filter.is_empty() {
                let hay = format!(
                    "{} {} {} {}",
                    info.instance_id,
                    info.platform,
                    info.policy.mrenclave,
                    info.data_access.keys().cloned().collect::<Vec<_>>().join(" ")
                )
                .to_ascii_lowercase();
                if !hay.contains(&filter) {
                    continue;
                }
            }
            let status = info.platform.parse::<Platform>().map(|p| p.security()).ok();
            let evidence = ui.verdict(&info).await;
            let extra: serde_json::Map<String, Value> = info.extra.clone().into_iter().take(16).collect();
            items.push(json!({
                "id": info.instance_id,
                "platform": info.platform,
                "status": status.map(|s| json!({ "label": s.label, "why": s.why, "confidential": s.confidential })),
                "measurement": info.policy.mrenclave,
                "address": info.connection_string,
                "models": info.data_access.iter().map(|(m, a)| json!({ "id": m, "hot": a.hot })).collect::<Vec<_>>(),
                "evidenceBytes": info.attestation.len(),
                // A heartbeat renews presence to its full TTL: how long ago the last one was.
                "heartbeatAgoMs": ttl.map(|t| PRESENCE_TTL.saturating_sub(t).as_millis() as u64),
                "inFlight": load.get(&info.instance_id),
                "evidence": evidence,
                "extra": extra,
            }));
            full = items.len() >= size;
        }
        if full {
            break;
        }
        after = page.next_after;
        if after.is_none() {
            break;
        }
    }
    let sizes = match sizes {
        Some(s) => s,
        None => {
            let mut s = Vec::new();
            for index in ui.registry.indexes().await.map_err(registry_error)? {
                if matches!(index, Index::Platform(_)) {
                    let n = ui.registry.index(&index).await.map_err(registry_error)?.len();
                    s.push((index, n));
                }
            }
            s
        }
    };
    let mut fleet = serde_json::Map::new();
    for (index, n) in sizes {
        let status = index.value().parse::<Platform>().map(|pl| pl.security()).ok();
        fleet.insert(
            index.value().to_owned(),
            json!({ "count": n, "label": status.map(|s| s.label), "confidential": status.map(|s| s.confidential) }),
        );
    }
    Ok(Json(json!({
        "items": items,
        "next": after,
        "fleet": fleet,
        "servedMs": started.elapsed().as_secs_f64() * 1e3,
    })))
}

/// The caller's models, their key versions and grants, where each is hot now, recent releases
/// and refusals from the audit log, and whether the chain verifies.
async fn models(State(ui): State<Arc<Ui>>, s: Signed) -> Result<Json<Value>, Error> {
    let listing = ui.api(&s.token, "/keys/v1/models").await?;
    let mut models = Vec::new();
    for m in listing.get("models").and_then(Value::as_array).cloned().unwrap_or_default() {
        let id = m.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut hot_on = Vec::new();
        let mut cold_on = Vec::new();
        if enclava_registry::schema::check_name("a model id", &id).is_ok()
            && let Ok(entries) = ui.registry.index(&Index::Data(id.clone())).await
        {
            let ids: Vec<String> = entries.iter().map(|(i, _)| i.clone()).collect();
            let live = ui.registry.probe(&ids, false).await.unwrap_or_default();
            for ((instance, value), probe) in entries.iter().zip(live) {
                if probe.presence_ttl.is_none() {
                    continue;
                }
                match enclava_registry::find::parse_data_entry(value) {
                    Ok((true, _)) => hot_on.push(instance.clone()),
                    Ok((false, _)) => cold_on.push(instance.clone()),
                    Err(_) => {}
                }
            }
        }
        let mut m = m;
        if let Some(o) = m.as_object_mut() {
            o.insert("hotOn".into(), json!(hot_on));
            o.insert("coldOn".into(), json!(cold_on));
            models.push(m);
        }
    }
    let audit = ui.api(&s.token, "/keys/v1/audit?limit=200").await.unwrap_or(Value::Null);
    let chain = ui.api(&s.token, "/keys/v1/audit/verify").await.unwrap_or(Value::Null);
    Ok(Json(json!({ "user": s.user, "models": models, "audit": audit, "auditChain": chain })))
}

/// An id that may go into a URL path as it is.
fn plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The items of a list answer: a JSON array, or the `data`/`items` of a page.
fn items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        _ => v.get("data").or_else(|| v.get("items")).and_then(Value::as_array).cloned().unwrap_or_default(),
    }
}

/// Hosts with their capacity and how it is proven; jobs with their security level and, once
/// finished, their receipts (the newest 20).
async fn farm(State(ui): State<Arc<Ui>>, s: Signed) -> Result<Json<Value>, Error> {
    let mut hosts = items(&ui.api(&s.token, "/farm/v1/hosts").await?);
    for h in &mut hosts {
        let proven = h.get("evidence").and_then(Value::as_str).is_some_and(|e| !e.is_empty());
        if let Some(o) = h.as_object_mut() {
            o.remove("evidence");
            o.remove("pubkey");
            o.insert("capacityProven".into(), json!(proven));
        }
    }
    let mut jobs = items(&ui.api(&s.token, "/farm/v1/jobs").await?);
    for j in jobs.iter_mut().take(20) {
        let finished = matches!(j.get("state").and_then(Value::as_str), Some("succeeded" | "failed"));
        let Some(id) = j.get("id").and_then(Value::as_str).map(str::to_owned) else { continue };
        if finished
            && plain_id(&id)
            && let Ok(out) = ui.api(&s.token, &format!("/farm/v1/jobs/{id}/output")).await
        {
            let receipt = out
                .pointer("/receipt/receipt")
                .and_then(Value::as_str)
                .and_then(|r| serde_json::from_str::<Value>(r).ok());
            let signed = out.pointer("/receipt/evidence").and_then(Value::as_str).is_some_and(|e| !e.is_empty());
            if let Some(o) = j.as_object_mut() {
                o.insert("receipt".into(), json!({ "fields": receipt, "signedByEvidence": signed }));
            }
        }
    }
    Ok(Json(json!({ "hosts": hosts, "jobs": jobs })))
}

/// The caller's organisations, collaborations, and tasks (the newest 20) with their runs per
/// organisation and why any failed.
async fn fed(State(ui): State<Arc<Ui>>, s: Signed) -> Result<Json<Value>, Error> {
    let organisations = items(&ui.api(&s.token, "/fed/v1/organisations").await?);
    let collaborations = items(&ui.api(&s.token, "/fed/v1/collaborations").await?);
    let mut tasks = items(&ui.api(&s.token, "/fed/v1/tasks").await?);
    for t in tasks.iter_mut().take(20) {
        let Some(id) = t.get("id").and_then(Value::as_str).map(str::to_owned) else { continue };
        if !plain_id(&id) {
            continue;
        }
        let mut runs = items(&ui.api(&s.token, &format!("/fed/v1/runs?task={id}")).await.unwrap_or(Value::Null));
        for r in &mut runs {
            if let Some(o) = r.as_object_mut() {
                o.remove("result");
            }
        }
        if let Some(o) = t.as_object_mut() {
            o.insert("runs".into(), json!(runs));
        }
    }
    Ok(Json(json!({ "organisations": organisations, "collaborations": collaborations, "tasks": tasks })))
}

async fn pools(State(ui): State<Arc<Ui>>, s: Signed) -> Result<Json<Value>, Error> {
    Ok(Json(ui.api(&s.token, "/pools/v1/list").await?))
}

/// `changed` events whenever the watcher sees the enclaves or the pools change.
async fn events(
    State(ui): State<Arc<Ui>>,
    _signed: Signed,
) -> Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let rx = ui.changes.subscribe();
    let stop = ui.stop.get().cloned();
    let stream = futures::stream::unfold((rx, stop), |(mut rx, stop)| async move {
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    changed.ok()?;
                    let n = *rx.borrow_and_update();
                    return Some((Ok(Event::default().event("changed").data(n.to_string())), (rx, stop)));
                }
                // The server is draining: end the stream so it can stop (the page reconnects).
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if stop.as_ref().is_some_and(StopSignal::is_draining) {
                        return None;
                    }
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Security headers on every answer.
async fn harden(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/api/session", post(sign_in).get(session))
        .route("/api/session/end", post(sign_out))
        .route("/api/enclaves", get(enclaves))
        .route("/api/models", get(models))
        .route("/api/farm", get(farm))
        .route("/api/fed", get(fed))
        .route("/api/pools", get(pools))
        .route("/api/events", get(events))
        .layer(axum::middleware::from_fn(harden))
        .with_state(ui)
}

#[tonic::async_trait]
impl Role for UiRole {
    fn name(&self) -> &'static str {
        "ui"
    }

    fn prefix(&self) -> String {
        PREFIX.into()
    }

    fn rest(&self) -> Option<Router> {
        Some(router(self.ui.clone()))
    }

    fn start(&self, mut stop: StopSignal) -> Vec<tokio::task::JoinHandle<()>> {
        let ui = self.ui.clone();
        let _ = ui.stop.set(stop.clone());
        vec![tokio::spawn(async move {
            let mut last: Option<u64> = None;
            loop {
                // Only while someone watches (the digest reads every platform index). When the
                // first page starts watching, it is told to redraw once the baseline is taken, so
                // a change between its first draw and the baseline is not missed.
                if ui.changes.receiver_count() == 0 {
                    last = None;
                } else if let Some(d) = ui.digest().await
                    && last.replace(d) != Some(d)
                {
                    ui.changes.send_modify(|n| *n = n.wrapping_add(1));
                }
                tokio::select! {
                    _ = stop.stopped() => return,
                    _ = tokio::time::sleep(WATCH_EVERY) => {}
                }
            }
        })]
    }

    async fn health(&self) -> Health {
        match self.ui.registry.ping().await {
            Ok(()) => Health::ok(),
            Err(e) => Health::failing(format!("the registry does not answer: {e}")),
        }
    }
}
