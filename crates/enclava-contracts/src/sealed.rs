//! The sealed inference contract, both modes: request and answer types, their AAD, sealing and
//! opening on either side, the JSON and binary encodings, and OpenWhisk's `/run` envelope. The
//! client seals and opens with it; a node serves it.
//!
//! # The protocol (v1)
//!
//! A request goes to `POST http://<node>/v1/infer` ([`PATH`]), or as the `value` of an OpenWhisk
//! `/run` call. As JSON:
//!
//! ```text
//! {"model": "acme/tiny", "requestId": "<32 hex>", "timeMs": 1700000000000, "enc": "<b64>", "ciphertext": "<b64>"}
//! {"mode": "serverless", "model": "acme/tiny", "requestId": "<32 hex>", "timeMs": 1700000000000,
//!  "user": "u_…", "measurement": "<hex>", "ciphertext": "<b64>"}
//! ```
//!
//! or, with `Content-Type: application/vnd.enclava.sealed` ([`BINARY_CONTENT_TYPE`]), in binary:
//! a u32 big-endian header length, the same JSON without `ciphertext`, then the ciphertext raw
//! (no base64: a 224×224 image is 0.6 MB instead of 0.8 MB, and nothing to encode or scan). The
//! answer, `{"requestId": "<same>", "ciphertext": "<b64>"}`, comes in the encoding the request
//! came in; errors are always JSON.
//!
//! - `requestId`: 16 random bytes, lowercase hex; `timeMs`: the client's clock, Unix milliseconds.
//! - AAD: for each bound field, a u32 big-endian length then its bytes. Direct binds model id,
//!   requestId (its 32 ASCII hex characters) and timeMs (u64 big-endian) ([`aad`]); serverless
//!   binds those, then user and measurement ([`serverless_aad`]).
//!
//! **Direct.** The client finds an enclave serving the model (`FindEnclave`, `dataaccess` = model
//! id), verifies its published evidence against the user's policy and checks that it binds the
//! published request key (the client's `verify_enclave`) **before** anything is sent to it. It then
//! sets up HPKE base mode (X25519-HKDF-SHA256, HKDF-SHA256, ChaCha20-Poly1305, as `enclava-seal`)
//! to that key with `info` = [`REQUEST_INFO`]; `enc` is the encapsulated key. The request's secret
//! is the 32 bytes HPKE exports for [`DIRECT_EXPORT_CONTEXT`], which only this client and that
//! enclave can compute (how Oblivious HTTP, RFC 9458, keys its answers). `ciphertext` is the input
//! `.npy` sealed with [`enclava_seal::symmetric`] (AES-256-GCM) under that secret with context
//! [`DIRECT_REQUEST_CONTEXT`] `‖ "|" ‖` requestId; the answer is sealed under it with
//! [`DIRECT_RESPONSE_CONTEXT`] `‖ "|" ‖` requestId. Only the client that sent the request can open
//! the answer, and only for that request.
//!
//! **Serverless.** The user uploaded a 32-byte request key for (model, measurement) to the key
//! broker (`enclava keys request-key`), and the model's owner granted that measurement for the
//! user. The request's secret is that key: `ciphertext` is the input `.npy` sealed with
//! [`enclava_seal::symmetric`] under it with context [`SERVERLESS_REQUEST_CONTEXT`] `‖ "|" ‖`
//! requestId; the answer is sealed under the same key with [`SERVERLESS_RESPONSE_CONTEXT`] `‖ "|" ‖`
//! requestId. A node fetches the
//! user's key from the key broker with fresh evidence on the first request from that user (the
//! broker checks the measurement is granted for the user), so only the user and granted enclaves
//! can read the input or the answer. Because any granted enclave holds the key, a serverless
//! request replayed to another instance within the time window runs there too (each instance
//! refuses repeats it has seen); its answer is readable only by the user and granted enclaves.
//!
//! # What a node refuses
//!
//! 400: `invalid_argument` (malformed, or a requestId that is not 32 lowercase hex), `stale` (timeMs
//! more than [`MAX_SKEW_MS`] from its clock), `tampered` (does not open: altered, or sealed to
//! another key, model, id, time, user or measurement), `replayed` (requestId seen in the last
//! [`REPLAY_WINDOW_MS`]), `bad_input` (not a tensor the model takes). 403 `not_granted`
//! (serverless: the key broker does not release this user's key to this node). 404 `not_served`.
//! 421 `other_measurement` (serverless: sealed for another measurement than this node's). 503
//! `unavailable` (the model is cold, loading, or this node was not granted its key). Every error is
//! `{"code": "…", "message": "…"}` ([`ErrorBody`], the core's one error body and codes), with no
//! key, input or output in it; OpenWhisk's `/run` adds `"error"` (the message), which OpenWhisk
//! reads as an application error.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use enclava_seal::symmetric::{self, SHARED_KEY_LEN};
use enclava_seal::{KeyPair, SealError};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// HPKE `info` of a direct-mode request.
pub const REQUEST_INFO: &[u8] = b"enclava/infer/request/v1";
/// HPKE exporter context of the direct-mode secret.
pub const DIRECT_EXPORT_CONTEXT: &[u8] = b"enclava/infer/direct/secret/v1";
/// Key-derivation context of a direct-mode request (followed by `|` and the request id).
pub const DIRECT_REQUEST_CONTEXT: &[u8] = b"enclava/infer/direct/request/v1";
/// Key-derivation context of a direct-mode answer (followed by `|` and the request id).
pub const DIRECT_RESPONSE_CONTEXT: &[u8] = b"enclava/infer/direct/response/v1";
/// Key-derivation context of a serverless request (followed by `|` and the request id).
pub const SERVERLESS_REQUEST_CONTEXT: &[u8] = b"enclava/infer/serverless/request/v1";
/// Key-derivation context of a serverless answer (followed by `|` and the request id).
pub const SERVERLESS_RESPONSE_CONTEXT: &[u8] = b"enclava/infer/serverless/response/v1";
/// The path of a request on a node.
pub const PATH: &str = "/v1/infer";
/// The content type of the binary encoding.
pub const BINARY_CONTENT_TYPE: &str = "application/vnd.enclava.sealed";
/// Largest accepted difference between the request's time and the node's clock.
pub const MAX_SKEW_MS: u64 = 60_000;
/// How long a node remembers a request id.
pub const REPLAY_WINDOW_MS: u64 = 120_000;
/// Largest response body the client reads.
pub const MAX_RESPONSE_BYTES: usize = 512 << 20;
/// Length of a request id in bytes (hex doubles it).
pub const REQUEST_ID_LEN: usize = 16;
/// Largest header of a binary-encoded message.
pub const MAX_BINARY_HEADER: usize = 64 << 10;

