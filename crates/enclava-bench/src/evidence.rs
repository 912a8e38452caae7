//! `enclava bench evidence`: verifications per second and p50 per platform, cold (collateral parsed
//! and every chain checked on each call) and warm (per-platform checks cached within their
//! collateral windows), next to the floor measured in the same run: the signature verifications
//! the format needs per piece of evidence, done alone. Real samples are built into the binary.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use enclava_attest::sim::{SimHardware, SimReport, SimRoot};
use enclava_attest::time::parse_rfc3339;
use enclava_attest::warm::Verifier;
use enclava_attest::{Collateral, Evidence, dcap, floor, roots, verify};

macro_rules! sample {
    ($path:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../enclava-attest/testdata/", $path))
    };
}

/// `enclava bench evidence`
#[derive(Debug, clap::Args)]
pub struct EvidenceArgs {
    /// Seconds per measured row
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
}

struct Row {
    ops: f64,
    p50_us: f64,
}

/// Runs `f` back to back for `dur`; every call must succeed.
fn measure(dur: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<Row> {
    let end = Instant::now() + dur;
    let mut lat = Vec::new();
    let start = Instant::now();
    while Instant::now() < end || lat.len() < 5 {
        let t = Instant::now();
        anyhow::ensure!(f(), "a measured verification failed");
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok(Row { ops: lat.len() as f64 / secs, p50_us: lat[lat.len() / 2] })
}

struct Case {
    name: &'static str,
    evidence: Evidence,
    collateral: Collateral,
    now: u64,
    /// Signatures the cold path checks, as (what, primitive, count).
    cold: Vec<(&'static str, usize, usize)>,
    /// Signatures each piece of evidence needs on the warm path.
    warm: Vec<(&'static str, usize, usize)>,
    warm_goal_us: f64,
}

const P256: usize = 0;
const P384: usize = 1;
const ED25519: usize = 2;
const RSA4096: usize = 3;

fn cases() -> anyhow::Result<Vec<Case>> {
    let at = |s: &str| parse_rfc3339(s).map_err(anyhow::Error::msg);
    let dcap_coll = |json: &[u8]| -> anyhow::Result<Collateral> {
        Ok(Collateral {
            dcap: Some(dcap::collateral_from_json(json).map_err(anyhow::Error::msg)?),
            ..Default::default()
        })
    };
    // DCAP cold: root CRL, PCK CRL, PCK CA and PCK leaf certificates, TCB info and its signing
    // certificate, QE identity and its signing certificate, QE report, quote = 10 P-256.
    let dcap_cold = vec![("P-256 (chain, CRLs, TCB info, QE identity, QE report, quote)", P256, 10)];
    let dcap_warm = vec![("P-256 (QE report and quote, as the issue sets the floor)", P256, 2)];
    let milan_chain = roots::pem_certs(std::str::from_utf8(sample!("sev-snp/amd/milan_cert_chain.pem"))?)
        .map_err(anyhow::Error::msg)?;
    let milan_crl = der::pem::decode_vec(sample!("sev-snp/amd/milan_crl.pem")).map_err(|e| anyhow::anyhow!("{e}"))?.1;
    let root = SimRoot::generate().map_err(anyhow::Error::msg)?;
    let hw = SimHardware::generate(&root).map_err(anyhow::Error::msg)?;
    let report =
        SimReport { measurement: [1; 48], signer: [0; 32], product_id: 0, svn: 0, debug: false, report_data: [2; 64] };
    Ok(vec![
        Case {
            name: "sgx",
            evidence: Evidence::Dcap(sample!("sgx-dcap-v3/quote.dat").to_vec()),
            collateral: dcap_coll(sample!("sgx-dcap-v3/collateral.json"))?,
            now: at("2025-07-01T00:00:00Z")?,
            cold: dcap_cold.clone(),
            warm: dcap_warm.clone(),
            warm_goal_us: 200.0,
        },
        Case {
            name: "tdx",
            evidence: Evidence::Dcap(sample!("tdx-v4/quote.dat").to_vec()),
            collateral: dcap_coll(sample!("tdx-v4/collateral.json"))?,
            now: at("2025-07-01T00:00:00Z")?,
            cold: dcap_cold,
            warm: dcap_warm,
            warm_goal_us: 200.0,
        },
        Case {
            name: "sev-snp",
            evidence: Evidence::SevSnp {
                report: sample!("sev-snp/milan-virtee/report.bin").to_vec(),
                vek: sample!("sev-snp/milan-virtee/vcek.der").to_vec(),
                chain: Vec::new(),
            },
            collateral: Collateral { amd_certs: milan_chain, amd_crls: vec![milan_crl], ..Default::default() },
            now: at("2025-07-01T00:00:00Z")?,
            cold: vec![("RSA-4096 PSS (ARK, ASK, VCEK, CRL)", RSA4096, 4), ("P-384 (report)", P384, 1)],
            warm: vec![("P-384 (report)", P384, 1)],
            warm_goal_us: 300.0,
        },
        Case {
            name: "nitro",
            evidence: Evidence::Nitro(sample!("aws-nitro/attestation_prod.cose").to_vec()),
            collateral: Collateral::default(),
            now: at("2025-01-06T16:07:05Z")?,
            cold: vec![("P-384 (4 certificates, document)", P384, 5)],
            warm: vec![("P-384 (document)", P384, 1)],
            warm_goal_us: f64::INFINITY,
        },
        Case {
            name: "sim",
            evidence: Evidence::Sim(hw.evidence(&report, 1000)),
            collateral: Collateral { sim_root: Some(root.public()), ..Default::default() },
            now: 1000,
            cold: vec![("Ed25519 (hardware key, evidence)", ED25519, 2)],
            warm: vec![("Ed25519 (evidence)", ED25519, 1)],
            warm_goal_us: 100.0,
        },
    ])
}

pub fn evidence(a: EvidenceArgs) -> anyhow::Result<ExitCode> {
    let dur = Duration::from_secs_f64(a.seconds.max(0.1));
    let prims = [floor::p256(), floor::p384(), floor::ed25519(), floor::rsa_pss_4096(), floor::p384_ring()]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let names = ["P-256", "P-384", "Ed25519", "RSA-4096 PSS", "P-384 (ring)"];
    let mut prim_us = Vec::new();
    eprintln!("evidence benchmark, {:.1} s per row, one core", dur.as_secs_f64());
    for (i, p) in prims.iter().enumerate() {
        let r = measure(dur, p)?;
        println!("floor primitive {:<13} p50 {:>8.1} µs", names[i], r.p50_us);
        prim_us.push(r.p50_us);
    }
    println!(
        "P-384 on AWS-LC (what SNP and Nitro use) is {:.2}× faster than on ring",
        prim_us[4] / prim_us[1].max(0.001)
    );
    println!();
    println!(
        "{:<8} {:<5} {:>10} {:>10} {:>12} {:>8}  floor",
        "platform", "mode", "verif/s", "p50 µs", "floor µs", "ratio"
    );
    let mut goals: Vec<(String, bool)> = Vec::new();
    for c in cases()? {
        let floor_of =
            |sigs: &[(&str, usize, usize)]| sigs.iter().map(|(_, p, n)| prim_us[*p] * *n as f64).sum::<f64>();
        let what = |sigs: &[(&str, usize, usize)]| {
            sigs.iter().map(|(w, _, n)| format!("{n}× {w}")).collect::<Vec<_>>().join(" + ")
        };
        let cold = measure(dur, || verify(&c.evidence, &c.collateral, c.now).is_ok())?;
        let verifier = Verifier::new();
        let warm = measure(dur, || verifier.verify(&c.evidence, &c.collateral, c.now).is_ok())?;
        let (cf, wf) = (floor_of(&c.cold), floor_of(&c.warm));
        let (cr, wr) = (cold.p50_us / cf, warm.p50_us / wf);
        println!(
            "{:<8} {:<5} {:>10.0} {:>10.1} {:>12.1} {:>7.2}×  {}",
            c.name,
            "cold",
            cold.ops,
            cold.p50_us,
            cf,
            cr,
            what(&c.cold)
        );
        println!(
            "{:<8} {:<5} {:>10.0} {:>10.1} {:>12.1} {:>7.2}×  {}",
            c.name,
            "warm",
            warm.ops,
            warm.p50_us,
            wf,
            wr,
            what(&c.warm)
        );
        goals.push((format!("{} cold within 1.5× of its signatures: {cr:.2}×", c.name), cr <= 1.5));
        if c.warm_goal_us.is_finite() {
            goals.push((
                format!("{} warm p50 ≤ {:.0} µs: {:.1} µs", c.name, c.warm_goal_us, warm.p50_us),
                warm.p50_us <= c.warm_goal_us,
            ));
        }
        if matches!(c.name, "sgx" | "tdx") {
            goals.push((format!("{} warm within 1.5× of two P-256 verifies: {wr:.2}×", c.name), wr <= 1.5));
        }
    }
    println!("\ngoals:");
    for (g, ok) in &goals {
        println!("  [{}] {g}", if *ok { "met" } else { "MISSED" });
    }
    Ok(ExitCode::SUCCESS)
}
