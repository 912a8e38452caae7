//! Sealing bytes under a shared 32-byte key: how a serverless (MOSS) request and its answer are
//! sealed with the user's request key, which only the user and enclaves the key broker released
//! it to hold.
//!
//! A message is sealed with AES-256-GCM under the key HKDF-SHA256(salt = none, ikm = the shared
//! key, info = `context`), with a fresh random 96-bit nonce. The caller's `context` should name the
//! protocol, the direction and the message: serverless requests use their request id, so every
//! request and every answer has a key of its own (a request can never be opened as an answer, nor
//! one request's answer as another's, and no key ever comes near GCM's random-nonce limit). `aad`
//! binds what travels in the clear. Wire form: `nonce (12) ‖ ciphertext ‖ tag (16)`.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::SealError;

/// Length of a shared key.
pub const SHARED_KEY_LEN: usize = 32;
/// Bytes a sealed message adds to its plaintext (nonce and tag).
pub const OVERHEAD: usize = NONCE_LEN + 16;

fn derive(key: &[u8; SHARED_KEY_LEN], context: &[u8]) -> LessSafeKey {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            SHARED_KEY_LEN
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(key);
    let mut bytes = Zeroizing::new([0u8; SHARED_KEY_LEN]);
    // Both only fail for an output longer than 255 hash lengths; 32 bytes is one.
    let info = [context];
    let okm = prk.expand(&info, Len).expect("32 bytes is a valid HKDF-SHA256 output length");
    okm.fill(bytes.as_mut()).expect("32 bytes is a valid HKDF-SHA256 output length");
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes.as_ref()).expect("AES-256 takes a 32-byte key"))
}

/// Seals `plaintext` under `key` for `context`, binding `aad`.
pub fn seal_shared(
    key: &[u8; SHARED_KEY_LEN],
    context: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| SealError::Seal("no system randomness".into()))?;
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = derive(key, context)
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut out[NONCE_LEN..])
        .map_err(|_| SealError::Seal("the message is too long for AES-GCM".into()))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Opens a message [`seal_shared`] sealed under `key` for `context` with `aad`.
pub fn open_shared(
    key: &[u8; SHARED_KEY_LEN],
    context: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.len() < OVERHEAD {
        return Err(SealError::Open);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
    let mut buf = Zeroizing::new(body.to_vec());
    let len = derive(key, context).open_in_place(nonce, Aad::from(aad), &mut buf).map_err(|_| SealError::Open)?.len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_binding() {
        let key = [7u8; SHARED_KEY_LEN];
        let sealed = seal_shared(&key, b"ctx", b"aad", b"secret bytes").expect("seal");
        assert_eq!(sealed.len(), 12 + OVERHEAD);
        assert_eq!(open_shared(&key, b"ctx", b"aad", &sealed).expect("open").as_slice(), b"secret bytes");
        assert_eq!(open_shared(&key, b"other", b"aad", &sealed), Err(SealError::Open));
        assert_eq!(open_shared(&key, b"ctx", b"other", &sealed), Err(SealError::Open));
        assert_eq!(open_shared(&[8; SHARED_KEY_LEN], b"ctx", b"aad", &sealed), Err(SealError::Open));
        for i in [0, 12, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(open_shared(&key, b"ctx", b"aad", &bad), Err(SealError::Open));
        }
        assert_eq!(open_shared(&key, b"ctx", b"aad", &sealed[..OVERHEAD - 1]), Err(SealError::Open));
        assert_eq!(open_shared(&key, b"ctx", b"aad", &sealed[..sealed.len() - 1]), Err(SealError::Open));
        let again = seal_shared(&key, b"ctx", b"aad", b"secret bytes").expect("seal");
        assert_ne!(again[..NONCE_LEN], sealed[..NONCE_LEN], "a fresh nonce every time");
        assert!(open_shared(&key, b"ctx", b"", &seal_shared(&key, b"ctx", b"", b"").expect("empty")).is_ok());
    }
}
