//! Direct mode (BlindAI): [`infer`] and [`InferSession`], the client's `find → verify → seal →
//! send → open` loop with a deny list (seed notes 3 and 4).

use std::fmt;
use std::time::{Duration, Instant};

use std::sync::Arc;

use enclava_attest::{Claims, Policy};
use enclava_collateral::EvidenceVerifier;
use enclava_contracts::discovery::v1::{EnclaveInfo, FindEnclaveRequest};

use super::{BINARY_CONTENT_TYPE, ErrorBody, HttpClient, InferResponse, PATH, PendingRequest, http_client, post_with};
use crate::{ClientError, ManagerClient};

/// How [`infer`] runs.
#[derive(Debug, Clone)]
pub struct InferOptions {
    /// The enclave manager, `http://host:port`.
    pub manager: String,
    /// The model id (the `dataaccess` FindEnclave looks for).
    pub model: String,
    /// What an enclave must prove before it gets the input.
    pub policy: Policy,
    /// Verifies found enclaves, with Intel/AMD collateral for real platforms (its source and caches
    /// are shared by every request); the sim root comes from the policy.
    pub verifier: Arc<EvidenceVerifier>,
    /// Enclaves to try at most (each found enclave counts, refused or not).
    pub max_attempts: usize,
    /// Time allowed for each request to an enclave (connect, run, answer).
    pub request_timeout: Duration,
    /// How long an [`InferSession`] sends to an enclave it verified without finding and verifying
    /// again; zero: every request finds and verifies.
    pub reuse_verified: Duration,
    /// Direct mode through a function pool on the manager's server: the pool names the enclave
    /// (where the model is hot, least loaded first) instead of FindEnclave; it is verified all the
    /// same before anything is sent.
    pub pool: Option<String>,
}

/// [`InferOptions::reuse_verified`] by default: the discovery presence TTL.
pub const REUSE_VERIFIED: Duration = Duration::from_secs(3);

impl InferOptions {
    /// Options with 3 attempts, a 60 s request timeout and [`REUSE_VERIFIED`].
    pub fn new(manager: impl Into<String>, model: impl Into<String>, policy: Policy) -> InferOptions {
        InferOptions {
            manager: manager.into(),
            model: model.into(),
            policy,
            verifier: Arc::new(EvidenceVerifier::new(None)),
            max_attempts: 3,
            request_timeout: Duration::from_secs(60),
            reuse_verified: REUSE_VERIFIED,
            pool: None,
        }
    }
}

/// One enclave tried, and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub instance_id: String,
    pub connection_string: String,
    pub outcome: String,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "enclave {} at {}: {}", self.instance_id, self.connection_string, self.outcome)
    }
}

/// A successful sealed inference: the output and who computed it.
#[derive(Debug, Clone)]
pub struct InferOutcome {
    /// The model's first output, `.npy` bytes.
    pub output_npy: Vec<u8>,
    pub instance_id: String,
    pub platform: String,
    /// The verified measurement, lowercase hex.
    pub measurement: String,
    /// The verified claims of the enclave that answered.
    pub claims: Claims,
    /// Enclaves tried before this one, and why they were passed over.
    pub passed_over: Vec<Attempt>,
}

fn list(tried: &[Attempt]) -> String {
    if tried.is_empty() {
        return "none was tried".into();
    }
    tried.iter().map(|a| format!("\n  - {a}")).collect()
}

/// Why [`infer`] failed; every variant lists the enclaves tried.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Manager(#[from] ClientError),
    #[error("invalid options: {0}")]
    Options(String),
    #[error(
        "no enclave serving model {model:?} is available{}; tried: {}",
        if tried.is_empty() { " (is a node serving it, and registered with this manager?)" } else { " any more" },
        list(tried)
    )]
    NoEnclave { model: String, tried: Vec<Attempt> },
    #[error("gave up on model {model:?} after {} attempts; tried: {}", tried.len(), list(tried))]
    Exhausted { model: String, tried: Vec<Attempt> },
    #[error(
        "the answer from enclave {instance_id} does not open: it was tampered with on the way or not sealed by that enclave; nothing was accepted and nothing retried; tried: {}",
        list(tried)
    )]
    TamperedResponse { instance_id: String, tried: Vec<Attempt> },
    #[error("enclave {instance_id} refused the request ({code}): {message}; tried: {}", list(tried))]
    Refused { instance_id: String, code: enclava_core::ErrorCode, message: String, tried: Vec<Attempt> },
}

impl InferError {
    /// The enclaves tried, in order.
    pub fn tried(&self) -> &[Attempt] {
        match self {
            InferError::Manager(_) | InferError::Options(_) => &[],
            InferError::NoEnclave { tried, .. }
            | InferError::Exhausted { tried, .. }
            | InferError::TamperedResponse { tried, .. }
            | InferError::Refused { tried, .. } => tried,
        }
    }
}

