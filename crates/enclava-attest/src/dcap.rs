//! SGX (quote v3) and TDX (quote v4, v5) verification with `dcap-qvl`, offline, from given Intel
//! collateral, against the pinned Intel SGX root: PCK chain and CRLs, TCB info and QE identity
//! signatures and windows, QE report binding, quote signature, TCB level and status. Debug
//! enclaves verify here and are judged by policy.

use std::collections::BTreeMap;
use std::path::Path;

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::policy::QuotePolicy;
use dcap_qvl::quote::Report;
use dcap_qvl::verify::QuoteVerifier;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{Claims, Collateral, Platform, VerifyError, roots};

/// Classifies a `dcap-qvl` failure; its errors are text, so the words decide.
fn classify(text: String) -> VerifyError {
    let lower = text.to_lowercase();
    if lower.contains("expired")
        || lower.contains("not valid yet")
        || lower.contains("notvalidyet")
        || lower.contains("in the future")
    {
        VerifyError::ExpiredCollateral(text)
    } else if lower.contains("no matching tcb level") || lower.contains("tcb not supported") {
        VerifyError::TcbNotSupported(text)
    } else if lower.contains("failed to parse") || lower.contains("decode") || lower.contains("unsupported quote") {
        VerifyError::Malformed(text)
    } else {
        VerifyError::Invalid(text)
    }
}

/// Verifies a DCAP quote and returns its claims, with the window in which the collateral that
/// made them is valid (`latest issue date ..= earliest expiry`).
pub fn verify_with_window(quote: &[u8], collateral: &Collateral, now: u64) -> Result<(Claims, u64, u64), VerifyError> {
    let coll = collateral.dcap.as_ref().ok_or_else(|| {
        VerifyError::MissingCollateral(
            "a DCAP quote needs Intel collateral (--collateral collateral.json or a pcs/ folder)".into(),
        )
    })?;
    check_embedded_root(quote)?;
    let verified = QuoteVerifier::new(roots::INTEL_SGX_ROOT_CA.to_vec())
        .allow_debug(true)
        .verify_with_policy(quote, coll, now, &QuotePolicy::claims_only(now))
        .map_err(|e| classify(format!("{e:#}")))?;
    let mut raw = BTreeMap::new();
    raw.insert("qe_tcb_status".into(), verified.qe.tcb_level.tcb_status.to_string());
    raw.insert("tcb_evaluation_data_number".into(), verified.tcb.eval_data_number.to_string());
    let base = |platform, measurement: &[u8], report_data: &[u8], debug| Claims {
        platform,
        measurement: measurement.to_vec(),
        signer: Vec::new(),
        product_id: None,
        security_version: None,
        tcb_status: Some(verified.tcb.status.to_string()),
        advisories: verified.tcb.advisory_ids.clone(),
        debug,
        report_data: report_data.to_vec(),
        issued_at: None,
        raw: BTreeMap::new(),
    };
    let mut claims = match &verified.report {
        Report::SgxEnclave(r) => {
            raw.insert("cpu_svn".into(), hex::encode(r.cpu_svn));
            raw.insert("misc_select".into(), format!("{:#010x}", r.misc_select));
            raw.insert("attributes".into(), hex::encode(r.attributes));
            raw.insert("mr_signer".into(), hex::encode(r.mr_signer));
            let mut c = base(Platform::Sgx, &r.mr_enclave, &r.report_data, r.attributes[0] & 0x02 != 0);
            c.signer = r.mr_signer.to_vec();
            c.product_id = Some(r.isv_prod_id);
            c.security_version = Some(u32::from(r.isv_svn));
            c
        }
        other => {
            let td = other
                .as_td10()
                .or_else(|| other.as_td15().map(|r| &r.base))
                .or_else(|| other.as_td15_ex().map(|r| &r.base.base))
                .ok_or_else(|| VerifyError::Malformed("unknown quote body".into()))?;
            for (name, v) in [
                ("mr_seam", &td.mr_seam[..]),
                ("mr_signer_seam", &td.mr_signer_seam[..]),
                ("mr_config_id", &td.mr_config_id[..]),
                ("mr_owner", &td.mr_owner[..]),
                ("mr_owner_config", &td.mr_owner_config[..]),
                ("rtmr0", &td.rt_mr0[..]),
                ("rtmr1", &td.rt_mr1[..]),
                ("rtmr2", &td.rt_mr2[..]),
                ("rtmr3", &td.rt_mr3[..]),
                ("tee_tcb_svn", &td.tee_tcb_svn[..]),
                ("td_attributes", &td.td_attributes[..]),
                ("xfam", &td.xfam[..]),
            ] {
                raw.insert(name.into(), hex::encode(v));
            }
            let mut c = base(Platform::Tdx, &td.mr_td, &td.report_data, td.td_attributes[0] & 0x01 != 0);
            c.signer = td.mr_owner.to_vec();
            c
        }
    };
    claims.raw = raw;
    Ok((claims, verified.latest_issue_date, verified.earliest_expiration_date))
}

/// The measurement a DCAP quote states (MRENCLAVE, or a TD's MRTD), unverified: what a node says
/// about itself before anyone checks it.
pub fn quote_measurement(quote: &[u8]) -> Option<Vec<u8>> {
    let q = dcap_qvl::quote::Quote::parse(quote).ok()?;
    match &q.report {
        Report::SgxEnclave(r) => Some(r.mr_enclave.to_vec()),
        other => other
            .as_td10()
            .or_else(|| other.as_td15().map(|r| &r.base))
            .or_else(|| other.as_td15_ex().map(|r| &r.base.base))
            .map(|td| td.mr_td.to_vec()),
    }
}

