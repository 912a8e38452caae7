//! The client library: talks to the enclave manager to find enclaves (seed's `FindEnclave`) and
//! list them. Verification and sealed requests build on this (client-side attestation, seed note 3).

use std::time::Duration;

use enclava_proto::discovery::v1 as pb;
use pb::enclave_manager_client::EnclaveManagerClient;
use tonic::transport::{Channel, Endpoint};

pub use pb::{FindEnclaveRequest, FindEnclaveResponse, ListEnclavesRequest, ListEnclavesResponse};

/// What can go wrong asking the manager.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the enclave manager at {url}: {reason}. Is `enclava server` running there? (--server, ENCLAVA_SERVER)"
    )]
    Connect { url: String, reason: String },
    #[error("the enclave manager refused the request ({code:?}): {message}")]
    Status { code: tonic::Code, message: String },
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// A connection to an enclave manager.
#[derive(Debug, Clone)]
pub struct ManagerClient {
    inner: EnclaveManagerClient<Channel>,
}

impl ManagerClient {
    /// Connects to `url` (`http://host:port`).
    pub async fn connect(url: &str) -> Result<ManagerClient, ClientError> {
        let err = |reason: String| ClientError::Connect {
            url: url.to_owned(),
            reason,
        };
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| err(format!("not a URL ({e})")))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| err(source_chain(&e)))?;
        Ok(ManagerClient {
            inner: EnclaveManagerClient::new(channel),
        })
    }

    /// Asks for live enclaves.
    pub async fn find(
        &mut self,
        req: FindEnclaveRequest,
    ) -> Result<FindEnclaveResponse, ClientError> {
        Ok(self.inner.find_enclave(req).await?.into_inner())
    }

    /// Lists one page of enclaves.
    pub async fn list(
        &mut self,
        req: ListEnclavesRequest,
    ) -> Result<ListEnclavesResponse, ClientError> {
        Ok(self.inner.list_enclaves(req).await?.into_inner())
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
