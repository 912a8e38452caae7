//! Helpers the key broker's test binaries share: a sim deployment (root and hardware key), a
//! broker on a database URL, and a release request bound to a fresh key.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use enclava_attest::binding;
use enclava_attest::sim::{SimHardware, SimReport, SimRoot};
use enclava_keys::{Broker, BrokerConfig, KeysMetrics, LocalKek, ReleasePayload, ReleaseRequest, payload};
use enclava_seal::KeyPair;

pub struct Sim {
    root: SimRoot,
    hw: SimHardware,
}

impl Sim {
    pub fn new() -> Sim {
        let root = SimRoot::generate().expect("root");
        let hw = SimHardware::generate(&root).expect("hw");
        Sim { root, hw }
    }

    pub fn policy(&self) -> String {
        format!("[sim]\nroot = \"{}\"\nany_measurement = true\n", self.root.public().to_hex())
    }

    pub fn evidence(&self, measurement: [u8; 48], debug: bool, report_data: [u8; 64]) -> Vec<u8> {
        let report = SimReport { measurement, signer: [0; 32], product_id: 0, svn: 0, debug, report_data };
        self.hw.evidence(&report, now())
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

pub const M1: [u8; 48] = [0x11; 48];
pub const M2: [u8; 48] = [0x22; 48];
pub const MODEL_KEY: [u8; 32] = [0xA7; 32];
pub const REQUEST_KEY: [u8; 32] = [0x5C; 32];

pub fn hexm(m: &[u8; 48]) -> String {
    hex::encode(m)
}

pub async fn open(url: &str, dir: &Path, ttl: Duration) -> Broker {
    let mut config = BrokerConfig::new(url, dir);
    config.nonce_ttl = ttl;
    let kek = enclava_keys::KekSource::Key(Arc::new(LocalKek::from_bytes(&[9; 32], "test")));
    Broker::open(config, kek, Arc::new(KeysMetrics::new())).await.expect("broker opens")
}

/// Asks for a challenge and builds a release bound to a fresh key; returns it with the key pair.
pub fn request(b: &Broker, sim: &Sim, m: [u8; 48], model: &str, users: &[&str]) -> (ReleaseRequest, KeyPair) {
    let kp = KeyPair::generate();
    let (nonce, _) = b.challenge().expect("challenge");
    let rd = binding::report_data(binding::KEY_RELEASE, kp.public(), Some(&nonce));
    let req = ReleaseRequest {
        nonce: nonce.to_vec(),
        evidence: sim.evidence(m, false, rd),
        public_key: kp.public().to_vec(),
        model: model.into(),
        version: 0,
        users: users.iter().map(|u| u.to_string()).collect(),
    };
    (req, kp)
}

pub fn open_release(r: &enclava_keys::Release, kp: &KeyPair, nonce: &[u8]) -> ReleasePayload {
    let plain = kp.open(payload::INFO, &payload::aad(nonce, &r.model), &r.sealed).expect("opens");
    ReleasePayload::decode(&plain).expect("payload")
}
