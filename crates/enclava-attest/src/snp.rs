//! SEV-SNP reports (v2, v3 and later): the VCEK (or VLEK) must chain ARK → ASK (or ASVK) → VEK
//! with the ARK one of the pinned AMD roots; every certificate valid at "now"; CRLs signed by the
//! ARK, current, and not revoking the intermediate; the report signed by the VEK over its first
//! 0x2A0 bytes; the VEK's TCB extensions equal to the report's `reported_tcb` (in its product
//! line's layout: Turin's puts FMC first), and its hwID matching `chip_id` as the product line
//! defines it (64 bytes on Milan and Genoa; 8 bytes then zeros from Turin on). An Azure HCL report is unwrapped, and its runtime data must be bound by report data.
//! The `sev` crate parses the report and checks the RSA-PSS chain; the rest is here.

use std::collections::BTreeMap;

use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::signature::Verifier as _;
use sev::certs::snp::{Certificate as SevCert, Chain, Verifiable, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::der::{Decode, Encode};

use crate::{Claims, Collateral, Platform, VerifyError, roots};

/// Size of an SNP attestation report.
pub const REPORT_LEN: usize = 1184;
const SIGNED_LEN: usize = 0x2A0;
type Oid = x509_cert::der::asn1::ObjectIdentifier;
// Compared as OIDs, not as text: a warm verification looks several up per report.
const OID_BL: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const OID_TEE: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const OID_SNP: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const OID_UCODE: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const OID_FMC: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
const OID_HWID: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.4");
const OID_PRODUCT: Oid = Oid::new_unwrap("1.3.6.1.4.1.3704.1.2");

fn invalid(m: impl Into<String>) -> VerifyError {
    VerifyError::Invalid(m.into())
}

fn parse_cert(der: &[u8], what: &str) -> Result<Certificate, VerifyError> {
    Certificate::from_der(der).map_err(|e| VerifyError::Malformed(format!("{what} is not an X.509 certificate: {e}")))
}

fn unix(t: &x509_cert::time::Time) -> u64 {
    t.to_unix_duration().as_secs()
}

fn subject_cn(c: &Certificate) -> String {
    c.tbs_certificate.subject.to_string()
}

/// Checks `now` lies in the certificate's validity window.
fn check_validity(c: &Certificate, what: &str, now: u64) -> Result<(), VerifyError> {
    let v = &c.tbs_certificate.validity;
    let (nb, na) = (unix(&v.not_before), unix(&v.not_after));
    if now < nb || now > na {
        return Err(VerifyError::ExpiredCollateral(format!(
            "{what} ({}) is valid from {} to {}, not at {}",
            subject_cn(c),
            crate::time::format_rfc3339(nb),
            crate::time::format_rfc3339(na),
            crate::time::format_rfc3339(now)
        )));
    }
    Ok(())
}

fn extension(c: &Certificate, oid: Oid) -> Option<&[u8]> {
    c.tbs_certificate.extensions.as_ref()?.iter().find(|e| e.extn_id == oid).map(|e| e.extn_value.as_bytes())
}

/// A TCB extension: a DER INTEGER (ucode 217 is `02 02 00 d9`).
fn tcb_extension(c: &Certificate, oid: Oid) -> Result<Option<u8>, VerifyError> {
    let Some(v) = extension(c, oid) else {
        return Ok(None);
    };
    let n =
        u64::from_der(v).map_err(|e| VerifyError::Malformed(format!("VEK extension {oid} is not an INTEGER: {e}")))?;
    u8::try_from(n).map(Some).map_err(|_| VerifyError::Malformed(format!("VEK extension {oid} is {n}, above 255")))
}

/// An Azure HCL report: returns the SNP report and checks its runtime data is bound.
fn unwrap_hcl(bytes: &[u8], raw: &mut BTreeMap<String, String>) -> Result<Vec<u8>, VerifyError> {
    let malformed = |m: &str| VerifyError::Malformed(format!("Azure HCL report: {m}"));
    let report = bytes.get(0x20..0x20 + REPORT_LEN).ok_or_else(|| malformed("too short"))?.to_vec();
    let len = bytes.get(0x4D0..0x4D4).ok_or_else(|| malformed("no runtime data"))?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let var_data = bytes.get(0x4D4..0x4D4 + len).ok_or_else(|| malformed("runtime data runs past the end"))?;
    let digest = Sha256::digest(var_data);
    let report_data = &report[0x50..0x90];
    if report_data[..32] != digest[..] || report_data[32..].iter().any(|b| *b != 0) {
        return Err(invalid("the HCL runtime data is not bound by the report's report data"));
    }
    raw.insert("hcl_runtime_data".into(), String::from_utf8_lossy(var_data).into_owned());
    Ok(report)
}

/// What a verified chain (pinned ARK → ASK/ASVK → VEK, with CRLs) establishes, and the window in
/// which it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainOk {
    pub product: &'static str,
    pub crl_checked: bool,
    pub from: u64,
    pub until: u64,
}

