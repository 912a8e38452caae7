//! The release payload: what the key broker seals to an enclave's bound key, and how the enclave
//! opens it. HPKE `info` is [`INFO`]; the AAD is the nonce and the model id, so a sealed answer
//! opens only for the challenge and the model it was asked for.
//!
//! Plaintext layout (big-endian): `version u64 ‖ model key (32) ‖ n u16 ‖ n × (len u16 ‖ user id ‖ key (32))`.

use zeroize::Zeroizing;

/// HPKE `info` for key release.
pub const INFO: &[u8] = b"enclava/key-release/v1";

/// Length of every model and request key.
pub const KEY_LEN: usize = 32;

/// A 32-byte key whose `Debug` never shows it and whose memory is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    pub fn from_slice(bytes: &[u8]) -> Option<SecretKey> {
        let arr: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(SecretKey(Zeroizing::new(arr)))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// What an enclave receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePayload {
    pub version: u64,
    pub model_key: SecretKey,
    /// (user id, that user's request key for this model and measurement)
    pub request_keys: Vec<(String, SecretKey)>,
}

/// The AAD of a release: nonce and model id, length-prefixed.
pub fn aad(nonce: &[u8], model: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + nonce.len() + model.len());
    out.extend_from_slice(&(nonce.len() as u32).to_be_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&(model.len() as u32).to_be_bytes());
    out.extend_from_slice(model.as_bytes());
    out
}

impl ReleasePayload {
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(42 + self.request_keys.len() * 64));
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(self.model_key.as_bytes());
        out.extend_from_slice(&(self.request_keys.len() as u16).to_be_bytes());
        for (user, key) in &self.request_keys {
            out.extend_from_slice(&(user.len() as u16).to_be_bytes());
            out.extend_from_slice(user.as_bytes());
            out.extend_from_slice(key.as_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<ReleasePayload, String> {
        let bad = || "malformed release payload".to_owned();
        let mut r = bytes;
        let mut take = |n: usize| -> Result<&[u8], String> {
            if r.len() < n {
                return Err(bad());
            }
            let (a, b) = r.split_at(n);
            r = b;
            Ok(a)
        };
        let version = u64::from_be_bytes(take(8)?.try_into().map_err(|_| bad())?);
        let model_key = SecretKey::from_slice(take(KEY_LEN)?).ok_or_else(bad)?;
        let n = u16::from_be_bytes(take(2)?.try_into().map_err(|_| bad())?);
        let mut request_keys = Vec::with_capacity(n.min(256) as usize);
        for _ in 0..n {
            let len = u16::from_be_bytes(take(2)?.try_into().map_err(|_| bad())?) as usize;
            let user = std::str::from_utf8(take(len)?).map_err(|_| bad())?.to_owned();
            let key = SecretKey::from_slice(take(KEY_LEN)?).ok_or_else(bad)?;
            request_keys.push((user, key));
        }
        if !r.is_empty() {
            return Err(bad());
        }
        Ok(ReleasePayload { version, model_key, request_keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let key = |b| SecretKey::from_slice(&[b; 32]).expect("key");
        let p = ReleasePayload { version: 3, model_key: key(1), request_keys: vec![("u_1".into(), key(2))] };
        let bytes = p.encode();
        assert_eq!(ReleasePayload::decode(&bytes).expect("decode"), p);
        for n in 0..bytes.len() {
            assert!(ReleasePayload::decode(&bytes[..n]).is_err());
        }
        assert!(!format!("{p:?}").contains("0101"));
    }
}
