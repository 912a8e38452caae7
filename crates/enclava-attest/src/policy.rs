//! What a relying party accepts, as a file a person can read (TOML, or the same in JSON), and
//! `check`, which returns accept or a denial listing every rule that failed, in words.
//!
//! ```toml
//! allow_debug = false          # the default
//! max_age_seconds = 3600       # evidence that says when it was made must be this fresh
//!
//! [sgx]                        # a platform is allowed only when it has a table
//! measurements = ["c0ffee…"]   # or any_measurement = true
//! signers = ["…"]              # optional
//! product_ids = [0]            # optional
//! min_security_version = 2     # optional
//! tcb_statuses = ["UpToDate", "SWHardeningNeeded"]  # default ["UpToDate"]
//! allowed_advisories = ["INTEL-SA-00615"]            # default: none
//! require = { attributes = "…" }                     # raw claim fields that must match exactly
//!
//! [sev-snp]
//! measurements = ["…"]
//! max_vmpl = 0                 # optional
//! require_crl = true           # the default: revocation must have been checked
//!
//! [sim]                        # sim is accepted only when named, with its deployment's root
//! root = "…"                   # hex Ed25519 public key (`enclava sim init` prints it)
//! any_measurement = true
//! ```
//!
//! The seed's `EnclavePolicy { mrenclave }` is the policy "any confidential platform, this
//! measurement, UpToDate, no debug". A BlindAI manifest (`mr_enclave`, `allow_debug`, attribute
//! masks) is an `[sgx]` table with `attributes_flags`/`attributes_mask_flags` and
//! `attributes_xfrm`/`attributes_mask_xfrm`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Claims, Platform, sim::RootPublicKey};

/// Rules for one platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformRules {
    #[serde(default)]
    pub measurements: Vec<String>,
    #[serde(default)]
    pub any_measurement: bool,
    #[serde(default)]
    pub signers: Vec<String>,
    #[serde(default)]
    pub product_ids: Vec<u16>,
    pub min_security_version: Option<u32>,
    /// Accepted TCB statuses where the platform reports one; default `["UpToDate"]`.
    pub tcb_statuses: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_advisories: Vec<String>,
    /// SGX attribute flags that must match under their mask (BlindAI manifests).
    pub attributes_flags: Option<u64>,
    pub attributes_mask_flags: Option<u64>,
    pub attributes_xfrm: Option<u64>,
    pub attributes_mask_xfrm: Option<u64>,
    /// For `sim`: the deployment's sim root (hex).
    pub root: Option<String>,
    /// For `sev-snp`: require that an AMD CRL was checked (default true).
    pub require_crl: Option<bool>,
    /// For `sev-snp`: the highest VMPL accepted (0 is the most privileged).
    pub max_vmpl: Option<u32>,
    /// Raw claim fields that must have exactly these values, e.g. `rtmr0`, `mr_config_id`,
    /// `host_data`, `pcr1` (hex, as `enclava evidence verify` prints them).
    #[serde(default)]
    pub require: std::collections::BTreeMap<String, String>,
}

/// A policy. A platform is allowed only when its table is present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub allow_debug: bool,
    pub max_age_seconds: Option<u64>,
    pub sgx: Option<PlatformRules>,
    pub tdx: Option<PlatformRules>,
    #[serde(rename = "sev-snp")]
    pub sev_snp: Option<PlatformRules>,
    pub nitro: Option<PlatformRules>,
    pub sim: Option<PlatformRules>,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub accepted: bool,
    /// Every rule that failed, in words; empty when accepted.
    pub failures: Vec<String>,
}

/// The seed's `EnclavePolicy` (JSON `{"mrenclave": "…"}`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedPolicy {
    mrenclave: String,
}

/// A BlindAI manifest.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlindAiManifest {
    mr_enclave: String,
    mr_signer: Option<String>,
    #[serde(default)]
    allow_debug: bool,
    isv_prodid: Option<u16>,
    isv_svn: Option<u32>,
    attributes_flags: Option<u64>,
    attributes_mask_flags: Option<u64>,
    attributes_xfrm: Option<u64>,
    attributes_mask_xfrm: Option<u64>,
}

