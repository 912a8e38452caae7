//! The simulated TEE, for machines without one. Each deployment makes a sim root (`enclava sim
//! init`); a node's simulated hardware key is certified by that root; sim evidence carries the same
//! fields as real evidence and is signed by the hardware key. It is verified like real evidence and
//! accepted only by a policy that names `sim` and this deployment's root. Not confidential.
//!
//! Evidence layout (little-endian, 362 bytes):
//! `magic "ENCSIM01" ‖ version u16 (1) ‖ flags u16 (bit 0 debug) ‖ measurement [48] ‖ signer [32] ‖
//! product_id u16 ‖ svn u32 ‖ report_data [64] ‖ timestamp u64 ‖ root public key [32] ‖
//! hardware public key [32] ‖ root's signature over the hardware key [64] ‖
//! hardware key's signature over everything before it [64]`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use zeroize::Zeroizing;

use crate::{Claims, Collateral, Platform, VerifyError};

pub const MAGIC: &[u8; 8] = b"ENCSIM01";
pub const VERSION: u16 = 1;
pub const LEN: usize = 362;
const SIGNED_LEN: usize = LEN - 64;
const HW_CERT_LABEL: &[u8] = b"enclava/sim/hw-cert/v1\0";
/// Evidence dated further than this in the future is refused.
const CLOCK_SKEW: u64 = 300;

/// A deployment's sim root public key (Ed25519).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RootPublicKey(pub [u8; 32]);

impl RootPublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<RootPublicKey, String> {
        let b = hex::decode(s.trim()).map_err(|e| format!("sim root is not hex: {e}"))?;
        Ok(RootPublicKey(b.try_into().map_err(|_| "a sim root public key is 32 bytes".to_owned())?))
    }
}

/// Writes a secret file readable by its owner only, atomically.
fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    // A stale temporary file may have wider permissions: start from a new one.
    let _ = std::fs::remove_file(&tmp);
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

fn keypair(pkcs8: &[u8], what: &str) -> Result<Ed25519KeyPair, String> {
    Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| format!("{what} is not an Ed25519 PKCS#8 key: {e}"))
}

fn generate_pkcs8() -> Result<Zeroizing<Vec<u8>>, String> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|d| Zeroizing::new(d.as_ref().to_vec()))
        .map_err(|_| "the system random generator failed".into())
}

/// A deployment's sim root: certifies simulated hardware keys. Its private key never leaves the
/// file it is kept in, nor appears in `Debug`.
pub struct SimRoot {
    pkcs8: Zeroizing<Vec<u8>>,
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for SimRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRoot").field("public", &self.public().to_hex()).finish_non_exhaustive()
    }
}

impl SimRoot {
    pub const KEY_FILE: &'static str = "sim-root.key";
    pub const PUB_FILE: &'static str = "sim-root.pub";

    pub fn generate() -> Result<SimRoot, String> {
        let pkcs8 = generate_pkcs8()?;
        let key = keypair(&pkcs8, "the new sim root")?;
        Ok(SimRoot { pkcs8, key })
    }

    pub fn public(&self) -> RootPublicKey {
        let mut p = [0u8; 32];
        p.copy_from_slice(self.key.public_key().as_ref());
        RootPublicKey(p)
    }

    /// Writes `sim-root.key` (mode 0600) and `sim-root.pub` (hex) into `dir`.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_secret(&dir.join(Self::KEY_FILE), &self.pkcs8)?;
        std::fs::write(dir.join(Self::PUB_FILE), format!("{}\n", self.public().to_hex()))
    }

    /// Reads the root from `dir`.
    pub fn load(dir: &Path) -> Result<SimRoot, String> {
        let path = dir.join(Self::KEY_FILE);
        let pkcs8 = Zeroizing::new(std::fs::read(&path).map_err(|e| {
            format!("cannot read the sim root {}: {e} (make one with `enclava sim init`)", path.display())
        })?);
        let key = keypair(&pkcs8, &path.display().to_string())?;
        Ok(SimRoot { pkcs8, key })
    }

    /// Loads the root in `dir`, or makes and saves one there.
    pub fn load_or_init(dir: &Path) -> Result<SimRoot, String> {
        if dir.join(Self::KEY_FILE).exists() {
            return Self::load(dir);
        }
        let root = Self::generate()?;
        root.save(dir).map_err(|e| format!("cannot save the sim root in {}: {e}", dir.display()))?;
        Ok(root)
    }

    fn certify(&self, hw_public: &[u8]) -> [u8; 64] {
        let mut msg = HW_CERT_LABEL.to_vec();
        msg.extend_from_slice(hw_public);
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.key.sign(&msg).as_ref());
        sig
    }
}

/// Reads a root public key from a `sim-root.pub` file or a folder holding one.
pub fn load_root_public(path: &Path) -> Result<RootPublicKey, String> {
    let file = if path.is_dir() { path.join(SimRoot::PUB_FILE) } else { path.to_owned() };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read the sim root public key {}: {e}", file.display()))?;
    RootPublicKey::from_hex(&text)
}

