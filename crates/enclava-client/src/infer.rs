//! Sealed inference in direct mode (BlindAI): the wire protocol both sides share, and [`infer`],
//! the client's `find → verify → seal → send → open` loop with a deny list (seed notes 3 and 4).
//!
//! # The protocol (v1)
//!
//! The client finds an enclave serving the model (`FindEnclave`, `dataaccess` = model id), verifies
//! its published evidence against the user's policy and checks that it binds the published request
//! key ([`crate::verify_enclave`]) **before** anything is sent to it. Then:
//!
//! ```text
//! POST http://<connection_string>/v1/infer
//! {"model": "acme/tiny", "requestId": "<32 hex>", "timeMs": 1700000000000, "enc": "<b64>", "ciphertext": "<b64>"}
//! ```
//!
//! - `requestId`: 16 random bytes, lowercase hex; `timeMs`: the client's clock, Unix milliseconds.
//! - `aad` = for each of model id (UTF-8), requestId (its 32 ASCII hex characters) and timeMs (u64
//!   big-endian): a u32 big-endian length, then the bytes ([`aad`]).
//! - `enc`, `ciphertext` = HPKE base mode (X25519-HKDF-SHA256, HKDF-SHA256, ChaCha20-Poly1305, as
//!   `enclava-seal`) to the enclave's attested request key, `info` = [`REQUEST_INFO`], that aad.
//! - plaintext = the client's response public key (32 bytes, a fresh X25519 key per request) ‖ the
//!   input tensor as `.npy` bytes.
//!
//! The node refuses (400) a request whose `timeMs` is more than [`MAX_SKEW_MS`] from its clock,
//! one that does not open (tampered, or sealed to another key, model, id or time), and one whose
//! requestId it has seen in the last [`REPLAY_WINDOW_MS`]. It runs the model and answers:
//!
//! ```text
//! 200 {"requestId": "<same>", "enc": "<b64>", "ciphertext": "<b64>"}
//! ```
//!
//! sealed to the client's response key with `info` = [`RESPONSE_INFO`] and the same aad; the
//! plaintext is the model's first output as `.npy` bytes. Only the holder of the response key (the
//! client that sent the request) can open it, and it opens only for that request.
//!
//! Errors are `{"code": "…", "message": "…"}` ([`ErrorBody`]): 400 (`bad_request`, `tampered`,
//! `replayed`, `stale`, `bad_input`), 404 (`not_served`: the model is not served by this node), 503
//! (`unavailable`: the model is cold, loading, or this node was not granted its key). Messages carry
//! no key, input or output.
//!
//! The same JSON travels inside OpenWhisk's `/run` envelope (`{"value": <request>, …}`) when the
//! node runs as an OpenWhisk action.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use enclava_attest::{Claims, Collateral, Policy};
use enclava_proto::discovery::v1::{EnclaveInfo, FindEnclaveRequest};
use enclava_seal::{KeyPair, SealError, Sealed};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{ClientError, ManagerClient};

/// HPKE `info` of a sealed request.
pub const REQUEST_INFO: &[u8] = b"enclava/infer/request/v1";
/// HPKE `info` of a sealed response.
pub const RESPONSE_INFO: &[u8] = b"enclava/infer/response/v1";
/// The path of a direct-mode request.
pub const PATH: &str = "/v1/infer";
/// Largest accepted difference between the request's time and the node's clock.
pub const MAX_SKEW_MS: u64 = 60_000;
/// How long a node remembers a request id.
pub const REPLAY_WINDOW_MS: u64 = 120_000;
/// Largest response body the client reads.
pub const MAX_RESPONSE_BYTES: usize = 512 << 20;
/// Length of a request id in bytes (hex doubles it).
pub const REQUEST_ID_LEN: usize = 16;

/// A sealed request, as JSON on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferRequest {
    pub model: String,
    pub request_id: String,
    pub time_ms: u64,
    #[serde(with = "b64")]
    pub enc: Vec<u8>,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

/// A sealed response, as JSON on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferResponse {
    pub request_id: String,
    #[serde(with = "b64")]
    pub enc: Vec<u8>,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

mod b64 {
    use super::{Engine, STANDARD};

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        STANDARD.decode(s).map_err(|_| serde::de::Error::custom("not base64"))
    }
}

/// The AAD binding a request and its response to (model, request id, time).
pub fn aad(model: &str, request_id: &str, time_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + model.len() + request_id.len());
    for field in [model.as_bytes(), request_id.as_bytes(), &time_ms.to_be_bytes()] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// Whether `id` is a well-formed request id: 32 lowercase hex characters.
