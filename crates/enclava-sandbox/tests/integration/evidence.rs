//! Nodes publish sim evidence binding their request key; clients verify it before trusting a node
//! (seed note 3). Evidence from another deployment's root, evidence that binds another key, and sim
//! evidence under a policy that does not name `sim` are all refused.

use std::sync::Arc;
use std::time::Duration;

use enclava_attest::Policy;
use enclava_attest::sim::SimRoot;
use enclava_collateral::EvidenceVerifier;
use enclava_contracts::discovery::v1::EnclaveInfo;
use enclava_manager::ManagerConfig as ServerConfig;
use enclava_registry::memory::MemoryRegistry;

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
    // A sim node without its deployment's root refuses to start: it could never be verified.
    let bare = enclava_sandbox::NodeSettings { data: vec!["unattested".into()], ..Default::default() };
    let err = enclava_sandbox::start_node(&bare, &tmp.path().join("unattested"), tmp.path(), registry.clone())
        .await
        .expect_err("no root");
    assert!(err.to_string().contains("enclava sim init"), "{err}");
    let attested = enclava_sandbox::NodeSettings {
        data: vec!["attested".into()],
        sim_root: Some(root_dir.clone()),
        ..Default::default()
    };
    let nodes = vec![
        enclava_sandbox::start_node(&attested, &tmp.path().join("attested"), tmp.path(), registry.clone())
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
    let verifier = EvidenceVerifier::new(None);
    let claims = enclava_client::verify_enclave(&attested, &policy, &verifier, now()).await.expect("verifies");
    assert_eq!(claims.platform, enclava_attest::Platform::Sim);
    assert_eq!(claims.measurement_hex(), nodes[0].measurement());

    let refuse = async |info: &EnclaveInfo, policy: &Policy, want: &str| {
        let reasons = enclava_client::verify_enclave(info, policy, &verifier, now()).await.expect_err("refused");
        assert!(reasons.iter().any(|r| r.contains(want)), "{reasons:?} should say {want:?}");
    };
    refuse(&unattested, &policy, "no evidence").await;
    let other = SimRoot::generate().expect("root");
    let foreign = Policy::parse(&ours.replace(&root.public().to_hex(), &other.public().to_hex())).expect("policy");
    refuse(&attested, &foreign, "another deployment").await;
    let no_sim = Policy::parse(&format!("[sgx]\nmeasurements = [\"{}\"]\n", "00".repeat(32))).expect("policy");
    refuse(&attested, &no_sim, "platform sim is not allowed").await;
    let mut swapped = attested.clone();
    swapped.pubkey = unattested.pubkey.clone();
    refuse(&swapped, &policy, "does not bind").await;
    let wrong_measurement = Policy::parse(&ours.replace(nodes[0].measurement(), &"ab".repeat(48))).expect("policy");
    refuse(&attested, &wrong_measurement, "measurement").await;
    let mut tampered = attested.clone();
    tampered.attestation[20] ^= 1;
    refuse(&tampered, &policy, "signature").await;
    for n in nodes {
        n.shutdown().await;
    }
    server.stop().await;
}

fn testdata(rel: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../enclava-attest/testdata").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// What a node on real hardware publishes (a TDX quote; an SNP report in its envelope with the
/// VCEK), verified by a client whose only collateral is a PCS/KDS-style service it reaches over
/// HTTP: everything verifies (chain, CRL, TCB, signature), and the one refusal left is the binding
/// (these samples bind some other key, not the published one). Without the service, the client says
/// what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_verifies_real_evidence_with_collateral_fetched_over_http() {
    use enclava_attest::time::parse_rfc3339;
    let td = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../enclava-attest/testdata");
    let service = enclava_testkit::collateral::CollateralServer::start(td.join("tdx-v4/pcs"), td.join("sev-snp/amd"))
        .await
        .expect("collateral service");
    let online = EvidenceVerifier::new(Some(enclava_collateral::open_source(&service.url).expect("source")));
    let offline = EvidenceVerifier::new(None);
    let at = parse_rfc3339("2025-07-01T00:00:00Z").expect("time");
    let snp = enclava_attest::snp::encode_envelope(
        &testdata("sev-snp/milan-virtee/report.bin"),
        &testdata("sev-snp/milan-virtee/vcek.der"),
        &[],
    );
    for (platform, evidence) in [("tdx", testdata("tdx-v4/quote.dat")), ("sev-snp", snp)] {
        let claims = enclava_attest::verify(
            &enclava_attest::Evidence::detect(evidence.clone()).expect("detect"),
            &online.collateral(&enclava_attest::Evidence::detect(evidence.clone()).expect("detect"), None, at).await,
            at,
        )
        .unwrap_or_else(|e| panic!("{platform}: {e}"));
        let info = EnclaveInfo {
            instance_id: format!("real-{platform}"),
            platform: platform.into(),
            policy: Some(enclava_contracts::discovery::v1::EnclavePolicy { mrenclave: claims.measurement_hex() }),
            attestation: evidence,
            pubkey: vec![7; 32],
            connection_string: "127.0.0.1:1".into(),
            ..Default::default()
        };
        let policy = Policy::parse(&format!("[{platform}]\nmeasurements = [\"{}\"]\n", claims.measurement_hex()))
            .expect("policy");
        let reasons = enclava_client::verify_enclave(&info, &policy, &online, at).await.expect_err("binds another key");
        assert_eq!(reasons, vec!["the report data does not bind the expected key and nonce".to_owned()], "{platform}");
        let reasons = enclava_client::verify_enclave(&info, &policy, &offline, at).await.expect_err("no collateral");
        assert!(reasons.iter().any(|r| r.contains("missing collateral")), "{platform}: {reasons:?}");
    }
    assert!(service.hits() >= 6, "TCB info, QE identity, two CRLs, AMD chain and CRL");
}