/// A node's simulated hardware key and the root's certificate for it.
pub struct SimHardware {
    key: Ed25519KeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
    root: RootPublicKey,
    cert: [u8; 64],
}

impl std::fmt::Debug for SimHardware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHardware").field("root", &self.root.to_hex()).finish_non_exhaustive()
    }
}

/// What the enclave puts in its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimReport {
    pub measurement: [u8; 48],
    pub signer: [u8; 32],
    pub product_id: u16,
    pub svn: u32,
    pub debug: bool,
    pub report_data: [u8; 64],
}

impl SimHardware {
    const KEY_FILE: &'static str = "hw.key";
    const CERT_FILE: &'static str = "hw.cert";

    /// A new hardware key certified by `root`.
    pub fn generate(root: &SimRoot) -> Result<SimHardware, String> {
        let pkcs8 = generate_pkcs8()?;
        let key = keypair(&pkcs8, "the new hardware key")?;
        let cert = root.certify(key.public_key().as_ref());
        Ok(SimHardware { key, pkcs8, root: root.public(), cert })
    }

    /// Loads the hardware key kept in `dir`, or makes one certified by `root` and keeps it there.
    /// A key certified by another root is replaced.
    pub fn load_or_create(dir: &Path, root: &SimRoot) -> Result<SimHardware, String> {
        let (kp, cp) = (dir.join(Self::KEY_FILE), dir.join(Self::CERT_FILE));
        if let (Ok(pkcs8), Ok(cert)) = (std::fs::read(&kp), std::fs::read(&cp))
            && cert.len() == 96
            && cert[..32] == root.public().0
        {
            let pkcs8 = Zeroizing::new(pkcs8);
            let key = keypair(&pkcs8, &kp.display().to_string())?;
            let mut c = [0u8; 64];
            c.copy_from_slice(&cert[32..]);
            return Ok(SimHardware { key, pkcs8, root: root.public(), cert: c });
        }
        let hw = Self::generate(root)?;
        let io = |e: std::io::Error| format!("cannot save the sim hardware key in {}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(io)?;
        write_secret(&kp, &hw.pkcs8).map_err(io)?;
        let mut cert = root.public().0.to_vec();
        cert.extend_from_slice(&hw.cert);
        std::fs::write(&cp, cert).map_err(io)?;
        Ok(hw)
    }

    /// Signed evidence for `report`, dated `now`.
    pub fn evidence(&self, report: &SimReport, now: u64) -> Vec<u8> {
        let mut b = Vec::with_capacity(LEN);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&u16::from(report.debug).to_le_bytes());
        b.extend_from_slice(&report.measurement);
        b.extend_from_slice(&report.signer);
        b.extend_from_slice(&report.product_id.to_le_bytes());
        b.extend_from_slice(&report.svn.to_le_bytes());
        b.extend_from_slice(&report.report_data);
        b.extend_from_slice(&now.to_le_bytes());
        b.extend_from_slice(&self.root.0);
        b.extend_from_slice(self.key.public_key().as_ref());
        b.extend_from_slice(&self.cert);
        let sig = self.key.sign(&b);
        b.extend_from_slice(sig.as_ref());
        b
    }
}

/// Verifies sim evidence against the deployment's root in `collateral`.
pub fn verify(bytes: &[u8], collateral: &Collateral, now: u64) -> Result<Claims, VerifyError> {
    verify_with(bytes, collateral, now, false)
}

/// The bytes that identify a certified hardware key (root, key, certificate), for caching.
pub(crate) fn hardware_id(bytes: &[u8]) -> Option<&[u8]> {
    bytes.get(170..298)
}

