//! Azure confidential VMs' vTPM evidence: an HCL report (an SEV-SNP report whose report data binds
//! the HCL runtime data), the VCEK, and a TPM2 quote. The SNP part is verified like any SNP report;
//! then the TPM quote must be signed (RSASSA-PKCS1-v1_5/SHA-256) by `HCLAkPub`, the attestation key
//! in that bound runtime data, and its PCR digest must match the PCR values given.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::signature::Verifier as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{Claims, Collateral, VerifyError, snp};

const TPM_GENERATED: u32 = 0xff54_4347;
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
const TPM_ALG_SHA256: u16 = 0x000B;

#[derive(Deserialize)]
struct Quote {
    message: Vec<u8>,
    signature: Vec<u8>,
    pcrs: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
struct AzureEvidence {
    report: Vec<u8>,
    vcek: String,
    quote: Quote,
}

#[derive(Deserialize)]
struct Jwk {
    kid: String,
    kty: String,
    n: String,
    e: String,
}

#[derive(Deserialize)]
struct RuntimeData {
    keys: Vec<Jwk>,
}

/// Whether `bytes` looks like Azure vTPM evidence JSON.
pub fn looks_like(bytes: &[u8]) -> bool {
    bytes.first() == Some(&b'{')
        && bytes.windows(7).any(|w| w == b"\"quote\"")
        && bytes.windows(8).any(|w| w == b"\"report\"")
}

fn malformed(m: impl std::fmt::Display) -> VerifyError {
    VerifyError::Malformed(format!("Azure vTPM evidence: {m}"))
}

/// Reads a TPM2B (u16 big-endian length, then bytes).
fn tpm2b<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], VerifyError> {
    let len = take(b, 2).map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)?;
    take(b, len)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], VerifyError> {
    if b.len() < n {
        return Err(malformed("TPMS_ATTEST is truncated"));
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

/// The VCEK Azure evidence carries (PEM bytes), if it parses.
pub fn vek(json: &[u8]) -> Option<Vec<u8>> {
    serde_json::from_slice::<AzureEvidence>(json).ok().map(|e| e.vcek.into_bytes())
}

/// Verifies Azure vTPM evidence (JSON) at `now`.
pub fn verify(json: &[u8], collateral: &Collateral, now: u64) -> Result<Claims, VerifyError> {
    let ev: AzureEvidence = serde_json::from_slice(json).map_err(malformed)?;
    let mut claims = snp::verify(&ev.report, ev.vcek.as_bytes(), collateral, now)?;
    let runtime = claims.raw.get("hcl_runtime_data").ok_or_else(|| malformed("the report is not an HCL report"))?;
    let runtime: RuntimeData = serde_json::from_str(runtime).map_err(|e| malformed(format!("runtime data: {e}")))?;
    let ak =
        runtime.keys.iter().find(|k| k.kid == "HCLAkPub" && k.kty == "RSA").ok_or_else(|| malformed("no HCLAkPub"))?;
    let int = |s: &str| URL_SAFE_NO_PAD.decode(s).map(|b| rsa::BigUint::from_bytes_be(&b)).map_err(malformed);
    let key = rsa::RsaPublicKey::new(int(&ak.n)?, int(&ak.e)?).map_err(malformed)?;
    let sig = rsa::pkcs1v15::Signature::try_from(ev.quote.signature.as_slice()).map_err(malformed)?;
    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
        .verify(&ev.quote.message, &sig)
        .map_err(|_| VerifyError::Invalid("the TPM quote is not signed by the HCL attestation key".into()))?;

    let mut m = ev.quote.message.as_slice();
    let magic = take(&mut m, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))?;
    let kind = take(&mut m, 2).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
    if magic != TPM_GENERATED || kind != TPM_ST_ATTEST_QUOTE {
        return Err(malformed("the TPM message is not a TPM-generated quote"));
    }
    let _signer = tpm2b(&mut m)?;
    let nonce = tpm2b(&mut m)?.to_vec();
    take(&mut m, 17 + 8)?; // clock info, firmware version
    let banks = take(&mut m, 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))?;
    let mut selected = Vec::new();
    for _ in 0..banks {
        let alg = take(&mut m, 2).map(|b| u16::from_be_bytes([b[0], b[1]]))?;
        let size = take(&mut m, 1)?[0] as usize;
        let bitmap = take(&mut m, size)?;
        if alg != TPM_ALG_SHA256 {
            return Err(malformed(format!("PCR bank {alg:#06x} is not SHA-256")));
        }
        for (byte, bits) in bitmap.iter().enumerate() {
            selected.extend((0..8).filter(|bit| bits & (1 << bit) != 0).map(|bit| byte * 8 + bit));
        }
    }
    let digest = tpm2b(&mut m)?;
    let mut h = Sha256::new();
    for i in &selected {
        let pcr = ev.quote.pcrs.get(*i).ok_or_else(|| malformed(format!("PCR{i} is selected but not given")))?;
        h.update(pcr);
    }
    if h.finalize().as_slice() != digest {
        return Err(VerifyError::Invalid("the PCR values do not match the quote's PCR digest".into()));
    }
    claims.raw.insert("tpm_nonce".into(), hex::encode(&nonce));
    for i in selected {
        claims.raw.insert(format!("tpm_pcr{i}"), hex::encode(&ev.quote.pcrs[i]));
    }
    Ok(claims)
}
