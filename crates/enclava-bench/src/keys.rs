//! `enclava bench keys`: end-to-end attested key releases per second and p50/p99 over gRPC on
//! loopback with `sim` evidence (challenge, evidence, release, open), 1 and 16 concurrent nodes,
//! next to the floor measured in the same run: evidence verification plus one HPKE seal, alone in
//! a loop. Also the broker's release path for a real SGX quote with collateral cached (the warm
//! verifier), in-process, which is what an SGX fleet's releases cost the broker.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use enclava_attest::sim::{SimHardware, SimReport, SimRoot};
use enclava_attest::time::parse_rfc3339;
use enclava_attest::warm::Verifier;
use enclava_attest::{Collateral, Evidence, binding, dcap};
use enclava_keys::LocalKek;

/// `enclava bench keys`
#[derive(Debug, clap::Args)]
pub struct KeysBenchArgs {
    /// Seconds per measured row
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Broker database [default: a SQLite file in a temporary folder]
    #[arg(long)]
    database: Option<String>,
}

/// Throughput and latency of one measured row (shared with `bench serving`).
pub(crate) struct Row {
    pub ops: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Operations per second and p50/p99 (ms) from latencies in ms over `secs`.
pub(crate) fn summarize(mut lat: Vec<f64>, secs: f64) -> Row {
    lat.sort_by(f64::total_cmp);
    let at =
        |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0.0);
    Row { ops: lat.len() as f64 / secs, p50_ms: at(0.5), p99_ms: at(0.99) }
}

