//! The encrypted model package: a header naming the model and key version, then the model in
//! AES-256-GCM chunks under a per-package subkey. `FORMAT.md` states the same layout.
//!
//! # Byte layout (integers big-endian)
//!
//! | offset   | size | field                                                    |
//! |----------|------|----------------------------------------------------------|
//! | 0        | 8    | magic `ENCLAVAM`                                         |
//! | 8        | 1    | format version, `1`                                      |
//! | 9        | 2    | `L`, model id length, 1..=256                            |
//! | 11       | L    | model id, UTF-8                                          |
//! | 11+L     | 8    | key version                                              |
//! | 19+L     | 4    | chunk size `C`, 4 KiB..=64 MiB (default 1 MiB)           |
//! | 23+L     | 8    | plaintext length `P`                                     |
//! | 31+L     | 32   | salt, random per package                                 |
//! | 63+L     | ...  | `n` chunks, each ciphertext then a 16-byte GCM tag       |
//!
//! `n = max(1, ceil(P / C))`; every chunk but the last holds `C` bytes, the last holds the rest
//! (an empty model is one empty last chunk), so a package is exactly `63 + L + P + 16n` bytes.
//!
//! # Keys, nonces, AAD
//!
//! - subkey = HKDF-SHA256(ikm = model key, salt = salt, info = `enclava/model/v1` || model id ||
//!   key version), 32 bytes. The random salt makes the subkey fresh even when an owner encrypts
//!   twice with the same model key, so a (subkey, nonce) pair is never reused.
//! - nonce of chunk `i` = `i` (u64) || flags (u32: 1 on the last chunk, else 0).
//! - AAD of chunk `i` = SHA-256(header bytes) || `i` (u64) || last (u8: 1 or 0). Hashing the
//!   header binds every chunk to the model id, version, length and salt; the index and last flag
//!   bind it to its place, so reordering, truncation and extension fail authentication even when
//!   the lengths are made to agree.

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The first eight bytes of every package.
pub const MAGIC: &[u8; 8] = b"ENCLAVAM";
/// The only format version this build reads and writes.
pub const FORMAT_VERSION: u8 = 1;
/// Longest model id, in bytes.
pub const MAX_MODEL_ID_LEN: usize = 256;
/// 1 MiB: large enough that per-chunk overhead is noise, small enough to stay in cache.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest chunk size; below it the 16-byte tags become a noticeable share of the package.
pub const MIN_CHUNK_SIZE: u32 = 4 << 10;
/// Largest chunk size.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Length of the header salt.
pub const SALT_LEN: usize = 32;
/// Length of the GCM tag after each chunk.
pub const TAG_LEN: usize = 16;

const KDF_INFO: &[u8] = b"enclava/model/v1";
/// Header bytes besides the model id: magic, format, id length, version, chunk size, length, salt.
const FIXED_HEADER_LEN: usize = 8 + 1 + 2 + 8 + 4 + 8 + SALT_LEN;

/// Why a package could not be made or opened. Each variant names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error("not an enclava model package (bad magic)")]
    BadMagic,
    #[error("unsupported model package format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedFormat(u8),
    #[error("invalid model id: {0}")]
    InvalidModelId(&'static str),
    #[error("chunk size {0} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    InvalidChunkSize(u32),
    #[error("model package truncated: needs {expected} bytes, has {actual}")]
    Truncated { expected: u64, actual: u64 },
    #[error("model package has trailing bytes: needs {expected} bytes, has {actual}")]
    TrailingBytes { expected: u64, actual: u64 },
    #[error("plaintext length {0} is too large for this platform")]
    TooLarge(u64),
    #[error("package is for model {found:?}, expected {expected:?}")]
    ModelIdMismatch { expected: String, found: String },
    #[error("package is for key version {found}, expected {expected}")]
    VersionMismatch { expected: u64, found: u64 },
    #[error("chunk {chunk} failed authentication: wrong key, or the package was modified or reordered")]
    Authentication { chunk: u64 },
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

/// A 32-byte model key: one per model version, held by the key broker and released to attested
/// nodes. Wiped on drop; `Debug` never shows it.
#[derive(Clone)]
pub struct ModelKey(Zeroizing<[u8; 32]>);

impl ModelKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Result<Self, PackageError> {
        let mut key = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(key.as_mut()).map_err(|_| PackageError::Crypto("system random generator failed"))?;
        Ok(Self(key))
    }

    /// Wraps existing key bytes. The caller's copy is its own to wipe.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ModelKey(<redacted>)")
    }
}

