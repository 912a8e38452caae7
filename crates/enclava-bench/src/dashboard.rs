//! `enclava bench dashboard`: the dashboard with 10,000 enclaves in the registry (in memory, or a
//! throwaway `redis-server` with `--redis`): how long the enclaves page's first screen takes to
//! serve (the API the page draws from, each enclave's evidence verdict included), and how long a
//! change (an enclave joining) takes to reach an open page's event stream. Floors: reading one
//! page straight from the registry (`list`), and the watcher's own period.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enclava_registry::list::{ListQuery, list};
use enclava_registry::{EnclaveInfoJson, Registry};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// `enclava bench dashboard`
#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Enclaves in the registry
    #[arg(long, default_value_t = 10_000)]
    enclaves: usize,
    /// Use a throwaway redis-server instead of the in-memory registry
    #[arg(long)]
    redis: bool,
    /// Samples per measurement
    #[arg(long, default_value_t = 20)]
    samples: usize,
}

fn info(i: usize) -> EnclaveInfoJson {
    let raw = serde_json::json!({
        "instanceId": format!("bench-{i:06}"), "platform": if i.is_multiple_of(3) { "tdx" } else { "sim" },
        "policy": { "mrenclave": format!("{:096x}", i) }, "connectionString": format!("10.0.{}.{}:7100", i / 250, i % 250),
        "dataAccess": { format!("bench/m{}", i % 7): { "hot": i.is_multiple_of(2) } },
    });
    EnclaveInfoJson::parse(&raw.to_string()).unwrap_or_else(|e| panic!("bench info: {e}"))
}

async fn register(reg: &dyn Registry, i: usize) -> anyhow::Result<()> {
    let info = info(i);
    reg.publish(&info.instance_id, &info.to_json(), &info.index_entries()).await?;
    reg.heartbeat(&info.instance_id).await?;
    Ok(())
}

