//! The key-encryption key (KEK): every secret a component keeps (the key broker's model and request
//! keys) is wrapped by it before it reaches the database, and the audit chain is MACed with a key
//! derived from it, so the database alone reveals no secret and cannot be edited unnoticed. A
//! trait, so a KMS or HSM can take its place.
//!
//! The KEK is verifiable: the database keeps a check value (a sentinel wrapped by the KEK), so a
//! broker given the wrong KEK, or none where one existed, refuses to start instead of making a new
//! one; a new KEK is made only for an empty database.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use zeroize::Zeroizing;

use enclava_core::{Error, ErrorCode};

/// Wraps and unwraps keys at rest, and MACs the audit chain.
pub trait KeyWrapper: Send + Sync + std::fmt::Debug {
    /// Encrypts `key`, bound to `context` (which row it belongs to).
    fn wrap(&self, context: &str, key: &[u8]) -> Result<Vec<u8>, Error>;
    /// Decrypts what [`KeyWrapper::wrap`] made for the same `context`; a key that does not open is
    /// an operator error (UNAVAILABLE), logged at ERROR.
    fn unwrap(&self, context: &str, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error>;
    /// Like [`KeyWrapper::unwrap`], quietly: `None` when it does not open (for checks).
    fn try_unwrap(&self, context: &str, wrapped: &[u8]) -> Option<Zeroizing<Vec<u8>>>;
    /// A MAC over an audit row, so only the holder of the KEK can extend the chain.
    fn audit_mac(&self, data: &[u8]) -> [u8; 32];
}

/// A 32-byte key-encryption key held in this process, from a file or an environment variable.
pub struct LocalKek {
    wrap: LessSafeKey,
    mac: hmac::Key,
    source: String,
}

impl std::fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKek").field("source", &self.source).finish_non_exhaustive()
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl LocalKek {
    /// A KEK from its 32 bytes; `source` says where it came from, for logs.
    pub fn from_bytes(kek: &[u8; 32], source: impl Into<String>) -> LocalKek {
        // Two independent keys, so the wrapping key is never used as a MAC key.
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"enclava/kek/v1").extract(kek);
        let mut wrap_key = Zeroizing::new([0u8; 32]);
        let mut mac_key = Zeroizing::new([0u8; 32]);
        let expand = |info: &[u8], out: &mut [u8; 32]| {
            let info = [info];
            // Expanding 32 bytes from SHA-256 cannot fail (the limit is 255 × 32).
            if let Ok(okm) = prk.expand(&info, Len(32)) {
                let _ = okm.fill(out);
            }
        };
        expand(b"wrap", &mut wrap_key);
        expand(b"audit-mac", &mut mac_key);
        let wrap = match UnboundKey::new(&AES_256_GCM, wrap_key.as_slice()) {
            Ok(k) => LessSafeKey::new(k),
            Err(_) => unreachable!("AES-256 takes a 32-byte key"),
        };
        LocalKek { wrap, mac: hmac::Key::new(hmac::HMAC_SHA256, mac_key.as_slice()), source: source.into() }
    }

