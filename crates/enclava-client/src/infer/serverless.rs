//! Serverless mode (MOSS): the platform (an OpenWhisk action, a load balancer in front of a node
//! pool) picks the instance, so the client cannot verify it; the client seals with its request key
//! for (model, measurement), and only enclaves the key broker attested and found granted for that
//! user and measurement can obtain the key to open the request or seal the answer.

use std::fmt;
use std::time::Duration;

use super::direct::{Failure, exchange};
use super::{HttpClient, UserKey, http_client, seal_serverless};

/// The pause before the n-th retry is n times this.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How [`infer_serverless`] runs.
#[derive(Debug, Clone)]
pub struct ServerlessOptions {
    /// Where requests go: a node's `http://host:port/v1/infer`, or the platform's URL in front of
    /// its instances (an OpenWhisk web action, a load balancer).
    pub endpoint: String,
    /// The model id.
    pub model: String,
    /// This user's request key for the model on the measurement the platform runs.
    pub key: UserKey,
    /// Requests to send at most: after a connection failure, a timeout, or an answer that another
    /// instance may not give (404, 421 `other_measurement`, 429, 502, 503 `unavailable`, 504) the
    /// request is sealed afresh and sent again after a short pause (the platform may pick another
    /// instance).
    pub max_attempts: usize,
    /// Time allowed for each request (connect, run, answer).
    pub request_timeout: Duration,
    /// Send the binary encoding (a node or a plain proxy takes it) instead of JSON (which any
    /// platform relays, OpenWhisk included).
    pub binary: bool,
}

impl ServerlessOptions {
    /// Options with 3 attempts, a 60 s request timeout, JSON.
    pub fn new(endpoint: impl Into<String>, model: impl Into<String>, key: UserKey) -> ServerlessOptions {
        ServerlessOptions {
            endpoint: endpoint.into(),
            model: model.into(),
            key,
            max_attempts: 3,
            request_timeout: Duration::from_secs(60),
            binary: false,
        }
    }
}

/// Why a serverless inference failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerlessError {
    #[error("invalid options: {0}")]
    Options(String),
    #[error("cannot seal the request: {0}")]
    Seal(String),
    #[error("{endpoint} refused the request ({code}): {message}")]
    Refused { endpoint: String, code: enclava_core::ErrorCode, message: String },
    #[error("the answer from {endpoint} does not open: {why}; nothing was accepted")]
    Tampered { endpoint: String, why: String },
    #[error("gave up on {endpoint} after {} attempts:{}", tries.len(), tries.iter().map(|t| format!("\n  - {t}")).collect::<String>())]
    Exhausted { endpoint: String, tries: Vec<String> },
}

/// Serverless inferences over pooled connections to one endpoint.
pub struct ServerlessClient {
    opts: ServerlessOptions,
    http: HttpClient,
}

impl fmt::Debug for ServerlessClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerlessClient").field("endpoint", &self.opts.endpoint).field("key", &self.opts.key).finish()
    }
}

impl ServerlessClient {
    pub fn new(opts: ServerlessOptions) -> Result<ServerlessClient, ServerlessError> {
        if opts.max_attempts == 0 {
            return Err(ServerlessError::Options("max_attempts must be at least 1".into()));
        }
        if opts.endpoint.starts_with("https://") {
            return Err(ServerlessError::Options(format!(
                "the endpoint {:?} is https: this client speaks plain HTTP only (the request is sealed end to end \
                 either way); reach it through a local TLS proxy, or use the node's http:// address",
                opts.endpoint
            )));
        }
        if !opts.endpoint.starts_with("http://") {
            return Err(ServerlessError::Options(format!("the endpoint {:?} is not an http:// URL", opts.endpoint)));
        }
        let http = http_client(opts.request_timeout);
        Ok(ServerlessClient { opts, http })
    }

    /// Seals `input_npy`, sends it, and opens the answer (the model's first output, `.npy`).
    pub async fn infer(&self, input_npy: &[u8]) -> Result<Vec<u8>, ServerlessError> {
        let o = &self.opts;
        let mut tries = Vec::new();
        while tries.len() < o.max_attempts {
            let (req, pending) =
                seal_serverless(&o.key, &o.model, input_npy).map_err(|e| ServerlessError::Seal(e.to_string()))?;
            match exchange(&self.http, &o.endpoint, req, &pending, o.binary, o.request_timeout).await {
                Ok(output) => return Ok(output),
                Err(Failure::Retry(why)) => {
                    tries.push(why);
                    if tries.len() < o.max_attempts {
                        tokio::time::sleep(RETRY_PAUSE * tries.len() as u32).await;
                    }
                }
                Err(Failure::Tampered(why)) => {
                    return Err(ServerlessError::Tampered { endpoint: o.endpoint.clone(), why });
                }
                Err(Failure::Refused { code, message }) => {
                    return Err(ServerlessError::Refused { endpoint: o.endpoint.clone(), code, message });
                }
            }
        }
        Err(ServerlessError::Exhausted { endpoint: o.endpoint.clone(), tries })
    }
}

/// One serverless inference: seal with the user's request key, send to the platform, open.
pub async fn infer_serverless(opts: &ServerlessOptions, input_npy: &[u8]) -> Result<Vec<u8>, ServerlessError> {
    ServerlessClient::new(opts.clone())?.infer(input_npy).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_plain_http_and_attempts_positive() {
        let key = UserKey::new("u", "ab", &[1; 32]);
        let err = ServerlessClient::new(ServerlessOptions::new("https://ow.example/x", "m", key.clone()))
            .expect_err("https is refused up front");
        assert!(err.to_string().contains("TLS proxy"), "{err}");
        assert!(ServerlessClient::new(ServerlessOptions::new("ow.example", "m", key.clone())).is_err());
        let mut opts = ServerlessOptions::new("http://127.0.0.1:1/v1/infer", "m", key);
        opts.max_attempts = 0;
        assert!(ServerlessClient::new(opts).is_err());
    }
}
