//! The warm verifier: what does not change between pieces of evidence from one platform — the
//! DCAP platform verdict (PCK chain, CRLs, TCB info, QE identity and report), an SNP VEK's chain and
//! CRLs, a Nitro certificate chain, a sim hardware-key certificate — is verified once and cached,
//! keyed by the exact bytes it covers, and only inside the window where its collateral is valid.
//! Each piece of evidence still has its own signature verified. Results equal the cold path's.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::{Claims, Collateral, Evidence, VerifyError, dcap, nitro, sim, snp};

/// Entries kept at most; past that the cache starts over.
const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone)]
enum Cached {
    /// A DCAP quote's claims, but for its report data.
    Dcap(Box<Claims>),
    /// A VEK whose chain is known good, parsed once.
    Snp(snp::ChainOk, std::sync::Arc<x509_cert::Certificate>),
    /// A chain or certificate known good.
    Good,
}

#[derive(Debug, Clone)]
struct Entry {
    from: u64,
    until: u64,
    value: Cached,
}

/// A verifier that caches per-platform verification within collateral windows.
#[derive(Debug, Default)]
pub struct Verifier {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

fn key(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

fn collateral_key(c: &Collateral) -> [u8; 32] {
    let d = c.dcap.as_ref();
    // Every part is tagged, so no two different collaterals share an encoding.
    let mut parts: Vec<&[u8]> = vec![];
    if let Some(d) = d {
        parts.push(b"dcap");
        parts.push(d.pck_certificate_chain.as_deref().map(str::as_bytes).unwrap_or(b"-"));
        parts.extend([
            d.tcb_info.as_bytes(),
            &d.tcb_info_signature,
            d.tcb_info_issuer_chain.as_bytes(),
            d.qe_identity.as_bytes(),
            &d.qe_identity_signature,
            d.qe_identity_issuer_chain.as_bytes(),
            &d.pck_crl,
            d.pck_crl_issuer_chain.as_bytes(),
            &d.root_ca_crl,
        ]);
    }
    for x in &c.amd_certs {
        parts.push(b"cert");
        parts.push(x);
    }
    for x in &c.amd_crls {
        parts.push(b"crl");
        parts.push(x);
    }
    key(&parts)
}

impl Verifier {
    pub fn new() -> Verifier {
        Verifier::default()
    }

    fn get(&self, k: &[u8; 32], now: u64) -> Option<Cached> {
        let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        map.get(k).filter(|e| e.from <= now && now <= e.until).map(|e| e.value.clone())
    }

    fn put(&self, k: [u8; 32], from: u64, until: u64, value: Cached) {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(k, Entry { from, until, value });
    }

    /// Verifies like [`crate::verify`], reusing what was verified before.
    pub fn verify(&self, evidence: &Evidence, collateral: &Collateral, now: u64) -> Result<Claims, VerifyError> {
        match evidence {
            Evidence::Dcap(q) => self.dcap(q, collateral, now),
            Evidence::AzureVtpm(_) => crate::verify(evidence, collateral, now),
            Evidence::SevSnp { report, vek, chain } => {
                let collateral = snp::with_chain(collateral, chain);
                let mut raw = BTreeMap::new();
                let (bytes, parsed) = snp::parse(report, &mut raw)?;
                let vek_der = crate::roots::der_or_pem(vek).map_err(|e| VerifyError::Malformed(format!("VEK: {e}")))?;
                let k = key(&[b"snp", &vek_der, &collateral_key(&collateral)]);
                let (chain_ok, cert) = match self.get(&k, now) {
                    Some(Cached::Snp(c, cert)) => (c, cert),
                    _ => {
                        let (vek_der, vek_x509) = snp::parse_vek(vek)?;
                        let c = snp::check_chain(&vek_der, &vek_x509, &collateral, now)?;
                        let cert = std::sync::Arc::new(vek_x509);
                        self.put(k, c.from, c.until, Cached::Snp(c.clone(), cert.clone()));
                        (c, cert)
                    }
                };
                snp::check_report(&bytes, &parsed, &cert, &chain_ok, raw)
            }
            Evidence::Nitro(doc) => {
                let p = nitro::parse(doc)?;
                let mut parts: Vec<&[u8]> = vec![b"nitro", &p.leaf];
                parts.extend(p.bundle.iter().map(Vec::as_slice));
                let k = key(&parts);
                if !matches!(self.get(&k, now), Some(Cached::Good)) {
                    let (from, until) = nitro::check_chain(&p, now)?;
                    self.put(k, from, until, Cached::Good);
                }
                nitro::check_document(&p)
            }
            Evidence::Sim(bytes) => {
                let root = collateral.sim_root.map(|r| r.0).unwrap_or_default();
                let Some(hw) = sim::hardware_id(bytes) else { return sim::verify(bytes, collateral, now) };
                let k = key(&[b"sim", &root, hw]);
                let known = matches!(self.get(&k, now), Some(Cached::Good));
                let claims = sim::verify_with(bytes, collateral, now, known)?;
                if !known {
                    self.put(k, 0, u64::MAX, Cached::Good);
                }
                Ok(claims)
            }
        }
    }

    fn dcap(&self, q: &[u8], collateral: &Collateral, now: u64) -> Result<Claims, VerifyError> {
        let l = dcap::layout(q)?;
        // Everything but the report data and the quote's own signature.
        let k = key(&[
            b"dcap",
            &q[..l.report_data.start],
            &q[l.report_data.end..l.signed_end],
            &q[l.sig_data.start + 64..l.sig_data.end],
            &collateral_key(collateral),
        ]);
        if let Some(Cached::Dcap(claims)) = self.get(&k, now) {
            dcap::check_quote_signature(q, &l)?;
            let mut claims = *claims;
            claims.report_data = q[l.report_data.clone()].to_vec();
            return Ok(claims);
        }
        let (claims, from, until) = dcap::verify_with_window(q, collateral, now)?;
        self.put(k, from, until, Cached::Dcap(Box::new(claims.clone())));
        Ok(claims)
    }
}
