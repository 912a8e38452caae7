//! The node's side of attested key release: ask the key broker for a challenge, produce evidence
//! that binds the nonce and a fresh HPKE key, send it, and open the sealed keys in memory.

use enclava_attest::binding;
use enclava_contracts::keys::payload::{self, ReleasePayload};
use enclava_contracts::keys::v1 as pb;
use enclava_core::{Error, ErrorCode};
use enclava_seal::{KeyPair, Sealed};
use pb::key_broker_client::KeyBrokerClient;
use tonic::transport::{Channel, Endpoint};

/// A connection to a key broker.
#[derive(Debug, Clone)]
pub struct KeyClient {
    inner: KeyBrokerClient<Channel>,
}

impl KeyClient {
    /// Connects to `url` (`http://host:port`).
    pub async fn connect(url: &str) -> Result<KeyClient, Error> {
        let err = |reason: String| {
            Error::unavailable(format!("cannot reach the key broker at {}: {reason}", enclava_core::text::quote(url)))
        };
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| Error::invalid(format!("the key broker URL {}: {e}", enclava_core::text::quote(url))))?
            .connect_timeout(std::time::Duration::from_secs(3))
            .timeout(std::time::Duration::from_secs(10))
            .tcp_nodelay(true);
        let channel = endpoint.connect().await.map_err(|e| err(e.to_string()))?;
        Ok(KeyClient { inner: KeyBrokerClient::new(channel) })
    }

    /// Fetches `model`'s key (`version` 0: the current one) and `users`' request keys.
    /// `attest` makes evidence for 64 bytes of report data; it is called once, with data binding
    /// the broker's nonce and a key pair made for this release alone.
    pub async fn fetch(
        &mut self,
        model: &str,
        version: u64,
        users: &[String],
        attest: impl FnOnce(&[u8; 64]) -> Option<Vec<u8>>,
    ) -> Result<ReleasePayload, Error> {
        let challenge = self.inner.challenge(pb::ChallengeRequest {}).await?.into_inner();
        let kp = KeyPair::generate();
        let report_data = binding::report_data(binding::KEY_RELEASE, kp.public(), Some(&challenge.nonce));
        let evidence = attest(&report_data)
            .ok_or_else(|| Error::new(ErrorCode::Unavailable, "this node cannot produce evidence right now"))?;
        let r = self
            .inner
            .release(pb::ReleaseRequest {
                nonce: challenge.nonce.clone(),
                evidence,
                public_key: kp.public().to_vec(),
                model: model.to_owned(),
                version,
                users: users.to_vec(),
            })
            .await?
            .into_inner();
        let sealed = Sealed { enc: r.enc, ciphertext: r.ciphertext };
        let bad = |what: String| Error::internal(what);
        let plain = kp
            .open(payload::INFO, &payload::aad(&challenge.nonce, model), &sealed)
            .map_err(|e| bad(format!("the broker's answer does not open: {e}")))?;
        let p = ReleasePayload::decode(&plain).map_err(bad)?;
        if p.version != r.version || r.model != model {
            return Err(bad("the broker answered for another model or version".into()));
        }
        Ok(p)
    }
}