/// The package header. [`read_header`] gives it to a node before it holds the key, so it knows
/// which (model id, version) key to ask for; nothing in it is authenticated until [`decrypt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub model_id: String,
    pub version: u64,
    pub chunk_size: u32,
    pub plaintext_len: u64,
    pub salt: [u8; SALT_LEN],
}

impl Header {
    fn chunk_count(&self) -> u64 {
        // `max(1)` only guards hand-built headers; parsed ones always have a valid chunk size.
        self.plaintext_len.div_ceil(u64::from(self.chunk_size.max(1))).max(1)
    }

    /// The exact package length this header announces; `None` if it does not fit in a u64.
    fn package_len(&self) -> Option<u64> {
        let tags = self.chunk_count().checked_mul(TAG_LEN as u64)?;
        ((FIXED_HEADER_LEN + self.model_id.len()) as u64).checked_add(self.plaintext_len)?.checked_add(tags)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        // Validated to be at most 256 bytes before any header is encoded.
        out.extend_from_slice(&(self.model_id.len() as u16).to_be_bytes());
        out.extend_from_slice(self.model_id.as_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.plaintext_len.to_be_bytes());
        out.extend_from_slice(&self.salt);
    }
}

fn check_model_id(model_id: &str) -> Result<(), PackageError> {
    match model_id.len() {
        0 => Err(PackageError::InvalidModelId("empty")),
        n if n > MAX_MODEL_ID_LEN => Err(PackageError::InvalidModelId("longer than 256 bytes")),
        _ => Ok(()),
    }
}

fn check_chunk_size(chunk_size: u32) -> Result<(), PackageError> {
    if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(PackageError::InvalidChunkSize(chunk_size))
    }
}

/// Encrypts `plaintext` for (`model_id`, `version`) in 1 MiB chunks.
pub fn encrypt(model_id: &str, version: u64, key: &ModelKey, plaintext: &[u8]) -> Result<Vec<u8>, PackageError> {
    encrypt_with_chunk_size(model_id, version, key, plaintext, DEFAULT_CHUNK_SIZE)
}

/// Encrypts `plaintext` for (`model_id`, `version`) in chunks of `chunk_size` bytes.
pub fn encrypt_with_chunk_size(
    model_id: &str,
    version: u64,
    key: &ModelKey,
    plaintext: &[u8],
    chunk_size: u32,
) -> Result<Vec<u8>, PackageError> {
    check_model_id(model_id)?;
    check_chunk_size(chunk_size)?;
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new().fill(&mut salt).map_err(|_| PackageError::Crypto("system random generator failed"))?;
    let header =
        Header { model_id: model_id.to_owned(), version, chunk_size, plaintext_len: plaintext.len() as u64, salt };
    let total = header.package_len().and_then(|n| usize::try_from(n).ok());
    let mut out = Vec::with_capacity(total.ok_or(PackageError::TooLarge(header.plaintext_len))?);
    header.encode_into(&mut out);
    let cipher = ChunkCipher::new(key, &header, &out)?;

    let last = header.chunk_count() - 1;
    let mut chunks = plaintext.chunks(chunk_size as usize);
    for index in 0..=last {
        let start = out.len();
        out.extend_from_slice(chunks.next().unwrap_or_default());
        let (nonce, aad) = cipher.nonce_and_aad(index, index == last);
        let tag = cipher
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(aad), &mut out[start..])
            .map_err(|_| PackageError::Crypto("chunk encryption failed"))?;
        out.extend_from_slice(tag.as_ref());
    }
    Ok(out)
}

/// Reads and checks the header without a key, so a node learns which key to ask for.
pub fn read_header(package: &[u8]) -> Result<Header, PackageError> {
    parse_header(package).map(|(header, _)| header)
}