/// Runs `input_npy` through `opts.model` on an enclave that proves it satisfies `opts.policy`:
/// find → verify (before anything is sent) → seal → send → open. An enclave that is refused, cannot
/// be reached, or is not ready is added to the deny list and the manager is asked again, at most
/// `opts.max_attempts` enclaves in all. A response that does not open stops at once.
pub async fn infer(opts: &InferOptions, input_npy: &[u8]) -> Result<InferOutcome, InferError> {
    InferSession::connect(opts.clone()).await?.infer(input_npy).await
}

/// Many inferences over one connection to the manager and pooled connections to enclaves: what
/// a client sending more than one request should hold. An enclave found and verified by this
/// session is used again without asking the manager for up to [`InferOptions::reuse_verified`]
/// (the discovery presence TTL by default: the time the manager itself would go on returning it);
/// any failure on it forgets it and the next attempt finds and verifies afresh.
pub struct InferSession {
    opts: InferOptions,
    manager: ManagerClient,
    http: HttpClient,
    verified: Option<Verified>,
}

/// An enclave that passed verification, and when.
struct Verified {
    info: EnclaveInfo,
    claims: Claims,
    at: Instant,
}

impl fmt::Debug for InferSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InferSession").field("manager", &self.opts.manager).field("model", &self.opts.model).finish()
    }
}

impl InferSession {
    pub async fn connect(opts: InferOptions) -> Result<InferSession, InferError> {
        if opts.max_attempts == 0 {
            return Err(InferError::Options("max_attempts must be at least 1".into()));
        }
        let manager = ManagerClient::connect(&opts.manager).await?;
        let http = http_client(opts.request_timeout);
        Ok(InferSession { opts, manager, http, verified: None })
    }

    /// [`infer`] over this session's connections.
    pub async fn infer(&mut self, input_npy: &[u8]) -> Result<InferOutcome, InferError> {
        let opts = &self.opts;
        let mut tried: Vec<Attempt> = Vec::new();
        while tried.len() < opts.max_attempts {
            let reuse = self.verified.take().filter(|v| v.at.elapsed() < opts.reuse_verified);
            let reused = reuse.is_some();
            let (info, claims, at) = match reuse {
                Some(v) => (v.info, v.claims, v.at),
                None => {
                    let found = match &opts.pool {
                        Some(pool) => pool_candidate(&self.http, opts, pool, &tried).await?,
                        None => {
                            let req = FindEnclaveRequest {
                                dataaccess: opts.model.clone(),
                                limit: 1,
                                enclave_deny_list: tried.iter().map(|a| a.instance_id.clone()).collect(),
                                ..Default::default()
                            };
                            self.manager.find(req).await?.found.into_iter().next()
                        }
                    };
                    let Some(info) = found else {
                        return Err(InferError::NoEnclave { model: opts.model.clone(), tried });
                    };
                    let now = super::now_ms() / 1000;
                    match crate::verify_enclave(&info, &opts.policy, &opts.verifier, now).await {
                        Ok(claims) => (info, claims, Instant::now()),
                        Err(reasons) => {
                            tried.push(attempt(&info, format!("refused, nothing sent: {}", reasons.join("; "))));
                            continue;
                        }
                    }
                }
            };
            match send(opts, &self.http, &info, input_npy).await {
                Ok(output) => {
                    let outcome = InferOutcome {
                        output_npy: output,
                        instance_id: info.instance_id.clone(),
                        platform: claims.platform.to_string(),
                        measurement: claims.measurement_hex(),
                        claims: claims.clone(),
                        passed_over: tried,
                    };
                    self.verified = Some(Verified { info, claims, at });
                    return Ok(outcome);
                }
                Err(Failure::Retry(why)) => tried.push(attempt(&info, why)),
                // A request to a remembered enclave that does not open there: it may have restarted
                // at the same address with a new key. Find and verify afresh.
                Err(Failure::Refused { code, message }) if reused && code == enclava_core::ErrorCode::Tampered => {
                    tried.push(attempt(&info, format!("refused the request ({code}): {message}")));
                }
                Err(Failure::Tampered(why)) => {
                    tried.push(attempt(&info, why));
                    return Err(InferError::TamperedResponse { instance_id: info.instance_id, tried });
                }
                Err(Failure::Refused { code, message }) => {
                    tried.push(attempt(&info, format!("refused the request ({code}): {message}")));
                    return Err(InferError::Refused { instance_id: info.instance_id, code, message, tried });
                }
            }
        }
        Err(InferError::Exhausted { model: opts.model.clone(), tried })
    }
}

