//! The HTTP/1.1 client sealed requests travel on: pooled connections, TCP_NODELAY, a bounded
//! answer, one deadline for the whole exchange.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::MAX_RESPONSE_BYTES;

/// A pooled HTTP/1.1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

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
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout.min(Duration::from_secs(3))));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// POSTs a JSON `body` to `url` over HTTP/1.1 (a fresh connection) and returns the status and
/// the body (at most [`MAX_RESPONSE_BYTES`]).
pub async fn post_json(url: &str, body: Vec<u8>, timeout: Duration) -> Result<(u16, Vec<u8>), PostError> {
    post_with(&http_client(timeout), url, "application/json", body, timeout).await
}

/// POSTs `body` as `content_type` on `client`, reusing its open connections.
pub async fn post_with(
    client: &HttpClient,
    url: &str,
    content_type: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), PostError> {
    let req = hyper::Request::post(url)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| PostError::Url(e.to_string()))?;
    exchange(client, req, timeout).await
}

/// GETs `url` on `client`, reusing its open connections.
pub async fn get_with(client: &HttpClient, url: &str, timeout: Duration) -> Result<(u16, Vec<u8>), PostError> {
    let req = hyper::Request::get(url).body(Full::new(Bytes::new())).map_err(|e| PostError::Url(e.to_string()))?;
    exchange(client, req, timeout).await
}

/// Sends `req` and reads the status and the body (at most [`MAX_RESPONSE_BYTES`]) within `timeout`.
async fn exchange(
    client: &HttpClient,
    req: hyper::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), PostError> {
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