    /// A KEK from a value given in the environment: 32 bytes as hex or base64.
    pub fn from_text(text: &str, source: impl Into<String>) -> Result<LocalKek, Error> {
        let text = text.trim();
        let bytes = Zeroizing::new(
            hex::decode(text)
                .ok()
                .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
                .unwrap_or_default(),
        );
        let kek: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            Error::invalid("the key-encryption key must be 32 bytes as hex or base64 (e.g. `openssl rand -hex 32`)")
        })?;
        Ok(LocalKek::from_bytes(kek, source))
    }

    /// Reads the KEK file at `path`; `None` when there is no such file.
    pub fn load(path: &Path) -> Result<Option<LocalKek>, Error> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let kek: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    Error::invalid(format!(
                        "{} is not a key-encryption key (it must hold exactly 32 bytes): restore it from your backup",
                        path.display()
                    ))
                })?;
                Ok(Some(LocalKek::from_bytes(kek, format!("file {}", path.display()))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::internal(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Makes a new random KEK in a new file at `path` (mode 0600, synced with its folder).
    pub fn create(path: &Path) -> Result<LocalKek, Error> {
        let io = |what: &str, e: std::io::Error| Error::internal(format!("cannot {what} {}: {e}", path.display()));
        let mut kek = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(kek.as_mut()).map_err(|_| Error::internal("no system randomness"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("create the folder of", e))?;
        }
        write_secret(path, kek.as_slice()).map_err(|e| io("write", e))?;
        sync_dir(path);
        tracing::info!(path = %path.display(), "created a new key-encryption key for a new database: back it up apart from the database");
        Ok(LocalKek::from_bytes(&kek, format!("file {}", path.display())))
    }

    /// Reads the KEK file at `path`, creating it with a fresh random key (mode 0600) when missing.
    /// Only for a database known to be empty; [`KekSource::open`] decides.
    pub fn load_or_create(path: &Path) -> Result<LocalKek, Error> {
        match LocalKek::load(path)? {
            Some(k) => Ok(k),
            None => LocalKek::create(path),
        }
    }
}

/// Syncs the folder holding `path`, so a rename or a new file in it survives a crash.
pub fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
    {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to a new file only its owner can read.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

impl KeyWrapper for LocalKek {
    fn wrap(&self, context: &str, key: &[u8]) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| Error::internal("no system randomness"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + key.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(key);
        let tag = self
            .wrap
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| Error::internal("wrapping a key failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    fn try_unwrap(&self, context: &str, wrapped: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if wrapped.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let plain_len = self.wrap.open_in_place(nonce, Aad::from(context.as_bytes()), buf.as_mut_slice()).ok()?.len();
        buf.truncate(plain_len);
        Some(buf)
    }

    fn unwrap(&self, context: &str, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.try_unwrap(context, wrapped).ok_or_else(|| {
            tracing::error!(context, "a wrapped key does not open with this key-encryption key: the operator must restore the right key or the database");
            Error::unavailable(
                "a stored key does not open (an operator error: wrong key-encryption key or an edited database); try again after the operator has fixed it",
            )
        })
    }

    fn audit_mac(&self, data: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.mac, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// The value the database keeps to recognise its KEK: this sentinel, wrapped for this context.
pub const CHECK_CONTEXT: &str = "kek-check|v1";
const CHECK_PLAIN: &[u8] = b"enclava key-encryption key check v1";

/// A new check value for `kek` (hex, as stored).
pub fn check_value(kek: &dyn KeyWrapper) -> Result<String, Error> {
    kek.wrap(CHECK_CONTEXT, CHECK_PLAIN).map(hex::encode)
}

/// Whether `kek` opens the stored check value `stored` (hex). Quiet: a mismatch is reported by the
/// caller, once, with what to do.
pub fn opens_check(kek: &dyn KeyWrapper, stored: &str) -> bool {
    hex::decode(stored.trim())
        .ok()
        .is_some_and(|w| kek.try_unwrap(CHECK_CONTEXT, &w).is_some_and(|p| *p == CHECK_PLAIN))
}

/// Where the KEK comes from: `ENCLAVA_KEK` (hex or base64) when set, else a file, or a key wrapper
/// given directly (a KMS, or tests).
#[derive(Clone)]
pub enum KekSource {
    Env(String),
    File(PathBuf),
    Key(std::sync::Arc<dyn KeyWrapper>),
}

impl std::fmt::Debug for KekSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl KekSource {
    /// Where the key comes from, in words.
    pub fn describe(&self) -> String {
        match self {
            KekSource::Env(name) => format!("environment variable {name}"),
            KekSource::File(p) => format!("file {}", p.display()),
            KekSource::Key(k) => format!("{k:?}"),
        }
    }

    /// Opens the KEK. A missing KEK file is created only when `database_is_empty`; otherwise the
    /// database's keys were wrapped by a key that must be restored, and this says so.
    pub fn open(&self, database_is_empty: bool) -> Result<std::sync::Arc<dyn KeyWrapper>, Error> {
        match self {
            KekSource::Env(name) => {
                let value = Zeroizing::new(
                    std::env::var(name)
                        .map_err(|_| Error::invalid(format!("environment variable {name} is not set or not UTF-8")))?,
                );
                Ok(std::sync::Arc::new(LocalKek::from_text(&value, format!("environment variable {name}"))?))
            }
            KekSource::File(path) => match LocalKek::load(path)? {
                Some(k) => Ok(std::sync::Arc::new(k)),
                None if database_is_empty => Ok(std::sync::Arc::new(LocalKek::create(path)?)),
                None => Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "the key-encryption key file {} is missing, but the key database already holds keys wrapped by it. \
                         Restore that file from your backup (or set ENCLAVA_KEK to its value) and start again. A new key would \
                         leave every stored key unreadable, so none is made; nothing was changed",
                        path.display()
                    ),
                )),
            },
            KekSource::Key(k) => Ok(k.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_binds_context_and_key() {
        let kek = LocalKek::from_bytes(&[7; 32], "test");
        let w = kek.wrap("model-key|m|1", b"secret").expect("wrap");
        assert_eq!(kek.unwrap("model-key|m|1", &w).expect("unwrap").as_slice(), b"secret");
        assert!(kek.unwrap("model-key|m|2", &w).is_err());
        assert!(LocalKek::from_bytes(&[8; 32], "other").unwrap("model-key|m|1", &w).is_err());
        assert!(kek.unwrap("model-key|m|1", &w[..10]).is_err());
        assert!(!format!("{kek:?}").contains("07070707"));
        assert!(LocalKek::from_text("abcd", "t").is_err());
        assert!(LocalKek::from_text(&"ab".repeat(32), "t").is_ok());
    }

    #[test]
    fn file_kek_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kek");
        let a = LocalKek::load_or_create(&path).expect("create");
        let w = a.wrap("c", b"k").expect("wrap");
        let b = LocalKek::load_or_create(&path).expect("load");
        assert_eq!(b.unwrap("c", &w).expect("unwrap").as_slice(), b"k");
        std::fs::write(&path, b"short").expect("write");
        assert!(LocalKek::load_or_create(&path).is_err());
        let check = check_value(&a).expect("check");
        assert!(opens_check(&a, &check));
        assert!(!opens_check(&LocalKek::from_bytes(&[1; 32], "other"), &check));
        assert!(!opens_check(&a, "zz"));
    }
}