/// Unwraps an Azure HCL report if needed and parses the SNP report.
pub(crate) fn parse(
    report_bytes: &[u8],
    raw: &mut BTreeMap<String, String>,
) -> Result<(Vec<u8>, AttestationReport), VerifyError> {
    let bytes = if report_bytes.starts_with(b"HCLA") { unwrap_hcl(report_bytes, raw)? } else { report_bytes.to_vec() };
    if bytes.len() != REPORT_LEN {
        return Err(VerifyError::Malformed(format!("an SNP report is {REPORT_LEN} bytes, this is {}", bytes.len())));
    }
    let report = AttestationReport::from_bytes(&bytes)
        .map_err(|e| VerifyError::Malformed(format!("not an SNP attestation report: {e}")))?;
    Ok((bytes, report))
}

/// Parses the VEK (DER or PEM).
pub(crate) fn parse_vek(vek: &[u8]) -> Result<(Vec<u8>, Certificate), VerifyError> {
    let der = roots::der_or_pem(vek).map_err(|e| VerifyError::Malformed(format!("VEK: {e}")))?;
    let cert = parse_cert(&der, "the VEK")?;
    Ok((der, cert))
}

/// Checks the chain from a pinned ARK through the collateral's ASK/ASVK to the VEK, the validity of
/// every certificate, and the ARK's CRLs, at `now`.
pub(crate) fn check_chain(
    vek_der: &[u8],
    vek_x509: &Certificate,
    collateral: &Collateral,
    now: u64,
) -> Result<ChainOk, VerifyError> {
    let vek_sev = SevCert::from_der(vek_der).map_err(|e| VerifyError::Malformed(format!("VEK: {e}")))?;
    let arks = roots::amd_arks();
    let mut chain_found = None;
    let mut last_error = String::from("no ASK or ASVK in the collateral");
    'search: for inter_der in collateral.amd_certs.iter().filter(|d| !arks.iter().any(|(_, a)| a == *d)) {
        let Ok(inter_sev) = SevCert::from_der(inter_der) else { continue };
        for (product, ark_der) in &arks {
            let Ok(ark_sev) = SevCert::from_der(ark_der) else { continue };
            let chain = Chain { ca: ca::Chain { ark: ark_sev, ask: inter_sev.clone() }, vek: vek_sev.clone() };
            match (&chain).verify() {
                Ok(_) => {
                    chain_found = Some((*product, ark_der.clone(), inter_der.clone()));
                    break 'search;
                }
                Err(e) => last_error = e.to_string(),
            }
        }
    }
    let Some((product, ark_der, inter_der)) = chain_found else {
        if collateral.amd_certs.is_empty() {
            return Err(VerifyError::MissingCollateral("an SNP report needs the AMD ASK (or ASVK) certificate".into()));
        }
        return Err(invalid(format!("the VEK does not chain to a pinned AMD root: {last_error}")));
    };
    let ark = parse_cert(&ark_der, "the ARK")?;
    let inter = parse_cert(&inter_der, "the ASK")?;
    let (mut from, mut until) = (0u64, u64::MAX);
    for (c, what) in [(&ark, "the ARK"), (&inter, "the ASK/ASVK"), (vek_x509, "the VEK")] {
        check_validity(c, what, now)?;
        // RFC 5280 4.1.1.2: the unsigned outer algorithm must repeat the signed one.
        if c.signature_algorithm != c.tbs_certificate.signature {
            return Err(invalid(format!("{what}'s signature algorithm differs from the one it signed")));
        }
        from = from.max(unix(&c.tbs_certificate.validity.not_before));
        until = until.min(unix(&c.tbs_certificate.validity.not_after));
    }

    // CRLs issued by this ARK: signed by it, current, and not revoking the intermediate.
    let ark_key =
        rsa::RsaPublicKey::from_pkcs1_der(ark.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes())
            .map_err(|e| VerifyError::Malformed(format!("ARK key: {e}")))?;
    let mut crl_checked = false;
    for crl_der in &collateral.amd_crls {
        let crl = CertificateList::from_der(crl_der).map_err(|e| VerifyError::Malformed(format!("not a CRL: {e}")))?;
        if crl.tbs_cert_list.issuer != ark.tbs_certificate.subject {
            continue;
        }
        let tbs = crl.tbs_cert_list.to_der().map_err(|e| VerifyError::Malformed(format!("CRL: {e}")))?;
        let sig = rsa::pss::Signature::try_from(crl.signature.raw_bytes())
            .map_err(|e| invalid(format!("CRL signature: {e}")))?;
        rsa::pss::VerifyingKey::<sha2::Sha384>::new(ark_key.clone())
            .verify(&tbs, &sig)
            .map_err(|_| invalid("the CRL is not signed by the ARK"))?;
        let this = unix(&crl.tbs_cert_list.this_update);
        let next = crl.tbs_cert_list.next_update.as_ref().map(unix).unwrap_or(u64::MAX);
        if now < this || now > next {
            return Err(VerifyError::ExpiredCollateral(format!(
                "the {product} CRL is current from {} to {}",
                crate::time::format_rfc3339(this),
                crate::time::format_rfc3339(next)
            )));
        }
        for r in crl.tbs_cert_list.revoked_certificates.iter().flatten() {
            for c in [&inter, vek_x509] {
                if r.serial_number == c.tbs_certificate.serial_number
                    && c.tbs_certificate.issuer == crl.tbs_cert_list.issuer
                {
                    return Err(invalid(format!("{} is revoked by the {product} CRL", subject_cn(c))));
                }
            }
        }
        from = from.max(this);
        until = until.min(next);
        crl_checked = true;
    }
    Ok(ChainOk { product, crl_checked, from, until })
}

