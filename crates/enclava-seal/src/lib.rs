//! Sealing bytes to an X25519 public key with HPKE (RFC 9180, base mode, X25519-HKDF-SHA256,
//! HKDF-SHA256, ChaCha20-Poly1305): how the key broker hands keys to an attested enclave and how
//! clients seal requests to an enclave's attested key. One suite, one place.
//!
//! `info` says what the sealed bytes are for (a constant per protocol, so a sealed model key can
//! never be opened as a request); `aad` binds the context (a nonce, a model id, a request id).
//!
//! [`symmetric`] seals under a shared key instead: a user's request key in serverless mode, or a
//! secret exported from an HPKE setup ([`encap_export`]) for bulk data in both directions.

pub mod symmetric;

// Linked only for its `precomputed-tables` feature (faster X25519 key generation).
use curve25519_dalek as _;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

type Kem = X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::ChaCha20Poly1305;

/// Length of a public key and of an encapsulated key.
pub const KEY_LEN: usize = 32;

/// Why sealing or opening failed. Carries no key or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not an X25519 public key (expected {KEY_LEN} bytes, got {0})")]
    BadPublicKey(usize),
    #[error("not an encapsulated key (expected {KEY_LEN} bytes, got {0})")]
    BadEncappedKey(usize),
    #[error("the sealed message does not open: it was tampered with, sealed to another key or for another context")]
    Open,
    #[error("sealing failed: {0}")]
    Seal(String),
}

/// A key pair whose secret half never leaves this process; `Debug` shows only the public half.
pub struct KeyPair {
    secret: <Kem as hpke::Kem>::PrivateKey,
    public: [u8; KEY_LEN],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("public", &hex_string(&self.public)).finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> KeyPair {
        let (secret, public) = Kem::gen_keypair();
        let mut bytes = [0u8; KEY_LEN];
        bytes.copy_from_slice(&public.to_bytes());
        KeyPair { secret, public: bytes }
    }

    /// The key pair a 32-byte secret seed derives (RFC 9180 `DeriveKeyPair`): what a client keeps
    /// on disk to open later what is sealed to it.
    pub fn from_seed(seed: &[u8; 32]) -> KeyPair {
        let (secret, public) = Kem::derive_keypair(seed);
        let mut bytes = [0u8; KEY_LEN];
        bytes.copy_from_slice(&public.to_bytes());
        KeyPair { secret, public: bytes }
    }

    /// The public half, to publish and bind into evidence.
    pub fn public(&self) -> &[u8; KEY_LEN] {
        &self.public
    }

    /// Opens a message sealed to this key for `info` with `aad`.
    pub fn open(&self, info: &[u8], aad: &[u8], sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc)
            .map_err(|_| SealError::BadEncappedKey(sealed.enc.len()))?;
        hpke::single_shot_open::<Aead, Kdf, Kem>(&OpModeR::Base, &self.secret, &enc, info, &sealed.ciphertext, aad)
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open)
    }
}

