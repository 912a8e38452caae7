//! `enclava bench discovery`: measures, in one run against one local `redis-server`, (a) the raw
//! floor — FindEnclave's own Redis commands issued directly and pipelined, and `redis-benchmark`
//! where installed; (b) FindEnclave over gRPC, uncached and cached, for 10, 1,000 and 100,000
//! candidates with 10 % of them dead, at 1, 8 and 64 concurrent clients; (c) the first call over an
//! index of 200,000 dead entries, and what it cost the server in memory; (d) heartbeat capacity: how
//! many simulated nodes one Redis sustains at one heartbeat a second before heartbeats arrive late,
//! next to the raw SETEX rate. Prints a table with the ratios the discovery issues set as goals.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use enclava_client::{FindEnclaveRequest, ManagerClient};
use enclava_registry::redis::RedisRegistry;
use enclava_registry::schema::{DataAccessJson, EnclaveInfoJson, Index, PolicyJson};
use enclava_registry::{Keys, Registry};
use redis::aio::MultiplexedConnection;
use tokio::task::JoinSet;
use tokio::time::Instant;

const DATA: &str = "bench/model";
const MEASUREMENT: &str = "be0c";

/// `enclava bench discovery`
#[derive(Debug, clap::Args)]
pub struct DiscoveryArgs {
    /// Use this Redis instead of starting a private redis-server (keys under `enclava-bench*` are overwritten)
    #[arg(long, env = "ENCLAVA_BENCH_REDIS")]
    redis: Option<String>,
    /// Seconds per measured row
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Concurrent clients, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Index sizes (candidates per data id), comma-separated
    #[arg(long, value_delimiter = ',', default_value = "10,1000,100000")]
    candidates: Vec<usize>,
    /// Dead entries in the index of the first-call row (0 skips it)
    #[arg(long, default_value_t = 200_000)]
    dead: usize,
}

/// One measured row.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

type Op = Box<dyn FnMut() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send>;

/// Runs each client's operation back to back for `dur`; throughput and latency percentiles.
async fn drive(ops: Vec<Op>, dur: Duration) -> Stats {
    let end = Instant::now() + dur;
    let started = Instant::now();
    let mut set = JoinSet::new();
    for mut op in ops {
        set.spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let mut errors = 0u64;
            while Instant::now() < end {
                let t = Instant::now();
                if op().await.is_err() {
                    errors += 1;
                }
                lat.push(t.elapsed().as_nanos() as u64);
            }
            (lat, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(Ok((lat, e))) = set.join_next().await {
        all.extend(lat);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).map_or(0.0, |n| *n as f64 / 1000.0)
    };
    Stats { ops_per_sec: (all.len() as u64 - errors) as f64 / secs, p50_us: pct(0.50), p99_us: pct(0.99), errors }
}

fn bench_info(id: &str) -> EnclaveInfoJson {
    EnclaveInfoJson {
        instance_id: id.to_owned(),
        service_name: "enclava".into(),
        platform: "sim".into(),
        service_version: env!("CARGO_PKG_VERSION").into(),
        policy: PolicyJson { mrenclave: MEASUREMENT.into(), extra: Default::default() },
        attestation: Vec::new(),
        pubkey: vec![7; 32],
        connection_string: "127.0.0.1:1".into(),
        data_access: [(DATA.to_owned(), DataAccessJson { hot: false })].into(),
        extra: Default::default(),
    }
}

/// The dead tenth of a populated index, which FindEnclave prunes as it meets them.
struct Dead {
    conn: MultiplexedConnection,
    index: String,
    value: String,
    ids: Vec<String>,
}

impl Dead {
    /// Puts every dead entry back (before each measured row, outside its timing): each row starts
    /// with 10 % of its candidates dead, and the calls prune the ones they meet as they go.
    async fn restore(&mut self) -> anyhow::Result<()> {
        for chunk in self.ids.chunks(10_000) {
            let mut c = redis::cmd("HSET");
            c.arg(&self.index);
            for id in chunk {
                c.arg(id).arg(&self.value);
            }
            let () = c.query_async(&mut self.conn).await?;
        }
        Ok(())
    }
}

/// Registers `n` instances for [`DATA`] with pipelined writes; every tenth is dead (index entries
/// and info, no presence). Live ones get a long presence (this benchmark measures finding, not
/// heartbeats).
async fn populate(reg: Arc<RedisRegistry>, url: &str, n: usize) -> anyhow::Result<Dead> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let keys = reg.keys().clone();
    let mut dead = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            let id = format!("{i:032x}");
            let info = bench_info(&id);
            pipe.cmd("SETEX").arg(keys.info(&id)).arg(3600).arg(info.to_json()).ignore();
            for (index, value) in info.index_entries() {
                pipe.cmd("HSET").arg(keys.index(&index)).arg(&id).arg(value).ignore();
            }
            if i % 10 == 9 {
                dead.push(id);
            } else {
                pipe.cmd("SETEX").arg(keys.presence(&id)).arg(3600).arg(&id).ignore();
            }
        }
        let () = pipe.query_async(&mut conn).await?;
    }
    let entry = bench_info("x").index_entries().into_iter().find(|(i, _)| matches!(i, Index::Data(_)));
    let (data_index, value) = entry.context("bench info has a data entry")?;
    Ok(Dead { conn, index: keys.index(&data_index), value, ids: dead })
}

