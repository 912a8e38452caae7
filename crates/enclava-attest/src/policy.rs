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
//! measurement, UpToDate, no debug". A BlindAI manifest (`manifest.toml`, or the older generated
//! `policy.toml`) is read exactly as BlindAI's client reads it: `mr_enclave` (32 bytes of hex),
//! `allow_debug`, and six hex strings, `attributes_flags_hex`, `attributes_mask_flags_hex`,
//! `attributes_xfrm_hex`, `attributes_mask_xfrm_hex`, `misc_select_hex`, `misc_mask_hex`, all
//! required. It becomes an `[sgx]` table that checks what BlindAI checks: the report's attribute
//! flags under the mask equal the manifest's flags with INIT set, its XFRM and MISCSELECT under their
//! masks equal the manifest's, and debug only when allowed.

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
    /// SGX MISCSELECT that must match under its mask (BlindAI manifests).
    pub misc_select: Option<u32>,
    pub misc_mask: Option<u32>,
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

/// A BlindAI manifest, with its key names and hex-string values. `mr_signer`, `isv_prodid` and
/// `isv_svn` are Enclava's optional additions (BlindAI never checks them).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlindAiManifest {
    mr_enclave: String,
    allow_debug: bool,
    attributes_flags_hex: String,
    attributes_mask_flags_hex: String,
    attributes_xfrm_hex: String,
    attributes_mask_xfrm_hex: String,
    misc_select_hex: String,
    misc_mask_hex: String,
    mr_signer: Option<String>,
    isv_prodid: Option<u16>,
    isv_svn: Option<u32>,
}

/// SGX's INIT attribute flag, which every running enclave has; BlindAI expects it.
const SGX_FLAG_INIT: u64 = 1;

/// A BlindAI hex value as Python's `int(s, 16)` reads it: optional `0x`, either case, `_`
/// separators, surrounding spaces; then range-checked to `bits`.
fn blindai_hex(field: &str, s: &str, bits: u32) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    let digits: String = t.chars().filter(|c| *c != '_').collect();
    let v = if digits.is_empty() || t.starts_with('_') || t.ends_with('_') || t.contains("__") {
        None
    } else {
        u128::from_str_radix(&digits, 16).ok()
    };
    match v {
        Some(v) if v < (1u128 << bits) => Ok(v as u64),
        Some(_) => Err(format!("{field} {} does not fit in {bits} bits", enclava_core::text::quote(s))),
        None => Err(format!("{field} {} is not a hex number", enclava_core::text::quote(s))),
    }
}