impl Policy {
    /// The rules for `platform`, if the policy allows it.
    pub fn rules(&self, platform: Platform) -> Option<&PlatformRules> {
        match platform {
            Platform::Sgx => self.sgx.as_ref(),
            Platform::Tdx => self.tdx.as_ref(),
            Platform::SevSnp => self.sev_snp.as_ref(),
            Platform::Nitro => self.nitro.as_ref(),
            Platform::Sim => self.sim.as_ref(),
        }
    }

    /// Platforms this policy allows.
    pub fn platforms(&self) -> Vec<Platform> {
        Platform::ALL.into_iter().filter(|p| self.rules(*p).is_some()).collect()
    }

    /// The sim root this policy trusts, if it names `sim`.
    pub fn sim_root(&self) -> Result<Option<RootPublicKey>, String> {
        match self.sim.as_ref().and_then(|s| s.root.as_deref()) {
            Some(r) => RootPublicKey::from_hex(r).map(Some),
            None => Ok(None),
        }
    }

    /// The seed's `EnclavePolicy { mrenclave }`: any confidential platform with this measurement.
    pub fn from_measurement(m: &str) -> Policy {
        let rules = PlatformRules { measurements: vec![m.to_lowercase()], ..Default::default() };
        Policy {
            sgx: Some(rules.clone()),
            tdx: Some(rules.clone()),
            sev_snp: Some(rules.clone()),
            nitro: Some(rules),
            ..Default::default()
        }
    }

    /// Parses a policy in any accepted form: Enclava TOML or JSON, the seed's `EnclavePolicy`
    /// JSON, or a BlindAI manifest (TOML or JSON).
    pub fn parse(text: &str) -> Result<Policy, String> {
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                let t: toml::Value = toml::from_str(text).map_err(|e| format!("not a policy in TOML or JSON: {e}"))?;
                serde_json::to_value(t).map_err(|e| e.to_string())?
            }
        };
        let policy = if value.get("mrenclave").is_some() {
            let seed: SeedPolicy = serde_json::from_value(value).map_err(|e| format!("EnclavePolicy: {e}"))?;
            Policy::from_measurement(&seed.mrenclave)
        } else if value.get("mr_enclave").is_some() {
            let m: BlindAiManifest = serde_json::from_value(value).map_err(|e| format!("BlindAI manifest: {e}"))?;
            Policy {
                allow_debug: m.allow_debug,
                sgx: Some(PlatformRules {
                    measurements: vec![m.mr_enclave.to_lowercase()],
                    signers: m.mr_signer.map(|s| vec![s.to_lowercase()]).unwrap_or_default(),
                    product_ids: m.isv_prodid.into_iter().collect(),
                    min_security_version: m.isv_svn,
                    attributes_flags: m.attributes_flags,
                    attributes_mask_flags: m.attributes_mask_flags,
                    attributes_xfrm: m.attributes_xfrm,
                    attributes_mask_xfrm: m.attributes_mask_xfrm,
                    ..Default::default()
                }),
                ..Default::default()
            }
        } else {
            serde_json::from_value(value).map_err(|e| format!("policy: {e}"))?
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Reads a policy file.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read policy {}: {e}", path.display()))?;
        Policy::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks the policy makes sense on its own.
    pub fn validate(&self) -> Result<(), String> {
        if self.platforms().is_empty() {
            return Err("the policy allows no platform: add a table such as [sgx] or [sim]".into());
        }
        for p in self.platforms() {
            let Some(r) = self.rules(p) else { continue };
            if r.measurements.is_empty() && !r.any_measurement {
                return Err(format!("[{p}] lists no measurements: list them, or set any_measurement = true"));
            }
            for m in r.measurements.iter().chain(&r.signers) {
                if hex::decode(m).is_err() {
                    return Err(format!("[{p}] {m:?} is not hex"));
                }
            }
            if (r.root.is_some()) != (p == Platform::Sim) {
                return Err(format!("[{p}] root is for [sim] only, and [sim] needs its deployment's root"));
            }
        }
        self.sim_root().map(drop)
    }
}

