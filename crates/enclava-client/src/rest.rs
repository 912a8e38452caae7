//! The JSON-over-HTTP calls the farm and federation clients share: a base URL under a role's
//! prefix (`/farm/v1`, `/fed/v1`), a bearer credential, a deadline, a cap on answers, and
//! Enclava's error bodies turned back into [`Error`]s (with `Retry-After`).

use std::time::Duration;

use enclava_core::{Error, ErrorCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

/// One role's REST API on one server.
#[derive(Clone)]
pub struct RestApi {
    /// The server's URL.
    root: String,
    base: String,
    /// The role's prefix (`farm`, `fed`), for messages.
    role: &'static str,
    token: Option<Zeroizing<String>>,
    http: crate::infer::http::HttpClient,
    timeout: Duration,
    max_answer: usize,
}

impl std::fmt::Debug for RestApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestApi").field("base", &self.base).field("token", &self.token.is_some()).finish()
    }
}

impl RestApi {
    /// The API of role `role` (its prefix: `/{role}/v1`) on the server at `url`.
    pub fn new(url: &str, role: &'static str, token: Option<Zeroizing<String>>, max_answer: usize) -> RestApi {
        RestApi {
            root: url.trim_end_matches('/').to_owned(),
            base: format!("{}/{role}/v1", url.trim_end_matches('/')),
            role,
            token,
            http: crate::infer::http::http_client(Duration::from_secs(3)),
            timeout: Duration::from_secs(30),
            max_answer,
        }
    }

    /// The server's URL (`http://host:port`).
    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.as_str())
    }

    pub fn set_token(&mut self, token: Zeroizing<String>) {
        self.token = Some(token);
    }

    pub async fn call(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Vec<u8>, Error> {
        let mut req = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {}", t.as_str()));
        }
        let (bytes, ct) = body.unwrap_or((Vec::new(), "application/json"));
        let req = req
            .header(hyper::header::CONTENT_TYPE, ct)
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| Error::invalid(format!("not a valid {} URL {}: {e}", self.role, self.base)))?;
        let exchange = async {
            let resp = self.http.request(req).await.map_err(|e| {
                Error::unavailable(format!(
                    "cannot reach the {} at {}: {}",
                    self.role,
                    self.base,
                    crate::source_chain(&e)
                ))
            })?;
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = Limited::new(resp.into_body(), self.max_answer)
                .collect()
                .await
                .map_err(|e| Error::unavailable(format!("reading the {}'s answer: {e}", self.role)))?
                .to_bytes()
                .to_vec();
            if (200..300).contains(&status) {
                return Ok(body);
            }
            if status == 404 && body.is_empty() {
                return Err(Error::not_found(format!(
                    "{} has no {}: does that server run the {} role (--roles …,{})?",
                    self.base,
                    self.role,
                    self.role,
                    if self.role == "fed" { "federation" } else { self.role }
                )));
            }
            let mut err = match serde_json::from_slice::<enclava_core::ErrorBody>(&body) {
                Ok(b) => Error::from(b),
                Err(_) => Error::new(ErrorCode::from_http(status), format!("the {} answered HTTP {status}", self.role)),
            };
            err.retry_after = retry;
            Err(err)
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| {
            Error::unavailable(format!("the {} at {} did not answer in {:?}", self.role, self.base, self.timeout))
        })?
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let body = self.call(hyper::Method::GET, path, None).await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::internal(format!("the {}'s answer is not understood: {e}", self.role)))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Error> {
        let json = serde_json::to_vec(body).map_err(|e| Error::internal(e.to_string()))?;
        let body = self.call(hyper::Method::POST, path, Some((json, "application/json"))).await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::internal(format!("the {}'s answer is not understood: {e}", self.role)))
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Error> {
        let json = serde_json::to_vec(body).map_err(|e| Error::internal(e.to_string()))?;
        let body = self.call(hyper::Method::PUT, path, Some((json, "application/json"))).await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::internal(format!("the {}'s answer is not understood: {e}", self.role)))
    }
}
