//! Discovery as a user sees it: the seed's keys written letter for letter, FindEnclave over gRPC on
//! every backend, stable instance ids, republish on change, clean withdrawal, health and metrics.

use std::collections::HashMap;
use std::time::Duration;

use enclava_manager::ManagerConfig as ServerConfig;
use enclava_registry::Keys;
use enclava_registry::memory::MemoryRegistry;
use enclava_testkit::{RedisCluster, RedisServer};
use redis::AsyncCommands;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_writes_the_seeds_keys_letter_for_letter() {
    let redis_server = RedisServer::start().expect("redis");
    let keys = Keys::new("mithrilcloud", "blindai").expect("valid");
    let registry = redis(&redis_server.url(), keys);
    let dir = tempfile::tempdir().expect("tmp");
    let node = node(registry, dir.path(), &["acme/gpt2", "acme/bert"]).await;
    let (id, m) = (node.instance_id().to_owned(), node.measurement().to_owned());
    let mut r = redis::Client::open(redis_server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");

    let presence = format!("mithrilcloud:service:blindai:{id}:presence");
    let info_key = format!("mithrilcloud:blindai:service:{id}:info");
    eventually("presence and info", Duration::from_secs(3), || {
        let mut r = r.clone();
        let (p, i) = (presence.clone(), info_key.clone());
        async move { r.exists::<_, bool>(&p).await.unwrap_or(false) && r.exists::<_, bool>(&i).await.unwrap_or(false) }
    })
    .await;
    assert_eq!(r.get::<_, String>(&presence).await.expect("get"), id, "presence value is the instance id");
    let ttl: i64 = r.ttl(&presence).await.expect("ttl");
    assert!((1..=3).contains(&ttl), "presence TTL {ttl}");
    let ttl: i64 = r.ttl(&info_key).await.expect("ttl");
    assert!((30..=40).contains(&ttl), "info TTL {ttl}");

    let info: serde_json::Value =
        serde_json::from_str(&r.get::<_, String>(&info_key).await.expect("get")).expect("json");
    assert_eq!(info["instanceId"], id.as_str());
    assert_eq!(info["serviceName"], "blindai");
    assert_eq!(info["platform"], "sim");
    assert_eq!(info["serviceVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["policy"]["mrenclave"], m.as_str());
    // Real sim evidence (base64), signed under this deployment's root.
    let attestation = info["attestation"].as_str().expect("attestation");
    use base64::Engine;
    let evidence = base64::engine::general_purpose::STANDARD.decode(attestation).expect("base64");
    assert!(evidence.starts_with(enclava_attest::sim::MAGIC), "sim evidence");
    assert_eq!(info["pubkey"].as_str().map(str::len), Some(44), "32-byte X25519 key, base64");
    assert_eq!(info["connectionString"], node.addr().to_string().as_str());
    assert_eq!(info["dataAccess"], serde_json::json!({"acme/gpt2": {"hot": false}, "acme/bert": {"hot": false}}));

    let hash = |key: String| {
        let mut r = r.clone();
        async move { r.hgetall::<_, HashMap<String, String>>(key).await.expect("hgetall") }
    };
    let one = |v: &str| HashMap::from([(id.clone(), v.to_owned())]);
    assert_eq!(hash("mithrilcloud:blindai:byplatform:sim".into()).await, one("{}"));
    assert_eq!(hash(format!("mithrilcloud:blindai:bymrenclave:{m}")).await, one("{}"));
    let cold = format!(r#"{{"hot":false,"mrenclave":"{m}"}}"#);
    assert_eq!(hash("mithrilcloud:blindai:bydataaccess:acme/gpt2".into()).await, one(&cold));
    assert_eq!(hash("mithrilcloud:blindai:bydataaccess:acme/bert".into()).await, one(&cold));

    // A change is published at once, not at the next 30 s refresh.
    node.set_data("acme/gpt2", true).expect("valid id");
    node.remove_data("acme/bert");
    let hot = format!(r#"{{"hot":true,"mrenclave":"{m}"}}"#);
    eventually("hot state republished", Duration::from_secs(2), || {
        let (hot, h1, h2) = (
            hot.clone(),
            hash("mithrilcloud:blindai:bydataaccess:acme/gpt2".into()),
            hash("mithrilcloud:blindai:bydataaccess:acme/bert".into()),
        );
        let id = id.clone();
        async move { h1.await.get(&id) == Some(&hot) && h2.await.is_empty() }
    })
    .await;
    let info: serde_json::Value =
        serde_json::from_str(&r.get::<_, String>(&info_key).await.expect("get")).expect("json");
    assert_eq!(info["dataAccess"], serde_json::json!({"acme/gpt2": {"hot": true}}));

    // A clean shutdown leaves nothing behind.
    node.shutdown().await;
    let left: Vec<String> = r.keys("mithrilcloud*").await.expect("keys");
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_id_is_stable_across_restarts_of_one_data_folder() {
    let registry = std::sync::Arc::new(MemoryRegistry::new(keys()));
    let (d1, d2) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let a = node(registry.clone(), d1.path(), &[]).await;
    let first = a.instance_id().to_owned();
    let first_key = a.request_key().public().to_vec();
    a.shutdown().await;
    let again = node(registry.clone(), d1.path(), &[]).await;
    assert_eq!(again.instance_id(), first, "same folder, same id");
    assert_ne!(again.request_key().public(), first_key, "a fresh request key each start");
    let other = node(registry, d2.path(), &[]).await;
    assert_ne!(other.instance_id(), first, "another folder, another id");
}

/// Two nodes, a server, and FindEnclave by data and by measurement, with filters and deny lists.
async fn find_over_grpc(registry: std::sync::Arc<dyn enclava_registry::Registry>) {
    let server = Server::start(registry.clone(), ServerConfig::default()).await;
    let (d1, d2) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let n1 = node(registry.clone(), d1.path(), &["acme/gpt2", "acme/bert"]).await;
    let n2 = node(registry.clone(), d2.path(), &["acme/gpt2"]).await;
    let mut c = server.client().await;
    let mut both = vec![n1.instance_id().to_owned(), n2.instance_id().to_owned()];
    both.sort();
    eventually("both nodes found", Duration::from_secs(3), || {
        let mut c = c.clone();
        let both = both.clone();
        async move { found(&mut c, find_req("acme/gpt2", 5)).await == both }
    })
    .await;
    assert_eq!(found(&mut c, find_req("acme/bert", 5)).await, vec![n1.instance_id().to_owned()]);
    assert_eq!(found(&mut c, find_req("acme/gpt2", 0)).await.len(), 1, "limit 0 means 1");
    assert_eq!(found(&mut c, by_measurement(n1.measurement(), 5)).await, both);
    let mut req = find_req("acme/gpt2", 5);
    req.enclave_deny_list = vec![n1.instance_id().to_owned()];
    assert_eq!(found(&mut c, req).await, vec![n2.instance_id().to_owned()], "deny list");
    let mut req = find_req("acme/gpt2", 5);
    req.platform = "tdx".into();
    assert!(found(&mut c, req).await.is_empty(), "platform filter");
    let mut req = find_req("acme/gpt2", 5);
    req.platform = "sim".into();
    assert_eq!(found(&mut c, req).await, both);

    // A hot node is preferred.
    n2.set_data("acme/gpt2", true).expect("valid");
    eventually("hot state published", Duration::from_secs(3), || {
        let mut c = c.clone();
        async move { c.find(find_req("acme/gpt2", 1)).await.is_ok_and(|r| r.found.first().is_some_and(|e| e.hot)) }
    })
    .await;
    for _ in 0..10 {
        let resp = c.find(find_req("acme/gpt2", 1)).await.expect("find");
        assert!(resp.found[0].hot, "the hot node is always preferred");
        assert_eq!(resp.found[0].instance_id, n2.instance_id());
        assert_eq!(resp.found[0].pubkey, n2.request_key().public());
    }

    // Listing, page by page.
    let page = c.list(enclava_client::ListEnclavesRequest { page_size: 1, ..Default::default() }).await.expect("list");
    assert_eq!(page.enclaves.len(), 1);
    assert!(page.enclaves[0].present);
    let next = c
        .list(enclava_client::ListEnclavesRequest {
            page_size: 1,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(next.enclaves.len(), 1);
    assert!(next.next_page_token.is_empty());

    n1.shutdown().await;
    n2.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_on_memory() {
    find_over_grpc(std::sync::Arc::new(MemoryRegistry::new(keys()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_on_redis() {
    let r = RedisServer::start().expect("redis");
    find_over_grpc(redis(&r.url(), keys())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_on_redis_cluster() {
    let cluster = RedisCluster::start().expect("cluster");
    find_over_grpc(redis(&cluster.url(), keys())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_are_served() {
    let registry = std::sync::Arc::new(MemoryRegistry::new(keys()));
    let server = Server::start(registry.clone(), ServerConfig::default()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let n = node(registry, dir.path(), &["d"]).await;
    let mut c = server.client().await;
    eventually("found", Duration::from_secs(3), || {
        let mut c = c.clone();
        async move { !found(&mut c, find_req("d", 1)).await.is_empty() }
    })
    .await;
    for _ in 0..3 {
        found(&mut c, find_req("d", 1)).await;
    }
    eventually("server healthy", Duration::from_secs(3), || async { http_get(server.http, "/health").await.0 == 200 })
        .await;
    let (status, metrics) = http_get(server.http, "/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(-1.0)
    };
    assert!(value("enclava_server_find_cache_hits_total") >= 2.0, "{metrics}");
    assert!(value("enclava_server_finds_total{outcome=\"found\"}") >= 4.0, "{metrics}");
    let (status, body) = http_get(n.addr(), "/health").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(n.instance_id()));
    let (_, node_metrics) = http_get(n.addr(), "/metrics").await;
    assert!(node_metrics.contains("enclava_node_heartbeats_total"), "{node_metrics}");
    assert!(node_metrics.contains("enclava_node_heartbeats_late_total"));
    server.stop().await;
}