/// Decrypts a borrowed package into a new buffer that is wiped on drop (and on any error).
///
/// The header must name `expected_model_id` and `expected_version`, the package must be exactly
/// as long as the header says (checked before anything is allocated, so a hostile header cannot
/// make us reserve more than the package's own size), and every chunk must authenticate.
pub fn decrypt(
    package: &[u8],
    expected_model_id: &str,
    expected_version: u64,
    key: &ModelKey,
) -> Result<Zeroizing<Vec<u8>>, PackageError> {
    let opening = Opening::new(package, expected_model_id, expected_version, key)?;
    // One tag's room past the plaintext, so each chunk can be copied in whole (ciphertext and
    // tag) at its final place and opened there while it is still in cache.
    let mut out = Zeroizing::new(vec![0u8; opening.plaintext_len + TAG_LEN]);
    opening.open_chunks(&mut out, Some(package))?;
    out.truncate(opening.plaintext_len);
    Ok(out)
}

/// Like [`decrypt`], but opens the chunks where they lie in an owned package (as
/// [`crate::BlobStore::get`] returns it): no copy and no second model-sized buffer, whose page
/// faults dominate [`decrypt`]'s time on fresh memory and whose size matters in an enclave.
/// The buffer is wiped on drop (and on any error).
pub fn decrypt_in_place(
    package: Vec<u8>,
    expected_model_id: &str,
    expected_version: u64,
    key: &ModelKey,
) -> Result<Zeroizing<Vec<u8>>, PackageError> {
    let mut buf = Zeroizing::new(package);
    let opening = Opening::new(&buf, expected_model_id, expected_version, key)?;
    opening.open_chunks(&mut buf, None)?;
    buf.truncate(opening.plaintext_len);
    Ok(buf)
}

/// A package whose header has been checked against expectations and its length, with its subkey.
struct Opening {
    cipher: ChunkCipher,
    model_id: String,
    version: u64,
    header_len: usize,
    chunk_size: usize,
    plaintext_len: usize,
    last: u64,
    package_len: u64,
}

impl Opening {
    fn new(
        package: &[u8],
        expected_model_id: &str,
        expected_version: u64,
        key: &ModelKey,
    ) -> Result<Self, PackageError> {
        let (header, header_len) = parse_header(package)?;
        if header.model_id != expected_model_id {
            return Err(PackageError::ModelIdMismatch {
                expected: expected_model_id.to_owned(),
                found: header.model_id,
            });
        }
        if header.version != expected_version {
            return Err(PackageError::VersionMismatch { expected: expected_version, found: header.version });
        }
        let expected = header.package_len().ok_or(PackageError::TooLarge(header.plaintext_len))?;
        let actual = package.len() as u64;
        if actual < expected {
            return Err(PackageError::Truncated { expected, actual });
        }
        if actual > expected {
            return Err(PackageError::TrailingBytes { expected, actual });
        }
        let too_large = PackageError::TooLarge(header.plaintext_len);
        Ok(Self {
            cipher: ChunkCipher::new(key, &header, &package[..header_len])?,
            header_len,
            chunk_size: header.chunk_size as usize,
            plaintext_len: usize::try_from(header.plaintext_len).map_err(|_| too_large)?,
            last: header.chunk_count() - 1,
            package_len: expected,
            model_id: header.model_id,
            version: header.version,
        })
    }

