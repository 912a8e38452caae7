//! Pinned trust anchors, public documents shipped with the code: the Intel SGX root CA, the AMD
//! ARKs of Milan, Genoa and Turin, and the AWS Nitro Enclaves root. A copy inside evidence or
//! collateral is trusted only when it is byte-identical to one of these.

/// Intel SGX Root CA (DER), SHA-256 `44a0196b…74d3`.
pub const INTEL_SGX_ROOT_CA: &[u8] = include_bytes!("../roots/intel_sgx_root_ca.der");
/// AWS Nitro Enclaves Root-G1 (PEM), SHA-256 `641a0321…bb5b`.
pub const AWS_NITRO_ROOT_PEM: &str = include_str!("../roots/aws_nitro_enclaves_root_g1.pem");
/// AMD root keys (PEM) by product.
pub const AMD_ARKS_PEM: &[(&str, &str)] = &[
    ("Milan", include_str!("../roots/milan_ark.pem")),
    ("Genoa", include_str!("../roots/genoa_ark.pem")),
    ("Turin", include_str!("../roots/turin_ark.pem")),
];

/// Decodes every certificate in a PEM text to DER.
pub fn pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for block in pem.split("-----BEGIN CERTIFICATE-----").skip(1) {
        let end = block.find("-----END CERTIFICATE-----").ok_or("unterminated PEM certificate")?;
        let pem = format!("-----BEGIN CERTIFICATE-----{}-----END CERTIFICATE-----\n", &block[..end]);
        let (label, der) = der::pem::decode_vec(pem.as_bytes()).map_err(|e| format!("bad PEM certificate: {e}"))?;
        if label != "CERTIFICATE" {
            return Err(format!("unexpected PEM label {label}"));
        }
        out.push(der);
    }
    Ok(out)
}

/// DER of a certificate given as DER or PEM.
pub fn der_or_pem(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.starts_with(b"-----BEGIN") {
        let text = std::str::from_utf8(bytes).map_err(|_| "PEM is not text")?;
        pem_certs(text)?.into_iter().next().ok_or_else(|| "no certificate in PEM".into())
    } else {
        Ok(bytes.to_vec())
    }
}

/// The pinned AWS Nitro root, DER.
pub fn aws_nitro_root() -> Vec<u8> {
    pem_certs(AWS_NITRO_ROOT_PEM).ok().and_then(|v| v.into_iter().next()).unwrap_or_default()
}

/// The pinned AMD ARKs, DER, with their product names.
pub fn amd_arks() -> Vec<(&'static str, Vec<u8>)> {
    AMD_ARKS_PEM.iter().filter_map(|(name, pem)| Some((*name, pem_certs(pem).ok()?.into_iter().next()?))).collect()
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    #[test]
    fn pinned_roots_are_the_published_ones() {
        assert_eq!(
            hex::encode(Sha256::digest(super::INTEL_SGX_ROOT_CA)),
            "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
        );
        assert_eq!(
            hex::encode(Sha256::digest(super::aws_nitro_root())),
            "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
        );
        assert_eq!(super::amd_arks().len(), 3);
    }
}
