//! What happens when things die: a killed node is never returned more than 3 s after its last
//! heartbeat (cache on), its index entries are swept, Redis restarts and flushes are healed by the
//! nodes on their own, and the manager answers UNAVAILABLE while Redis is down and recovers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use enclava_manager::ManagerConfig as ServerConfig;
use enclava_registry::{Index, Registry};
use enclava_testkit::{RedisCluster, RedisServer};
use redis::AsyncCommands;
use tokio::time::Instant;

use crate::support::*;

/// Kills one of two nodes (its heartbeats stop mid-flight, as with SIGKILL) and polls FindEnclave
/// with the cache on: no call that starts more than 3 s after the kill returns it.
async fn killed_node_disappears(registry: Arc<dyn Registry>) {
    let server = Server::start(registry.clone(), ServerConfig::default()).await;
    let (d1, d2) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let victim = node(registry.clone(), d1.path(), &["m"]).await;
    let survivor = node(registry.clone(), d2.path(), &["m"]).await;
    let victim_id = victim.instance_id().to_owned();
    let mut c = server.client().await;
    eventually("both found", Duration::from_secs(3), || {
        let mut c = c.clone();
        async move { found(&mut c, find_req("m", 5)).await.len() == 2 }
    })
    .await;
    let killed = Instant::now();
    victim.abort();
    let mut gone_after = None;
    while killed.elapsed() < Duration::from_secs(5) {
        let asked = Instant::now();
        let ids = found(&mut c, find_req("m", 5)).await;
        let present = ids.contains(&victim_id);
        if asked.duration_since(killed) > Duration::from_millis(3050) {
            assert!(!present, "returned {:?} after the kill", asked.duration_since(killed));
        }
        if !present && gone_after.is_none() {
            gone_after = Some(killed.elapsed());
        }
        assert!(ids.contains(&survivor.instance_id().to_owned()), "the live node is always found");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone_after = gone_after.expect("the killed node disappeared");
    assert!(gone_after <= Duration::from_millis(3100), "gone after {gone_after:?}");
    survivor.shutdown().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_disappears_within_3s_on_redis() {
    let r = RedisServer::start().expect("redis");
    killed_node_disappears(redis(&r.url(), keys())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_disappears_within_3s_on_redis_cluster() {
    let cluster = RedisCluster::start().expect("cluster");
    killed_node_disappears(redis(&cluster.url(), keys())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_disappears_within_3s_in_memory() {
    killed_node_disappears(Arc::new(enclava_registry::memory::MemoryRegistry::new(keys()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_removes_every_entry_of_a_killed_node() {
    let r = RedisServer::start().expect("redis");
    let registry = redis(&r.url(), keys());
    let config = ServerConfig { sweep_interval: Duration::from_millis(300), ..Default::default() };
    let server = Server::start(registry.clone(), config).await;
    let dir = tempfile::tempdir().expect("tmp");
    let n = node(registry.clone(), dir.path(), &["a", "b", "c"]).await;
    let (id, m) = (n.instance_id().to_owned(), n.measurement().to_owned());
    let indexes = [
        Index::Platform("sim".into()),
        Index::Measurement(m),
        Index::Data("a".into()),
        Index::Data("b".into()),
        Index::Data("c".into()),
    ];
    let names = |reg: Arc<dyn Registry>, id: String, indexes: Vec<Index>| async move {
        let mut n = 0;
        for ix in &indexes {
            n += reg.index(ix).await.expect("index").iter().filter(|(i, _)| *i == id).count();
        }
        n
    };
    eventually("all five entries written", Duration::from_secs(3), || {
        let count = names(registry.clone(), id.clone(), indexes.to_vec());
        async move { count.await == 5 }
    })
    .await;
    n.abort();
    // Presence expires within 3 s, then the next sweep (every 300 ms) removes everything; no
    // FindEnclave call is made, so only the sweeper can do it.
    eventually("every index entry swept", Duration::from_secs(5), || {
        let count = names(registry.clone(), id.clone(), indexes.to_vec());
        async move { count.await == 0 }
    })
    .await;
    server.stop().await;
}

/// Reads every key of the default namespace: presence, info, every index entry of `id`.
async fn registered_in_full(conn: &mut redis::aio::MultiplexedConnection, id: &str, m: &str, data: &[&str]) -> bool {
    let ok = |v: redis::RedisResult<bool>| v.unwrap_or(false);
    let mut all = ok(conn.exists(format!("enclava:service:enclava:{id}:presence")).await)
        && ok(conn.exists(format!("enclava:enclava:service:{id}:info")).await);
    let mut hashes = vec!["enclava:enclava:byplatform:sim".to_owned(), format!("enclava:enclava:bymrenclave:{m}")];
    hashes.extend(data.iter().map(|d| format!("enclava:enclava:bydataaccess:{d}")));
    for h in hashes {
        let fields: HashMap<String, String> = conn.hgetall(&h).await.unwrap_or_default();
        all &= fields.contains_key(id);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reregister_after_redis_restart_or_flush_and_manager_recovers() {
    let mut r = RedisServer::start().expect("redis");
    let registry = redis(&r.url(), keys());
    let server = Server::start(registry.clone(), ServerConfig::default()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let n = node(registry.clone(), dir.path(), &["x", "y"]).await;
    let (id, m) = (n.instance_id().to_owned(), n.measurement().to_owned());
    let c = server.client().await;
    let plain = redis::Client::open(r.url()).expect("client");
    let check = |plain: redis::Client, id: String, m: String| async move {
        match plain.get_multiplexed_async_connection().await {
            Ok(mut conn) => registered_in_full(&mut conn, &id, &m, &["x", "y"]).await,
            Err(_) => false,
        }
    };
    eventually("registered", Duration::from_secs(3), || check(plain.clone(), id.clone(), m.clone())).await;

    // Flushed: every key is gone; the node notices at its next heartbeat.
    let mut conn = plain.get_multiplexed_async_connection().await.expect("conn");
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("flush");
    eventually("re-registered in full after FLUSHALL", Duration::from_secs(3), || {
        check(plain.clone(), id.clone(), m.clone())
    })
    .await;
    assert!(n.metrics().reregistrations.get() >= 1);

    // Down: the manager says UNAVAILABLE, clearly.
    r.stop();
    eventually("UNAVAILABLE while Redis is down", Duration::from_secs(5), || {
        let mut c = c.clone();
        async move {
            match c.find(find_req("x", 1)).await {
                Err(enclava_client::ClientError::Refused(e)) => {
                    e.code == enclava_core::ErrorCode::Unavailable && e.message.contains("registry unavailable")
                }
                _ => false,
            }
        }
    })
    .await;
    eventually("health says so", Duration::from_secs(3), || async { http_get(server.http, "/health").await.0 == 503 })
        .await;

    // Back, empty: the node registers in full again and the manager answers without a restart.
    r.restart().expect("redis restarts");
    eventually("re-registered in full after restart", Duration::from_secs(5), || {
        check(plain.clone(), id.clone(), m.clone())
    })
    .await;
    eventually("found again", Duration::from_secs(5), || {
        let mut c = c.clone();
        let id = id.clone();
        async move { c.find(find_req("y", 1)).await.is_ok_and(|r| r.found.iter().any(|e| e.instance_id == id)) }
    })
    .await;
    assert_eq!(found(&mut c.clone(), find_req("x", 1)).await, vec![id.clone()]);
    n.shutdown().await;
    server.stop().await;
}
