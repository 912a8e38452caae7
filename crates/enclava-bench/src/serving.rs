//! `enclava bench serving`: MobileNetV2 (224×224, generated with seeded weights), in one run:
//! plain tract in-process (the floor) against the full sealed path over loopback (find, verify the
//! enclave's sim evidence, HPKE-seal, send, run, seal back, open) at 1 and 8 concurrent clients,
//! and the serverless path (sealed with a user's request key the node fetched from the key
//! broker); model decryption throughput; and encrypted model load (decrypt + parse) against
//! plaintext load. Floor and sealed rows alternate, so drift on a shared machine hits both.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use enclava_attest::Policy;
use enclava_keys::LocalKek;
use enclava_model::blob::{BlobStore, FolderStore, package_blob_name};
use enclava_model::package::{self, ModelKey};
use enclava_runtime::Model;
use enclava_runtime::generate::{mobilenet_v2, sample_input};

use crate::keys::{Row, join_clients, summarize};

/// `enclava bench serving`
#[derive(Debug, clap::Args)]
pub struct ServingArgs {
    /// Seconds per measured row
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

/// Calls `f` until `deadline` has passed (at least 3 times), threading a client's `state`
/// through the calls; returns each call's latency in ms.
async fn timed<S, Fut>(deadline: Instant, mut state: S, f: impl Fn(S) -> Fut) -> anyhow::Result<Vec<f64>>
where
    Fut: std::future::Future<Output = anyhow::Result<S>>,
{
    let mut lat = Vec::new();
    while Instant::now() < deadline || lat.len() < 3 {
        let t = Instant::now();
        state = f(state).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(lat)
}

/// Runs `clients` loops of `f` until `dur` has passed; returns every latency (ms) and the seconds taken.
async fn load<F, Fut>(clients: usize, dur: Duration, f: F) -> anyhow::Result<Row>
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let f = f.clone();
            tokio::spawn(timed(deadline, (), move |()| f()))
        })
        .collect();
    join_clients(tasks, start).await
}

/// `clients` concurrent clients, each holding an inference session (one manager connection,
/// pooled enclave connections, the verified enclave reused for the presence TTL) as a client
/// sending many requests does.
async fn load_sealed(
    clients: usize,
    dur: Duration,
    opts: &enclava_client::infer::InferOptions,
    input: &Arc<Vec<u8>>,
) -> anyhow::Result<Row> {
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (opts, input) = (opts.clone(), input.clone());
        tasks.push(tokio::spawn(async move {
            let session =
                enclava_client::infer::InferSession::connect(opts).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            timed(deadline, session, |mut session| {
                let input = input.clone();
                async move {
                    session.infer(&input).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    Ok(session)
                }
            })
            .await
        }));
    }
    join_clients(tasks, start).await
}

/// `clients` concurrent serverless clients (binary encoding, pooled connections).
async fn load_serverless(
    clients: usize,
    dur: Duration,
    opts: &enclava_client::infer::ServerlessOptions,
    input: &Arc<Vec<u8>>,
) -> anyhow::Result<Row> {
    let client = Arc::new(enclava_client::infer::ServerlessClient::new(opts.clone())?);
    let input = input.clone();
    load(clients, dur, move || {
        let (client, input) = (client.clone(), input.clone());
        async move {
            client.infer(&input).await?;
            anyhow::Ok(())
        }
    })
    .await
}