fn mask_check(
    raw_hex: Option<&String>,
    offset: usize,
    want: Option<u64>,
    mask: Option<u64>,
    name: &str,
    out: &mut Vec<String>,
) {
    let Some(want) = want else { return };
    let mask = mask.unwrap_or(u64::MAX);
    let have = raw_hex
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| b.get(offset..offset + 8).map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default())));
    match have {
        Some(h) if h & mask == want & mask => {}
        Some(h) => out.push(format!("attributes {name} {h:#x} do not match {want:#x} under mask {mask:#x}")),
        None => out.push(format!("the evidence has no attributes to check {name} against")),
    }
}

/// Checks claims against a policy at `now`; `report_data`, when given, must be what the evidence
/// binds (see `binding`).
pub fn check(policy: &Policy, claims: &Claims, now: u64, report_data: Option<&[u8]>) -> Verdict {
    let mut f = Vec::new();
    let p = claims.platform;
    if claims.debug && !policy.allow_debug {
        f.push("the enclave runs in debug mode (its memory is open to the host), and this policy forbids debug".into());
    }
    match (policy.max_age_seconds, claims.issued_at) {
        (Some(max), Some(at)) if now.saturating_sub(at) > max => {
            f.push(format!("the evidence is {} s old, older than the {max} s this policy accepts", now - at))
        }
        (Some(_), None) => f.push(
            "the evidence does not say when it was made, so max_age_seconds cannot be checked (bind a nonce instead)"
                .into(),
        ),
        _ => {}
    }
    if let Some(want) = report_data
        && want != claims.report_data.as_slice()
    {
        f.push("the report data does not bind the expected key and nonce".into());
    }
    match policy.rules(p) {
        None => {
            let allowed: Vec<&str> = policy.platforms().into_iter().map(Platform::as_str).collect();
            f.push(format!("platform {p} is not allowed by this policy (it allows {})", allowed.join(", ")));
        }
        Some(r) => {
            let m = claims.measurement_hex();
            if !r.any_measurement && !r.measurements.iter().any(|x| x.eq_ignore_ascii_case(&m)) {
                f.push(format!(
                    "measurement {m} is not one of the {} this policy allows for {p}",
                    r.measurements.len()
                ));
            }
            let s = hex::encode(&claims.signer);
            if !r.signers.is_empty() && !r.signers.iter().any(|x| x.eq_ignore_ascii_case(&s)) {
                f.push(format!("signer {s} is not one this policy allows for {p}"));
            }
            if !r.product_ids.is_empty() && !claims.product_id.is_some_and(|id| r.product_ids.contains(&id)) {
                f.push(format!("product id {:?} is not one of {:?}", claims.product_id, r.product_ids));
            }
            if let Some(min) = r.min_security_version
                && claims.security_version.is_none_or(|v| v < min)
            {
                f.push(format!("security version {:?} is below the minimum {min}", claims.security_version));
            }
            match (&claims.tcb_status, &r.tcb_statuses) {
                (Some(status), accepted) => {
                    let accepted = accepted.clone().unwrap_or_else(|| vec!["UpToDate".into()]);
                    if !accepted.iter().any(|a| a == status) {
                        f.push(format!("TCB status {status} is not accepted (accepted: {})", accepted.join(", ")));
                    }
                }
                (None, Some(_)) => {
                    f.push(format!("{p} evidence reports no TCB status, so tcb_statuses cannot be checked"))
                }
                (None, None) => {}
            }
            if p == Platform::SevSnp {
                if r.require_crl.unwrap_or(true) && claims.raw.get("crl_checked").map(String::as_str) != Some("true") {
                    f.push("no AMD CRL was checked, so revocation is unknown (give the ARK's CRL, or set require_crl = false)".into());
                }
                if let Some(max) = r.max_vmpl {
                    let vmpl = claims.raw.get("vmpl").and_then(|v| v.parse::<u32>().ok());
                    if vmpl.is_none_or(|v| v > max) {
                        f.push(format!("VMPL {vmpl:?} is above the maximum {max}"));
                    }
                }
            }
            for (field, want) in &r.require {
                match claims.raw.get(field) {
                    Some(have) if have.eq_ignore_ascii_case(want) => {}
                    Some(have) => f.push(format!("{field} is {have}, the policy requires {want}")),
                    None => f.push(format!("the evidence has no {field} for the policy to check")),
                }
            }
            for a in &claims.advisories {
                if !r.allowed_advisories.contains(a) {
                    f.push(format!("advisory {a} applies to this platform and is not allowed"));
                }
            }
            let attrs = claims.raw.get("attributes");
            mask_check(attrs, 0, r.attributes_flags, r.attributes_mask_flags, "flags", &mut f);
            mask_check(attrs, 8, r.attributes_xfrm, r.attributes_mask_xfrm, "xfrm", &mut f);
            if p == Platform::Sim {
                let want = r.root.as_deref().and_then(|h| RootPublicKey::from_hex(h).ok());
                let have = claims.raw.get("sim_root").and_then(|h| RootPublicKey::from_hex(h).ok());
                if want.is_none() || want != have {
                    f.push("the sim evidence is not from this policy's sim root".into());
                }
            }
        }
    }
    Verdict { accepted: f.is_empty(), failures: f }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(platform: Platform) -> Claims {
        Claims {
            platform,
            measurement: vec![0xab; 32],
            signer: vec![0xcd; 32],
            product_id: Some(1),
            security_version: Some(3),
            tcb_status: Some("UpToDate".into()),
            advisories: vec![],
            debug: false,
            report_data: vec![0; 64],
            issued_at: Some(100),
            raw: Default::default(),
        }
    }

    #[test]
    fn every_failed_rule_is_listed() {
        let p = Policy::parse(&format!(
            "allow_debug = false\nmax_age_seconds = 10\n[sgx]\nmeasurements = [\"{}\"]\nsigners = [\"{}\"]\nproduct_ids = [2]\nmin_security_version = 5\n",
            "00".repeat(32),
            "11".repeat(32)
        ))
        .expect("parses");
        let mut c = claims(Platform::Sgx);
        c.debug = true;
        c.tcb_status = Some("OutOfDate".into());
        c.advisories = vec!["INTEL-SA-00001".into()];
        let v = check(&p, &c, 1000, Some(&[1; 64]));
        assert!(!v.accepted);
        for want in [
            "debug",
            "old",
            "report data",
            "measurement",
            "signer",
            "product id",
            "security version",
            "TCB status",
            "advisory",
        ] {
            assert!(v.failures.iter().any(|f| f.contains(want)), "{want} missing from {:?}", v.failures);
        }
        let ok = Policy::parse("[sgx]\nany_measurement = true\n").expect("parses");
        assert!(check(&ok, &claims(Platform::Sgx), 100, None).accepted);
        let v = check(&ok, &claims(Platform::Tdx), 100, None);
        assert!(v.failures[0].contains("platform tdx is not allowed"), "{v:?}");
    }

    #[test]
    fn sim_needs_naming_with_its_root() {
        let root = "aa".repeat(32);
        let p = Policy::parse(&format!("[sim]\nroot = \"{root}\"\nany_measurement = true\n")).expect("parses");
        let mut c = claims(Platform::Sim);
        c.tcb_status = None;
        c.raw.insert("sim_root".into(), root.clone());
        assert!(check(&p, &c, 100, None).accepted);
        c.raw.insert("sim_root".into(), "bb".repeat(32));
        assert!(!check(&p, &c, 100, None).accepted);
        let no_sim = Policy::parse("[sgx]\nany_measurement = true\n").expect("parses");
        assert!(!check(&no_sim, &c, 100, None).accepted);
        assert!(Policy::parse("[sim]\nany_measurement = true\n").is_err(), "sim without its root");
    }

    #[test]
    fn seed_and_blindai_forms_map() {
        let seed = Policy::parse(&format!("{{\"mrenclave\": \"{}\"}}", "AB".repeat(32))).expect("seed");
        assert_eq!(seed.platforms(), vec![Platform::Sgx, Platform::Tdx, Platform::SevSnp, Platform::Nitro]);
        assert!(check(&seed, &claims(Platform::Sgx), 100, None).accepted);
        assert!(!seed.allow_debug);
        let manifest = format!(
            "mr_enclave = \"{}\"\nallow_debug = true\nattributes_flags = 5\nattributes_mask_flags = 7\n",
            "ab".repeat(32)
        );
        let b = Policy::parse(&manifest).expect("blindai");
        assert!(b.allow_debug);
        let mut c = claims(Platform::Sgx);
        c.raw.insert("attributes".into(), format!("{}{}", hex::encode(5u64.to_le_bytes()), "00".repeat(8)));
        assert!(check(&b, &c, 100, None).accepted);
        c.raw.insert("attributes".into(), format!("{}{}", hex::encode(7u64.to_le_bytes()), "00".repeat(8)));
        assert!(!check(&b, &c, 100, None).accepted);
    }

    #[test]
    fn rules_that_cannot_be_checked_deny() {
        let mut snp = claims(Platform::SevSnp);
        snp.tcb_status = None;
        snp.issued_at = None;
        snp.raw.insert("vmpl".into(), "1".into());
        snp.raw.insert("crl_checked".into(), "false".into());
        snp.raw.insert("host_data".into(), "ab".into());
        let p = Policy::parse("max_age_seconds = 60\n[sev-snp]\nany_measurement = true\nmax_vmpl = 0\ntcb_statuses = [\"UpToDate\"]\nrequire = { host_data = \"cd\", rtmr9 = \"00\" }\n").expect("policy");
        let v = check(&p, &snp, 100, None);
        for want in ["does not say when", "no TCB status", "no AMD CRL", "VMPL", "host_data is ab", "no rtmr9"] {
            assert!(v.failures.iter().any(|f| f.contains(want)), "{want} missing from {:?}", v.failures);
        }
        snp.raw.insert("vmpl".into(), "0".into());
        snp.raw.insert("crl_checked".into(), "true".into());
        snp.raw.insert("host_data".into(), "CD".into());
        let ok = Policy::parse("[sev-snp]\nany_measurement = true\nmax_vmpl = 0\nrequire = { host_data = \"cd\" }\n")
            .expect("policy");
        assert!(check(&ok, &snp, 100, None).accepted, "{:?}", check(&ok, &snp, 100, None));
        let no_crl_ok = Policy::parse("[sev-snp]\nany_measurement = true\nrequire_crl = false\n").expect("policy");
        snp.raw.insert("crl_checked".into(), "false".into());
        assert!(check(&no_crl_ok, &snp, 100, None).accepted);
    }

    #[test]
    fn sim_roots_compare_as_keys_not_text() {
        let root = "aa".repeat(32);
        let p = Policy::parse(&format!("[sim]\nroot = \"{}\"\nany_measurement = true\n", root.to_uppercase()))
            .expect("policy");
        let mut c = claims(Platform::Sim);
        c.tcb_status = None;
        c.raw.insert("sim_root".into(), root);
        assert!(check(&p, &c, 100, None).accepted);
    }

    #[test]
    fn bad_policies_are_refused_with_a_reason() {
        for (text, want) in [
            ("", "no platform"),
            ("[sgx]\n", "no measurements"),
            ("[sgx]\nmeasurements = [\"zz\"]\n", "not hex"),
            ("[sgx]\nany_measurement = true\nbogus = 1\n", "unknown field"),
            ("[sgx]\nany_measurement = true\nroot = \"aa\"\n", "root"),
            ("mr_enclave = \"ab\"\nallow_debg = true\n", "unknown field"),
        ] {
            let err = Policy::parse(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
