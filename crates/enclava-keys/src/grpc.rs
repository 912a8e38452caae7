//! The gRPC face of the key broker: `enclava.keys.v1.KeyBroker` (`Challenge`, `Release`), the
//! protocol nodes speak.

use std::sync::Arc;

use enclava_contracts::keys::v1 as pb;
use tonic::{Request, Response, Status};

use crate::broker::{Broker, RateKind, ReleaseRequest};
use enclava_server::grpc_source as source;

/// The tonic service over a [`Broker`].
#[derive(Debug, Clone)]
pub struct KeyBrokerService {
    broker: Arc<Broker>,
}

impl KeyBrokerService {
    pub fn new(broker: Arc<Broker>) -> KeyBrokerService {
        KeyBrokerService { broker }
    }

    pub fn into_server(self) -> pb::key_broker_server::KeyBrokerServer<KeyBrokerService> {
        pb::key_broker_server::KeyBrokerServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::key_broker_server::KeyBroker for KeyBrokerService {
    async fn challenge(&self, req: Request<pb::ChallengeRequest>) -> Result<Response<pb::ChallengeResponse>, Status> {
        self.broker.rate(RateKind::Release, source(&req))?;
        let (nonce, expires_at_ms) = self.broker.challenge()?;
        Ok(Response::new(pb::ChallengeResponse { nonce: nonce.to_vec(), expires_at_ms }))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        self.broker.rate(RateKind::Release, source(&req))?;
        let r = req.into_inner();
        let release = self
            .broker
            .release(ReleaseRequest {
                nonce: r.nonce,
                evidence: r.evidence,
                public_key: r.public_key,
                model: r.model,
                version: r.version,
                users: r.users,
            })
            .await?;
        Ok(Response::new(pb::ReleaseResponse {
            model: release.model,
            version: release.version,
            enc: release.sealed.enc,
            ciphertext: release.sealed.ciphertext,
        }))
    }
}
