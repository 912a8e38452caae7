//! TDX and SEV-SNP guests: attestation reports through Linux's configfs-tsm interface (kernel
//! 6.7 and later, `/sys/kernel/config/tsm/report`). Each report is an entry made for it: the 64
//! bytes of report data go into `inblob`, the evidence comes out of `outblob` (a DCAP quote for
//! `tdx_guest`; the attestation report for `sev_guest`, whose host certificate table, with the
//! VCEK, comes out of `auxblob`), and `generation` tells whether another writer interfered.
//!
//! A TDX node publishes its quote; a client or the key broker fetches Intel collateral for it.
//! An SEV-SNP node publishes the report in Enclava's envelope with the VCEK and the chain from the
//! host's table, so a verifier needs only AMD's CRL (KDS). The instance id comes from an identity
//! key in the node's data folder (inside the guest's encrypted disk); the measurement is the one
//! the hardware reports (MRTD, or the SNP launch measurement).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::NodeError;
use crate::tee::Tee;

/// Where the kernel offers reports.
pub const TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";

/// How long a report may take (SNP requests go through the host's firmware).
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A guest attesting through configfs-tsm.
#[derive(Debug)]
pub struct TsmTee {
    dir: PathBuf,
    platform: &'static str,
    instance_id: String,
    measurement: String,
    next: AtomicU64,
}

/// What one report returned.
struct Report {
    provider: String,
    outblob: Vec<u8>,
    auxblob: Vec<u8>,
}

impl TsmTee {
    /// Opens the TSM interface at `dir` for `platform` (`tdx` or `sev-snp`); asks for one report to
    /// learn the measurement and check that the kernel's provider is that platform's.
    pub fn open(platform: &str, dir: &Path, data_dir: &Path) -> Result<TsmTee, NodeError> {
        let (platform, provider): (&'static str, &str) = match platform {
            "tdx" => ("tdx", "tdx_guest"),
            "sev-snp" => ("sev-snp", "sev_guest"),
            other => return Err(NodeError::Config(format!("configfs-tsm serves tdx and sev-snp, not {other}"))),
        };
        if !dir.is_dir() {
            return Err(NodeError::PlatformUnavailable(platform.to_owned()));
        }
        let (_, instance_id) = crate::tee::identity(&data_dir.join("tee"), "identity.key")?;
        let mut tee =
            TsmTee { dir: dir.to_owned(), platform, instance_id, measurement: String::new(), next: AtomicU64::new(0) };
        let r = tee.report(&[0; 64]).map_err(NodeError::Config)?;
        if r.provider != provider {
            return Err(NodeError::Config(format!(
                "the kernel's attestation provider is {}, not {provider}: this guest is not {platform}",
                enclava_core::text::quote(&r.provider)
            )));
        }
        let measurement = match platform {
            "tdx" => enclava_attest::dcap::quote_measurement(&r.outblob),
            _ => enclava_attest::snp::report_measurement(&r.outblob).map(<[u8]>::to_vec),
        };
        tee.measurement = hex::encode(measurement.ok_or_else(|| {
            NodeError::Config(format!("the kernel's {platform} report is not one this node can read"))
        })?);
        Ok(tee)
    }

    /// One report binding `report_data`, in an entry of its own, removed afterwards.
    fn report(&self, report_data: &[u8; 64]) -> Result<Report, String> {
        // Unique per report: concurrent reports (and other processes') never share an entry.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = self.dir.join(format!("enclava-{}-{n}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir(&entry).map_err(|e| format!("cannot make a report entry {}: {e}", entry.display()))?;
        let result = read_report(&entry, report_data);
        let _ = std::fs::remove_dir(&entry);
        result
    }
}