/// Checks the report itself against a VEK whose chain is known good: its signature over the raw
/// bytes, its reserved signature bytes, and the VEK's TCB and chip id; returns the claims.
pub(crate) fn check_report(
    bytes: &[u8],
    report: &AttestationReport,
    vek_x509: &Certificate,
    chain: &ChainOk,
    mut raw: BTreeMap<String, String>,
) -> Result<Claims, VerifyError> {
    // r and s are 72-byte little-endian fields holding 48-byte values; the rest of the 512-byte
    // signature area is reserved and must be zero.
    if bytes[0x2D0..0x2E8].iter().chain(&bytes[0x318..0x4A0]).any(|b| *b != 0) {
        return Err(invalid("the report's signature area has non-zero reserved bytes"));
    }
    let mut sig = [0u8; 96];
    for (i, b) in bytes[0x2A0..0x2D0].iter().rev().enumerate() {
        sig[i] = *b;
    }
    for (i, b) in bytes[0x2E8..0x318].iter().rev().enumerate() {
        sig[48 + i] = *b;
    }
    let key = vek_x509.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
    if !crate::p384_verify(key, &bytes[..SIGNED_LEN], &sig) {
        return Err(invalid("the report is not signed by the VEK"));
    }

    // The VEK certifies this TCB and this chip.
    let t = &report.reported_tcb;
    for (oid, name, want) in [
        (OID_BL, "bootloader", Some(t.bootloader)),
        (OID_TEE, "tee", Some(t.tee)),
        (OID_SNP, "snp", Some(t.snp)),
        (OID_UCODE, "microcode", Some(t.microcode)),
        (OID_FMC, "fmc", t.fmc),
    ] {
        let have = tcb_extension(vek_x509, oid)?;
        if let (Some(h), Some(w)) = (have, want)
            && h != w
        {
            return Err(invalid(format!("the VEK certifies {name} SVN {h}, the report's reported TCB says {w}")));
        }
        if have.is_none() && oid != OID_FMC {
            return Err(VerifyError::Malformed(format!("the VEK lacks its {name} TCB extension")));
        }
    }
    if let Some(hwid) = extension(vek_x509, OID_HWID) {
        check_chip_id(hwid, &report.chip_id, chain.product)?;
    }

    let signing = if report.key_info.signing_key() == 1 { "vlek" } else { "vcek" };
    raw.insert("version".into(), report.version.to_string());
    raw.insert("policy".into(), format!("{:#x}", report.policy.0));
    raw.insert("vmpl".into(), report.vmpl.to_string());
    let fmc = t.fmc.map(|f| format!("fmc {f} ")).unwrap_or_default();
    raw.insert(
        "reported_tcb".into(),
        format!("{fmc}bl {} tee {} snp {} ucode {}", t.bootloader, t.tee, t.snp, t.microcode),
    );
    raw.insert("chip_id".into(), hex::encode(report.chip_id));
    raw.insert("host_data".into(), hex::encode(report.host_data));
    raw.insert("family_id".into(), hex::encode(report.family_id));
    raw.insert("image_id".into(), hex::encode(report.image_id));
    raw.insert("author_key_digest".into(), hex::encode(report.author_key_digest));
    raw.insert("report_id".into(), hex::encode(report.report_id));
    raw.insert("signing_key".into(), signing.into());
    raw.insert("product".into(), chain.product.into());
    raw.insert("crl_checked".into(), chain.crl_checked.to_string());
    if let Some(p) = extension(vek_x509, OID_PRODUCT) {
        raw.insert(
            "vek_product".into(),
            String::from_utf8_lossy(p).trim_matches(|c: char| !c.is_ascii_graphic()).into(),
        );
    }
    Ok(Claims {
        platform: Platform::SevSnp,
        measurement: report.measurement.to_vec(),
        signer: report.id_key_digest.to_vec(),
        product_id: None,
        security_version: Some(report.guest_svn),
        tcb_status: None,
        advisories: Vec::new(),
        debug: report.policy.debug_allowed(),
        report_data: report.report_data.to_vec(),
        issued_at: None,
        raw,
    })
}