/// The floor: FindEnclave's commands for limit 1 (a random sample of the index, then PTTL and GET
/// of the first batch of candidates in one pipeline), issued directly.
fn raw_find(conn: MultiplexedConnection, keys: Keys) -> Op {
    Box::new(move || {
        let mut conn = conn.clone();
        let keys = keys.clone();
        Box::pin(async move {
            let entries: Vec<(String, String)> = redis::cmd("HRANDFIELD")
                .arg(keys.index(&Index::Data(DATA.into())))
                .arg(enclava_registry::find::SMALL_INDEX)
                .arg("WITHVALUES")
                .query_async(&mut conn)
                .await?;
            let mut pipe = redis::pipe();
            for (id, _) in entries.iter().take(4) {
                pipe.cmd("PTTL").arg(keys.presence(id)).cmd("GET").arg(keys.info(id));
            }
            let _: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
            Ok(())
        })
    })
}

/// This process's resident memory in bytes (Linux), for the dead-index row.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// The first FindEnclave call over an index of `n` dead entries (and one live instance): its
/// latency, how many it pruned, and how much the server's memory grew.
async fn dead_index_row(url: &str, n: usize, goals: &mut Vec<(String, bool)>) -> anyhow::Result<()> {
    let keys = Keys::new("enclava-bench-dead", "enclava").map_err(anyhow::Error::msg)?;
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let index = keys.index(&Index::Data(DATA.into()));
    let value = format!(r#"{{"hot":false,"mrenclave":"{MEASUREMENT}"}}"#);
    let () = redis::cmd("DEL").arg(&index).query_async(&mut conn).await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut c = redis::cmd("HSET");
        c.arg(&index);
        for i in chunk {
            c.arg(format!("dead{i:012}")).arg(&value);
        }
        let () = c.query_async(&mut conn).await?;
    }
    let reg: Arc<dyn Registry> = Arc::new(RedisRegistry::standalone(url, keys)?);
    let server = start_server(reg, Duration::ZERO).await?;
    let server_url = server.url().to_owned();
    let mut client = ManagerClient::connect(&server_url).await?;
    let before = rss_bytes();
    let t = Instant::now();
    let req = FindEnclaveRequest { dataaccess: DATA.into(), limit: 1, ..Default::default() };
    let found = client.find(req).await?.found.len();
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let grew = rss_bytes().saturating_sub(before) as f64 / (1 << 20) as f64;
    let left: u64 = redis::cmd("HLEN").arg(&index).query_async(&mut conn).await?;
    println!(
        "first call over {n} dead entries: {ms:.1} ms, {found} found, pruned {}, server memory +{grew:.1} MiB",
        n as u64 - left
    );
    goals.push((format!("first call over {n} dead entries < 50 ms: {ms:.1} ms"), ms < 50.0));
    goals.push((format!("server memory for that call < 16 MiB: +{grew:.1} MiB"), grew < 16.0));
    server.stop().await;
    let () = redis::cmd("DEL").arg(&index).query_async(&mut conn).await?;
    Ok(())
}

