//! `enclava bench pools`, live stage: the same workload over real sim nodes. Six models (MobileNetV2
//! or the tiny classifier, each encrypted under its own key) on four sim nodes whose memory budget
//! holds two of them, sealed serverless requests with Zipf(1.0) popularity from 8 and 64
//! closed-loop clients. Rows, each from the same starting placement: the floor (each request sent
//! straight to a node where its model is hot: direct invocation, no routing, no loads), Enclava's
//! pool (through the `pools` role), and round-robin, random and FnPacker's algorithm picking a
//! node on the client. It counts the model loads the nodes really did, refusals (a 429, FnPacker's
//! "All Busy"; retried after 10 ms) and latency percentiles.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use enclava_client::infer::{ServerlessClient, ServerlessOptions, UserKey};
use enclava_keys::LocalKek;
use enclava_model::blob::{BlobStore, FolderStore, package_blob_name};
use enclava_model::package::{self, ModelKey};
use enclava_node::NodeHandle;
use enclava_pool::fnpacker::FnPacker;
use enclava_runtime::generate::{mobilenet_v2, sample_input, tiny};

use crate::pools::{MODELS, Rng, zipf};

const NODES: usize = 4;
/// The models each node holds hot before every row (8 slots for 6 models: the two most popular
/// twice), so every row starts alike and the floor never loads.
const PLACEMENT: [[usize; 2]; NODES] = [[0, 1], [0, 2], [1, 3], [4, 5]];
/// A refused request is sent again after this.
const RETRY: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Floor,
    Pool,
    RoundRobin,
    Random,
    FnPacker,
}

struct Bench {
    nodes: Vec<NodeHandle>,
    /// [node][model]: a serverless client straight to that node.
    direct: Vec<Vec<Arc<ServerlessClient>>>,
    /// [model]: a serverless client to the pool's invoke URL.
    pooled: Vec<Arc<ServerlessClient>>,
    input: Arc<Vec<u8>>,
}

struct Outcome {
    latencies: Vec<f64>,
    loads: u64,
    refusals: u64,
    secs: f64,
}

fn name(m: usize) -> String {
    format!("bench/m{m}")
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted.get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1))).copied().unwrap_or(0.0)
}

impl Bench {
    fn loads(&self) -> u64 {
        self.nodes.iter().map(|n| n.metrics().model_loads.get()).sum()
    }

    /// Puts every node back to its placement: its two models hot, loaded in that order.
    async fn warm(&self) -> anyhow::Result<()> {
        for (k, models) in PLACEMENT.iter().enumerate() {
            for &m in models {
                self.direct[k][m].infer(&self.input).await.with_context(|| format!("warming node {k}"))?;
            }
        }
        Ok(())
    }

