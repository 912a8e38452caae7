//! AWS Nitro Enclaves attestation documents: a COSE_Sign1 (ES384) whose payload is a CBOR map.
//! The signing certificate must chain through the document's CA bundle to the pinned AWS Nitro
//! root, valid at "now"; the signature must verify with its key. PCR0 is the measurement; a debug
//! enclave reports PCR0, PCR1 and PCR2 as zeros.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use ciborium::Value;
use coset::{CborSerializable, CoseSign1, TaggedCborSerializable, iana};
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha512};
use x509_cert::der::Decode;

use crate::{Claims, Platform, VerifyError, roots};

/// Whether `bytes` looks like a Nitro document (CBOR array of four, tagged or not, or base64 of one).
pub fn looks_like(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x84) | Some(0xD2))
        || decode_base64(bytes).is_some_and(|b| matches!(b.first(), Some(0x84) | Some(0xD2)))
}

fn decode_base64(bytes: &[u8]) -> Option<Vec<u8>> {
    let text: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn malformed(m: impl std::fmt::Display) -> VerifyError {
    VerifyError::Malformed(format!("Nitro document: {m}"))
}

fn field<'a>(map: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    map.iter().find(|(k, _)| k.as_text() == Some(name)).map(|(_, v)| v)
}

fn bytes_field(map: &[(Value, Value)], name: &str) -> Result<Option<Vec<u8>>, VerifyError> {
    match field(map, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bytes(b)) => Ok(Some(b.clone())),
        Some(_) => Err(malformed(format!("{name} is not a byte string"))),
    }
}

/// A parsed, not yet verified, Nitro document.
pub(crate) struct Parsed {
    sign1: CoseSign1,
    map: Vec<(Value, Value)>,
    pub leaf: Vec<u8>,
    pub bundle: Vec<Vec<u8>>,
}

/// Parses a Nitro attestation document (raw CBOR or base64).
pub(crate) fn parse(document: &[u8]) -> Result<Parsed, VerifyError> {
    let bytes = if matches!(document.first(), Some(0x84) | Some(0xD2)) {
        document.to_vec()
    } else {
        decode_base64(document).ok_or_else(|| malformed("neither CBOR nor base64"))?
    };
    let sign1 = CoseSign1::from_slice(&bytes)
        .or_else(|_| CoseSign1::from_tagged_slice(&bytes))
        .map_err(|e| malformed(format!("not a COSE_Sign1: {e:?}")))?;
    if sign1.protected.header.alg != Some(coset::Algorithm::Assigned(iana::Algorithm::ES384)) {
        return Err(malformed("the signature algorithm is not ES384"));
    }
    let payload = sign1.payload.as_deref().ok_or_else(|| malformed("no payload"))?;
    let doc: Value = ciborium::de::from_reader(payload).map_err(|e| malformed(format!("payload is not CBOR: {e}")))?;
    let map = doc.into_map().map_err(|_| malformed("payload is not a map"))?;
    let leaf = bytes_field(&map, "certificate")?.ok_or_else(|| malformed("no certificate"))?;
    let bundle: Vec<Vec<u8>> = field(&map, "cabundle")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no cabundle"))?
        .iter()
        .map(|c| c.as_bytes().cloned().ok_or_else(|| malformed("cabundle entry")))
        .collect::<Result<_, _>>()?;
    Ok(Parsed { sign1, map, leaf, bundle })
}

