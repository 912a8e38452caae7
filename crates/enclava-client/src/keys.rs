//! The key broker's REST client (what `enclava keys` and `enclava model upload` use): JSON over
//! HTTP/1.1 to the routes under [`PREFIX`], a bearer token, and refusals as the core's
//! [`Error`](enclava_core::Error) with the code the broker sent.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use enclava_contracts::keys::rest::*;
use enclava_core::{Error, ErrorBody, ErrorCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::Method;
use hyper::body::Bytes;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::infer::{HttpClient, http_client};

/// The longest a call may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (an audit page of 1,000 records fits many times over).
const MAX_ANSWER: usize = 8 << 20;

/// A session with one key broker, as one identity (or none, to register).
pub struct KeysClient {
    base: String,
    token: Option<Zeroizing<String>>,
    http: HttpClient,
}

impl std::fmt::Debug for KeysClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl KeysClient {
    /// A client of the server at `server` (`http://host:port`), sending `token` when given.
    pub fn new(server: &str, token: Option<Zeroizing<String>>) -> KeysClient {
        KeysClient { base: server.trim_end_matches('/').to_owned(), token, http: http_client(Duration::from_secs(3)) }
    }

    /// The server this client talks to.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// A new identity (with an invite where the broker registers by invite).
    pub async fn register(&self, invite: Option<&str>) -> Result<Registered, Error> {
        let body = RegisterBody { invite: invite.map(|i| i.trim().to_owned()) };
        self.call(Method::POST, path::USERS, Some(&body)).await
    }

    /// A one-time invite (administrators only).
    pub async fn invite(&self, admin: bool) -> Result<Invite, Error> {
        self.call(Method::POST, path::INVITES, Some(&InviteBody { admin })).await
    }

    pub async fn whoami(&self) -> Result<WhoAmI, Error> {
        self.call::<(), _>(Method::GET, path::ME, None).await
    }

    /// Stores `key` as the model's next version (the first version creates the model).
    pub async fn put_model_key(
        &self,
        model: &str,
        key: &[u8],
        policy: Option<&str>,
        rotate: bool,
    ) -> Result<ModelKeyVersion, Error> {
        let body = ModelKeyUpload {
            model: model.to_owned(),
            key: STANDARD.encode(key),
            policy: policy.map(str::to_owned),
            rotate,
        };
        self.call(Method::POST, path::MODEL_KEYS, Some(&body)).await
    }

    pub async fn grant(&self, model: &str, measurement: &str, user: &str) -> Result<(), Error> {
        let body = GrantRequest { model: model.to_owned(), measurement: measurement.to_owned(), user: user.to_owned() };
        self.call(Method::POST, path::GRANTS, Some(&body)).await
    }

    pub async fn revoke(&self, req: &RevokeRequest) -> Result<Revoked, Error> {
        self.call(Method::POST, path::REVOCATIONS, Some(req)).await
    }

    /// Stores this user's key for requests to `model` on `measurement`.
    pub async fn put_request_key(&self, model: &str, measurement: &str, key: &[u8]) -> Result<(), Error> {
        let body = RequestKeyUpload {
            model: model.to_owned(),
            measurement: measurement.to_owned(),
            key: STANDARD.encode(key),
        };
        self.call(Method::POST, path::REQUEST_KEYS, Some(&body)).await
    }

    /// The caller's models (or one of them) and request keys.
    pub async fn list(&self, model: Option<&str>) -> Result<Listing, Error> {
        let p = match model {
            Some(m) => format!("{}?model={}", path::MODELS, query_escape(m)),
            None => path::MODELS.to_owned(),
        };
        self.call::<(), _>(Method::GET, &p, None).await
    }

    /// The newest `limit` audit records about the caller and their models.
    pub async fn audit(&self, limit: i64) -> Result<Vec<AuditRecord>, Error> {
        self.call::<(), _>(Method::GET, &format!("{}?limit={limit}", path::AUDIT), None).await
    }

    /// Checks the whole audit chain and its anchor.
    pub async fn verify_audit(&self) -> Result<AuditCheck, Error> {
        self.call::<(), _>(Method::GET, path::AUDIT_VERIFY, None).await
    }

    async fn call<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        route: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let url = format!("{}{PREFIX}{route}", self.base);
        let mut req = hyper::Request::builder().method(method).uri(&url).header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {}", t.as_str()));
        }
        let body = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| Error::internal(format!("encoding the request: {e}")))?,
            None => Vec::new(),
        };
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| {
            Error::invalid(format!("{} is not a server URL: {e}", enclava_core::text::quote(&self.base)))
        })?;
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| {
                Error::unavailable(format!(
                    "cannot reach the key broker at {}: {}. Is `enclava server` running there? (--server, ENCLAVA_SERVER)",
                    self.base,
                    crate::source_chain(&e)
                ))
            })?;
            let status = resp.status();
            let retry = resp.headers().get(hyper::header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse().ok());
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| Error::unavailable(format!("reading the key broker's answer: {e}")))?
                .to_bytes();
            Ok::<_, Error>((status, retry, bytes))
        };
        let (status, retry, bytes) = tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| {
            Error::unavailable(format!("the key broker at {} did not answer within {} s", self.base, TIMEOUT.as_secs()))
        })??;
        if !status.is_success() {
            let mut e = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => Error::from(b),
                Err(_) => Error::new(
                    ErrorCode::from_http(status.as_u16()),
                    format!(
                        "the server at {} answered {status} without an Enclava error: is it running the keys role?",
                        self.base
                    ),
                ),
            };
            e.retry_after = retry;
            return Err(e);
        }
        let bytes = if bytes.is_empty() { Bytes::from_static(b"null") } else { bytes };
        serde_json::from_slice(&bytes).map_err(|e| Error::internal(format!("unexpected answer from {url}: {e}")))
    }
}

/// Escapes a query value (model ids are letters, digits and `-_./`; anything else is encoded).
fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_./".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_escaped_and_tokens_stay_out_of_debug() {
        assert_eq!(query_escape("acme/m-1"), "acme/m-1");
        assert_eq!(query_escape("a b&c"), "a%20b%26c");
        let c = KeysClient::new("http://h:1/", Some(Zeroizing::new("secret-token".into())));
        assert_eq!(c.server(), "http://h:1");
        assert!(!format!("{c:?}").contains("secret"));
    }
}