    /// `requests` requests over `clients` closed-loop clients, each model drawn from Zipf(1.0)
    /// (the same sequence for every route), sent by `route`.
    async fn row(&self, route: Route, clients: usize, requests: usize, seed: u64) -> anyhow::Result<Outcome> {
        self.warm().await?;
        let loads_before = self.loads();
        let left = Arc::new(AtomicUsize::new(requests));
        let refusals = Arc::new(AtomicUsize::new(0));
        let rr = Arc::new(AtomicUsize::new(0));
        let rng = Arc::new(Mutex::new(Rng(seed ^ 0x9e37_79b9)));
        let packer = Arc::new(Mutex::new(FnPacker::new(NODES)));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (left, refusals, rr, rng, packer) =
                (left.clone(), refusals.clone(), rr.clone(), rng.clone(), packer.clone());
            let direct = self.direct.clone();
            let pooled = self.pooled.clone();
            let input = self.input.clone();
            let mut models = Rng((seed + c as u64 * 7919) | 1);
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    let m = zipf(&mut models);
                    let t = Instant::now();
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        anyhow::ensure!(tries <= 1000, "a request was refused 1000 times");
                        let ms = || start.elapsed().as_millis() as u64;
                        let (client, packed) = match route {
                            Route::Pool => (pooled[m].clone(), None),
                            Route::Floor => {
                                let homes: Vec<usize> = (0..NODES).filter(|k| PLACEMENT[*k].contains(&m)).collect();
                                let k = homes[rr.fetch_add(1, Ordering::Relaxed) % homes.len()];
                                (direct[k][m].clone(), None)
                            }
                            Route::RoundRobin => (direct[rr.fetch_add(1, Ordering::Relaxed) % NODES][m].clone(), None),
                            Route::Random => {
                                let k = (rng.lock().unwrap_or_else(|e| e.into_inner()).next() * NODES as f64) as usize;
                                (direct[k.min(NODES - 1)][m].clone(), None)
                            }
                            Route::FnPacker => {
                                let picked = packer.lock().unwrap_or_else(|e| e.into_inner()).pick(&name(m), ms());
                                match picked {
                                    Ok(k) => (direct[k][m].clone(), Some(k)),
                                    Err(_) => {
                                        refusals.fetch_add(1, Ordering::Relaxed);
                                        tokio::time::sleep(RETRY).await;
                                        continue;
                                    }
                                }
                            }
                        };
                        let sent = Instant::now();
                        let result = client.infer(&input).await;
                        if let Some(k) = packed {
                            let exec = sent.elapsed().as_millis() as u64;
                            packer.lock().unwrap_or_else(|e| e.into_inner()).release(k, &name(m), exec, ms());
                        }
                        match result {
                            Ok(_) => break,
                            Err(_) => {
                                refusals.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(RETRY).await;
                            }
                        }
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                anyhow::Ok(lat)
            }));
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await??);
        }
        let secs = start.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        Ok(Outcome {
            latencies,
            loads: self.loads() - loads_before,
            refusals: refusals.load(Ordering::Relaxed) as u64,
            secs,
        })
    }
}

