//! Runs the registry conformance suite on every backend: in memory, a real `redis-server` and a
//! real 3-master Redis Cluster, each started on free loopback ports.

use std::sync::Arc;

use enclava_registry::memory::MemoryRegistry;
use enclava_registry::redis::RedisRegistry;
use enclava_registry::{Keys, Registry, RegistrySpec, testsuite};
use enclava_testkit::{RedisCluster, RedisServer};

fn keys(ns: &str) -> Keys {
    Keys::new(ns, "enclava").expect("valid names")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_conforms() {
    testsuite::run_all(&|ns| Arc::new(MemoryRegistry::new(keys(ns))) as Arc<dyn Registry>).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_conforms() {
    let server = RedisServer::start().expect("redis-server starts");
    let url = server.url();
    testsuite::run_all(&move |ns| {
        Arc::new(RedisRegistry::standalone(&url, keys(ns)).expect("client")) as Arc<dyn Registry>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_backend_conforms() {
    let cluster = RedisCluster::start().expect("cluster starts");
    let RegistrySpec::Cluster(nodes) = cluster.url().parse().expect("cluster url") else {
        panic!("not a cluster url");
    };
    testsuite::run_all(&move |ns| {
        Arc::new(RedisRegistry::cluster(&nodes, keys(ns)).expect("client")) as Arc<dyn Registry>
    })
    .await;
}

/// Keys of the wrong type, written by someone else: a presence hash without a TTL counts as
/// absent (not live forever), an info hash skips its candidate, and FindEnclave still answers.
async fn foreign_keys_of_the_wrong_type(reg: Arc<dyn Registry>, hset: impl AsyncFn(String)) {
    use enclava_registry::find::{FindQuery, find};
    let keys = reg.keys().clone();
    let good = testsuite::info("g", testsuite::M1, "sim", &[("d", false)]);
    testsuite::register(reg.as_ref(), &good, true).await;
    for id in ["w1", "w2"] {
        let i = testsuite::info(id, testsuite::M1, "sim", &[("d", true)]);
        testsuite::register(reg.as_ref(), &i, true).await;
    }
    hset(keys.presence("w1")).await;
    hset(keys.info("w2")).await;
    let q = FindQuery::new("d", "", "", 10, &[]).expect("query");
    let out = find(reg.as_ref(), &q, None, None).await.expect("find answers despite foreign keys");
    let ids: Vec<&str> = out.live.iter().map(|f| f.info.instance_id.as_str()).collect();
    assert_eq!(ids, vec!["g"]);
    assert_eq!(out.skipped, 1, "w2's info is unreadable");
    let probe = reg.probe(&["w1".into()], false).await.expect("probe");
    assert_eq!(probe[0].presence_ttl, None, "a presence without a TTL is not live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refuses_foreign_keys_of_the_wrong_type() {
    let server = RedisServer::start().expect("redis-server starts");
    let url = server.url();
    let reg: Arc<dyn Registry> = Arc::new(RedisRegistry::standalone(&url, keys("wrongtype")).expect("client"));
    let client = redis::Client::open(url).expect("url");
    foreign_keys_of_the_wrong_type(reg, async |key: String| {
        let mut c = client.get_multiplexed_async_connection().await.expect("connect");
        let _: () = redis::cmd("DEL").arg(&key).query_async(&mut c).await.expect("del");
        let _: () = redis::cmd("HSET").arg(&key).arg("f").arg("v").query_async(&mut c).await.expect("hset");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_refuses_foreign_keys_of_the_wrong_type() {
    let cluster = RedisCluster::start().expect("cluster starts");
    let RegistrySpec::Cluster(nodes) = cluster.url().parse().expect("cluster url") else {
        panic!("not a cluster url");
    };
    let reg: Arc<dyn Registry> = Arc::new(RedisRegistry::cluster(&nodes, keys("wrongtype")).expect("client"));
    // Written through a cluster client, which follows each key to its slot.
    let client = redis::cluster::ClusterClient::new(nodes.clone()).expect("cluster client");
    foreign_keys_of_the_wrong_type(reg, async |key: String| {
        let mut c = client.get_async_connection().await.expect("connect");
        let _: () = redis::cmd("DEL").arg(&key).query_async(&mut c).await.expect("del");
        let _: () = redis::cmd("HSET").arg(&key).arg("f").arg("v").query_async(&mut c).await.expect("hset");
    })
    .await;
}