impl BlindAiManifest {
    fn into_policy(self) -> Result<Policy, String> {
        let m = self.mr_enclave.trim().to_lowercase();
        if hex::decode(&m).map(|b| b.len()) != Ok(32) {
            return Err(format!("mr_enclave {} is not 32 bytes of hex", enclava_core::text::quote(&self.mr_enclave)));
        }
        let flags = blindai_hex("attributes_flags_hex", &self.attributes_flags_hex, 64)? | SGX_FLAG_INIT;
        let mask_flags = blindai_hex("attributes_mask_flags_hex", &self.attributes_mask_flags_hex, 64)?;
        let xfrm = blindai_hex("attributes_xfrm_hex", &self.attributes_xfrm_hex, 64)?;
        let mask_xfrm = blindai_hex("attributes_mask_xfrm_hex", &self.attributes_mask_xfrm_hex, 64)?;
        let misc = blindai_hex("misc_select_hex", &self.misc_select_hex, 32)? as u32;
        let misc_mask = blindai_hex("misc_mask_hex", &self.misc_mask_hex, 32)? as u32;
        // BlindAI compares `report & mask` with the value itself: bits outside the mask could never match.
        for (name, want, mask) in
            [("attributes_flags_hex (with INIT)", flags, mask_flags), ("attributes_xfrm_hex", xfrm, mask_xfrm)]
        {
            if want & !mask != 0 {
                return Err(format!("{name} {want:#x} has bits outside its mask {mask:#x}: no enclave could match"));
            }
        }
        if misc & !misc_mask != 0 {
            return Err(format!("misc_select_hex {misc:#x} has bits outside misc_mask_hex {misc_mask:#x}"));
        }
        Ok(Policy {
            allow_debug: self.allow_debug,
            sgx: Some(PlatformRules {
                measurements: vec![m],
                signers: self.mr_signer.map(|s| vec![s.trim().to_lowercase()]).unwrap_or_default(),
                product_ids: self.isv_prodid.into_iter().collect(),
                min_security_version: self.isv_svn,
                attributes_flags: Some(flags),
                attributes_mask_flags: Some(mask_flags),
                attributes_xfrm: Some(xfrm),
                attributes_mask_xfrm: Some(mask_xfrm),
                misc_select: Some(misc),
                misc_mask: Some(misc_mask),
                ..Default::default()
            }),
            ..Default::default()
        })
    }
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
            // No evidence, nothing to judge: a policy never accepts plaintext.
            Platform::Plaintext => None,
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
            m.into_policy().map_err(|e| format!("BlindAI manifest: {e}"))?
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
            if let Some(want) = r.misc_select {
                let mask = r.misc_mask.unwrap_or(u32::MAX);
                let have = claims
                    .raw
                    .get("misc_select")
                    .and_then(|h| u32::from_str_radix(h.trim_start_matches("0x"), 16).ok());
                match have {
                    Some(h) if h & mask == want & mask => {}
                    Some(h) => f.push(format!("MISCSELECT {h:#x} does not match {want:#x} under mask {mask:#x}")),
                    None => f.push("the evidence has no MISCSELECT to check misc_select against".into()),
                }
            }
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
        // A manifest written the way BlindAI writes them (its generated policy.toml, spacing and all).
        let manifest = format!(
            "# Enclave policy file. Determines which enclaves are accept by the\n\
             mr_enclave = \"{}\"\nmisc_select_hex = \"0x0\"\nmisc_mask_hex= \"0xffffffff\"\n\
             attributes_flags_hex= \"0x4\"\nattributes_xfrm_hex= \"0x3\"\n\
             attributes_mask_flags_hex= \"0xfffffffffffffffd\"\nattributes_mask_xfrm_hex= \"0xffffffffffffff1b\"\n\
             allow_debug = false\n",
            "ab".repeat(32)
        );
        let b = Policy::parse(&manifest).expect("blindai");
        assert!(!b.allow_debug);
        let with = |flags: u64, xfrm: u64, misc: u32, debug: bool| {
            let mut c = claims(Platform::Sgx);
            c.debug = debug;
            c.raw.insert(
                "attributes".into(),
                format!("{}{}", hex::encode(flags.to_le_bytes()), hex::encode(xfrm.to_le_bytes())),
            );
            c.raw.insert("misc_select".into(), format!("{misc:#010x}"));
            check(&b, &c, 100, None)
        };
        // A production enclave: INIT | MODE64BIT, x87 + SSE (+ AVX, ignored by the mask).
        assert!(with(0x5, 0x3, 0, false).accepted);
        assert!(with(0x5, 0xe7, 0, false).accepted, "{:?}", with(0x5, 0xe7, 0, false));
        assert!(!with(0x4, 0x3, 0, false).accepted, "INIT is required, as BlindAI requires it");
        assert!(!with(0x7, 0x3, 0, true).accepted, "debug refused when not allowed");
        assert!(!with(0x15, 0x3, 0, false).accepted, "PROVISIONKEY set");
        assert!(!with(0x5, 0x13, 0, false).accepted, "an XFRM bit under the mask differs");
        assert!(with(0x5, 0x7, 0, false).accepted, "AVX is outside the mask");
        assert!(!with(0x5, 0x3, 1, false).accepted, "MISCSELECT differs");
        // The current template (manifest.dev.template.toml): debug allowed, PKRU ignored.
        let dev = manifest
            .replace("allow_debug = false", "allow_debug = true")
            .replace("0xffffffffffffff1b", "0xfffffffffffffd1b");
        let d = Policy::parse(&dev).expect("dev manifest");
        let mut c = claims(Platform::Sgx);
        c.debug = true;
        c.raw.insert(
            "attributes".into(),
            format!("{}{}", hex::encode(7u64.to_le_bytes()), hex::encode(0x203u64.to_le_bytes())),
        );
        c.raw.insert("misc_select".into(), "0x00000000".into());
        assert!(check(&d, &c, 100, None).accepted, "{:?}", check(&d, &c, 100, None));
        // Hex as Python's int(s, 16) reads it, and every key required.
        assert!(Policy::parse(&manifest.replace("\"0x4\"", "\"4\"")).is_ok());
        assert!(Policy::parse(&manifest.replace("\"0x4\"", "\"0X0_4\"")).is_ok());
        for (bad, says) in [
            (manifest.replace("\"0x4\"", "\"0xg\""), "not a hex number"),
            (manifest.replace("misc_mask_hex= \"0xffffffff\"", "misc_mask_hex= \"0x1ffffffff\""), "32 bits"),
            (manifest.replace("allow_debug = false\n", ""), "allow_debug"),
            (manifest.replace(&"ab".repeat(32), "abcd"), "32 bytes"),
            (
                manifest
                    .replace("attributes_mask_flags_hex= \"0xfffffffffffffffd\"", "attributes_mask_flags_hex= \"0x2\""),
                "outside",
            ),
        ] {
            let err = Policy::parse(&bad).expect_err(says);
            assert!(err.contains(says), "{says}: {err}");
        }
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
            ("mr_enclave = \"ab\"\nallow_debug = true\nattributes_flags = 5\n", "unknown field"),
        ] {
            let err = Policy::parse(text).expect_err(text);
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