pub async fn serving(a: ServingArgs) -> anyhow::Result<ExitCode> {
    let dur = Duration::from_secs_f64(a.seconds.max(0.5));
    let tmp = tempfile::tempdir()?;
    eprintln!("generating MobileNetV2 (224×224, seeded weights)…");
    let onnx = mobilenet_v2(1);
    let input = sample_input(&[1, 3, 224, 224], 7).map_err(|e| anyhow::anyhow!("{e}"))?;
    let input_npy = input.to_npy();

    // Model load: plaintext parse + optimize, against decrypt + parse + optimize.
    let key = ModelKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let pkg = package::encrypt("bench/mobilenet", 1, &key, &onnx).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut plain_load, mut enc_load) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        Model::load(&onnx).map_err(|e| anyhow::anyhow!("{e}"))?;
        plain_load.push(t.elapsed().as_secs_f64() * 1e3);
        let copy = pkg.clone();
        let t = Instant::now();
        let plain = package::decrypt_in_place(copy, "bench/mobilenet", 1, &key).map_err(|e| anyhow::anyhow!("{e}"))?;
        Model::load(&plain).map_err(|e| anyhow::anyhow!("{e}"))?;
        enc_load.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let plain_load = summarize(plain_load, 1.0).p50_ms;
    let enc_load = summarize(enc_load, 1.0).p50_ms;
    let decrypt = enclava_model::bench::decrypt_in_place_throughput(64 << 20, package::DEFAULT_CHUNK_SIZE, 5)
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // The floor: plain tract in-process, 1 and 8 concurrent callers.
    let model = Arc::new(Model::load(&onnx).map_err(|e| anyhow::anyhow!("{e}"))?);
    let run_plain = {
        let (model, input) = (model.clone(), Arc::new(input.clone()));
        move || {
            let (model, input) = (model.clone(), input.clone());
            async move {
                tokio::task::spawn_blocking(move || model.run(&input)).await?.map_err(|e| anyhow::anyhow!("{e}"))?;
                anyhow::Ok(())
            }
        }
    };

    // The sealed path: manager + key broker + one sim node serving the encrypted model (the
    // sandbox; a benchmark drives the broker from one address: no per-source limit).
    let kek = enclava_keys::KekSource::Key(Arc::new(LocalKek::from_bytes(&[6; 32], "bench")));
    let mut sandbox = enclava_sandbox::SandboxBuilder::new()
        .dir(tmp.path())
        .kek(kek)
        .configure(|c| c.release_rate = 0)
        .start()
        .await?;
    let url = sandbox.url().to_owned();
    let broker = sandbox.broker().context("the keys role runs")?.clone();
    let policy_text = sandbox.sim_policy(&[]);
    let (owner, _) = broker.register(None).await?;
    broker.put_model_key(&owner, "bench/mobilenet", key.as_bytes(), Some(&policy_text), false).await?;
    FolderStore::new(sandbox.blobs())
        .put(&package_blob_name("bench/mobilenet", 1), &pkg)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let measurement = enclava_node::tee::sim_measurement(enclava_node::tee::sim_workload().as_bytes());
    broker.grant(&owner, "bench/mobilenet", &measurement, &owner).await?;
    let node = sandbox.node(enclava_sandbox::NodeSpec::new("node").serve(&["bench/mobilenet"])).await?;
    node.wait_hot("bench/mobilenet", Duration::from_secs(120)).await.map_err(anyhow::Error::msg)?;
    let node_addr = node.addr();
    let policy = Policy::parse(&policy_text).map_err(anyhow::Error::msg)?;
    let opts = enclava_client::infer::InferOptions::new(url.clone(), "bench/mobilenet", policy);
    let input_npy = Arc::new(input_npy);
    let mut request_key = [0u8; 32];
    request_key.copy_from_slice(ModelKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?.as_bytes());
    broker.put_request_key(&owner, "bench/mobilenet", &measurement, &request_key).await?;
    let user_key = enclava_client::infer::UserKey::new(owner.clone(), &measurement, &request_key);
    let endpoint = format!("http://{}{}", node_addr, enclava_client::infer::PATH);
    let mut serverless = enclava_client::infer::ServerlessOptions::new(endpoint, "bench/mobilenet", user_key);
    serverless.binary = true;

    let floor1 = load(1, dur, run_plain.clone()).await?;
    let sealed1 = load_sealed(1, dur, &opts, &input_npy).await?;
    let serverless1 = load_serverless(1, dur, &serverless, &input_npy).await?;
    let floor8 = load(8, dur, run_plain).await?;
    let sealed8 = load_sealed(8, dur, &opts, &input_npy).await?;
    let serverless8 = load_serverless(8, dur, &serverless, &input_npy).await?;
    sandbox.stop().await;

    println!("MobileNetV2 224×224, tract, 2 cores ({:.1} s per row)", dur.as_secs_f64());
    println!("{:<40} {:>10} {:>9} {:>9}", "case", "infer/s", "p50 ms", "p99 ms");
    for (name, r) in [
        ("floor: plain tract in-process, 1", &floor1),
        ("floor: plain tract in-process, 8", &floor8),
        ("sealed path over loopback, 1 client", &sealed1),
        ("sealed path over loopback, 8 clients", &sealed8),
        ("serverless path over loopback, 1 client", &serverless1),
        ("serverless path over loopback, 8 clients", &serverless8),
    ] {
        println!("{name:<40} {:>10.1} {:>9.2} {:>9.2}", r.ops, r.p50_ms, r.p99_ms);
    }
    println!();
    let goal = |ok: bool| if ok { "met" } else { "MISSED" };
    let p50 = sealed1.p50_ms / floor1.p50_ms;
    let thr = sealed8.ops / floor8.ops;
    let load_ratio = enc_load / plain_load;
    println!("p50 latency, 1 client: {p50:.3}x the floor (goal <= 1.10x: {})", goal(p50 <= 1.10));
    println!("throughput, 8 clients: {thr:.3}x the floor (goal >= 0.90x: {})", goal(thr >= 0.90));
    println!(
        "serverless: p50 {:.3}x, throughput at 8 clients {:.3}x the floor",
        serverless1.p50_ms / floor1.p50_ms,
        serverless8.ops / floor8.ops
    );
    println!(
        "model decryption: {:.2} GB/s on one core (goal >= 4: {})",
        decrypt.gb_per_s(),
        goal(decrypt.gb_per_s() >= 4.0)
    );
    println!(
        "model load: encrypted {enc_load:.1} ms vs plaintext {plain_load:.1} ms = {load_ratio:.3}x (goal <= 1.10x: {})",
        goal(load_ratio <= 1.10)
    );
    Ok(ExitCode::SUCCESS)
}
