//! The key broker role end to end: a `sim` node started on a deployment's sim root asks the
//! server (manager and keys roles on one port) for a model's keys with fresh evidence, over gRPC;
//! it gets them only while its measurement is granted, and `/health` names both roles.

use std::sync::Arc;

use enclava_keys::LocalKek;
use enclava_sandbox::{NodeSpec, SandboxBuilder};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sim_node_fetches_keys_only_while_granted() {
    let kek = enclava_keys::KekSource::Key(Arc::new(LocalKek::from_bytes(&[3; 32], "test")));
    let mut sandbox = SandboxBuilder::new().kek(kek).start().await.expect("sandbox");
    let (url, addr) = (sandbox.url().to_owned(), sandbox.addr());
    let broker = sandbox.broker().expect("keys role").clone();
    let policy = sandbox.sim_policy(&[]);
    sandbox.node(NodeSpec::new("node").data(&["acme/m"])).await.expect("node");
    let node = &sandbox.nodes()[0];

    let (owner, _) = broker.register(None).await.expect("register");
    broker.put_model_key(&owner, "acme/m", &[0x3C; 32], Some(&policy), false).await.expect("key");
    broker.put_request_key(&owner, "acme/m", node.measurement(), &[0x4D; 32]).await.expect("request key");

    let refused = node.fetch_keys(&url, "acme/m", 0, &[]).await.expect_err("not granted yet");
    assert!(refused.to_string().contains("release refused (denied)"), "{refused}");

    broker.grant(&owner, "acme/m", node.measurement(), &owner).await.expect("grant");
    let keys = node.fetch_keys(&url, "acme/m", 0, std::slice::from_ref(&owner)).await.expect("keys");
    assert_eq!((keys.version, keys.model_key.as_bytes()), (1, &[0x3C; 32]));
    assert_eq!(keys.request_keys[0].1.as_bytes(), &[0x4D; 32]);

    broker.revoke(&owner, "acme/m", None, None).await.expect("revoke");
    assert!(node.fetch_keys(&url, "acme/m", 0, &[]).await.is_err(), "revoked");

    let (status, health) = http_get(addr, "/health").await;
    assert_eq!(status, 200, "{health}");
    assert!(health.contains("manager") && health.contains("keys"), "{health}");
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(metrics.contains("enclava_keys_releases_total{outcome=\"released\"} 1"), "{metrics}");
    sandbox.stop().await;
}

/// What an anonymous caller can do: 2,000 releases with made-up nonces write no audit row and hit
/// the per-source limit (429 with Retry-After); registrations stop at the limit; an over-size body
/// gets 413; gRPC challenges are limited too (RESOURCE_EXHAUSTED with retry-after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_calls_are_rate_limited_and_leave_no_audit_rows() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let kek = enclava_keys::KekSource::Key(Arc::new(LocalKek::from_bytes(&[3; 32], "test")));
    let sandbox = SandboxBuilder::new()
        .roles(&["keys"])
        .kek(kek)
        .configure(|c| {
            c.register_rate = 10;
            c.release_rate = 50;
        })
        .start()
        .await
        .expect("sandbox");
    let addr = sandbox.addr();
    let broker = sandbox.broker().expect("keys role").clone();
    let records = broker.verify_audit().await.expect("verify").records;

    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..2000u32 {
        let body = serde_json::json!({
            "nonce": b64(&[i as u8; 32]), "evidence": b64(b"garbage"), "publicKey": b64(&[1; 32]), "model": "acme/m",
        });
        let (status, headers, _) = http_post(addr, "/keys/v1/release", body.to_string().as_bytes()).await;
        if status == 429 {
            assert!(headers.contains("retry-after: "), "{headers}");
        }
        *statuses.entry(status).or_default() += 1;
    }
    assert!(statuses.get(&429).copied().unwrap_or(0) > 1000, "{statuses:?}");
    assert!(statuses.keys().all(|s| [409, 429].contains(s)), "{statuses:?}");
    assert_eq!(broker.verify_audit().await.expect("verify").records, records, "no audit row per anonymous refusal");

    let mut created = 0;
    let mut limited = 0;
    for _ in 0..30 {
        match http_post(addr, "/keys/v1/users", b"").await {
            (201, _, _) => created += 1,
            (429, headers, body) => {
                assert!(headers.contains("retry-after: ") && body.contains("try again"), "{headers} {body}");
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((created, limited), (10, 20));

    let (status, _, body) = http_post(addr, "/keys/v1/release", &vec![b' '; 2 << 20]).await;
    assert_eq!(status, 413, "{body}");

    let mut grpc = enclava_contracts::keys::v1::key_broker_client::KeyBrokerClient::connect(format!("http://{addr}"))
        .await
        .expect("grpc");
    let mut exhausted = None;
    for _ in 0..200 {
        if let Err(s) = grpc.challenge(enclava_contracts::keys::v1::ChallengeRequest {}).await {
            exhausted = Some(s);
            break;
        }
    }
    let s = exhausted.expect("gRPC challenges are limited too");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
    assert!(s.metadata().get("retry-after").is_some(), "{s:?}");
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(metrics.contains("enclava_keys_rate_limited_total"), "{metrics}");
    sandbox.stop().await;
}