/// Checks that a VCEK was issued for the chip that signed the report, as AMD's VCEK specification
/// (57230, "hwID") has it per product line: on Milan and Genoa the hwID is the report's whole
/// 64-byte CHIP_ID; from Turin on it is 8 bytes, and the report's CHIP_ID holds those 8 bytes
/// followed by 56 zero bytes. `product` is the line whose ARK the VCEK chains to.
pub fn check_chip_id(hwid: &[u8], chip_id: &[u8; 64], product: &str) -> Result<(), VerifyError> {
    let other = || invalid("the VCEK was issued for another chip (hwID differs from chip_id)");
    match (hwid.len(), product) {
        (64, "Milan" | "Genoa") => (hwid == chip_id.as_slice()).then_some(()).ok_or_else(other),
        (8, p) if p != "Milan" && p != "Genoa" => {
            if chip_id[..8] != *hwid {
                return Err(other());
            }
            if chip_id[8..].iter().any(|b| *b != 0) {
                return Err(invalid(format!("a {p} report's CHIP_ID must be its 8-byte hwID followed by zeros")));
            }
            Ok(())
        }
        (n, p) => Err(VerifyError::Malformed(format!("a {p} VCEK's hwID is {n} bytes, not what AMD issues for {p}"))),
    }
}

/// The envelope's tag: JSON `{"enclava": "sev-snp/v1", "report", "vek", "chain"}`, binary fields in
/// base64. A report is useless without its VEK, so a node publishes (and sends for key release)
/// all three together.
pub const ENVELOPE_TAG: &str = "sev-snp/v1";
/// The largest envelope read (a report, a VEK and an ASK/ARK chain are about 6 KiB).
pub const MAX_ENVELOPE: usize = 64 * 1024;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    enclava: String,
    report: String,
    vek: String,
    #[serde(default)]
    chain: Vec<String>,
}