/// A pool's instance as `GET /pools/v1/{pool}/instances` lists it, with its registry info.
#[derive(serde::Deserialize)]
struct Ranked {
    id: String,
    info: Option<RankedInfo>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RankedInfo {
    instance_id: String,
    platform: String,
    policy: RankedPolicy,
    #[serde(default, with = "enclava_contracts::base64_bytes")]
    attestation: Vec<u8>,
    #[serde(default, with = "enclava_contracts::base64_bytes")]
    pubkey: Vec<u8>,
    connection_string: String,
}

#[derive(serde::Deserialize)]
struct RankedPolicy {
    mrenclave: String,
}

/// The best instance pool `pool` offers for the model that was not tried yet, as an enclave to
/// verify.
async fn pool_candidate(
    http: &HttpClient,
    opts: &InferOptions,
    pool: &str,
    tried: &[Attempt],
) -> Result<Option<EnclaveInfo>, InferError> {
    let url = format!("{}/pools/v1/{pool}/instances?model={}", opts.manager.trim_end_matches('/'), opts.model);
    let (status, body) = super::http::get_with(http, &url, opts.request_timeout)
        .await
        .map_err(|e| InferError::Options(format!("pool {pool}: {e}")))?;
    if status != 200 {
        let why =
            serde_json::from_slice::<ErrorBody>(&body).map(|e| e.message).unwrap_or_else(|_| format!("HTTP {status}"));
        return Err(InferError::Options(format!("pool {pool}: {}", why.chars().take(300).collect::<String>())));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        instances: Vec<Ranked>,
    }
    let answer: Answer = serde_json::from_slice(&body)
        .map_err(|e| InferError::Options(format!("pool {pool} answered something else: {e}")))?;
    Ok(answer
        .instances
        .into_iter()
        .filter(|r| !tried.iter().any(|t| t.instance_id == r.id))
        .filter_map(|r| r.info.filter(|i| i.instance_id == r.id))
        .map(|i| EnclaveInfo {
            instance_id: i.instance_id,
            platform: i.platform,
            policy: Some(enclava_contracts::discovery::v1::EnclavePolicy { mrenclave: i.policy.mrenclave }),
            attestation: i.attestation,
            pubkey: i.pubkey,
            connection_string: i.connection_string,
            ..Default::default()
        })
        .next())
}

fn attempt(info: &EnclaveInfo, outcome: String) -> Attempt {
    Attempt { instance_id: info.instance_id.clone(), connection_string: info.connection_string.clone(), outcome }
}

/// Why one attempt failed.
pub(super) enum Failure {
    /// Try another enclave.
    Retry(String),
    /// The answer does not open: stop.
    Tampered(String),
    /// The enclave refused the request itself: another would too.
    Refused { code: enclava_core::ErrorCode, message: String },
}

/// Sends a sealed request, as [`BINARY_CONTENT_TYPE`] or as JSON, and opens the answer.
pub(super) async fn exchange(
    http: &HttpClient,
    url: &str,
    req: super::InferRequest,
    pending: &PendingRequest,
    binary: bool,
    timeout: Duration,
) -> Result<Vec<u8>, Failure> {
    let (content_type, body) = if binary {
        (BINARY_CONTENT_TYPE, req.to_binary())
    } else {
        let body = serde_json::to_vec(&req).map_err(|e| Failure::Retry(format!("cannot encode the request: {e}")))?;
        ("application/json", body)
    };
    let (status, body) =
        post_with(http, url, content_type, body, timeout).await.map_err(|e| Failure::Retry(e.to_string()))?;
    if status != 200 {
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => (e.code, e.message.chars().take(500).collect()),
            Err(_) => (enclava_core::ErrorCode::from_http(status), format!("HTTP {status} without an error body")),
        };
        // A refusal of the request itself would be the same anywhere; anything else (404
        // not_served, 421 other_measurement, 429, 502, 503 unavailable, 504) may not be.
        return Err(match status {
            400 | 403 | 413 | 422 | 500 => Failure::Refused { code, message },
            _ => Failure::Retry(format!("answered {status} ({code}): {message}")),
        });
    }
    let resp = if binary {
        InferResponse::from_binary(&body)
    } else {
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
    .map_err(|_| Failure::Tampered("its answer is not a sealed response".to_owned()))?;
    match pending.open(&resp) {
        Ok(output) => Ok(output.to_vec()),
        Err(e) => Err(Failure::Tampered(e.to_string())),
    }
}

async fn send(
    opts: &InferOptions,
    http: &HttpClient,
    info: &EnclaveInfo,
    input_npy: &[u8],
) -> Result<Vec<u8>, Failure> {
    let (req, pending) = super::seal_request(&info.pubkey, &opts.model, input_npy)
        .map_err(|e| Failure::Retry(format!("cannot seal to its key: {e}")))?;
    let url = format!("http://{}{PATH}", info.connection_string);
    exchange(http, &url, req, &pending, true, opts.request_timeout).await
}