/// A sealed message: the encapsulated key and the ciphertext (with its tag).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    pub enc: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Seals `plaintext` to `public_key` for `info`, binding `aad`.
pub fn seal(public_key: &[u8], info: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Sealed, SealError> {
    let pk =
        <Kem as hpke::Kem>::PublicKey::from_bytes(public_key).map_err(|_| SealError::BadPublicKey(public_key.len()))?;
    let (enc, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem>(&OpModeS::Base, &pk, info, plaintext, aad)
        .map_err(|e| SealError::Seal(e.to_string()))?;
    Ok(Sealed { enc: enc.to_bytes().to_vec(), ciphertext })
}

/// Length of an exported secret.
pub const EXPORT_LEN: usize = 32;

/// HPKE base-mode setup to `public_key` for `info`: the encapsulated key, and a secret exported
/// for `exporter_context` that only this sender and the holder of the private key can compute
/// (RFC 9180 §5.3; how Oblivious HTTP, RFC 9458, keys its answers). Bulk data then goes under
/// [`symmetric`] with that secret.
pub fn encap_export(
    public_key: &[u8],
    info: &[u8],
    exporter_context: &[u8],
) -> Result<(Vec<u8>, Zeroizing<[u8; EXPORT_LEN]>), SealError> {
    let pk =
        <Kem as hpke::Kem>::PublicKey::from_bytes(public_key).map_err(|_| SealError::BadPublicKey(public_key.len()))?;
    let (enc, ctx) =
        hpke::setup_sender::<Aead, Kdf, Kem>(&OpModeS::Base, &pk, info).map_err(|e| SealError::Seal(e.to_string()))?;
    let mut secret = Zeroizing::new([0u8; EXPORT_LEN]);
    ctx.export(exporter_context, secret.as_mut()).map_err(|e| SealError::Seal(e.to_string()))?;
    Ok((enc.to_bytes().to_vec(), secret))
}

impl KeyPair {
    /// The receiving side of [`encap_export`]: the same secret, from the encapsulated key.
    pub fn decap_export(
        &self,
        info: &[u8],
        enc: &[u8],
        exporter_context: &[u8],
    ) -> Result<Zeroizing<[u8; EXPORT_LEN]>, SealError> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| SealError::BadEncappedKey(enc.len()))?;
        let ctx = hpke::setup_receiver::<Aead, Kdf, Kem>(&OpModeR::Base, &self.secret, &enc, info)
            .map_err(|_| SealError::Open)?;
        let mut secret = Zeroizing::new([0u8; EXPORT_LEN]);
        ctx.export(exporter_context, secret.as_mut()).map_err(|_| SealError::Open)?;
        Ok(secret)
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_binding() {
        let kp = KeyPair::generate();
        let sealed = seal(kp.public(), b"info", b"aad", b"secret bytes").expect("seal");
        assert_eq!(kp.open(b"info", b"aad", &sealed).expect("open").as_slice(), b"secret bytes");
        assert_eq!(kp.open(b"other", b"aad", &sealed), Err(SealError::Open));
        assert_eq!(kp.open(b"info", b"other", &sealed), Err(SealError::Open));
        assert_eq!(KeyPair::generate().open(b"info", b"aad", &sealed), Err(SealError::Open));
        let mut bad = sealed.clone();
        bad.ciphertext[0] ^= 1;
        assert_eq!(kp.open(b"info", b"aad", &bad), Err(SealError::Open));
        bad = sealed.clone();
        bad.enc.pop();
        assert_eq!(kp.open(b"info", b"aad", &bad), Err(SealError::BadEncappedKey(31)));
        assert_eq!(seal(&[1, 2, 3], b"i", b"a", b"p"), Err(SealError::BadPublicKey(3)));
    }

    #[test]
    fn exported_secrets_agree_only_for_the_same_key_info_and_context() {
        let kp = KeyPair::generate();
        let (enc, secret) = encap_export(kp.public(), b"info", b"ctx").expect("encap");
        assert_eq!(kp.decap_export(b"info", &enc, b"ctx").expect("decap"), secret);
        assert_ne!(kp.decap_export(b"other", &enc, b"ctx").expect("decap"), secret);
        assert_ne!(kp.decap_export(b"info", &enc, b"other").expect("decap"), secret);
        assert_ne!(KeyPair::generate().decap_export(b"info", &enc, b"ctx").expect("decap"), secret);
        let (enc2, secret2) = encap_export(kp.public(), b"info", b"ctx").expect("encap");
        assert_ne!((enc2, secret2), (enc.clone(), secret), "fresh every time");
        assert_eq!(kp.decap_export(b"info", &enc[..31], b"ctx"), Err(SealError::BadEncappedKey(31)));
        assert!(matches!(encap_export(&[1, 2], b"i", b"c"), Err(SealError::BadPublicKey(2))));
    }

    #[test]
    fn debug_shows_only_the_public_key() {
        let kp = KeyPair::generate();
        let s = format!("{kp:?}");
        assert!(s.contains(&hex_string(kp.public())));
        assert!(!s.contains("secret"));
    }
}
