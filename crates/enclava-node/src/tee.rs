//! The platform adapter: what a node needs from its TEE (platform name, a stable instance id
//! derived from its sealing identity, its measurement). `sim` is the platform for machines without
//! a TEE: its sealing key is a file in the node's data folder. TDX and SEV-SNP guests attest through
//! the kernel's configfs-tsm interface ([`crate::tsm`]); SGX and Nitro answer "not available on
//! this host" until they run on hardware; never a fake.

use std::io::Write;
use std::path::{Path, PathBuf};

use enclava_attest::sim::{SimHardware, SimReport, SimRoot};
use sha2::{Digest, Sha256, Sha384};
use zeroize::Zeroizing;

use crate::NodeError;

/// What a node needs from its TEE.
pub trait Tee: Send + Sync + std::fmt::Debug {
    /// `sim`, `sgx`, `tdx`, `sev-snp`, `nitro`.
    fn platform(&self) -> &str;
    /// Stable across restarts of the same sealed identity, different for another.
    fn instance_id(&self) -> &str;
    /// The measurement of the running workload, lowercase hex.
    fn measurement(&self) -> &str;
    /// Fresh evidence binding `report_data`, dated `now`; `None` when this TEE cannot attest.
    fn evidence(&self, report_data: &[u8; 64], now: u64) -> Option<Vec<u8>>;
}

/// Opens the TEE adapter for `platform`. For `sim`, `sim_root` is the deployment's sim root, which
/// certifies the node's simulated hardware key; it is required.
pub fn open(
    platform: &str,
    data_dir: &Path,
    sim_root: Option<&Path>,
    tsm_dir: Option<&Path>,
) -> Result<Box<dyn Tee>, NodeError> {
    match platform {
        "sim" => {
            // Without its deployment's root a sim node could publish no evidence, and no client or
            // key broker would ever accept it: refuse to start rather than run unverifiable.
            let Some(root_dir) = sim_root else {
                return Err(NodeError::Config(
                    "platform sim needs this deployment's sim root, which certifies the node's simulated hardware key: \
                     make one with `enclava sim init --out DIR` (once per deployment) and pass --sim-root DIR \
                     (or ENCLAVA_SIM_ROOT)"
                        .into(),
                ));
            };
            let mut tee = SimTee::open(data_dir)?;
            let root = SimRoot::load(root_dir).map_err(NodeError::Config)?;
            let hw = SimHardware::load_or_create(&data_dir.join("sim"), &root).map_err(NodeError::Config)?;
            tee.hardware = Some(hw);
            Ok(Box::new(tee))
        }
        "tdx" | "sev-snp" => {
            let tsm = tsm_dir.unwrap_or(Path::new(crate::tsm::TSM_REPORT_DIR));
            Ok(Box::new(crate::tsm::TsmTee::open(platform, tsm, data_dir)?))
        }
        "plaintext" => {
            let (_, instance_id) = identity(&data_dir.join("plaintext"), "identity.key")?;
            Ok(Box::new(PlainHost { instance_id }))
        }
        "sgx" | "nitro" => Err(NodeError::PlatformUnavailable(platform.to_owned())),
        other => Err(NodeError::Config(format!(
            "unknown platform {other:?}: use sim, plaintext (a host with no TEE), or sgx, tdx, sev-snp, nitro on such hardware"
        ))),
    }
}

/// The simulated TEE: a 32-byte sealing key in `DATA_DIR/sim/sealing.key` (mode 0600) stands for
/// the hardware's sealing identity.
pub struct SimTee {
    sealing_key: Zeroizing<[u8; 32]>,
    instance_id: String,
    measurement: String,
    hardware: Option<SimHardware>,
}

impl std::fmt::Debug for SimTee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTee")
            .field("instance_id", &self.instance_id)
            .field("measurement", &self.measurement)
            .finish_non_exhaustive()
    }
}

/// The workload a discovery-only node runs: this node program, at this version.
pub fn sim_workload() -> String {
    format!("enclava-node {}", env!("CARGO_PKG_VERSION"))
}

/// SHA-384 of a workload description: a changed workload changes the measurement.
pub fn sim_measurement(workload: &[u8]) -> String {
    let mut h = Sha384::new();
    h.update(b"enclava/sim/measurement/v1\0");
    h.update(workload);
    hex::encode(h.finalize())
}

impl SimTee {
    /// Loads the sealing key from `data_dir`, or makes one on first start.
    pub fn open(data_dir: &Path) -> Result<SimTee, NodeError> {
        let (sealing_key, instance_id) = identity(&data_dir.join("sim"), "sealing.key")?;
        let measurement = sim_measurement(sim_workload().as_bytes());
        Ok(SimTee { sealing_key, instance_id, measurement, hardware: None })
    }

    /// The sealing key (for sealing data to this identity).
    pub fn sealing_key(&self) -> &[u8; 32] {
        &self.sealing_key
    }
}