/// Waits for every client task and summarizes all their latencies (ms) since `start`.
pub(crate) async fn join_clients(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<f64>>>>,
    start: Instant,
) -> anyhow::Result<Row> {
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok(summarize(lat, start.elapsed().as_secs_f64()))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

const MEASUREMENT: [u8; 48] = [0x42; 48];

/// The benchmark enclave's report, binding `report_data`.
fn report(report_data: [u8; 64]) -> SimReport {
    SimReport { measurement: MEASUREMENT, signer: [0; 32], product_id: 0, svn: 0, debug: false, report_data }
}

pub async fn keys(a: KeysBenchArgs) -> anyhow::Result<ExitCode> {
    let dur = Duration::from_secs_f64(a.seconds.max(0.2));
    let tmp = tempfile::tempdir()?;
    let root = SimRoot::generate().map_err(anyhow::Error::msg)?;
    let hw = Arc::new(SimHardware::generate(&root).map_err(anyhow::Error::msg)?);
    let policy = format!("[sim]\nroot = \"{}\"\nany_measurement = true\n", root.public().to_hex());
    let sim_evidence = |hw: &SimHardware, rd: [u8; 64]| hw.evidence(&report(rd), now());

    // Floor: verification plus one seal, alone, on one core.
    let verifier = Verifier::new();
    let collateral = Collateral { sim_root: Some(root.public()), ..Default::default() };
    let node_key = enclava_seal::KeyPair::generate();
    let ev =
        Evidence::Sim(sim_evidence(&hw, binding::report_data(binding::KEY_RELEASE, node_key.public(), Some(&[7; 32]))));
    let payload = [0u8; 90];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        let claims = verifier.verify(&ev, &collateral, now()).map_err(|e| anyhow::anyhow!("floor verify: {e}"))?;
        anyhow::ensure!(binding::check(&claims.report_data, binding::KEY_RELEASE, node_key.public(), Some(&[7; 32])));
        enclava_seal::seal(node_key.public(), b"floor", b"aad", &payload)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let floor = summarize(lat, start.elapsed().as_secs_f64());

    // The broker, served over gRPC on loopback.
    let database = a.database.clone().unwrap_or_else(|| format!("sqlite://{}/keys.db", tmp.path().display()));
    let kek = enclava_keys::KekSource::Key(Arc::new(LocalKek::from_bytes(&[5; 32], "bench")));
    // A benchmark drives the broker from one address as fast as it can: no per-source limit.
    let sandbox = enclava_sandbox::SandboxBuilder::new()
        .roles(&["keys"])
        .dir(tmp.path())
        .kek(kek)
        .configure(|c| {
            c.database = Some(database);
            c.release_rate = 0;
        })
        .start()
        .await?;
    let broker = sandbox.broker().context("the keys role runs")?.clone();
    let (owner, _) = broker.register(None).await?;
    broker.put_model_key(&owner, "bench/model", &[9; 32], Some(&policy), false).await?;
    broker.grant(&owner, "bench/model", &hex::encode(MEASUREMENT), &owner).await?;
    let url = sandbox.url().to_owned();

    println!("attested key release, sim evidence, gRPC on loopback ({:.1} s per row)", dur.as_secs_f64());
    println!("{:<34} {:>12} {:>9} {:>9} {:>10}", "case", "releases/s", "p50 ms", "p99 ms", "vs floor");
    let print = |name: &str, r: &Row, vs: Option<f64>| {
        let vs = vs.map(|v| format!("{v:.2}x")).unwrap_or_default();
        println!("{name:<34} {:>12.0} {:>9.3} {:>9.3} {vs:>10}", r.ops, r.p50_ms, r.p99_ms);
    };
    print("floor: verify + seal (1 core)", &floor, None);
    // The same release in-process (no gRPC, no client work), one at a time: what the broker costs.
    {
        let node_key = enclava_seal::KeyPair::generate();
        let mut lat = Vec::new();
        let start = Instant::now();
        while start.elapsed() < dur {
            let t = Instant::now();
            let (nonce, _) = broker.challenge()?;
            let rd = binding::report_data(binding::KEY_RELEASE, node_key.public(), Some(&nonce));
            let req = enclava_keys::ReleaseRequest {
                nonce: nonce.to_vec(),
                evidence: sim_evidence(&hw, rd),
                public_key: node_key.public().to_vec(),
                model: "bench/model".into(),
                version: 0,
                users: vec![],
            };
            broker.release(req).await?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let row = summarize(lat, start.elapsed().as_secs_f64());
        print("in-process release, 1 at a time", &row, Some(row.ops / floor.ops));
    }
    let mut rows = Vec::new();
    for nodes in [1usize, 16] {
        let deadline = Instant::now() + dur;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..nodes {
            let (url, hw) = (url.clone(), hw.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = enclava_node::keys::KeyClient::connect(&url).await?;
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let hw = hw.clone();
                    client.fetch("bench/model", 0, &[], move |rd| Some(hw.evidence(&report(*rd), now()))).await?;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                anyhow::Ok(lat)
            }));
        }
        let row = join_clients(tasks, start).await?;
        print(&format!("end to end, {nodes} node(s)"), &row, Some(row.ops / floor.ops));
        rows.push(row);
    }

    // A real SGX quote, collateral cached: the broker's path after the nonce check.
    let quote =
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../enclava-attest/testdata/sgx-dcap-v3/quote.dat"));
    let coll_json =
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../enclava-attest/testdata/sgx-dcap-v3/collateral.json"));
    let at = parse_rfc3339("2025-07-01T00:00:00Z").map_err(anyhow::Error::msg)?;
    let sgx_coll = Collateral {
        dcap: Some(dcap::collateral_from_json(coll_json).map_err(anyhow::Error::msg)?),
        ..Default::default()
    };
    let sgx_policy = "[sgx]\nany_measurement = true\ntcb_statuses = [\"UpToDate\", \"ConfigurationAndSWHardeningNeeded\"]\n\
                      allowed_advisories = [\"INTEL-SA-00289\", \"INTEL-SA-00615\"]\n";
    let sgx_ev = Evidence::Dcap(quote.to_vec());
    let claims = verifier.verify(&sgx_ev, &sgx_coll, at).map_err(|e| anyhow::anyhow!("sgx sample: {e}"))?;
    broker.put_model_key(&owner, "bench/sgx", &[8; 32], Some(sgx_policy), false).await?;
    broker.grant(&owner, "bench/sgx", &claims.measurement_hex(), &owner).await?;
    let shared = Arc::new((verifier, sgx_ev, sgx_coll));
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (broker, shared) = (broker.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let key = enclava_seal::KeyPair::generate();
            while Instant::now() < deadline {
                let t = Instant::now();
                let (verifier, ev, coll) = &*shared;
                let claims = verifier.verify(ev, coll, at).map_err(|e| anyhow::anyhow!("{e}"))?;
                broker.release_claims("bench/sgx", 0, &claims, &[], key.public(), &[1; 32], at).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(lat)
        }));
    }
    let sgx = join_clients(tasks, start).await?;
    print("SGX quote, warm, in-process, 16", &sgx, None);
    sandbox.stop().await;

    println!();
    let goal = |ok: bool| if ok { "met" } else { "MISSED" };
    let r16 = &rows[1];
    println!(
        "goals: throughput >= 0.70x floor: {} (1 node {:.2}x, 16 nodes {:.2}x)",
        goal(r16.ops / floor.ops >= 0.7),
        rows[0].ops / floor.ops,
        r16.ops / floor.ops
    );
    println!("       p99 <= 2 ms at 16 nodes: {} ({:.3} ms)", goal(r16.p99_ms <= 2.0), r16.p99_ms);
    println!("       SGX >= 2000 releases/s: {} ({:.0}/s)", goal(sgx.ops >= 2000.0), sgx.ops);
    Ok(ExitCode::SUCCESS)
}
