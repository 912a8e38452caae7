//! `enclava evidence verify`, `enclava evidence dry-run` and `enclava sim init`: verify evidence
//! from files, print its normalised claims and the policy's verdict with every failed rule (exit 0
//! accept, 1 deny, 2 unusable input), or judge a whole folder under a new policy.

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
    #[command(flatten)]
    shared: Shared,
    /// Policy to judge the claims by (TOML or JSON; the seed's EnclavePolicy and BlindAI manifests too)
    #[arg(long, env = "ENCLAVA_POLICY")]
    policy: Option<PathBuf>,
    /// Print claims and verdict as JSON
    #[arg(long)]
    json: bool,
}

/// Collateral and time options shared by `verify` and `dry-run`.
#[derive(Debug, clap::Args)]
pub struct Shared {
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
    /// For sim evidence: the deployment's sim root (a folder or sim-root.pub) [default: the policy's]
    #[arg(long, env = "ENCLAVA_SIM_ROOT")]
    sim_root: Option<PathBuf>,
}

/// `enclava evidence dry-run`
#[derive(Debug, clap::Args)]
pub struct DryRunArgs {
    /// A folder of evidence files, or of claims JSON printed by `enclava evidence verify --json`
    dir: PathBuf,
    /// The policy to try
    #[arg(long)]
    policy: PathBuf,
    #[command(flatten)]
    shared: Shared,
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
        let v =
            if v.chars().count() > 100 { format!("{}…", v.chars().take(100).collect::<String>()) } else { v.clone() };
        println!("  {k}: {v}");
    }
}

/// Reads evidence and the collateral the options name.
fn load(path: &Path, a: &Shared, policy: Option<&Policy>) -> Result<(Evidence, Collateral), String> {
    let bytes = read(path)?;
    let mut collateral = Collateral::default();
    let mut certs = Vec::new();
    for p in &a.certs {
        certs.extend(der_items(p)?);
    }
    let evidence = if certs.is_empty() || enclava_attest::azure::looks_like(&bytes) {
        // Azure vTPM evidence carries its VCEK: --certs is the AMD chain only.
        collateral.amd_certs = certs;
        Evidence::detect(bytes).map_err(|e| e.to_string())?
    } else {
        let vek = certs.remove(0);
        collateral.amd_certs = certs;
        Evidence::SevSnp { report: bytes, vek, chain: Vec::new() }
    };
    for p in &a.crl {
        collateral.amd_crls.extend(der_items(p)?);
    }
    if let Some(p) = &a.collateral {
        collateral.dcap =
            Some(if p.is_dir() { dcap::collateral_from_pcs_dir(p)? } else { dcap::collateral_from_json(&read(p)?)? });
    }
    collateral.sim_root = match (&a.sim_root, policy) {
        (Some(p), _) => Some(load_root_public(p)?),
        (None, Some(policy)) => policy.sim_root().ok().flatten(),
        (None, None) => None,
    };
    Ok((evidence, collateral))
}

fn now_or(at: &Option<String>) -> Result<u64, String> {
    match at {
        Some(t) => time::parse_rfc3339(t).map_err(|e| format!("--at: {e}")),
        None => {
            Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
        }
    }
}

pub fn verify_cmd(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let now = match now_or(&a.shared.at) {
        Ok(t) => t,
        Err(e) => return unusable(e),
    };
    let policy = match a.policy.as_deref().map(Policy::load).transpose() {
        Ok(p) => p,
        Err(e) => return unusable(e),
    };
    let (evidence, collateral) = match load(&a.evidence, &a.shared, policy.as_ref()) {
        Ok(x) => x,
        Err(e) => return unusable(e),
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

/// What a policy makes of one file.
fn judge(path: &Path, policy: &Policy, a: &Shared, now: u64) -> Result<Verdict, String> {
    let bytes = read(path)?;
    if bytes.first() == Some(&b'{') && !enclava_attest::azure::looks_like(&bytes) {
        #[derive(serde::Deserialize)]
        struct Recorded {
            claims: Claims,
        }
        let r: Recorded =
            serde_json::from_slice(&bytes).map_err(|e| format!("not `evidence verify --json` output: {e}"))?;
        return Ok(check(policy, &r.claims, now, None));
    }
    let (evidence, collateral) = load(path, a, Some(policy))?;
    match verify(&evidence, &collateral, now) {
        Ok(claims) => Ok(check(policy, &claims, now, None)),
        Err(e) if e.is_unusable_input() => Err(e.to_string()),
        Err(e) => Ok(Verdict { accepted: false, failures: vec![e.to_string()] }),
    }
}

pub fn dry_run(a: DryRunArgs) -> anyhow::Result<ExitCode> {
    let policy = match Policy::load(&a.policy) {
        Ok(p) => p,
        Err(e) => return unusable(e),
    };
    let now = match now_or(&a.shared.at) {
        Ok(t) => t,
        Err(e) => return unusable(e),
    };
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&a.dir) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect(),
        Err(e) => return unusable(format!("cannot read {}: {e}", a.dir.display())),
    };
    files.sort();
    let (mut accepted, mut denied, mut skipped) = (0, 0, 0);
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match judge(f, &policy, &a.shared, now) {
            Ok(v) if v.accepted => {
                accepted += 1;
                println!("ACCEPT {name}");
            }
            Ok(v) => {
                denied += 1;
                println!("DENY   {name}");
                for r in v.failures {
                    println!("         - {r}");
                }
            }
            Err(e) => {
                skipped += 1;
                println!("SKIP   {name}: {e}");
            }
        }
    }
    println!("{accepted} accepted, {denied} denied, {skipped} unusable, under {}", a.policy.display());
    Ok(ExitCode::SUCCESS)
}