/// Runs the live stage: `requests` per row, MobileNetV2 unless `small` (the tiny classifier).
pub async fn live(requests: usize, seed: u64, small: bool) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let kek = enclava_keys::KekSource::Key(Arc::new(LocalKek::from_bytes(&[5; 32], "bench")));
    let sandbox = enclava_sandbox::SandboxBuilder::new()
        .dir(tmp.path())
        .kek(kek)
        .configure(|c| {
            c.release_rate = 0;
            c.register_rate = 0;
        })
        .start()
        .await?;
    let url = sandbox.url().to_owned();
    let broker = sandbox.broker().context("the keys role runs")?.clone();
    let (owner, token) = broker.register(None).await?;
    let policy = sandbox.sim_policy(&[]);
    let measurement = enclava_node::tee::sim_measurement(enclava_node::tee::sim_workload().as_bytes());
    let (shape, kind): (&[usize], &str) =
        if small { (&[1, 3, 32, 32], "tiny classifier 32×32") } else { (&[1, 3, 224, 224], "MobileNetV2 224×224") };
    eprintln!("live: encrypting {MODELS} models ({kind}) and starting {NODES} sim nodes…");
    let mut budget = 0u64;
    let mut keys = Vec::new();
    for m in 0..MODELS {
        let onnx = if small { tiny(m as u64 + 1) } else { mobilenet_v2(m as u64 + 1) };
        let size = enclava_runtime::Model::load(&onnx).map_err(|e| anyhow::anyhow!("{e}"))?.memory_estimate() as u64;
        budget = budget.max(size);
        let key = ModelKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let v = broker.put_model_key(&owner, &name(m), key.as_bytes(), Some(&policy), false).await?;
        broker.grant(&owner, &name(m), &measurement, &owner).await?;
        let pkg = package::encrypt(&name(m), v, &key, &onnx).map_err(|e| anyhow::anyhow!("{e}"))?;
        FolderStore::new(sandbox.blobs())
            .put(&package_blob_name(&name(m), v), &pkg)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut request_key = [0u8; 32];
        request_key.copy_from_slice(ModelKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?.as_bytes());
        broker.put_request_key(&owner, &name(m), &measurement, &request_key).await?;
        keys.push(UserKey::new(owner.clone(), &measurement, &request_key));
    }
    // Room for two models, not three.
    let budget = budget * 5 / 2;
    let models: Vec<String> = (0..MODELS).map(name).collect();
    let model_refs: Vec<&str> = models.iter().map(String::as_str).collect();
    let mut nodes = Vec::new();
    for k in 0..NODES {
        nodes.push(
            sandbox
                .detached_node(
                    enclava_sandbox::NodeSpec::new(format!("pool{k}")).serve(&model_refs).memory_budget(budget),
                )
                .await?,
        );
    }
    // Each node loads every model once at start (keeping the last two): let that settle.
    for n in &nodes {
        n.wait_hot(&name(MODELS - 1), Duration::from_secs(300)).await.map_err(anyhow::Error::msg)?;
    }
    let client = |endpoint: String, m: usize| -> anyhow::Result<Arc<ServerlessClient>> {
        let mut o = ServerlessOptions::new(endpoint, name(m), keys[m].clone());
        o.binary = true;
        o.max_attempts = 1;
        Ok(Arc::new(ServerlessClient::new(o)?))
    };
    let mut direct = Vec::new();
    for n in &nodes {
        direct.push(
            (0..MODELS)
                .map(|m| client(format!("http://{}{}", n.addr(), enclava_client::infer::PATH), m))
                .collect::<anyhow::Result<Vec<_>>>()?,
        );
    }
    let pooled = (0..MODELS)
        .map(|m| client(enclava_client::pools::invoke_url(&url, "bench"), m))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let input = Arc::new(sample_input(shape, 7).map_err(|e| anyhow::anyhow!("{e}"))?.to_npy());
    let bench = Bench { nodes, direct, pooled, input };
    let pools = enclava_client::pools::PoolClient::new(&url, Some(zeroize::Zeroizing::new(token)));

    println!(
        "\nlive: {MODELS} models ({kind}) on {NODES} sim nodes holding 2 each, sealed serverless requests, Zipf(1.0), \
         {requests} requests per row; every row starts from the same placement"
    );
    for clients in [8, 64] {
        println!("\n{clients} clients");
        println!("{:<12} {:>7} {:>9} {:>9} {:>9} {:>9}", "route", "loads", "refusals", "req/s", "p50 ms", "p99 ms");
        let mut rows = Vec::new();
        for route in [Route::Floor, Route::Pool, Route::RoundRobin, Route::Random, Route::FnPacker] {
            if route == Route::Pool {
                // A fresh pool, which learns the placement from what the nodes publish.
                let _ = pools.delete("bench").await;
                bench.warm().await?;
                tokio::time::sleep(Duration::from_millis(1200)).await;
                let spec = serde_json::json!({
                    "name": "bench", "models": models, "measurement": measurement, "modelsPerInstance": 2,
                });
                pools.create(&spec).await.map_err(|e| anyhow::anyhow!("creating the pool: {e}"))?;
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let listed = pools.list().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    let n = listed.first().and_then(|p| p["status"]["instances"].as_array().map(Vec::len)).unwrap_or(0);
                    if n == NODES {
                        break;
                    }
                    anyhow::ensure!(Instant::now() < deadline, "the pool found {n} of {NODES} nodes");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            let o = bench.row(route, clients, requests, seed).await?;
            let (p50, p99) = (percentile(&o.latencies, 0.5), percentile(&o.latencies, 0.99));
            println!(
                "{:<12} {:>7} {:>9} {:>9.1} {:>9.2} {:>9.2}",
                format!("{route:?}"),
                o.loads,
                o.refusals,
                o.latencies.len() as f64 / o.secs,
                p50,
                p99
            );
            rows.push((route, o.loads, o.refusals, p50, p99));
        }
        let get = |r: Route| rows.iter().find(|x| x.0 == r).copied().expect("ran");
        let (floor, pool, rr, fnp) =
            (get(Route::Floor), get(Route::Pool), get(Route::RoundRobin), get(Route::FnPacker));
        println!(
            "pool: loads {:.3}× round-robin's (goal ≤ 0.5), p99 {:.3}× FnPacker's (goal ≤ 0.8), p50 {:.3}× the floor's \
             (goal ≤ 1.05 when hot), {} refusals (FnPacker: {})",
            pool.1 as f64 / rr.1.max(1) as f64,
            pool.4 / fnp.4.max(f64::EPSILON),
            pool.3 / floor.3.max(f64::EPSILON),
            pool.2,
            fnp.2
        );
    }
    let _ = pools.delete("bench").await;
    for n in bench.nodes {
        n.shutdown().await;
    }
    sandbox.stop().await;
    Ok(())
}