/// Signs in to the dashboard; the session cookie (`enclava_ui=…`).
async fn sign_in(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({ "token": token }).to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "POST /ui/api/session HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow::anyhow!("signing in to the dashboard did not finish in 10 s"))??;
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .and_then(|c| c.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("signing in to the dashboard gave no cookie"))
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub async fn dashboard(a: DashboardArgs) -> anyhow::Result<ExitCode> {
    let keys = enclava_registry::Keys::new("enclava", "enclava").map_err(anyhow::Error::msg)?;
    let mut _redis = None;
    let registry: Arc<dyn Registry> = if a.redis {
        let server = enclava_testkit::RedisServer::start().map_err(anyhow::Error::msg)?;
        let reg = Arc::new(enclava_registry::redis::RedisRegistry::standalone(&server.url(), keys)?);
        _redis = Some(server);
        reg
    } else {
        Arc::new(enclava_registry::memory::MemoryRegistry::new(keys))
    };
    eprintln!("registering {} enclaves…", a.enclaves);
    for i in 0..a.enclaves {
        register(&*registry, i).await?;
    }
    // Presence lives 3 s: keep every bench enclave alive while measuring, in 16 concurrent
    // loops (one loop over 10,000 Redis round trips would outlast the TTL, and enclaves flapping
    // would be changes of their own).
    let alive: Vec<_> = (0..16)
        .map(|part| {
            let reg = registry.clone();
            // And the ones that join while measuring: one expiring would be a change of its own.
            let n = a.enclaves + 10;
            tokio::spawn(async move {
                loop {
                    for i in (part..n).step_by(16) {
                        let _ = reg.heartbeat(&format!("bench-{i:06}")).await;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        })
        .collect();
    let tmp = tempfile::tempdir()?;
    let sandbox = enclava_sandbox::SandboxBuilder::new().dir(tmp.path()).registry(registry.clone()).start().await?;
    let addr = sandbox.addr();
    let http = enclava_client::infer::http_client(Duration::from_secs(3));
    let (page_url, api_url) = (format!("http://{addr}/ui"), format!("http://{addr}/ui/api/enclaves"));

    eprintln!("measuring the first screen…");
    // The floor: one page straight from the registry.
    let mut floor = Vec::new();
    for _ in 0..a.samples {
        let t = Instant::now();
        list(&*registry, &ListQuery { page_size: crate::DASHBOARD_PAGE, ..Default::default() }).await?;
        floor.push(t.elapsed().as_secs_f64() * 1e3);
    }
    // The first screen: the page itself, then the enclaves API it draws from.
    let mut screen = Vec::new();
    for _ in 0..a.samples {
        let t = Instant::now();
        let (s1, _) = enclava_client::infer::get_with(&http, &page_url, Duration::from_secs(10)).await?;
        let (s2, body) = enclava_client::infer::get_with(&http, &api_url, Duration::from_secs(10)).await?;
        anyhow::ensure!(s1 == 200 && s2 == 200 && body.len() > 1000, "the dashboard answered {s1}/{s2}");
        screen.push(t.elapsed().as_secs_f64() * 1e3);
    }

    eprintln!("measuring changes reaching an open page…");
    // A change reaching an open page: an enclave joins while a signed-in page's event stream is open.
    let (_, token) = sandbox.broker().ok_or_else(|| anyhow::anyhow!("no keys role"))?.register(None).await?;
    let cookie = sign_in(addr, &token).await?;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET /ui/api/events HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n").as_bytes()).await?;
    let mut events = BufReader::new(s).lines();
    // The watcher's first look tells the page to draw once: read past it.
    let settle = Instant::now() + Duration::from_millis(1500);
    while let Ok(line) = tokio::time::timeout_at(settle.into(), events.next_line()).await {
        line?.ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
    }
    // With nothing changing, nothing should be pushed (else "reach" would measure noise).
    let mut idle = 0;
    let quiet = Instant::now() + Duration::from_secs(3);
    while let Ok(line) = tokio::time::timeout_at(quiet.into(), events.next_line()).await {
        if line?.is_some_and(|l| l.starts_with("event: changed")) {
            idle += 1;
        }
    }
    let mut reach = Vec::new();
    for k in 0..a.samples.min(10) {
        // Whatever the stream still holds is not this change's.
        while let Ok(line) = tokio::time::timeout(Duration::from_millis(350), events.next_line()).await {
            line?.ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
        }
        // At a random point of the watcher's cycle (the drain above ends in step with it).
        let jitter = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos() % 700;
        tokio::time::sleep(Duration::from_millis(u64::from(jitter))).await;
        let t = Instant::now();
        register(&*registry, a.enclaves + k).await?;
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), events.next_line())
                .await
                .map_err(|_| anyhow::anyhow!("no change event within 10 s"))??
                .ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
            if line.starts_with("event: changed") {
                break;
            }
        }
        reach.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(events);
    for task in alive {
        task.abort();
    }
    sandbox.stop().await;

    let (floor, screen, reach) = (p50(floor), p50(screen), p50(reach));
    println!(
        "dashboard, {} enclaves in the {} registry, {} samples each (p50):",
        a.enclaves,
        if a.redis { "Redis" } else { "in-memory" },
        a.samples
    );
    println!("  floor: one page of {} read from the registry: {floor:.1} ms", crate::DASHBOARD_PAGE);
    println!(
        "  enclaves page, first screen (page + API, verdicts included): {screen:.1} ms = {:.2}x the floor (goal <= 300 ms: {})",
        screen / floor.max(0.001),
        if screen <= 300.0 { "met" } else { "MISSED" }
    );
    println!(
        "  a change reaching an open page's event stream: {reach:.0} ms (goal <= 1000 ms: {}); {idle} events in 3 s with nothing changing",
        if reach <= 1000.0 && idle == 0 { "met" } else { "MISSED" }
    );
    Ok(ExitCode::SUCCESS)
}