/// Checks the certificate chain at `now`: `cabundle[0]` is the pinned root, the rest intermediates.
/// Returns the window in which every certificate of the chain is valid.
pub(crate) fn check_chain(p: &Parsed, now: u64) -> Result<(u64, u64), VerifyError> {
    let root = roots::aws_nitro_root();
    if p.bundle.first() != Some(&root) {
        return Err(VerifyError::Invalid("the CA bundle does not start with the pinned AWS Nitro root".into()));
    }
    let root_der = CertificateDer::from(root.as_slice());
    let anchor = webpki::anchor_from_trusted_cert(&root_der).map_err(|e| malformed(format!("AWS root: {e:?}")))?;
    let intermediates: Vec<CertificateDer<'_>> =
        p.bundle[1..].iter().map(|c| CertificateDer::from(c.as_slice())).collect();
    let leaf_der = CertificateDer::from(p.leaf.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| malformed(format!("certificate: {e:?}")))?;
    ee.verify_for_usage(
        &[webpki::aws_lc_rs::ECDSA_P384_SHA384, webpki::aws_lc_rs::ECDSA_P256_SHA256],
        &[anchor],
        &intermediates,
        UnixTime::since_unix_epoch(Duration::from_secs(now)),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => VerifyError::ExpiredCollateral(
            format!("the Nitro certificate chain is not valid at {}: {e:?}", crate::time::format_rfc3339(now)),
        ),
        e => VerifyError::Invalid(format!("the Nitro certificate does not chain to the AWS root: {e:?}")),
    })?;
    let (mut from, mut until) = (0u64, u64::MAX);
    for der in p.bundle.iter().chain(std::iter::once(&p.leaf)) {
        let c = x509_cert::Certificate::from_der(der).map_err(|e| malformed(format!("certificate: {e}")))?;
        from = from.max(c.tbs_certificate.validity.not_before.to_unix_duration().as_secs());
        until = until.min(c.tbs_certificate.validity.not_after.to_unix_duration().as_secs());
    }
    Ok((from, until))
}

/// Checks the COSE signature with the (already chained) leaf key and returns the claims.
pub(crate) fn check_document(p: &Parsed) -> Result<Claims, VerifyError> {
    let cert = x509_cert::Certificate::from_der(&p.leaf).map_err(|e| malformed(format!("certificate: {e}")))?;
    let key = cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes().to_vec();
    p.sign1
        .verify_signature(
            b"",
            |sig, data| {
                if crate::p384_verify(&key, data, sig) { Ok(()) } else { Err("signature mismatch") }
            },
        )
        .map_err(|e| VerifyError::Invalid(format!("the document signature does not verify ({e})")))?;
    let map = &p.map;
    let text = |name: &str| field(map, name).and_then(Value::as_text).map(str::to_owned);
    let module_id = text("module_id").ok_or_else(|| malformed("no module_id"))?;
    if text("digest").as_deref() != Some("SHA384") {
        return Err(malformed("digest is not SHA384"));
    }
    let timestamp = field(map, "timestamp")
        .and_then(Value::as_integer)
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| malformed("no timestamp"))?;
    let mut pcrs = BTreeMap::new();
    for (k, v) in field(map, "pcrs").and_then(Value::as_map).ok_or_else(|| malformed("no pcrs"))? {
        let index = k.as_integer().and_then(|i| u8::try_from(i).ok()).ok_or_else(|| malformed("PCR index"))?;
        let value = v.as_bytes().ok_or_else(|| malformed("PCR value"))?;
        if !matches!(value.len(), 32 | 48 | 64) {
            return Err(malformed(format!("PCR{index} has {} bytes", value.len())));
        }
        pcrs.insert(index, value.clone());
    }
    let user_data = bytes_field(map, "user_data")?;
    let report_data = match &user_data {
        Some(u) if u.len() <= 64 => {
            let mut rd = u.clone();
            rd.resize(64, 0);
            rd
        }
        Some(u) => Sha512::digest(u).to_vec(),
        None => vec![0; 64],
    };
    let zero = |i: u8| pcrs.get(&i).is_some_and(|v| v.iter().all(|b| *b == 0));
    let mut raw = BTreeMap::from([("module_id".to_owned(), module_id)]);
    for (i, v) in &pcrs {
        raw.insert(format!("pcr{i}"), hex::encode(v));
    }
    for name in ["nonce", "public_key", "user_data"] {
        if let Some(v) = bytes_field(map, name)? {
            raw.insert(name.into(), hex::encode(v));
        }
    }
    Ok(Claims {
        platform: Platform::Nitro,
        measurement: pcrs.get(&0).cloned().ok_or_else(|| malformed("no PCR0"))?,
        signer: pcrs.get(&8).cloned().unwrap_or_default(),
        product_id: None,
        security_version: None,
        tcb_status: None,
        advisories: Vec::new(),
        debug: zero(0) && zero(1) && zero(2),
        report_data,
        issued_at: Some(timestamp / 1000),
        raw,
    })
}

/// Verifies a Nitro attestation document (raw CBOR or base64) at `now`.
pub fn verify(document: &[u8], now: u64) -> Result<Claims, VerifyError> {
    let p = parse(document)?;
    check_chain(&p, now)?;
    check_document(&p)
}