/// Verifies a DCAP quote and returns its claims.
pub fn verify(quote: &[u8], collateral: &Collateral, now: u64) -> Result<Claims, VerifyError> {
    verify_with_window(quote, collateral, now).map(|(c, _, _)| c)
}

/// Where the parts of a quote are, for the warm path.
pub(crate) struct Layout {
    /// End of the signed `header ‖ body`.
    pub signed_end: usize,
    /// The body's report data.
    pub report_data: std::ops::Range<usize>,
    /// Start and end of the signature data (ECDSA signature, attestation key, QE report, chain).
    pub sig_data: std::ops::Range<usize>,
}

/// Finds the parts of a v3, v4 or v5 quote.
pub(crate) fn layout(q: &[u8]) -> Result<Layout, VerifyError> {
    let bad = || VerifyError::Malformed("truncated DCAP quote".into());
    let u16_at = |o: usize| q.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]])).ok_or_else(bad);
    let u32_at =
        |o: usize| q.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).ok_or_else(bad);
    let tdx = u32_at(4)? == 0x81;
    let (body_start, body_len) = match u16_at(0)? {
        5 => (54, u32_at(50)?),
        3 | 4 => (48, if tdx { 584 } else { 384 }),
        v => return Err(VerifyError::Malformed(format!("DCAP quote version {v}"))),
    };
    let signed_end = body_start + body_len;
    let rd = body_start + if tdx { 520 } else { 320 };
    let sig_len = u32_at(signed_end)?;
    let sig_data = signed_end + 4..signed_end + 4 + sig_len;
    if sig_data.end > q.len() || sig_len < 128 || rd + 64 > signed_end {
        return Err(bad());
    }
    Ok(Layout { signed_end, report_data: rd..rd + 64, sig_data })
}

/// Checks the quote signature (ECDSA P-256 by the attestation key over `header ‖ body`).
pub(crate) fn check_quote_signature(q: &[u8], l: &Layout) -> Result<(), VerifyError> {
    let sd = &q[l.sig_data.clone()];
    let mut key = vec![4u8];
    key.extend_from_slice(&sd[64..128]);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, key)
        .verify(&q[..l.signed_end], &sd[..64])
        .map_err(|_| VerifyError::Invalid("the quote signature does not verify".into()))
}

/// The PCK chain embedded in a quote ends with a copy of the Intel root. Only the pinned root is
/// trusted, but a copy that differs from it means the quote was altered: refuse it.
fn check_embedded_root(quote: &[u8]) -> Result<(), VerifyError> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    let Some(start) = quote.windows(BEGIN.len()).position(|w| w == BEGIN) else {
        return Ok(()); // no embedded chain (certification data of another type)
    };
    let text = String::from_utf8_lossy(&quote[start..]);
    let text = text.trim_end_matches(|c: char| c == '\0' || c.is_whitespace());
    let certs = roots::pem_certs(text)
        .map_err(|e| VerifyError::Invalid(format!("the quote's certificate chain is damaged: {e}")))?;
    match certs.last() {
        Some(last) if last.as_slice() == roots::INTEL_SGX_ROOT_CA => Ok(()),
        Some(_) => {
            Err(VerifyError::Invalid("the quote's certificate chain does not end with the Intel SGX root".into()))
        }
        None => Err(VerifyError::Invalid("the quote's certificate chain is empty".into())),
    }
}

/// Reads collateral in `dcap-qvl`'s JSON form (`collateral.json`).
pub fn collateral_from_json(bytes: &[u8]) -> Result<QuoteCollateralV3, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("not DCAP collateral JSON: {e}"))
}

#[derive(Deserialize)]
struct SignedTcbInfo<'a> {
    #[serde(borrow, rename = "tcbInfo")]
    body: &'a RawValue,
    signature: String,
}

#[derive(Deserialize)]
struct SignedQeIdentity<'a> {
    #[serde(borrow, rename = "enclaveIdentity")]
    body: &'a RawValue,
    signature: String,
}

/// Reads collateral from a folder of Intel PCS responses: `tcb_info.json`,
/// `tcb_info_issuer_chain.pem`, `qe_identity.json`, `qe_identity_issuer_chain.pem`, `pck_crl.der`,
/// `pck_crl_issuer_chain.pem`, `root_ca_crl.der`. Signed bodies are kept byte for byte.
pub fn collateral_from_pcs_dir(dir: &Path) -> Result<QuoteCollateralV3, String> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|e| format!("cannot read {}: {e}", dir.join(name).display()))
    };
    let text = |name: &str| read(name).and_then(|b| String::from_utf8(b).map_err(|_| format!("{name} is not text")));
    let tcb_raw = text("tcb_info.json")?;
    let tcb: SignedTcbInfo = serde_json::from_str(&tcb_raw).map_err(|e| format!("tcb_info.json: {e}"))?;
    let qe_raw = text("qe_identity.json")?;
    let qe: SignedQeIdentity = serde_json::from_str(&qe_raw).map_err(|e| format!("qe_identity.json: {e}"))?;
    let unhex = |what: &str, s: &str| hex::decode(s).map_err(|e| format!("{what} signature is not hex: {e}"));
    Ok(QuoteCollateralV3 {
        pck_crl_issuer_chain: text("pck_crl_issuer_chain.pem")?,
        root_ca_crl: read("root_ca_crl.der")?,
        pck_crl: read("pck_crl.der")?,
        tcb_info_issuer_chain: text("tcb_info_issuer_chain.pem")?,
        tcb_info: tcb.body.get().to_owned(),
        tcb_info_signature: unhex("tcb_info", &tcb.signature)?,
        qe_identity_issuer_chain: text("qe_identity_issuer_chain.pem")?,
        qe_identity: qe.body.get().to_owned(),
        qe_identity_signature: unhex("qe_identity", &qe.signature)?,
        pck_certificate_chain: None,
    })
}