pub fn valid_request_id(id: &str) -> bool {
    id.len() == 2 * REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The current time in Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the client keeps to open the answer to one request. `Debug` hides the key.
pub struct PendingRequest {
    key: KeyPair,
    aad: Vec<u8>,
    request_id: String,
}

impl fmt::Debug for PendingRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingRequest").field("request_id", &self.request_id).finish_non_exhaustive()
    }
}

/// Why an answer did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenResponseError {
    #[error("the answer is for request {got}, not {expected}")]
    OtherRequest { expected: String, got: String },
    #[error(
        "the answer does not open: it was tampered with on the way, or not sealed by the enclave the request went to"
    )]
    DoesNotOpen,
}

impl PendingRequest {
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Opens the answer: it must name this request and open with this request's key and aad.
    pub fn open(&self, resp: &InferResponse) -> Result<Zeroizing<Vec<u8>>, OpenResponseError> {
        if resp.request_id != self.request_id {
            return Err(OpenResponseError::OtherRequest {
                expected: self.request_id.clone(),
                got: resp.request_id.chars().take(64).collect(),
            });
        }
        let sealed = Sealed { enc: resp.enc.clone(), ciphertext: resp.ciphertext.clone() };
        self.key.open(RESPONSE_INFO, &self.aad, &sealed).map_err(|_| OpenResponseError::DoesNotOpen)
    }
}

/// Seals `input_npy` for `model` to the enclave key `node_pubkey`, with a fresh request id, the
/// current time and a fresh response key.
pub fn seal_request(
    node_pubkey: &[u8],
    model: &str,
    input_npy: &[u8],
) -> Result<(InferRequest, PendingRequest), SealError> {
    let mut id = [0u8; REQUEST_ID_LEN];
    rand::fill(&mut id);
    seal_request_with(node_pubkey, model, input_npy, &hex::encode(id), now_ms())
}

/// [`seal_request`] with a chosen request id and time (tests, replays of a stored request).
pub fn seal_request_with(
    node_pubkey: &[u8],
    model: &str,
    input_npy: &[u8],
    request_id: &str,
    time_ms: u64,
) -> Result<(InferRequest, PendingRequest), SealError> {
    let key = KeyPair::generate();
    let aad = aad(model, request_id, time_ms);
    let mut plain = Zeroizing::new(Vec::with_capacity(enclava_seal::KEY_LEN + input_npy.len()));
    plain.extend_from_slice(key.public());
    plain.extend_from_slice(input_npy);
    let sealed = enclava_seal::seal(node_pubkey, REQUEST_INFO, &aad, &plain)?;
    let req = InferRequest {
        model: model.to_owned(),
        request_id: request_id.to_owned(),
        time_ms,
        enc: sealed.enc,
        ciphertext: sealed.ciphertext,
    };
    Ok((req, PendingRequest { key, aad, request_id: request_id.to_owned() }))
}

/// A request opened by the enclave: the key to seal the answer to, and the input. `Debug` shows
/// neither.
pub struct OpenedRequest {
    pub response_key: [u8; enclava_seal::KEY_LEN],
    pub input_npy: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for OpenedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedRequest").field("input_len", &self.input_npy.len()).finish_non_exhaustive()
    }
}

/// The enclave's side: opens `req` with its request key.
pub fn open_request(key: &KeyPair, req: &InferRequest) -> Result<OpenedRequest, SealError> {
    let sealed = Sealed { enc: req.enc.clone(), ciphertext: req.ciphertext.clone() };
    let plain = key.open(REQUEST_INFO, &aad(&req.model, &req.request_id, req.time_ms), &sealed)?;
    if plain.len() < enclava_seal::KEY_LEN {
        return Err(SealError::Open);
    }
    let mut response_key = [0u8; enclava_seal::KEY_LEN];
    response_key.copy_from_slice(&plain[..enclava_seal::KEY_LEN]);
    Ok(OpenedRequest { response_key, input_npy: Zeroizing::new(plain[enclava_seal::KEY_LEN..].to_vec()) })
}

/// The enclave's side: seals `output_npy` as the answer to `req`.
pub fn seal_response(
    req: &InferRequest,
    response_key: &[u8; enclava_seal::KEY_LEN],
    output_npy: &[u8],
) -> Result<InferResponse, SealError> {
    let sealed =
        enclava_seal::seal(response_key, RESPONSE_INFO, &aad(&req.model, &req.request_id, req.time_ms), output_npy)?;
    Ok(InferResponse { request_id: req.request_id.clone(), enc: sealed.enc, ciphertext: sealed.ciphertext })
}

