//! The key broker role end to end: a `sim` node started on a deployment's sim root asks the
//! server (manager and keys roles on one port) for a model's keys with fresh evidence, over gRPC;
//! it gets them only while its measurement is granted, and `/health` names both roles.

use std::sync::Arc;

use enclava_attest::sim::SimRoot;
use enclava_keys::{Broker, BrokerConfig, KeysMetrics, LocalKek};
use enclava_node::NodeConfig;
use enclava_registry::memory::MemoryRegistry;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sim_node_fetches_keys_only_while_granted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let registry: Arc<dyn enclava_registry::Registry> = Arc::new(MemoryRegistry::new(keys()));
    let kek = Arc::new(LocalKek::from_bytes(&[3; 32], "test"));
    let db = format!("sqlite://{}/keys.db", tmp.path().display());
    let broker = Arc::new(
        Broker::open(BrokerConfig::new(db, tmp.path().join("srv")), kek, Arc::new(KeysMetrics::new()))
            .await
            .expect("broker"),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let roles = enclava_server::Roles { manager: Some(registry.clone()), keys: Some(broker.clone()) };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(enclava_server::serve(Default::default(), roles, listener, async {
        let _ = stopped.await;
    }));
    let url = format!("http://{addr}");

    let root_dir = tmp.path().join("root");
    let root = SimRoot::load_or_init(&root_dir).expect("root");
    let config = NodeConfig {
        platform: "sim".into(),
        data_dir: tmp.path().join("node"),
        data: vec!["acme/m".into()],
        advertise: None,
        sim_root: Some(root_dir),
        serve: None,
    };
    let node_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let node = enclava_node::start(config, registry, node_listener).await.expect("node");

    let (owner, _) = broker.register().await.expect("register");
    let policy = format!("[sim]\nroot = \"{}\"\nany_measurement = true\n", root.public().to_hex());
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
    node.shutdown().await;
    let _ = stop.send(());
    let _ = server.await;
}