/// How a request is sealed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// To the enclave's attested key, found and verified by the client (BlindAI).
    #[default]
    Direct,
    /// With the user's request key, which the key broker releases to granted enclaves (MOSS).
    Serverless,
}

impl Mode {
    fn is_direct(&self) -> bool {
        *self == Mode::Direct
    }
}

/// A sealed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferRequest {
    #[serde(default, skip_serializing_if = "Mode::is_direct")]
    pub mode: Mode,
    pub model: String,
    pub request_id: String,
    pub time_ms: u64,
    /// Serverless: the user whose request key sealed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Serverless: the enclave measurement (lowercase hex) that user's request key is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    /// Direct: HPKE's encapsulated key.
    #[serde(with = "crate::base64_bytes", default, skip_serializing_if = "Vec::is_empty")]
    pub enc: Vec<u8>,
    #[serde(with = "crate::base64_bytes", default, skip_serializing_if = "Vec::is_empty")]
    pub ciphertext: Vec<u8>,
}

/// A sealed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InferResponse {
    pub request_id: String,
    #[serde(with = "crate::base64_bytes", default, skip_serializing_if = "Vec::is_empty")]
    pub ciphertext: Vec<u8>,
}

pub use enclava_core::{ErrorBody, ErrorCode};

/// Length-prefixed concatenation: for each field a u32 big-endian length, then its bytes.
fn length_prefixed(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| 4 + f.len()).sum());
    for field in fields {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// The AAD binding a direct-mode request and its answer to (model, request id, time).
pub fn aad(model: &str, request_id: &str, time_ms: u64) -> Vec<u8> {
    length_prefixed(&[model.as_bytes(), request_id.as_bytes(), &time_ms.to_be_bytes()])
}

/// The AAD binding a serverless request and its answer to (model, request id, time, user,
/// measurement).
pub fn serverless_aad(model: &str, request_id: &str, time_ms: u64, user: &str, measurement: &str) -> Vec<u8> {
    length_prefixed(&[
        model.as_bytes(),
        request_id.as_bytes(),
        &time_ms.to_be_bytes(),
        user.as_bytes(),
        measurement.as_bytes(),
    ])
}

impl InferRequest {
    /// This request's AAD, by its mode.
    pub fn aad(&self) -> Vec<u8> {
        match self.mode {
            Mode::Direct => aad(&self.model, &self.request_id, self.time_ms),
            Mode::Serverless => serverless_aad(
                &self.model,
                &self.request_id,
                self.time_ms,
                self.user.as_deref().unwrap_or(""),
                self.measurement.as_deref().unwrap_or(""),
            ),
        }
    }
}

/// Whether `id` is a well-formed request id: 32 lowercase hex characters.
pub fn valid_request_id(id: &str) -> bool {
    id.len() == 2 * REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The current time in Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The key-derivation context of one message: `base ‖ "|" ‖ request id`, so every request and
/// every answer is sealed under a key of its own.
fn context(base: &[u8], request_id: &str) -> Vec<u8> {
    [base, b"|", request_id.as_bytes()].concat()
}

impl Mode {
    /// The bases of (request, answer) key-derivation contexts.
    fn contexts(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Mode::Direct => (DIRECT_REQUEST_CONTEXT, DIRECT_RESPONSE_CONTEXT),
            Mode::Serverless => (SERVERLESS_REQUEST_CONTEXT, SERVERLESS_RESPONSE_CONTEXT),
        }
    }
}

fn fresh_request_id() -> String {
    let mut id = [0u8; REQUEST_ID_LEN];
    rand::fill(&mut id);
    hex::encode(id)
}

/// A user's request key for a model on one enclave measurement (serverless mode). `Debug` shows
/// the user and measurement, never the key.
#[derive(Clone)]
pub struct UserKey {
    pub user: String,
    /// Lowercase hex.
    pub measurement: String,
    key: Zeroizing<[u8; SHARED_KEY_LEN]>,
}

impl UserKey {
    pub fn new(user: impl Into<String>, measurement: &str, key: &[u8; SHARED_KEY_LEN]) -> UserKey {
        UserKey { user: user.into(), measurement: measurement.to_ascii_lowercase(), key: Zeroizing::new(*key) }
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKey")
            .field("user", &self.user)
            .field("measurement", &self.measurement)
            .finish_non_exhaustive()
    }
}

/// What the client keeps to open the answer to one request: the request's secret (exported
/// from the HPKE setup in direct mode, the user's request key in serverless mode). `Debug` hides
/// it.
pub struct PendingRequest {
    secret: Zeroizing<[u8; SHARED_KEY_LEN]>,
    mode: Mode,
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
        "the answer does not open: it was tampered with on the way, or not sealed by an enclave holding the request's key"
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
        let context = context(self.mode.contexts().1, &self.request_id);
        symmetric::open_shared(&self.secret, &context, &self.aad, &resp.ciphertext)
            .map_err(|_| OpenResponseError::DoesNotOpen)
    }
}