fn grpc_find(client: ManagerClient) -> Op {
    Box::new(move || {
        let mut client = client.clone();
        Box::pin(async move {
            let req = FindEnclaveRequest { dataaccess: DATA.into(), limit: 1, ..Default::default() };
            let resp = client.find(req).await?;
            anyhow::ensure!(!resp.found.is_empty(), "nothing found");
            Ok(())
        })
    })
}

/// The gRPC hop alone: a request the manager refuses before touching its cache or the registry.
fn grpc_refused(client: ManagerClient) -> Op {
    Box::new(move || {
        let mut client = client.clone();
        Box::pin(async move {
            let req = FindEnclaveRequest { dataaccess: DATA.into(), limit: -1, ..Default::default() };
            match client.find(req).await {
                Err(enclava_client::ClientError::Refused(e)) if e.code == enclava_core::ErrorCode::InvalidArgument => {
                    Ok(())
                }
                other => anyhow::bail!("expected INVALID_ARGUMENT, got {other:?}"),
            }
        })
    })
}

/// Starts an in-process enclave manager (the sandbox, manager role only) on a free port.
async fn start_server(reg: Arc<dyn Registry>, cache_ttl: Duration) -> anyhow::Result<enclava_sandbox::Sandbox> {
    enclava_sandbox::SandboxBuilder::new()
        .registry(reg)
        .roles(&["manager"])
        .configure(|c| {
            c.cache_ttl_ms = cache_ttl.as_millis() as u64;
            c.sweep_interval_ms = 3_600_000;
        })
        .start()
        .await
}

