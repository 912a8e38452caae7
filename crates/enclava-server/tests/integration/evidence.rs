//! Nodes publish sim evidence binding their request key; clients verify it before trusting a node
//! (seed note 3). Evidence from another deployment's root, evidence that binds another key, and sim
//! evidence under a policy that does not name `sim` are all refused.

use std::sync::Arc;
use std::time::Duration;

use enclava_attest::Policy;
use enclava_attest::sim::SimRoot;
use enclava_node::NodeConfig;
use enclava_registry::memory::MemoryRegistry;
use enclava_server::ServerConfig;

use crate::support::*;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_evidence_verifies_only_under_the_right_policy() {
    let registry = Arc::new(MemoryRegistry::new(keys()));
    let server = Server::start(registry.clone(), ServerConfig::default()).await;
    let tmp = tempfile::tempdir().expect("tmp");
    let root_dir = tmp.path().join("root");
    let root = SimRoot::load_or_init(&root_dir).expect("root");
    let config = |name: &str, sim_root: Option<std::path::PathBuf>| NodeConfig {
        platform: "sim".into(),
        data_dir: tmp.path().join(name),
        data: vec![name.into()],
        advertise: None,
        sim_root,
        serve: None,
    };
    // A sim node without its deployment's root refuses to start: it could never be verified.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let err = enclava_node::start(config("unattested", None), registry.clone(), listener).await.expect_err("no root");
    assert!(err.to_string().contains("enclava sim init"), "{err}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let nodes = vec![
        enclava_node::start(config("attested", Some(root_dir.clone())), registry.clone(), listener)
            .await
            .expect("node"),
    ];
    let c = server.client().await;
    let find = |data: &'static str| {
        let mut c = c.clone();
        async move { c.find(find_req(data, 1)).await.expect("find").found }
    };
    eventually("registered", Duration::from_secs(3), || {
        let a = find("attested");
        async move { !a.await.is_empty() }
    })
    .await;
    let attested = find("attested").await.remove(0);
    // An entry someone else published without evidence.
    let mut unattested = attested.clone();
    unattested.attestation.clear();
    unattested.pubkey = enclava_seal::KeyPair::generate().public().to_vec();

    let ours =
        format!("[sim]\nroot = \"{}\"\nmeasurements = [\"{}\"]\n", root.public().to_hex(), nodes[0].measurement());
    let policy = Policy::parse(&ours).expect("policy");
    let claims = enclava_client::verify_enclave(&attested, &policy, &Default::default(), now()).expect("verifies");
    assert_eq!(claims.platform, enclava_attest::Platform::Sim);
    assert_eq!(claims.measurement_hex(), nodes[0].measurement());

    let refuse = |info: &enclava_proto::discovery::v1::EnclaveInfo, policy: &Policy, want: &str| {
        let reasons = enclava_client::verify_enclave(info, policy, &Default::default(), now()).expect_err("refused");
        assert!(reasons.iter().any(|r| r.contains(want)), "{reasons:?} should say {want:?}");
    };
    refuse(&unattested, &policy, "no evidence");
    let other = SimRoot::generate().expect("root");
    let foreign = Policy::parse(&ours.replace(&root.public().to_hex(), &other.public().to_hex())).expect("policy");
    refuse(&attested, &foreign, "another deployment");
    let no_sim = Policy::parse(&format!("[sgx]\nmeasurements = [\"{}\"]\n", "00".repeat(32))).expect("policy");
    refuse(&attested, &no_sim, "platform sim is not allowed");
    let mut swapped = attested.clone();
    swapped.pubkey = unattested.pubkey.clone();
    refuse(&swapped, &policy, "does not bind");
    let wrong_measurement = Policy::parse(&ours.replace(nodes[0].measurement(), &"ab".repeat(48))).expect("policy");
    refuse(&attested, &wrong_measurement, "measurement");
    let mut tampered = attested.clone();
    tampered.attestation[20] ^= 1;
    refuse(&tampered, &policy, "signature");
    for n in nodes {
        n.shutdown().await;
    }
    server.stop().await;
}