/// Seals `input_npy` for `model` to the enclave key `node_pubkey` (direct mode), with a fresh
/// request id and the current time.
pub fn seal_request(
    node_pubkey: &[u8],
    model: &str,
    input_npy: &[u8],
) -> Result<(InferRequest, PendingRequest), SealError> {
    seal_request_with(node_pubkey, model, input_npy, &fresh_request_id(), now_ms())
}

/// [`seal_request`] with a chosen request id and time (tests, replays of a stored request).
pub fn seal_request_with(
    node_pubkey: &[u8],
    model: &str,
    input_npy: &[u8],
    request_id: &str,
    time_ms: u64,
) -> Result<(InferRequest, PendingRequest), SealError> {
    let (enc, secret) = enclava_seal::encap_export(node_pubkey, REQUEST_INFO, DIRECT_EXPORT_CONTEXT)?;
    let aad = aad(model, request_id, time_ms);
    let ciphertext = symmetric::seal_shared(&secret, &context(DIRECT_REQUEST_CONTEXT, request_id), &aad, input_npy)?;
    let req = InferRequest {
        mode: Mode::Direct,
        model: model.to_owned(),
        request_id: request_id.to_owned(),
        time_ms,
        user: None,
        measurement: None,
        enc,
        ciphertext,
    };
    Ok((req, PendingRequest { secret, mode: Mode::Direct, aad, request_id: request_id.to_owned() }))
}

/// Seals `input_npy` for `model` with the user's request key (serverless mode), with a fresh
/// request id and the current time.
pub fn seal_serverless(
    key: &UserKey,
    model: &str,
    input_npy: &[u8],
) -> Result<(InferRequest, PendingRequest), SealError> {
    seal_serverless_with(key, model, input_npy, &fresh_request_id(), now_ms())
}