/// `redis-benchmark` figures for SETEX and HGETALL, when the tool is installed.
fn redis_benchmark(port: u16) -> Option<String> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-q", "-n", "100000", "-c", "50", "-P", "16"])
        .args(["SETEX", "enclava-bench-rb:__rand_int__", "3", "x"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split('\r').rev().find(|l| l.contains("requests per second")).map(|l| l.trim().to_owned())
}

/// Requests in flight, for the SETEX floor and the heartbeat fleet alike.
const IN_FLIGHT: usize = 64;

/// The share of heartbeats that land on time when `nodes` simulated nodes each send one a second
/// for `dur`: [`IN_FLIGHT`] workers send them in schedule order through the node's own heartbeat
/// code; one that completes more than the node's lateness bound (500 ms) after its slot, or is
/// never sent, is late.
async fn heartbeat_trial(reg: Arc<RedisRegistry>, nodes: usize, dur: Duration) -> f64 {
    let ids: Arc<Vec<String>> = Arc::new((0..nodes).map(|i| format!("hb{i:08}")).collect());
    let total = (nodes as f64 * dur.as_secs_f64()) as usize;
    let start = Instant::now() + Duration::from_millis(20);
    let stop_at = start + dur + enclava_node::publisher::LATE_AFTER;
    let mut set = JoinSet::new();
    for w in 0..IN_FLIGHT {
        let (reg, ids) = (reg.clone(), ids.clone());
        set.spawn(async move {
            let mut on_time = 0usize;
            for k in (w..total).step_by(IN_FLIGHT) {
                let scheduled = start + Duration::from_secs_f64(k as f64 / nodes as f64);
                let now = Instant::now();
                if now >= stop_at {
                    break;
                }
                if scheduled > now + Duration::from_millis(1) {
                    tokio::time::sleep_until(scheduled).await;
                }
                let ok = reg.heartbeat(&ids[k % nodes]).await.is_ok();
                on_time += usize::from(ok && scheduled.elapsed() <= enclava_node::publisher::LATE_AFTER);
            }
            on_time
        });
    }
    let mut on_time = 0usize;
    while let Some(r) = set.join_next().await {
        on_time += r.unwrap_or(0);
    }
    on_time as f64 / total.max(1) as f64
}

pub async fn discovery(a: DiscoveryArgs) -> anyhow::Result<ExitCode> {
    let dur = Duration::from_secs_f64(a.seconds.max(0.2));
    let _own;
    let url = match &a.redis {
        Some(u) => u.clone(),
        None => {
            let s = enclava_testkit::RedisServer::start().map_err(anyhow::Error::msg)?;
            let url = s.url();
            _own = s;
            url
        }
    };
    let port: Option<u16> = url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok());
    let client = redis::Client::open(url.as_str()).context("bad --redis URL")?;
    eprintln!("discovery benchmark against {url}, {:.1} s per row", dur.as_secs_f64());

    println!(
        "{:<34} {:>10} {:>7} {:>11} {:>9} {:>9} {:>13}",
        "what", "candidates", "clients", "ops/s", "p50 µs", "p99 µs", "ratio"
    );
    let row = |what: &str, n: usize, c: usize, s: &Stats, ratio: String| {
        let err = if s.errors > 0 { format!("  ({} errors)", s.errors) } else { String::new() };
        println!(
            "{what:<34} {n:>10} {c:>7} {:>11.0} {:>9.0} {:>9.0} {ratio:>13}{err}",
            s.ops_per_sec, s.p50_us, s.p99_us
        );
    };
    let mut goals: Vec<(String, bool)> = Vec::new();
    // Uncached throughput at 8 clients per index size, for the size-independence goal.
    let mut uncached_at_8: Vec<(usize, f64)> = Vec::new();

    for &n in &a.candidates {
        let keys = Keys::new(&format!("enclava-bench{n}"), "enclava").map_err(anyhow::Error::msg)?;
        let reg = Arc::new(RedisRegistry::standalone(&url, keys.clone())?);
        let mut dead = populate(reg.clone(), &url, n).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let uncached_server = start_server(reg.clone(), Duration::ZERO).await?;
        let cached_server = start_server(reg.clone(), Duration::from_millis(1000)).await?;
        let (uncached_url, cached_url) = (uncached_server.url().to_owned(), cached_server.url().to_owned());
        for &c in &a.clients {
            let mut ops: Vec<Op> = Vec::new();
            for _ in 0..c {
                ops.push(raw_find(client.get_multiplexed_async_connection().await?, keys.clone()));
            }
            dead.restore().await?;
            let floor = drive(ops, dur).await;
            row("raw Redis, same commands (floor)", n, c, &floor, "1.00× floor".into());
            let mut uncached = Vec::new();
            let mut cached = Vec::new();
            for _ in 0..c {
                uncached.push(grpc_find(ManagerClient::connect(&uncached_url).await?));
                cached.push(grpc_find(ManagerClient::connect(&cached_url).await?));
            }
            dead.restore().await?;
            let u = drive(uncached, dur).await;
            let ur = u.ops_per_sec / floor.ops_per_sec.max(1.0);
            row("FindEnclave gRPC, uncached", n, c, &u, format!("{ur:.2}× floor"));
            dead.restore().await?;
            let k = drive(cached, dur).await;
            let kr = k.ops_per_sec / u.ops_per_sec.max(1.0);
            row("FindEnclave gRPC, cached", n, c, &k, format!("{kr:.2}× uncached"));
            if n == a.candidates[0] {
                // What the cached path costs beyond one gRPC round trip: compare with the hop alone.
                let mut hop = Vec::new();
                for _ in 0..c {
                    hop.push(grpc_refused(ManagerClient::connect(&cached_url).await?));
                }
                let h = drive(hop, dur).await;
                let hr = k.ops_per_sec / h.ops_per_sec.max(1.0);
                row("gRPC round trip alone (refused)", n, c, &h, format!("cached {hr:.2}× it"));
            }
            goals.push((format!("uncached ≥ 0.50× floor ({n} candidates, {c} clients): {ur:.2}×"), ur >= 0.5));
            if n <= 10 {
                goals.push((format!("cached ≥ 5× uncached ({n} candidates, {c} clients): {kr:.2}×"), kr >= 5.0));
            }
            if c == 8 {
                uncached_at_8.push((n, u.ops_per_sec));
                goals.push((
                    format!("p99 < 2 ms at 8 clients ({n} candidates, uncached): {:.0} µs", u.p99_us),
                    u.p99_us < 2000.0,
                ));
            }
        }
        uncached_server.stop().await;
        cached_server.stop().await;
        let mut del = redis::cmd("DEL");
        for index in bench_info("x").index_entries().into_iter().map(|(i, _)| keys.index(&i)) {
            del.arg(index);
        }
        let _: Result<(), _> = del.query_async(&mut client.get_multiplexed_async_connection().await?).await;
    }
    let smallest = uncached_at_8.iter().min_by_key(|(n, _)| *n).copied();
    let largest = uncached_at_8.iter().max_by_key(|(n, _)| *n).copied();
    if let (Some((sn, s)), Some((ln, l))) = (smallest, largest)
        && ln > sn
    {
        let r = l / s.max(1.0);
        goals.push((
            format!("uncached throughput at {ln} candidates ≥ 0.80× that at {sn} (8 clients): {r:.2}×"),
            r >= 0.8,
        ));
    }
    if a.dead > 0 {
        dead_index_row(&url, a.dead, &mut goals).await?;
    }

    // Heartbeats: the raw SETEX rate on one multiplexed connection, then the largest fleet the
    // node's own heartbeat code sustains on one registry connection.
    let conn = client.get_multiplexed_async_connection().await?;
    let setex: Vec<Op> = (0..IN_FLIGHT)
        .map(|i| -> Op {
            let conn = conn.clone();
            Box::new(move || {
                let mut conn = conn.clone();
                Box::pin(async move {
                    let () = redis::cmd("SETEX")
                        .arg(format!("enclava-bench-setex:{i}"))
                        .arg(3)
                        .arg("x")
                        .query_async(&mut conn)
                        .await?;
                    Ok(())
                })
            })
        })
        .collect();
    let floor = drive(setex, dur).await;
    row("raw SETEX, 64 in flight (floor)", 0, 64, &floor, "1.00× floor".into());
    if let Some(rb) = port.and_then(redis_benchmark) {
        println!("redis-benchmark -c 50 -P 16: {rb}");
    }
    let hb_keys = Keys::new("enclava-bench-hb", "enclava").map_err(anyhow::Error::msg)?;
    let hb_reg = Arc::new(RedisRegistry::standalone(&url, hb_keys)?);
    // Binary search over the fleet size, as a share of the SETEX rate.
    let (mut lo, mut hi) = (0.0f64, 1.3f64);
    let mut sustained = 0usize;
    for _ in 0..6 {
        let mid = (lo + hi) / 2.0;
        let nodes = ((floor.ops_per_sec * mid) as usize).max(100);
        let on_time = heartbeat_trial(hb_reg.clone(), nodes, dur.max(Duration::from_secs(2))).await;
        eprintln!("  {nodes} nodes at 1 heartbeat/s: {:.2} % on time", on_time * 100.0);
        if on_time >= 0.99 {
            sustained = sustained.max(nodes);
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let hr = sustained as f64 / floor.ops_per_sec.max(1.0);
    println!("heartbeat capacity: {sustained} nodes at 1/s = {hr:.2}× raw SETEX rate ({:.0}/s)", floor.ops_per_sec);
    goals.push((format!("heartbeat capacity ≥ 0.80× SETEX rate: {hr:.2}×"), hr >= 0.8));

    println!("\ngoals:");
    for (g, ok) in &goals {
        println!("  [{}] {g}", if *ok { "met" } else { "MISSED" });
    }
    Ok(ExitCode::SUCCESS)
}