/// Verifies sim evidence; `certificate_known_good` skips the root's signature over a hardware key
/// already checked (the warm path).
pub(crate) fn verify_with(
    bytes: &[u8],
    collateral: &Collateral,
    now: u64,
    certificate_known_good: bool,
) -> Result<Claims, VerifyError> {
    let malformed = |m: &str| VerifyError::Malformed(format!("sim evidence: {m}"));
    if bytes.len() != LEN {
        return Err(malformed(&format!("{} bytes, expected {LEN}", bytes.len())));
    }
    if !bytes.starts_with(MAGIC) {
        return Err(malformed("bad magic"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let version = u16_at(8);
    if version != VERSION {
        return Err(malformed(&format!("version {version}, this verifier reads {VERSION}")));
    }
    let flags = u16_at(10);
    if flags & !1 != 0 {
        return Err(malformed(&format!("unknown flags {flags:#x}")));
    }
    let root = collateral.sim_root.ok_or_else(|| {
        VerifyError::MissingCollateral("sim evidence needs this deployment's sim root public key".into())
    })?;
    let (root_in, hw_pub, hw_cert, sig) = (&bytes[170..202], &bytes[202..234], &bytes[234..298], &bytes[298..]);
    if root_in != root.0 {
        return Err(VerifyError::Invalid(format!(
            "signed under another deployment's sim root ({}), not {}",
            hex::encode(root_in),
            root.to_hex()
        )));
    }
    let mut cert_msg = HW_CERT_LABEL.to_vec();
    cert_msg.extend_from_slice(hw_pub);
    if !certificate_known_good {
        UnparsedPublicKey::new(&ED25519, root.0)
            .verify(&cert_msg, hw_cert)
            .map_err(|_| VerifyError::Invalid("the hardware key is not certified by the sim root".into()))?;
    }
    UnparsedPublicKey::new(&ED25519, hw_pub)
        .verify(&bytes[..SIGNED_LEN], sig)
        .map_err(|_| VerifyError::Invalid("the evidence signature does not verify".into()))?;
    let timestamp = u64::from_le_bytes(bytes[162..170].try_into().unwrap_or_default());
    if timestamp > now.saturating_add(CLOCK_SKEW) {
        return Err(VerifyError::Invalid(format!("evidence dated {timestamp}, in the future")));
    }
    let raw =
        BTreeMap::from([("hardware_key".to_owned(), hex::encode(hw_pub)), ("sim_root".to_owned(), root.to_hex())]);
    Ok(Claims {
        platform: Platform::Sim,
        measurement: bytes[12..60].to_vec(),
        signer: bytes[60..92].to_vec(),
        product_id: Some(u16_at(92)),
        security_version: Some(u32::from_le_bytes(bytes[94..98].try_into().unwrap_or_default())),
        tcb_status: None,
        advisories: Vec::new(),
        debug: flags & 1 == 1,
        report_data: bytes[98..162].to_vec(),
        issued_at: Some(timestamp),
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> SimReport {
        SimReport { measurement: [7; 48], signer: [1; 32], product_id: 3, svn: 9, debug: false, report_data: [5; 64] }
    }

    fn coll(root: &SimRoot) -> Collateral {
        Collateral { sim_root: Some(root.public()), ..Default::default() }
    }

    #[test]
    fn evidence_verifies_under_its_root_only() {
        let root = SimRoot::generate().expect("root");
        let hw = SimHardware::generate(&root).expect("hw");
        let ev = hw.evidence(&report(), 1000);
        assert_eq!(ev.len(), LEN);
        let claims = verify(&ev, &coll(&root), 1000).expect("verifies");
        assert_eq!(claims.platform, Platform::Sim);
        assert_eq!(claims.measurement, vec![7; 48]);
        assert_eq!(claims.report_data, vec![5; 64]);
        assert_eq!((claims.product_id, claims.security_version, claims.debug), (Some(3), Some(9), false));

        let other = SimRoot::generate().expect("root");
        let err = verify(&ev, &coll(&other), 1000).expect_err("another deployment");
        assert!(err.to_string().contains("another deployment"), "{err}");
        // A hardware key of another root, relabelled with ours.
        let foreign = SimHardware::generate(&other).expect("hw").evidence(&report(), 1000);
        let mut relabelled = foreign.clone();
        relabelled[170..202].copy_from_slice(&root.public().0);
        assert!(verify(&relabelled, &coll(&root), 1000).is_err());
        assert!(matches!(verify(&ev, &Collateral::default(), 1000), Err(VerifyError::MissingCollateral(_))));
        assert!(verify(&ev, &coll(&root), 1000 - CLOCK_SKEW - 1).is_err(), "from the future");
    }

    #[test]
    fn every_byte_is_covered_by_a_signature() {
        let root = SimRoot::generate().expect("root");
        let ev = SimHardware::generate(&root).expect("hw").evidence(&report(), 1000);
        for i in 0..LEN {
            let mut m = ev.clone();
            m[i] ^= 0x01;
            assert!(verify(&m, &coll(&root), 1000).is_err(), "flipping byte {i} went unnoticed");
        }
        assert!(verify(&ev[..LEN - 1], &coll(&root), 1000).is_err());
    }

    #[test]
    fn keys_persist_and_stay_secret() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = SimRoot::load_or_init(dir.path()).expect("init");
        let again = SimRoot::load_or_init(dir.path()).expect("load");
        assert_eq!(root.public(), again.public());
        assert_eq!(load_root_public(dir.path()).expect("pub"), root.public());
        let hw1 = SimHardware::load_or_create(&dir.path().join("node"), &root).expect("hw");
        let hw2 = SimHardware::load_or_create(&dir.path().join("node"), &root).expect("hw again");
        assert_eq!(hw1.key.public_key().as_ref(), hw2.key.public_key().as_ref());
        assert!(!format!("{root:?}{hw1:?}").contains(&hex::encode(&root.pkcs8[16..])));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(SimRoot::KEY_FILE)).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