/// Why an HTTP POST got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    #[error("not a valid URL: {0}")]
    Url(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no answer in {0:?}")]
    Timeout(Duration),
    #[error("the connection failed: {0}")]
    Broken(String),
}

/// An HTTP/1.1 client that keeps connections open between requests.
pub fn http_client(connect_timeout: Duration) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout.min(Duration::from_secs(3))));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// POSTs a JSON `body` to `url` over HTTP/1.1 (a fresh connection) and returns the status and
/// the body (at most [`MAX_RESPONSE_BYTES`]).
pub async fn post_json(url: &str, body: Vec<u8>, timeout: Duration) -> Result<(u16, Vec<u8>), PostError> {
    post_with(&http_client(timeout), url, body, timeout).await
}

/// [`post_json`] on `client`, reusing its open connections.
pub async fn post_with(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), PostError> {
    let req = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| PostError::Url(e.to_string()))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                PostError::Connect(crate::source_chain(&e))
            } else {
                PostError::Broken(crate::source_chain(&e))
            }
        })?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| PostError::Broken(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body.to_vec()))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| PostError::Timeout(timeout))?
}

/// How [`infer`] runs.
#[derive(Debug, Clone)]
pub struct InferOptions {
    /// The enclave manager, `http://host:port`.
    pub manager: String,
    /// The model id (the `dataaccess` FindEnclave looks for).
    pub model: String,
    /// What an enclave must prove before it gets the input.
    pub policy: Policy,
    /// Intel/AMD collateral for real platforms; the sim root comes from the policy when absent.
    pub collateral: Collateral,
    /// Enclaves to try at most (each found enclave counts, refused or not).
    pub max_attempts: usize,
    /// Time allowed for each request to an enclave (connect, run, answer).
    pub request_timeout: Duration,
}

