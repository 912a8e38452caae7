//! Pool replicas side by side on one store, as `enclava server --roles pools` runs them: on the
//! in-process store and on a real `redis-server` (the registry's documents), two replicas keep
//! one model's requests on one instance, never put more requests in flight than the instances
//! take, and serve every request exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use enclava_pool::pool::{self, Found, Pool, PoolSpec};
use enclava_pool::role::RegistryStore;
use enclava_pool::router::RouterConfig;
use enclava_pool::store::{MemoryStore, Store};
use enclava_registry::Keys;
use enclava_registry::redis::RedisRegistry;

async fn two_replicas_route_as_one_router(store: Arc<dyn Store>) {
    let config = RouterConfig { concurrency: 2, queue: 64, ..RouterConfig::default() };
    let spec = PoolSpec {
        name: "p".into(),
        models: vec!["a".into(), "b".into()],
        measurement: None,
        platform: None,
        config,
        min: 0,
        max: 0,
        owner: "u".into(),
    };
    pool::create(store.as_ref(), "", spec).await.expect("create");
    let r1 = Pool::open(store.clone(), "", "p", "r1", Pool::system_clock());
    let r2 = Pool::open(store.clone(), "", "p", "r2", Pool::system_clock());
    let found: Vec<Found> =
        ["i0", "i1"].iter().map(|i| Found { id: i.to_string(), endpoint: format!("{i}:1"), hot: vec![] }).collect();
    r1.sync(&found).await.expect("sync");

    // Affinity across replicas: sequential requests through either go where the model is hot.
    let first = r1.acquire("a", Duration::from_secs(1)).await.expect("runs");
    let at = first.instance.clone();
    first.finish().await.expect("finish");
    for n in 0..6 {
        let r = if n % 2 == 0 { &r2 } else { &r1 };
        let lease = r.acquire("a", Duration::from_secs(1)).await.expect("runs");
        assert_eq!((lease.instance.as_str(), lease.cold), (at.as_str(), false), "request {n}");
        lease.finish().await.expect("finish");
    }

    // Load through both: never more in flight than 2 instances × 2, every request served once.
    let in_flight = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..40 {
        let p = if n % 2 == 0 { r1.clone() } else { r2.clone() };
        let (in_flight, peak, served) = (in_flight.clone(), peak.clone(), served.clone());
        tasks.push(tokio::spawn(async move {
            let lease = p.acquire(["a", "b"][n % 2], Duration::from_secs(30)).await.expect("served");
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(3)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            served.fetch_add(1, Ordering::SeqCst);
            lease.finish().await.expect("finish");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(served.load(Ordering::SeqCst), 40);
    assert!(peak.load(Ordering::SeqCst) <= 4, "capacity is 4: peak {}", peak.load(Ordering::SeqCst));
    let view = r2.view().await.expect("view");
    assert_eq!(view.status.queued, 0);
    assert!(view.status.instances.iter().all(|i| i.in_flight == 0), "{view:?}");
    assert_eq!(view.replicas, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_in_process_store() {
    two_replicas_route_as_one_router(Arc::new(MemoryStore::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_redis() {
    let redis = enclava_testkit::RedisServer::start().expect("redis-server");
    let keys = Keys::new("enclava", "enclava").expect("keys");
    let registry = Arc::new(RedisRegistry::standalone(&redis.url(), keys).expect("registry"));
    two_replicas_route_as_one_router(Arc::new(RegistryStore(registry))).await;
}