/// An SNP report with its VEK (DER or PEM) and carried chain (DER), as one evidence blob.
pub fn encode_envelope(report: &[u8], vek: &[u8], chain: &[Vec<u8>]) -> Vec<u8> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let e = Envelope {
        enclava: ENVELOPE_TAG.into(),
        report: b64(report),
        vek: b64(vek),
        chain: chain.iter().map(|c| b64(c)).collect(),
    };
    serde_json::to_vec(&e).unwrap_or_default()
}

/// Whether `bytes` is meant as an SNP envelope (it may still be malformed).
pub fn looks_like_envelope(bytes: &[u8]) -> bool {
    bytes.first() == Some(&b'{') && bytes.windows(ENVELOPE_TAG.len()).any(|w| w == ENVELOPE_TAG.as_bytes())
}

/// Reads an SNP envelope.
pub fn decode_envelope(bytes: &[u8]) -> Result<crate::Evidence, VerifyError> {
    use base64::Engine;
    let bad = |m: String| VerifyError::Malformed(format!("SEV-SNP envelope: {m}"));
    if bytes.len() > MAX_ENVELOPE {
        return Err(bad(format!("{} bytes, more than {MAX_ENVELOPE}", bytes.len())));
    }
    let e: Envelope = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if e.enclava != ENVELOPE_TAG {
        return Err(bad(format!("unknown version {}", enclava_core::text::quote(&e.enclava))));
    }
    if e.chain.len() > 8 {
        return Err(bad(format!("{} chain certificates, at most 8", e.chain.len())));
    }
    let d = |what: &str, s: &str| {
        base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| bad(format!("{what} is not base64")))
    };
    let report = d("report", &e.report)?;
    if report.len() != REPORT_LEN && !report.starts_with(b"HCLA") {
        return Err(bad(format!("the report is {} bytes, not {REPORT_LEN}", report.len())));
    }
    Ok(crate::Evidence::SevSnp {
        report,
        vek: d("vek", &e.vek)?,
        chain: e.chain.iter().map(|c| d("a chain certificate", c)).collect::<Result<_, _>>()?,
    })
}

/// What an entry of the host's certificate table is (GHCB spec, "SNP extended guest request").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    Vcek,
    Vlek,
    Ask,
    Ark,
    Other,
}

/// GUIDs of the certificate table, in their in-memory (mixed-endian) byte order.
const CERT_GUIDS: [([u8; 16], CertKind); 4] = [
    // 63da758d-e664-4564-adc5-f4b93be8accd
    ([0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd], CertKind::Vcek),
    // a8074bc2-a25a-483e-aae6-39c045a0b8a1
    ([0xc2, 0x4b, 0x07, 0xa8, 0x5a, 0xa2, 0x3e, 0x48, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1], CertKind::Vlek),
    // 4ab7b379-bbac-4fe4-a02f-05aef327c782
    ([0x79, 0xb3, 0xb7, 0x4a, 0xac, 0xbb, 0xe4, 0x4f, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82], CertKind::Ask),
    // c0b406a4-a803-4952-9743-3fb6014cd0ae
    ([0xa4, 0x06, 0xb4, 0xc0, 0x03, 0xa8, 0x52, 0x49, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae], CertKind::Ark),
];