    /// Opens every chunk so the plaintext ends up at `buf[..plaintext_len]`. With `source`, each
    /// sealed chunk is first copied from it to its plaintext offset in `buf`; without, `buf` is
    /// the package and each chunk is opened where it lies, its plaintext shifted left over the
    /// header and earlier tags (ring reads ahead of where it writes, so the overlap is safe).
    fn open_chunks(&self, buf: &mut [u8], source: Option<&[u8]>) -> Result<(), PackageError> {
        // Lengths were checked in `new`; these errors only keep a slip from becoming a panic.
        let actual = source.map_or(buf.len(), <[u8]>::len) as u64;
        let slip = || PackageError::Truncated { expected: self.package_len, actual };
        let (mut offset, mut input) = (0, self.header_len);
        for index in 0..=self.last {
            let len = self.chunk_size.min(self.plaintext_len - offset);
            let sealed_len = len + TAG_LEN;
            let start = match source {
                Some(package) => {
                    let sealed = package.get(input..input + sealed_len).ok_or_else(slip)?;
                    buf.get_mut(offset..offset + sealed_len).ok_or_else(slip)?.copy_from_slice(sealed);
                    offset
                }
                None => input,
            };
            let in_out = buf.get_mut(offset..start + sealed_len).ok_or_else(slip)?;
            let (nonce, aad) = self.cipher.nonce_and_aad(index, index == self.last);
            self.cipher
                .key
                .open_within(nonce, Aad::from(aad), in_out, start - offset..)
                .map_err(|_| PackageError::Authentication { chunk: index })?;
            offset += len;
            input += sealed_len;
        }
        tracing::debug!(model_id = %self.model_id, version = self.version, bytes = self.plaintext_len, "model package decrypted");
        Ok(())
    }
}

/// Parses the header; returns it and its encoded length. Every read is bounds-checked.
fn parse_header(package: &[u8]) -> Result<(Header, usize), PackageError> {
    let mut pos = 0;
    let mut take = |n: usize| -> Result<&[u8], PackageError> {
        let end = pos + n; // n ≤ 2^16 + 64 and pos ≤ package.len(): cannot overflow
        let bytes = package
            .get(pos..end)
            .ok_or(PackageError::Truncated { expected: end as u64, actual: package.len() as u64 })?;
        pos = end;
        Ok(bytes)
    };
    fn be<const N: usize>(bytes: &[u8]) -> [u8; N] {
        let mut array = [0u8; N];
        array.copy_from_slice(bytes); // `take(N)` returned exactly N bytes
        array
    }
    if take(MAGIC.len())? != MAGIC {
        return Err(PackageError::BadMagic);
    }
    let format = take(1)?[0];
    if format != FORMAT_VERSION {
        return Err(PackageError::UnsupportedFormat(format));
    }
    let id_len = u16::from_be_bytes(be(take(2)?)) as usize;
    if id_len == 0 || id_len > MAX_MODEL_ID_LEN {
        return Err(PackageError::InvalidModelId(if id_len == 0 { "empty" } else { "longer than 256 bytes" }));
    }
    let model_id =
        std::str::from_utf8(take(id_len)?).map_err(|_| PackageError::InvalidModelId("not UTF-8"))?.to_owned();
    let version = u64::from_be_bytes(be(take(8)?));
    let chunk_size = u32::from_be_bytes(be(take(4)?));
    check_chunk_size(chunk_size)?;
    let plaintext_len = u64::from_be_bytes(be(take(8)?));
    let salt = be(take(SALT_LEN)?);
    Ok((Header { model_id, version, chunk_size, plaintext_len, salt }, pos))
}

/// The per-package subkey and the header hash every chunk's AAD starts with.
struct ChunkCipher {
    key: LessSafeKey,
    header_hash: [u8; 32],
}