/// A node's identity key in `dir/file` (made on first start, mode 0600) and the stable instance id
/// derived from it: the same folder keeps the same id across restarts.
pub(crate) fn identity(dir: &Path, file: &str) -> Result<(Zeroizing<[u8; 32]>, String), NodeError> {
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| NodeError::Io { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("cannot create the data folder", dir))?;
    let path = dir.join(file);
    let key = match std::fs::read(&path) {
        Ok(bytes) => Zeroizing::new(<[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            NodeError::Config(format!(
                "the identity key {} is not 32 bytes: it is damaged. Remove it to make a new identity (the instance id will change)",
                path.display()
            ))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(&path)?,
        Err(e) => return Err(io("cannot read the identity key", &path)(e)),
    };
    let mut h = Sha256::new();
    h.update(b"enclava/instance-id/v1\0");
    h.update(key.as_slice());
    let instance_id = hex::encode(&h.finalize()[..16]);
    Ok((key, instance_id))
}

fn create_key(path: &PathBuf) -> Result<Zeroizing<[u8; 32]>, NodeError> {
    let mut key = Zeroizing::new([0u8; 32]);
    rand::fill(key.as_mut_slice());
    let tmp = path.with_extension("key.tmp");
    let err = |what| move |source| NodeError::Io { what, path: path.clone(), source };
    let mut opts = std::fs::OpenOptions::new();
    // A stale temporary file may have wider permissions: start from a new one.
    let _ = std::fs::remove_file(&tmp);
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(err("cannot create the sealing key"))?;
    f.write_all(key.as_slice()).map_err(err("cannot write the sealing key"))?;
    f.sync_all().map_err(err("cannot sync the sealing key"))?;
    // Rename is atomic: a crash leaves either no key or a whole one.
    std::fs::rename(&tmp, path).map_err(err("cannot install the sealing key"))?;
    Ok(key)
}

/// A host with no TEE (`plaintext`): a stable instance id and no evidence at all. It can run
/// plaintext farm jobs; nothing that needs attestation ever accepts it.
#[derive(Debug)]
pub struct PlainHost {
    instance_id: String,
}

impl Tee for PlainHost {
    fn platform(&self) -> &str {
        "plaintext"
    }

    fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn measurement(&self) -> &str {
        ""
    }

    fn evidence(&self, _: &[u8; 64], _: u64) -> Option<Vec<u8>> {
        None
    }
}

impl Tee for SimTee {
    fn platform(&self) -> &str {
        "sim"
    }

    fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn measurement(&self) -> &str {
        &self.measurement
    }

    fn evidence(&self, report_data: &[u8; 64], now: u64) -> Option<Vec<u8>> {
        let hw = self.hardware.as_ref()?;
        let mut measurement = [0u8; 48];
        hex::decode_to_slice(&self.measurement, &mut measurement).ok()?;
        let report =
            SimReport { measurement, signer: [0; 32], product_id: 0, svn: 0, debug: false, report_data: *report_data };
        Some(hw.evidence(&report, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_is_stable_per_folder_and_differs_between_folders() {
        let a = tempfile::tempdir().expect("tmp");
        let b = tempfile::tempdir().expect("tmp");
        let a1 = SimTee::open(a.path()).expect("open");
        let a2 = SimTee::open(a.path()).expect("reopen");
        let b1 = SimTee::open(b.path()).expect("open");
        assert_eq!(a1.instance_id(), a2.instance_id());
        assert_ne!(a1.instance_id(), b1.instance_id());
        assert_eq!(a1.measurement(), b1.measurement(), "same workload, same measurement");
        assert_eq!(a1.measurement().len(), 96, "SHA-384 hex");
        assert!(!format!("{a1:?}").contains(&hex::encode(a1.sealing_key())), "no key in Debug");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(a.path().join("sim/sealing.key")).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_key_is_an_error_not_a_new_identity() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(d.path().join("sim")).expect("mkdir");
        std::fs::write(d.path().join("sim/sealing.key"), b"short").expect("write");
        let err = SimTee::open(d.path()).expect_err("damaged");
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[test]
    fn workload_changes_measurement() {
        assert_ne!(sim_measurement(b"a"), sim_measurement(b"b"));
    }

    #[test]
    fn a_sim_node_without_its_deployment_root_refuses_to_start() {
        let d = tempfile::tempdir().expect("tmp");
        let err = open("sim", d.path(), None, None).expect_err("no root").to_string();
        assert!(err.contains("enclava sim init") && err.contains("--sim-root"), "{err}");
        let root = d.path().join("root");
        SimRoot::load_or_init(&root).expect("root");
        let tee = open("sim", &d.path().join("node"), Some(&root), None).expect("with its root");
        assert!(tee.evidence(&[0; 64], 1).is_some_and(|e| !e.is_empty()), "it attests");
    }

    #[test]
    fn real_platforms_say_they_are_unavailable() {
        let d = tempfile::tempdir().expect("tmp");
        let err = open("tdx", d.path(), None, None).expect_err("no hardware");
        assert!(err.to_string().contains("not available on this host"));
        assert!(open("quantum", d.path(), None, None).is_err());
    }
}