/// Reads the host's certificate table (configfs-tsm's `auxblob`, the extended report's data):
/// 24-byte entries `{guid, offset u32 LE, length u32 LE}` ended by an all-zero entry, offsets from
/// the table's start.
pub fn parse_cert_table(table: &[u8]) -> Result<Vec<(CertKind, Vec<u8>)>, VerifyError> {
    let bad = |m: &str| VerifyError::Malformed(format!("SNP certificate table: {m}"));
    let mut out = Vec::new();
    for (i, entry) in table.chunks(24).enumerate() {
        if entry.len() < 24 {
            return Err(bad("it ends inside an entry"));
        }
        if entry.iter().all(|b| *b == 0) {
            return Ok(out);
        }
        if i >= 16 {
            return Err(bad("more than 16 entries"));
        }
        let guid: [u8; 16] = entry[..16].try_into().map_err(|_| bad("short entry"))?;
        let offset = u32::from_le_bytes([entry[16], entry[17], entry[18], entry[19]]) as usize;
        let len = u32::from_le_bytes([entry[20], entry[21], entry[22], entry[23]]) as usize;
        let cert = offset
            .checked_add(len)
            .and_then(|end| table.get(offset..end))
            .ok_or_else(|| bad("an entry points past its end"))?;
        let kind = CERT_GUIDS.iter().find(|(g, _)| *g == guid).map_or(CertKind::Other, |(_, k)| *k);
        out.push((kind, cert.to_vec()));
    }
    Err(bad("no terminating entry"))
}

/// Builds a certificate table (for tests and tools).
pub fn build_cert_table(certs: &[(CertKind, &[u8])]) -> Vec<u8> {
    let header = (certs.len() + 1) * 24;
    let mut table = vec![0u8; header];
    let mut body = Vec::new();
    for (i, (kind, cert)) in certs.iter().enumerate() {
        let guid = CERT_GUIDS.iter().find(|(_, k)| k == kind).map_or([0xff; 16], |(g, _)| *g);
        let e = &mut table[i * 24..i * 24 + 24];
        e[..16].copy_from_slice(&guid);
        e[16..20].copy_from_slice(&((header + body.len()) as u32).to_le_bytes());
        e[20..24].copy_from_slice(&(cert.len() as u32).to_le_bytes());
        body.extend_from_slice(cert);
    }
    table.extend(body);
    table
}

/// The SNP envelope for a report and the host's certificate table: the VCEK (or VLEK) as the VEK,
/// the ASK and ARK as its chain.
pub fn envelope_from_table(report: &[u8], table: &[u8]) -> Result<Vec<u8>, VerifyError> {
    let certs = parse_cert_table(table)?;
    let vek =
        certs.iter().find(|(k, _)| matches!(k, CertKind::Vcek | CertKind::Vlek)).map(|(_, c)| c.clone()).ok_or_else(
            || {
                VerifyError::MissingCollateral(
                "the host's certificate table has no VCEK or VLEK: install them on the host (e.g. `snphost import`)"
                    .into(),
            )
            },
        )?;
    let chain: Vec<Vec<u8>> =
        certs.into_iter().filter(|(k, _)| matches!(k, CertKind::Ask | CertKind::Ark)).map(|(_, c)| c).collect();
    Ok(encode_envelope(report, &vek, &chain))
}

/// The launch measurement of a raw SNP report, unverified (what a node says about itself).
pub fn report_measurement(report: &[u8]) -> Option<&[u8]> {
    (report.len() == REPORT_LEN).then(|| &report[0x90..0xC0])
}