impl ChunkCipher {
    fn new(key: &ModelKey, header: &Header, header_bytes: &[u8]) -> Result<Self, PackageError> {
        let version = header.version.to_be_bytes();
        let info = [KDF_INFO, header.model_id.as_bytes(), &version];
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &header.salt).extract(key.as_bytes());
        let okm =
            prk.expand(&info, &aead::AES_256_GCM).map_err(|_| PackageError::Crypto("subkey derivation failed"))?;
        Ok(Self { key: LessSafeKey::new(UnboundKey::from(okm)), header_hash: Sha256::digest(header_bytes).into() })
    }

    fn nonce_and_aad(&self, index: u64, last: bool) -> (Nonce, [u8; 41]) {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&index.to_be_bytes());
        nonce[8..].copy_from_slice(&u32::from(last).to_be_bytes());
        let mut aad = [0u8; 41];
        aad[..32].copy_from_slice(&self.header_hash);
        aad[32..40].copy_from_slice(&index.to_be_bytes());
        aad[40] = u8::from(last);
        (Nonce::assume_unique_for_key(nonce), aad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: usize = MIN_CHUNK_SIZE as usize;
    const ID: &str = "acme/mobilenet";

    /// xorshift64: deterministic test data and mutations without a rand dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn data(len: usize) -> Vec<u8> {
        let mut rng = Rng(len as u64 + 1);
        (0..len).map(|_| rng.next() as u8).collect()
    }

    fn key() -> ModelKey {
        ModelKey::from_bytes([7; 32])
    }

    fn seal(len: usize) -> Vec<u8> {
        encrypt_with_chunk_size(ID, 3, &key(), &data(len), C as u32).expect("encrypt")
    }

    /// Opens with both entry points and checks that they agree.
    fn open(package: &[u8]) -> Result<Zeroizing<Vec<u8>>, PackageError> {
        let borrowed = decrypt(package, ID, 3, &key());
        assert_eq!(borrowed, decrypt_in_place(package.to_vec(), ID, 3, &key()));
        borrowed
    }

    fn header_len() -> usize {
        FIXED_HEADER_LEN + ID.len()
    }

    /// Start of chunk `i` (ciphertext then tag) in a package of full `C`-byte chunks.
    fn chunk_at(i: usize) -> usize {
        header_len() + i * (C + TAG_LEN)
    }

    #[test]
    fn round_trips_every_boundary_size() {
        for len in [0, 1, C - 1, C, C + 1, 3 * C, 3 * C + 17] {
            let package = seal(len);
            let chunks = len.div_ceil(C).max(1);
            assert_eq!(package.len(), header_len() + len + chunks * TAG_LEN, "len {len}");
            assert_eq!(*open(&package).expect("decrypt"), data(len), "len {len}");
        }
        let package = encrypt(ID, 3, &key(), b"onnx").expect("encrypt");
        assert_eq!(*open(&package).expect("decrypt"), b"onnx");
    }

    #[test]
    fn header_is_readable_without_the_key() {
        let header = read_header(&seal(C + 1)).expect("header");
        assert_eq!((header.model_id.as_str(), header.version), (ID, 3));
        assert_eq!((header.chunk_size, header.plaintext_len), (C as u32, C as u64 + 1));
        assert_eq!(read_header(b"ENCLAVA"), Err(PackageError::Truncated { expected: 8, actual: 7 }));
        assert_eq!(read_header(b"NOTAPKG!rest"), Err(PackageError::BadMagic));
    }

    #[test]
    fn same_key_twice_gives_different_packages() {
        let (a, b) = (seal(100), seal(100));
        assert_ne!(a, b);
        assert_eq!(open(&a).expect("a"), open(&b).expect("b"));
    }

    #[test]
    fn refuses_bad_inputs_to_encrypt() {
        let k = key();
        assert_eq!(encrypt("", 1, &k, b""), Err(PackageError::InvalidModelId("empty")));
        assert!(encrypt(&"m".repeat(MAX_MODEL_ID_LEN), 1, &k, b"").is_ok());
        assert!(matches!(encrypt(&"m".repeat(MAX_MODEL_ID_LEN + 1), 1, &k, b""), Err(PackageError::InvalidModelId(_))));
        for size in [0, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1] {
            assert_eq!(encrypt_with_chunk_size(ID, 1, &k, b"", size), Err(PackageError::InvalidChunkSize(size)));
        }
    }

    #[test]
    fn every_header_byte_is_protected() {
        let package = seal(2 * C + 5);
        for at in 0..header_len() {
            let mut bad = package.clone();
            bad[at] ^= 0x01;
            assert!(open(&bad).is_err(), "flipped header byte {at}");
        }
        let mut bad = package.clone();
        bad[header_len() - 1] ^= 0x80; // the salt: only authentication can notice
        assert_eq!(open(&bad), Err(PackageError::Authentication { chunk: 0 }));
    }

    #[test]
    fn every_chunk_and_tag_byte_flip_names_its_chunk() {
        let package = seal(2 * C + 5);
        let last_len = 5 + TAG_LEN;
        for chunk in 0..3u64 {
            let start = chunk_at(chunk as usize);
            let len = if chunk == 2 { last_len } else { C + TAG_LEN };
            for at in [start, start + len / 2, start + len - TAG_LEN, start + len - 1] {
                let mut bad = package.clone();
                bad[at] ^= 0x40;
                assert_eq!(open(&bad), Err(PackageError::Authentication { chunk }), "byte {at}");
            }
        }
    }

    #[test]
    fn detects_truncation_extension_and_reordering() {
        let package = seal(3 * C);
        let full = package.len() as u64;
        for cut in [chunk_at(1), chunk_at(2), chunk_at(1) + 100, package.len() - 1, 10, 0] {
            let err = open(&package[..cut]).expect_err("truncated");
            assert!(matches!(err, PackageError::Truncated { .. }), "cut at {cut}: {err}");
        }
        let mut longer = package.clone();
        longer.extend_from_slice(&[0; 16]);
        assert_eq!(open(&longer), Err(PackageError::TrailingBytes { expected: full, actual: full + 16 }));

        // Drop the last chunk and make the header's length agree: the header hash changes.
        let mut dropped = package[..chunk_at(2)].to_vec();
        let len_at = header_len() - SALT_LEN - 8;
        dropped[len_at..len_at + 8].copy_from_slice(&(2 * C as u64).to_be_bytes());
        assert_eq!(open(&dropped), Err(PackageError::Authentication { chunk: 0 }));

        let mut swapped = package.clone();
        swapped[chunk_at(0)..chunk_at(1)].copy_from_slice(&package[chunk_at(1)..chunk_at(2)]);
        swapped[chunk_at(1)..chunk_at(2)].copy_from_slice(&package[chunk_at(0)..chunk_at(1)]);
        assert_eq!(open(&swapped), Err(PackageError::Authentication { chunk: 0 }));
    }

    #[test]
    fn detects_wrong_key_id_and_version() {
        let package = seal(C + 1);
        let other = ModelKey::generate().expect("key");
        assert_eq!(decrypt(&package, ID, 3, &other), Err(PackageError::Authentication { chunk: 0 }));
        assert!(matches!(decrypt(&package, "acme/other", 3, &key()), Err(PackageError::ModelIdMismatch { .. })));
        assert_eq!(decrypt(&package, ID, 4, &key()), Err(PackageError::VersionMismatch { expected: 4, found: 3 }));
    }

    #[test]
    fn hostile_lengths_neither_panic_nor_allocate() {
        let len_at = header_len() - SALT_LEN - 8;
        for len in [u64::MAX, u64::MAX - 1, 1 << 40] {
            let mut bad = seal(1);
            bad[len_at..len_at + 8].copy_from_slice(&len.to_be_bytes());
            assert!(matches!(open(&bad), Err(PackageError::TooLarge(_) | PackageError::Truncated { .. })));
        }
    }

    #[test]
    fn random_mutations_never_panic_or_succeed() {
        let package = seal(2 * C + 300);
        let mut rng = Rng(0x5eed_cafe_f00d_d00d);
        for _ in 0..2_000 {
            let mut bad = package.clone();
            match rng.below(6) {
                0 => bad[rng.below(package.len())] ^= 1 << rng.below(8),
                1 => bad[rng.below(header_len())] = rng.next() as u8,
                2 => bad.truncate(rng.below(package.len())),
                3 => bad.extend((0..1 + rng.below(64)).map(|_| rng.next() as u8)),
                4 => {
                    let (at, len) = (rng.below(package.len()), 1 + rng.below(64));
                    bad.drain(at..(at + len).min(package.len()));
                }
                _ => {
                    let (a, b, len) = (rng.below(package.len()), rng.below(package.len()), 1 + rng.below(C));
                    let len = len.min(package.len() - a.max(b));
                    bad.copy_within(a..a + len, b);
                }
            }
            if bad == package {
                continue;
            }
            let _ = read_header(&bad);
            assert!(open(&bad).is_err());
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = ModelKey::generate().expect("key");
        let shown = format!("{key:?} {key:#?}");
        assert!(!shown.contains(&hex::encode(key.as_bytes())));
        assert!(!shown.contains(&format!("{:?}", key.as_bytes())));
    }
}