/// [`seal_serverless`] with a chosen request id and time.
pub fn seal_serverless_with(
    key: &UserKey,
    model: &str,
    input_npy: &[u8],
    request_id: &str,
    time_ms: u64,
) -> Result<(InferRequest, PendingRequest), SealError> {
    let aad = serverless_aad(model, request_id, time_ms, &key.user, &key.measurement);
    let ciphertext =
        symmetric::seal_shared(&key.key, &context(SERVERLESS_REQUEST_CONTEXT, request_id), &aad, input_npy)?;
    let req = InferRequest {
        mode: Mode::Serverless,
        model: model.to_owned(),
        request_id: request_id.to_owned(),
        time_ms,
        user: Some(key.user.clone()),
        measurement: Some(key.measurement.clone()),
        enc: Vec::new(),
        ciphertext,
    };
    let pending =
        PendingRequest { secret: key.key.clone(), mode: Mode::Serverless, aad, request_id: request_id.to_owned() };
    Ok((req, pending))
}

/// A request opened by the enclave: the request's secret, to seal the answer with, and the input.
/// `Debug` shows neither.
pub struct OpenedRequest {
    secret: Zeroizing<[u8; SHARED_KEY_LEN]>,
    pub input_npy: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for OpenedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedRequest").field("input_len", &self.input_npy.len()).finish_non_exhaustive()
    }
}

fn open_with(secret: Zeroizing<[u8; SHARED_KEY_LEN]>, req: &InferRequest) -> Result<OpenedRequest, SealError> {
    let context = context(req.mode.contexts().0, &req.request_id);
    let input_npy = symmetric::open_shared(&secret, &context, &req.aad(), &req.ciphertext)?;
    Ok(OpenedRequest { secret, input_npy })
}

/// The enclave's side of a direct-mode request: opens `req` with its request key pair.
pub fn open_request(key: &KeyPair, req: &InferRequest) -> Result<OpenedRequest, SealError> {
    if req.mode != Mode::Direct {
        return Err(SealError::Open);
    }
    open_with(key.decap_export(REQUEST_INFO, &req.enc, DIRECT_EXPORT_CONTEXT)?, req)
}

/// The enclave's side of a serverless request: opens `req` with the request key the key broker
/// released for its user.
pub fn open_serverless(user_key: &[u8; SHARED_KEY_LEN], req: &InferRequest) -> Result<OpenedRequest, SealError> {
    if req.mode != Mode::Serverless {
        return Err(SealError::Open);
    }
    open_with(Zeroizing::new(*user_key), req)
}

/// The enclave's side: seals `output_npy` as the answer to `req`.
pub fn seal_response(
    req: &InferRequest,
    opened: &OpenedRequest,
    output_npy: &[u8],
) -> Result<InferResponse, SealError> {
    let context = context(req.mode.contexts().1, &req.request_id);
    let ciphertext = symmetric::seal_shared(&opened.secret, &context, &req.aad(), output_npy)?;
    Ok(InferResponse { request_id: req.request_id.clone(), ciphertext })
}

/// Binary encoding: `u32` big-endian header length ‖ the message as JSON without its ciphertext ‖
/// the ciphertext, raw.
fn frame<T: Serialize>(header: &T, ciphertext: &[u8]) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    let head = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + head.len() + ciphertext.len());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(ciphertext);
    out
}

fn unframe<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<(T, &[u8]), String> {
    if body.len() < 4 {
        return Err("the binary body is shorter than its header length".into());
    }
    let len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if len > MAX_BINARY_HEADER || body.len() - 4 < len {
        return Err(format!("the binary body's header length {len} is larger than the body or {MAX_BINARY_HEADER}"));
    }
    let header = serde_json::from_slice(&body[4..4 + len]).map_err(|e| format!("the binary body's header: {e}"))?;
    Ok((header, &body[4 + len..]))
}

impl InferRequest {
    /// The binary encoding ([`BINARY_CONTENT_TYPE`]).
    pub fn to_binary(mut self) -> Vec<u8> {
        let ciphertext = std::mem::take(&mut self.ciphertext);
        frame(&self, &ciphertext)
    }