/// `collateral` with the certificates carried in the evidence added (they are checked against the
/// pinned ARKs like any other).
pub fn with_chain<'a>(collateral: &'a Collateral, chain: &[Vec<u8>]) -> std::borrow::Cow<'a, Collateral> {
    if chain.is_empty() {
        return std::borrow::Cow::Borrowed(collateral);
    }
    let mut c = collateral.clone();
    for cert in chain {
        if !c.amd_certs.contains(cert) {
            c.amd_certs.push(cert.clone());
        }
    }
    std::borrow::Cow::Owned(c)
}

/// The AMD product line a VEK names (`Milan`, `Genoa`, `Turin`, …, without the stepping), from its
/// productName extension: which KDS chain and CRL to fetch.
pub fn product_of(vek: &[u8]) -> Option<String> {
    let (_, cert) = parse_vek(vek).ok()?;
    let raw = extension(&cert, OID_PRODUCT)?;
    let text = String::from_utf8_lossy(raw);
    let name: String =
        text.chars().skip_while(|c| !c.is_ascii_alphabetic()).take_while(|c| c.is_ascii_alphanumeric()).collect();
    (!name.is_empty()).then_some(name)
}

/// Verifies an SNP report (or an Azure HCL report holding one) signed by `vek` (DER or PEM).
pub fn verify(report_bytes: &[u8], vek: &[u8], collateral: &Collateral, now: u64) -> Result<Claims, VerifyError> {
    let mut raw = BTreeMap::new();
    let (bytes, report) = parse(report_bytes, &mut raw)?;
    let (vek_der, vek_x509) = parse_vek(vek)?;
    let chain = check_chain(&vek_der, &vek_x509, collateral, now)?;
    check_report(&bytes, &report, &vek_x509, &chain, raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_tables_round_trip_and_refuse_garbage() {
        let t = build_cert_table(&[(CertKind::Vcek, b"vcek"), (CertKind::Ask, b"ask"), (CertKind::Ark, b"ark")]);
        let certs = parse_cert_table(&t).expect("parses");
        assert_eq!(certs[0], (CertKind::Vcek, b"vcek".to_vec()));
        assert_eq!(certs[2], (CertKind::Ark, b"ark".to_vec()));
        for bad in [&t[..30], &t[..24]] {
            assert!(parse_cert_table(bad).is_err());
        }
        let mut past = t.clone();
        past[16] = 0xff;
        assert!(parse_cert_table(&past).is_err(), "offset past the end");
        let none = build_cert_table(&[(CertKind::Ask, b"ask")]);
        assert!(matches!(envelope_from_table(&[0; REPORT_LEN], &none), Err(VerifyError::MissingCollateral(_))));
    }

    #[test]
    fn chip_ids_follow_each_product_line() {
        let mut chip = [0u8; 64];
        chip[..8].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(check_chip_id(&chip[..8], &chip, "Turin").is_ok());
        assert!(check_chip_id(&chip, &chip, "Milan").is_ok());
        assert!(check_chip_id(&chip, &chip, "Genoa").is_ok());
        // An 8-byte hwID means nothing on Milan; a 64-byte one nothing on Turin.
        assert!(matches!(check_chip_id(&chip[..8], &chip, "Milan"), Err(VerifyError::Malformed(_))));
        assert!(matches!(check_chip_id(&chip, &chip, "Turin"), Err(VerifyError::Malformed(_))));
        let mut other = chip;
        other[3] ^= 1;
        assert!(matches!(check_chip_id(&other[..8], &chip, "Turin"), Err(VerifyError::Invalid(_))));
        let mut tail = chip;
        tail[40] = 1;
        let err = check_chip_id(&chip[..8], &tail, "Turin").expect_err("non-zero tail");
        assert!(err.to_string().contains("followed by zeros"), "{err}");
    }
}
