//! The signature verifications evidence formats need, done alone: the floor `enclava bench
//! evidence` measures verification against. Each returns a closure that performs one real
//! verification with the same libraries the verifier uses.

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING,
    ED25519, EcdsaKeyPair, Ed25519KeyPair, KeyPair, UnparsedPublicKey,
};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::signature::Verifier as _;
use x509_cert::der::{Decode, Encode};

/// One verification of a primitive.
pub type Check = Box<dyn Fn() -> bool + Send + Sync>;

fn ecdsa(
    signing: &'static ring::signature::EcdsaSigningAlgorithm,
    verifying: &'static ring::signature::EcdsaVerificationAlgorithm,
) -> Result<Check, String> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).map_err(|e| e.to_string())?;
    let key = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).map_err(|e| e.to_string())?;
    let msg = vec![7u8; 1024];
    let sig = key.sign(&rng, &msg).map_err(|e| e.to_string())?.as_ref().to_vec();
    let public = key.public_key().as_ref().to_vec();
    Ok(Box::new(move || UnparsedPublicKey::new(verifying, &public).verify(&msg, &sig).is_ok()))
}

/// An ECDSA P-256 verification (DCAP: quotes, QE reports, certificates, CRLs, collateral).
pub fn p256() -> Result<Check, String> {
    ecdsa(&ECDSA_P256_SHA256_FIXED_SIGNING, &ECDSA_P256_SHA256_FIXED)
}

/// An ECDSA P-384 verification as SNP reports and Nitro documents are checked (AWS-LC; the key is
/// made with ring, whose signatures are standard).
pub fn p384() -> Result<Check, String> {
    let rng = SystemRandom::new();
    let signing = &ECDSA_P384_SHA384_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).map_err(|e| e.to_string())?;
    let key = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).map_err(|e| e.to_string())?;
    let msg = vec![7u8; 0x2A0];
    let sig = key.sign(&rng, &msg).map_err(|e| e.to_string())?.as_ref().to_vec();
    let public = key.public_key().as_ref().to_vec();
    Ok(Box::new(move || crate::p384_verify(&public, &msg, &sig)))
}

/// The same P-384 verification with ring, for comparison.
pub fn p384_ring() -> Result<Check, String> {
    ecdsa(&ECDSA_P384_SHA384_FIXED_SIGNING, &ECDSA_P384_SHA384_FIXED)
}

/// An Ed25519 verification (sim evidence).
pub fn ed25519() -> Result<Check, String> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|e| e.to_string())?;
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    let msg = vec![7u8; 512];
    let sig = key.sign(&msg).as_ref().to_vec();
    let public = key.public_key().as_ref().to_vec();
    Ok(Box::new(move || UnparsedPublicKey::new(&ED25519, &public).verify(&msg, &sig).is_ok()))
}

/// An RSA-4096 PSS/SHA-384 verification: the ARK-Milan's real self-signature (AMD chains, CRLs).
pub fn rsa_pss_4096() -> Result<Check, String> {
    let (_, ark) = crate::roots::amd_arks().into_iter().next().ok_or("no pinned ARK")?;
    let cert = x509_cert::Certificate::from_der(&ark).map_err(|e| e.to_string())?;
    let key =
        rsa::RsaPublicKey::from_pkcs1_der(cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes())
            .map_err(|e| e.to_string())?;
    let tbs = cert.tbs_certificate.to_der().map_err(|e| e.to_string())?;
    let sig = rsa::pss::Signature::try_from(cert.signature.raw_bytes()).map_err(|e| e.to_string())?;
    let vk = rsa::pss::VerifyingKey::<sha2::Sha384>::new(key);
    Ok(Box::new(move || vk.verify(&tbs, &sig).is_ok()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_floor_check_verifies() {
        for check in [super::p256(), super::p384(), super::p384_ring(), super::ed25519(), super::rsa_pss_4096()] {
            assert!(check.expect("set up")(), "a floor check must be a real, passing verification");
        }
    }
}