impl InferOptions {
    /// Options with 3 attempts and a 60 s request timeout.
    pub fn new(manager: impl Into<String>, model: impl Into<String>, policy: Policy) -> InferOptions {
        InferOptions {
            manager: manager.into(),
            model: model.into(),
            policy,
            collateral: Collateral::default(),
            max_attempts: 3,
            request_timeout: Duration::from_secs(60),
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
    Refused { instance_id: String, code: String, message: String, tried: Vec<Attempt> },
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
/// a client sending more than one request should hold. Each call still finds and verifies.
pub struct InferSession {
    opts: InferOptions,
    manager: ManagerClient,
    http: Client<HttpConnector, Full<Bytes>>,
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
        Ok(InferSession { opts, manager, http })
    }

    /// [`infer`] over this session's connections.
    pub async fn infer(&mut self, input_npy: &[u8]) -> Result<InferOutcome, InferError> {
        infer_on(&self.opts, &mut self.manager, &self.http, input_npy).await
    }
}

async fn infer_on(
    opts: &InferOptions,
    manager: &mut ManagerClient,
    http: &Client<HttpConnector, Full<Bytes>>,
    input_npy: &[u8],
) -> Result<InferOutcome, InferError> {
    let mut tried: Vec<Attempt> = Vec::new();
    while tried.len() < opts.max_attempts {
        let req = FindEnclaveRequest {
            dataaccess: opts.model.clone(),
            limit: 1,
            enclave_deny_list: tried.iter().map(|a| a.instance_id.clone()).collect(),
            ..Default::default()
        };
        let Some(info) = manager.find(req).await?.found.into_iter().next() else {
            return Err(InferError::NoEnclave { model: opts.model.clone(), tried });
        };
        let attempt = |outcome: String| Attempt {
            instance_id: info.instance_id.clone(),
            connection_string: info.connection_string.clone(),
            outcome,
        };
        let now = now_ms() / 1000;
        let claims = match crate::verify_enclave(&info, &opts.policy, &opts.collateral, now) {
            Ok(c) => c,
            Err(reasons) => {
                tried.push(attempt(format!("refused, nothing sent: {}", reasons.join("; "))));
                continue;
            }
        };
        match send(opts, http, &info, input_npy).await {
            Ok(output) => {
                return Ok(InferOutcome {
                    output_npy: output,
                    instance_id: info.instance_id.clone(),
                    platform: claims.platform.to_string(),
                    measurement: claims.measurement_hex(),
                    claims,
                    passed_over: tried,
                });
            }
            Err(Failure::Retry(why)) => tried.push(attempt(why)),
            Err(Failure::Tampered(why)) => {
                tried.push(attempt(why));
                return Err(InferError::TamperedResponse { instance_id: info.instance_id, tried });
            }
            Err(Failure::Refused { code, message }) => {
                tried.push(attempt(format!("refused the request ({code}): {message}")));
                return Err(InferError::Refused { instance_id: info.instance_id, code, message, tried });
            }
        }
    }
    Err(InferError::Exhausted { model: opts.model.clone(), tried })
}

enum Failure {
    /// Try another enclave.
    Retry(String),
    /// The answer does not open: stop.
    Tampered(String),
    /// The enclave refused the request itself: another would too.
    Refused { code: String, message: String },
}

async fn send(
    opts: &InferOptions,
    http: &Client<HttpConnector, Full<Bytes>>,
    info: &EnclaveInfo,
    input_npy: &[u8],
) -> Result<Vec<u8>, Failure> {
    let (req, pending) = seal_request(&info.pubkey, &opts.model, input_npy)
        .map_err(|e| Failure::Retry(format!("cannot seal to its key: {e}")))?;
    let body = serde_json::to_vec(&req).map_err(|e| Failure::Retry(format!("cannot encode the request: {e}")))?;
    let url = format!("http://{}{PATH}", info.connection_string);
    let (status, body) =
        post_with(http, &url, body, opts.request_timeout).await.map_err(|e| Failure::Retry(e.to_string()))?;
    if status != 200 {
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => (e.code, e.message.chars().take(500).collect()),
            Err(_) => (format!("http {status}"), "no error body".into()),
        };
        return Err(match status {
            400 | 413 | 422 => Failure::Refused { code, message },
            _ => Failure::Retry(format!("answered {status} ({code}): {message}")),
        });
    }
    let resp: InferResponse = serde_json::from_slice(&body)
        .map_err(|_| Failure::Tampered("its answer is not a sealed response".to_owned()))?;
    match pending.open(&resp) {
        Ok(output) => Ok(output.to_vec()),
        Err(e) => Err(Failure::Tampered(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_round_trip_and_bind_their_context() {
        let node = KeyPair::generate();
        let (req, pending) = seal_request(node.public(), "acme/m", b"npy bytes").expect("seal");
        assert!(valid_request_id(&req.request_id));
        let opened = open_request(&node, &req).expect("opens");
        assert_eq!(opened.input_npy.as_slice(), b"npy bytes");
        let resp = seal_response(&req, &opened.response_key, b"out").expect("seal response");
        assert_eq!(pending.open(&resp).expect("opens").as_slice(), b"out");

        // Every bound field matters.
        for change in [
            |r: &mut InferRequest| r.model = "acme/n".into(),
            |r: &mut InferRequest| r.time_ms += 1,
            |r: &mut InferRequest| r.request_id = "0".repeat(32),
            |r: &mut InferRequest| r.ciphertext[0] ^= 1,
        ] {
            let mut bad = req.clone();
            change(&mut bad);
            assert!(open_request(&node, &bad).is_err());
        }
        let mut bad = resp.clone();
        bad.ciphertext[3] ^= 1;
        assert_eq!(pending.open(&bad), Err(OpenResponseError::DoesNotOpen));
        let other = seal_response(&req, KeyPair::generate().public(), b"out").expect("seal");
        assert_eq!(pending.open(&other), Err(OpenResponseError::DoesNotOpen));
        bad = resp.clone();
        bad.request_id = "1".repeat(32);
        assert!(matches!(pending.open(&bad), Err(OpenResponseError::OtherRequest { .. })));
        assert!(!format!("{pending:?}{opened:?}").contains("npy bytes"));
    }

    #[test]
    fn wire_json_uses_camel_case_and_base64() {
        let req = InferRequest {
            model: "m".into(),
            request_id: "ab".repeat(16),
            time_ms: 5,
            enc: vec![1, 2],
            ciphertext: vec![3],
        };
        let json = serde_json::to_value(&req).expect("json");
        assert_eq!(json["requestId"], "ab".repeat(16));
        assert_eq!(json["timeMs"], 5);
        assert_eq!(json["enc"], "AQI=");
        assert_eq!(serde_json::from_value::<InferRequest>(json).expect("back"), req);
        assert!(
            serde_json::from_str::<InferRequest>(
                r#"{"model":"m","requestId":"x","timeMs":1,"enc":"!!","ciphertext":""}"#
            )
            .is_err()
        );
        assert!(!valid_request_id(&"AB".repeat(16)));
        assert!(!valid_request_id("abc"));
    }
}