    /// Decodes the binary encoding.
    pub fn from_binary(body: &[u8]) -> Result<InferRequest, String> {
        let (mut req, ciphertext): (InferRequest, _) = unframe(body)?;
        if !req.ciphertext.is_empty() {
            return Err("the binary body's header carries a ciphertext: it goes after the header".into());
        }
        req.ciphertext = ciphertext.to_vec();
        Ok(req)
    }
}

/// What a router reads of a sealed request without opening it (or copying its ciphertext): the
/// model it is for, its mode and, in serverless mode, the measurement it is sealed for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RequestHead {
    #[serde(default)]
    pub mode: Mode,
    pub model: String,
    #[serde(default)]
    pub measurement: Option<String>,
}

/// The [`RequestHead`] of a request body in either encoding.
pub fn request_head(body: &[u8], binary: bool) -> Result<RequestHead, String> {
    if binary {
        return unframe::<RequestHead>(body).map(|(head, _)| head);
    }
    serde_json::from_slice(body).map_err(|e| format!("not a sealed inference request: {e}"))
}

/// OpenWhisk's `/run` body: the sealed request is its `value`; its other fields (namespace, action
/// name, activation id, …) are not used.
#[derive(serde::Deserialize)]
struct RunEnvelope {
    value: InferRequest,
}

/// The sealed request in an OpenWhisk `/run` body.
pub fn from_openwhisk_run(body: &[u8]) -> Result<InferRequest, String> {
    serde_json::from_slice::<RunEnvelope>(body)
        .map(|e| e.value)
        .map_err(|e| format!("\"value\" is not a sealed inference request: {e}"))
}

impl InferResponse {
    /// The binary encoding ([`BINARY_CONTENT_TYPE`]).
    pub fn to_binary(mut self) -> Vec<u8> {
        let ciphertext = std::mem::take(&mut self.ciphertext);
        frame(&self, &ciphertext)
    }

