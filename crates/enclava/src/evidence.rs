//! `enclava evidence verify` and `enclava sim init`: verify evidence from files, print its
//! normalised claims and the policy's verdict with every failed rule; exit 0 accept, 1 deny,
//! 2 unusable input.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use enclava_attest::policy::{Policy, check};
use enclava_attest::sim::{SimRoot, load_root_public};
use enclava_attest::{Claims, Collateral, Evidence, Verdict, dcap, roots, time, verify};

/// `enclava evidence verify`
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The evidence: a DCAP quote, an SNP or Azure HCL report (with --certs), Azure vTPM evidence
    /// (JSON, with --certs for the AMD chain), a Nitro document, or sim evidence
    evidence: PathBuf,
    /// Intel collateral for a DCAP quote: a collateral.json, or a folder of PCS responses
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// For SNP: the VCEK or VLEK first, then the ASK/ASVK (and ARK), comma-separated, DER or PEM
    #[arg(long, value_delimiter = ',')]
    certs: Vec<PathBuf>,
    /// For SNP: AMD CRLs (DER or PEM); repeat for more
    #[arg(long)]
    crl: Vec<PathBuf>,
    /// The verification time (RFC 3339) [default: now]
    #[arg(long)]
    at: Option<String>,
    /// Policy to judge the claims by (TOML or JSON; the seed's EnclavePolicy and BlindAI manifests too)
    #[arg(long, env = "ENCLAVA_POLICY")]
    policy: Option<PathBuf>,
    /// For sim evidence: the deployment's sim root (a folder or sim-root.pub) [default: the policy's]
    #[arg(long, env = "ENCLAVA_SIM_ROOT")]
    sim_root: Option<PathBuf>,
    /// Print claims and verdict as JSON
    #[arg(long)]
    json: bool,
}

/// `enclava sim init`
#[derive(Debug, clap::Args)]
pub struct SimInitArgs {
    /// Folder for sim-root.key (secret, mode 0600) and sim-root.pub
    #[arg(long)]
    out: PathBuf,
}

/// Exit 2 with a message: the input could not be used.
fn unusable(msg: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("error: {msg}");
    Ok(ExitCode::from(2))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// DER of every certificate (or CRL) in a file that holds DER or PEM.
fn der_items(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let bytes = read(path)?;
    if !bytes.starts_with(b"-----BEGIN") {
        return Ok(vec![bytes]);
    }
    let text = String::from_utf8(bytes).map_err(|_| format!("{} is not PEM text", path.display()))?;
    if text.contains("BEGIN X509 CRL") {
        let (_, der) = der::pem::decode_vec(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(vec![der]);
    }
    roots::pem_certs(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn print_claims(c: &Claims) {
    println!(
        "platform:          {}{}",
        c.platform,
        if c.platform.is_confidential() { "" } else { " (simulated: NOT confidential)" }
    );
    println!("measurement:       {}", c.measurement_hex());
    if !c.signer.is_empty() {
        println!("signer:            {}", hex::encode(&c.signer));
    }
    if let Some(p) = c.product_id {
        println!("product id:        {p}");
    }
    if let Some(v) = c.security_version {
        println!("security version:  {v}");
    }
    if let Some(s) = &c.tcb_status {
        println!("TCB status:        {s}");
    }
    if !c.advisories.is_empty() {
        println!("advisories:        {}", c.advisories.join(", "));
    }
    println!("debug:             {}", c.debug);
    println!("report data:       {}", hex::encode(&c.report_data));
    if let Some(t) = c.issued_at {
        println!("issued at:         {}", time::format_rfc3339(t));
    }
    for (k, v) in &c.raw {
        let v = if v.len() > 100 { format!("{}…", &v[..100]) } else { v.clone() };
        println!("  {k}: {v}");
    }
}

pub fn verify_cmd(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let now = match &a.at {
        Some(t) => match time::parse_rfc3339(t) {
            Ok(t) => t,
            Err(e) => return unusable(format!("--at: {e}")),
        },
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    };
    let policy = match a.policy.as_deref().map(Policy::load).transpose() {
        Ok(p) => p,
        Err(e) => return unusable(e),
    };
    let bytes = match read(&a.evidence) {
        Ok(b) => b,
        Err(e) => return unusable(e),
    };
    let mut collateral = Collateral::default();
    let mut certs = Vec::new();
    for p in &a.certs {
        match der_items(p) {
            Ok(c) => certs.extend(c),
            Err(e) => return unusable(e),
        }
    }
    let evidence = if certs.is_empty() || enclava_attest::azure::looks_like(&bytes) {
        // Azure vTPM evidence carries its VCEK: --certs is the AMD chain only.
        collateral.amd_certs = certs;
        match Evidence::detect(bytes) {
            Ok(e) => e,
            Err(e) => return unusable(e),
        }
    } else {
        let vek = certs.remove(0);
        collateral.amd_certs = certs;
        Evidence::SevSnp { report: bytes, vek }
    };
    for p in &a.crl {
        match der_items(p) {
            Ok(c) => collateral.amd_crls.extend(c),
            Err(e) => return unusable(e),
        }
    }
    if let Some(p) = &a.collateral {
        let c = if p.is_dir() {
            dcap::collateral_from_pcs_dir(p)
        } else {
            read(p).and_then(|b| dcap::collateral_from_json(&b))
        };
        match c {
            Ok(c) => collateral.dcap = Some(c),
            Err(e) => return unusable(e),
        }
    }
    collateral.sim_root = match (&a.sim_root, &policy) {
        (Some(p), _) => match load_root_public(p) {
            Ok(r) => Some(r),
            Err(e) => return unusable(e),
        },
        (None, Some(policy)) => policy.sim_root().ok().flatten(),
        (None, None) => None,
    };

    let claims = match verify(&evidence, &collateral, now) {
        Ok(c) => c,
        Err(e) if e.is_unusable_input() => return unusable(e),
        Err(e) => {
            if a.json {
                println!("{}", serde_json::json!({ "verified": false, "error": e.to_string() }));
            } else {
                println!("DENIED: the evidence does not verify at {}", time::format_rfc3339(now));
                println!("  - {e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let verdict: Option<Verdict> = policy.as_ref().map(|p| check(p, &claims, now, None));
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "verified": true, "claims": claims, "verdict": verdict })
            )?
        );
    } else {
        println!("evidence verified at {}", time::format_rfc3339(now));
        print_claims(&claims);
        match &verdict {
            None => println!("no policy given: pass --policy FILE to judge these claims"),
            Some(v) if v.accepted => println!("ACCEPTED by the policy"),
            Some(v) => {
                println!("DENIED by the policy:");
                for f in &v.failures {
                    println!("  - {f}");
                }
            }
        }
    }
    Ok(if verdict.is_some_and(|v| !v.accepted) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

pub fn sim_init(a: SimInitArgs) -> anyhow::Result<ExitCode> {
    if a.out.join(SimRoot::KEY_FILE).exists() {
        return unusable(format!("{} already holds a sim root; refusing to replace it", a.out.display()));
    }
    let root = SimRoot::generate().map_err(anyhow::Error::msg)?;
    root.save(&a.out).map_err(|e| anyhow::anyhow!("cannot write the sim root into {}: {e}", a.out.display()))?;
    println!("sim root written to {} (keep sim-root.key secret)", a.out.display());
    println!("public key: {}", root.public().to_hex());
    println!(
        "a policy accepts this deployment's sim evidence with:\n  [sim]\n  root = \"{}\"\n  any_measurement = true",
        root.public().to_hex()
    );
    Ok(ExitCode::SUCCESS)
}