/// Reads a whole file of the entry, waiting briefly while the kernel is still producing it.
fn read_file(entry: &Path, name: &str, required: bool) -> Result<Vec<u8>, String> {
    let path = entry.join(name);
    let deadline = Instant::now() + REPORT_TIMEOUT;
    loop {
        match std::fs::read(&path) {
            Ok(b) if !b.is_empty() || !required => return Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Vec::new()),
            Ok(_) => {}
            Err(e)
                if !matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ResourceBusy)
                    && e.raw_os_error() != Some(11) =>
            {
                return Err(format!("cannot read {}: {e}", path.display()));
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            return Err(format!("{} was not produced within {REPORT_TIMEOUT:?}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn generation(entry: &Path) -> Result<u64, String> {
    let text = read_file(entry, "generation", true)?;
    String::from_utf8_lossy(&text).trim().parse().map_err(|_| "the report's generation is not a number".into())
}

fn read_report(entry: &Path, report_data: &[u8; 64]) -> Result<Report, String> {
    std::fs::write(entry.join("inblob"), report_data).map_err(|e| format!("cannot write the report data: {e}"))?;
    let written = generation(entry)?;
    let outblob = read_file(entry, "outblob", true)?;
    let auxblob = read_file(entry, "auxblob", false)?;
    let provider = String::from_utf8_lossy(&read_file(entry, "provider", true)?).trim().to_owned();
    // Another writer changed the report data between our write and our read: this report binds
    // someone else's data.
    if generation(entry)? != written {
        return Err("the report entry was changed while it was read; try again".into());
    }
    Ok(Report { provider, outblob, auxblob })
}

impl Tee for TsmTee {
    fn platform(&self) -> &str {
        self.platform
    }

    fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn measurement(&self) -> &str {
        &self.measurement
    }

    fn evidence(&self, report_data: &[u8; 64], _now: u64) -> Option<Vec<u8>> {
        let r = match self.report(report_data) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(platform = self.platform, error = %e, "no evidence from the kernel");
                return None;
            }
        };
        if self.platform == "tdx" {
            return Some(r.outblob);
        }
        match enclava_attest::snp::envelope_from_table(&r.outblob, &r.auxblob) {
            Ok(envelope) => Some(envelope),
            Err(e) => {
                tracing::error!(error = %e, "cannot publish SEV-SNP evidence");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(rel: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../enclava-attest/testdata").join(rel);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Stands in for the kernel: answers every new entry's inblob with `outblob` and `auxblob`,
    /// as configfs-tsm does on real hardware (which this machine lacks).
    fn kernel(dir: PathBuf, provider: &'static str, outblob: Vec<u8>, auxblob: Vec<u8>) -> std::sync::mpsc::Sender<()> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            while stopped.try_recv().is_err() {
                for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let p = e.path();
                    if p.join("inblob").exists() && !p.join("outblob").exists() {
                        // Each file appears whole, as configfs attributes do.
                        for (name, bytes) in [
                            ("generation", b"1".as_slice()),
                            ("provider", provider.as_bytes()),
                            ("auxblob", &auxblob),
                            ("outblob", &outblob),
                        ] {
                            let _ = std::fs::write(p.join(".tmp"), bytes);
                            let _ = std::fs::rename(p.join(".tmp"), p.join(name));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        stop
    }

    /// The fake kernel's files stay behind in the entry (configfs removes them itself).
    fn rmdir_all(dir: &Path) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }

    #[test]
    fn a_tdx_guest_publishes_its_quote_and_measurement() {
        let d = tempfile::tempdir().expect("tmp");
        let tsm = d.path().join("tsm");
        std::fs::create_dir(&tsm).expect("mkdir");
        let quote = testdata("tdx-v4/quote.dat");
        let _k = kernel(tsm.clone(), "tdx_guest", quote.clone(), Vec::new());
        let tee = TsmTee::open("tdx", &tsm, &d.path().join("node")).expect("opens");
        assert_eq!(tee.platform(), "tdx");
        assert_eq!(tee.measurement().len(), 96, "MRTD, 48 bytes");
        assert_eq!(tee.evidence(&[1; 64], 0), Some(quote));
        let again = TsmTee::open("tdx", &tsm, &d.path().join("node")).expect("reopens");
        assert_eq!(again.instance_id(), tee.instance_id(), "stable across restarts");
        let err = TsmTee::open("sev-snp", &tsm, &d.path().join("other")).expect_err("wrong provider");
        assert!(err.to_string().contains("not sev_guest"), "{err}");
        rmdir_all(&tsm);
    }

    #[test]
    fn an_snp_guest_publishes_its_report_with_the_hosts_vcek_and_chain() {
        let d = tempfile::tempdir().expect("tmp");
        let tsm = d.path().join("tsm");
        std::fs::create_dir(&tsm).expect("mkdir");
        let report = testdata("sev-snp/milan-virtee/report.bin");
        let vcek = testdata("sev-snp/milan-virtee/vcek.der");
        let chain = String::from_utf8(testdata("sev-snp/amd/milan_cert_chain.pem")).expect("pem");
        let chain = enclava_attest::roots::pem_certs(&chain).expect("chain");
        use enclava_attest::snp::{CertKind, build_cert_table};
        let table =
            build_cert_table(&[(CertKind::Vcek, &vcek), (CertKind::Ask, &chain[0]), (CertKind::Ark, &chain[1])]);
        let _k = kernel(tsm.clone(), "sev_guest", report.clone(), table);
        let tee = TsmTee::open("sev-snp", &tsm, &d.path().join("node")).expect("opens");
        let evidence = tee.evidence(&[1; 64], 0).expect("evidence");
        let enclava_attest::Evidence::SevSnp { report: r, vek, chain: c } =
            enclava_attest::Evidence::detect(evidence.clone()).expect("an SNP envelope")
        else {
            panic!("not SNP evidence")
        };
        assert_eq!((r, vek, c.len()), (report, vcek, 2));
        // The chain it carries verifies with the CRL alone (what a client fetches from KDS).
        let crl = der::pem::decode_vec(&testdata("sev-snp/amd/milan_crl.pem")).expect("crl").1;
        let collateral = enclava_attest::Collateral { amd_crls: vec![crl], ..Default::default() };
        let at = enclava_attest::time::parse_rfc3339("2025-07-01T00:00:00Z").expect("time");
        let claims =
            enclava_attest::verify(&enclava_attest::Evidence::detect(evidence).expect("detect"), &collateral, at)
                .expect("verifies");
        assert_eq!(claims.measurement_hex(), tee.measurement());
        assert_eq!(claims.raw["crl_checked"], "true");
        rmdir_all(&tsm);
    }

    #[test]
    fn no_configfs_no_platform() {
        let d = tempfile::tempdir().expect("tmp");
        let err = TsmTee::open("sev-snp", &d.path().join("none"), d.path()).expect_err("absent");
        assert!(err.to_string().contains("not available on this host"), "{err}");
    }
}