    /// Decodes the binary encoding.
    pub fn from_binary(body: &[u8]) -> Result<InferResponse, String> {
        let (mut resp, ciphertext): (InferResponse, _) = unframe(body)?;
        if !resp.ciphertext.is_empty() {
            return Err("the binary body's header carries a ciphertext: it goes after the header".into());
        }
        resp.ciphertext = ciphertext.to_vec();
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_request_and_response_round_trip_and_bind_their_context() {
        let node = KeyPair::generate();
        let (req, pending) = seal_request(node.public(), "acme/m", b"npy bytes").expect("seal");
        assert!(valid_request_id(&req.request_id));
        let opened = open_request(&node, &req).expect("opens");
        assert_eq!(opened.input_npy.as_slice(), b"npy bytes");
        let resp = seal_response(&req, &opened, b"out").expect("seal response");
        assert_eq!(pending.open(&resp).expect("opens").as_slice(), b"out");

        // Every bound field matters.
        for change in [
            |r: &mut InferRequest| r.model = "acme/n".into(),
            |r: &mut InferRequest| r.time_ms += 1,
            |r: &mut InferRequest| r.request_id = "0".repeat(32),
            |r: &mut InferRequest| r.ciphertext[0] ^= 1,
            |r: &mut InferRequest| r.mode = Mode::Serverless,
        ] {
            let mut bad = req.clone();
            change(&mut bad);
            assert!(open_request(&node, &bad).is_err());
        }
        let mut bad = resp.clone();
        bad.ciphertext[3] ^= 1;
        assert_eq!(pending.open(&bad), Err(OpenResponseError::DoesNotOpen));
        let other_client =
            open_request(&node, &seal_request(node.public(), "acme/m", b"x").expect("seal").0).expect("opens");
        let other = seal_response(&req, &other_client, b"out").expect("seal");
        assert_eq!(pending.open(&other), Err(OpenResponseError::DoesNotOpen));
        bad = resp.clone();
        bad.request_id = "1".repeat(32);
        assert!(matches!(pending.open(&bad), Err(OpenResponseError::OtherRequest { .. })));
        assert!(!format!("{pending:?}{opened:?}").contains("npy bytes"));
    }

    #[test]
    fn serverless_request_and_response_round_trip_and_bind_their_context() {
        let key = UserKey::new("u_1", "AB12", &[9; 32]);
        assert_eq!(key.measurement, "ab12");
        let (req, pending) = seal_serverless(&key, "acme/m", b"npy bytes").expect("seal");
        assert_eq!(req.mode, Mode::Serverless);
        assert_eq!(req.user.as_deref(), Some("u_1"));
        let opened = open_serverless(&[9; 32], &req).expect("opens");
        assert_eq!(opened.input_npy.as_slice(), b"npy bytes");
        let resp = seal_response(&req, &opened, b"out").expect("seal response");
        assert_eq!(pending.open(&resp).expect("opens").as_slice(), b"out");

        assert!(open_serverless(&[8; 32], &req).is_err(), "another user's key");
        assert!(open_request(&KeyPair::generate(), &req).is_err(), "not a direct request");
        for change in [
            |r: &mut InferRequest| r.model = "acme/n".into(),
            |r: &mut InferRequest| r.time_ms += 1,
            |r: &mut InferRequest| r.request_id = "0".repeat(32),
            |r: &mut InferRequest| r.user = Some("u_2".into()),
            |r: &mut InferRequest| r.measurement = Some("cd34".into()),
            |r: &mut InferRequest| r.ciphertext[20] ^= 1,
            |r: &mut InferRequest| r.mode = Mode::Direct,
        ] {
            let mut bad = req.clone();
            change(&mut bad);
            assert!(open_serverless(&[9; 32], &bad).is_err());
        }
        // A request can never be opened as an answer, nor an answer to another request.
        let as_answer = InferResponse { request_id: req.request_id.clone(), ciphertext: req.ciphertext };
        assert_eq!(pending.open(&as_answer), Err(OpenResponseError::DoesNotOpen));
        let (req2, _) = seal_serverless_with(&key, "acme/m", b"x", &req.request_id, req.time_ms + 1).expect("seal");
        let other = seal_response(&req2, &open_serverless(&[9; 32], &req2).expect("opens"), b"out").expect("seal");
        assert_eq!(pending.open(&other), Err(OpenResponseError::DoesNotOpen));
        assert!(!format!("{key:?}{pending:?}{opened:?}").contains("9, 9"));
    }

    #[test]
    fn wire_json_uses_camel_case_and_base64() {
        let req = InferRequest {
            mode: Mode::Direct,
            model: "m".into(),
            request_id: "ab".repeat(16),
            time_ms: 5,
            user: None,
            measurement: None,
            enc: vec![1, 2],
            ciphertext: vec![3],
        };
        let json = serde_json::to_value(&req).expect("json");
        assert_eq!(json["requestId"], "ab".repeat(16));
        assert_eq!(json["timeMs"], 5);
        assert_eq!(json["enc"], "AQI=");
        assert!(json.get("mode").is_none() && json.get("user").is_none(), "direct is the default");
        assert_eq!(serde_json::from_value::<InferRequest>(json).expect("back"), req);
        let (sl, _) = seal_serverless(&UserKey::new("u", "ab", &[1; 32]), "m", b"x").expect("seal");
        let json = serde_json::to_value(&sl).expect("json");
        assert_eq!(json["mode"], "serverless");
        assert!(json.get("enc").is_none());
        assert_eq!(serde_json::from_value::<InferRequest>(json).expect("back"), sl);
        assert!(
            serde_json::from_str::<InferRequest>(
                r#"{"model":"m","requestId":"x","timeMs":1,"enc":"!!","ciphertext":""}"#
            )
            .is_err()
        );
        assert!(
            serde_json::from_str::<InferRequest>(r#"{"mode":"other","model":"m","requestId":"x","timeMs":1}"#).is_err()
        );
        assert!(!valid_request_id(&"AB".repeat(16)));
        assert!(!valid_request_id("abc"));
    }

    #[test]
    fn binary_encoding_round_trips_and_refuses_malformed_bodies() {
        let node = KeyPair::generate();
        let (req, _) = seal_request(node.public(), "acme/m", &[7; 1000]).expect("seal");
        let bin = req.clone().to_binary();
        assert_eq!(InferRequest::from_binary(&bin).expect("decodes"), req);
        let resp = InferResponse { request_id: "ab".repeat(16), ciphertext: vec![2; 50] };
        assert_eq!(InferResponse::from_binary(&resp.clone().to_binary()).expect("decodes"), resp);
        for bad in [
            &b""[..],
            &[0, 0, 0],
            &[0, 0, 0, 9, b'{'],
            &[0xff, 0xff, 0xff, 0xff, 0],
            &[0, 0, 0, 2, b'{', b'}'],
            &bin[..10],
        ] {
            assert!(InferRequest::from_binary(bad).is_err(), "{bad:?}");
        }
        let mut with_ct = frame(&req, b"");
        with_ct.extend_from_slice(b"more");
        assert!(InferRequest::from_binary(&with_ct).is_err(), "ciphertext in both places");
    }
}
