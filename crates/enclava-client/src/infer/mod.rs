//! Sealed inference, both modes of issue 5: *direct* (BlindAI), where the client finds and verifies
//! an enclave and seals to its attested key ([`infer`], [`InferSession`]), and *serverless*
//! (MOSS), where the platform picks the instance and the client seals with its request key, which
//! the key broker releases only to enclaves with a granted measurement ([`infer_serverless`]).
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
//! published request key ([`crate::verify_enclave`]) **before** anything is sent to it. It then
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
//! 400: `bad_request` (malformed, or a requestId that is not 32 lowercase hex), `stale` (timeMs
//! more than [`MAX_SKEW_MS`] from its clock), `tampered` (does not open: altered, or sealed to
//! another key, model, id, time, user or measurement), `replayed` (requestId seen in the last
//! [`REPLAY_WINDOW_MS`]), `bad_input` (not a tensor the model takes). 403 `not_granted`
//! (serverless: the key broker does not release this user's key to this node). 404 `not_served`.
//! 421 `other_measurement` (serverless: sealed for another measurement than this node's). 503
//! `unavailable` (the model is cold, loading, or this node was not granted its key). Every error is
//! `{"code": "…", "message": "…"}` ([`ErrorBody`]), with no key, input or output in it.

mod direct;
mod http;
mod serverless;
mod wire;

pub use direct::*;
pub use http::*;
pub use serverless::*;
pub use wire::*;
