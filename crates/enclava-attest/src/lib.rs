//! Evidence in, claims out: one verifier for SGX DCAP quotes, TDX quotes, SEV-SNP reports, AWS
//! Nitro attestation documents and Enclava's simulated TEE, and one policy check over the claims.
//! It knows nothing of networks, Redis or storage; "now" is always an argument.
//!
//! # Layout
//! - [`claims`]: the normalised claims every format yields.
//! - [`dcap`]: SGX and TDX quotes, with `dcap-qvl` and Intel collateral.
//! - [`snp`]: SEV-SNP reports: AMD chain (VCEK or VLEK), CRLs, report signature, TCB and chip id.
//! - [`azure`]: Azure vTPM evidence: an HCL-wrapped SNP report plus a TPM2 quote it binds.
//! - [`nitro`]: AWS Nitro attestation documents (COSE_Sign1, chain to the AWS root).
//! - [`sim`]: the simulated TEE: a per-deployment root, certified hardware keys, signed evidence.
//! - [`policy`]: what a relying party accepts, and `check` that lists every failed rule.
//! - [`binding`]: report data that binds a public key (and a nonce) to evidence.
//! - [`roots`]: pinned trust anchors (Intel SGX root, AMD ARKs, AWS Nitro root).
//! - [`warm`]: a verifier that caches per-platform checks within their collateral windows.

pub mod azure;
pub mod binding;
pub mod claims;
pub mod dcap;
pub mod floor;
pub mod nitro;
pub mod policy;
pub mod roots;
pub mod sim;
pub mod snp;
pub mod time;
pub mod warm;

pub use claims::{Claims, Platform};
pub use policy::{Policy, Verdict};

/// Verifies an ECDSA P-384/SHA-384 signature (`r || s`, 96 bytes) by an uncompressed SEC1 public
/// key, with AWS-LC: the one signature SEV-SNP and Nitro evidence each carry, and the whole cost of
/// a warm SNP verification.
pub fn p384_verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED, public_key)
        .verify(message, signature)
        .is_ok()
}

/// Why evidence did not verify. Every variant says what failed in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The input cannot be read as evidence of the claimed kind (unusable input).
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// Collateral, a certificate or a CRL is not valid at the verification time.
    #[error("expired collateral: {0}")]
    ExpiredCollateral(String),
    /// Collateral needed for this evidence was not given.
    #[error("missing collateral: {0}")]
    MissingCollateral(String),
    /// A signature or certificate chain does not verify, or a certificate is revoked.
    #[error("verification failed: {0}")]
    Invalid(String),
    /// Signatures verify but the platform's TCB matches no known level.
    #[error("TCB not supported: {0}")]
    TcbNotSupported(String),
}

impl VerifyError {
    /// Whether the input itself was unusable (exit status 2), rather than evidence that failed (1).
    pub fn is_unusable_input(&self) -> bool {
        matches!(self, VerifyError::Malformed(_) | VerifyError::MissingCollateral(_))
    }
}

/// Evidence of one platform, as produced by the TEE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// An SGX (v3) or TDX (v4, v5) DCAP quote.
    Dcap(Vec<u8>),
    /// An SEV-SNP attestation report, the VCEK or VLEK that signed it (DER or PEM), and any AMD
    /// certificates carried with it (the ASK or ASVK, the ARK: checked against the pinned ARKs like
    /// collateral). Published and released as [`snp::encode_envelope`].
    SevSnp { report: Vec<u8>, vek: Vec<u8>, chain: Vec<Vec<u8>> },
    /// Azure vTPM evidence (JSON: HCL report, VCEK, TPM2 quote); verified as SEV-SNP.
    AzureVtpm(Vec<u8>),
    /// An AWS Nitro attestation document (COSE_Sign1, raw CBOR or base64).
    Nitro(Vec<u8>),
    /// Enclava sim evidence.
    Sim(Vec<u8>),
}

impl Evidence {
    /// The platform this evidence claims to come from (before any verification).
    pub fn platform(&self) -> Platform {
        match self {
            Evidence::Dcap(q) if q.get(4..8) == Some(&[0x81, 0, 0, 0]) => Platform::Tdx,
            Evidence::Dcap(_) => Platform::Sgx,
            Evidence::SevSnp { .. } | Evidence::AzureVtpm(_) => Platform::SevSnp,
            Evidence::Nitro(_) => Platform::Nitro,
            Evidence::Sim(_) => Platform::Sim,
        }
    }

    /// Recognises the format of a single evidence file: a DCAP quote, an SNP envelope (report, VEK
    /// and chain), Azure vTPM evidence, a Nitro document, or sim evidence. A raw SNP report needs its
    /// VEK beside it, so it is refused here.
    pub fn detect(bytes: Vec<u8>) -> Result<Evidence, VerifyError> {
        if bytes.starts_with(sim::MAGIC) {
            return Ok(Evidence::Sim(bytes));
        }
        if bytes.len() >= 8 {
            let version = u16::from_le_bytes([bytes[0], bytes[1]]);
            let tee = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
            if matches!(version, 3..=5) && matches!(tee, 0 | 0x81) {
                return Ok(Evidence::Dcap(bytes));
            }
        }
        if bytes.len() == snp::REPORT_LEN || bytes.starts_with(b"HCLA") {
            return Err(VerifyError::MissingCollateral(
                "an SEV-SNP report needs the VCEK or VLEK that signed it (--certs vcek.der,ask.pem,ark.pem)".into(),
            ));
        }
        if snp::looks_like_envelope(&bytes) {
            return snp::decode_envelope(&bytes);
        }
        if azure::looks_like(&bytes) {
            return Ok(Evidence::AzureVtpm(bytes));
        }
        if nitro::looks_like(&bytes) {
            return Ok(Evidence::Nitro(bytes));
        }
        Err(VerifyError::Malformed("not a DCAP quote, SEV-SNP report, Nitro document or sim evidence".into()))
    }
}

/// What evidence is checked against, besides the pinned roots.
#[derive(Debug, Clone, Default)]
pub struct Collateral {
    /// Intel collateral for a DCAP quote (TCB info, QE identity, CRLs, issuer chains).
    pub dcap: Option<dcap_qvl::QuoteCollateralV3>,
    /// AMD certificates (DER): the ASK or ASVK, and the ARK, which must be a pinned ARK.
    pub amd_certs: Vec<Vec<u8>>,
    /// AMD CRLs (DER), each signed by an ARK.
    pub amd_crls: Vec<Vec<u8>>,
    /// This deployment's sim root public key.
    pub sim_root: Option<sim::RootPublicKey>,
}

/// Verifies evidence against collateral at `now` (Unix seconds) and returns its claims.
pub fn verify(evidence: &Evidence, collateral: &Collateral, now: u64) -> Result<Claims, VerifyError> {
    match evidence {
        Evidence::Dcap(quote) => dcap::verify(quote, collateral, now),
        Evidence::SevSnp { report, vek, chain } => snp::verify(report, vek, &snp::with_chain(collateral, chain), now),
        Evidence::AzureVtpm(json) => azure::verify(json, collateral, now),
        Evidence::Nitro(doc) => nitro::verify(doc, now),
        Evidence::Sim(bytes) => sim::verify(bytes, collateral, now),
    }
}
