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
