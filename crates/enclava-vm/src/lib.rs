//! The VM launcher for farm jobs (GPUX's "VM off an encrypted disk"): a qemu guest booted from a
//! kernel and an initramfs made per job (the host's static busybox, the job's command and inputs),
//! with no network device. The job's output comes back on a serial port of its own, its exit
//! status on another.
//!
//! A confidential VM needs SEV-SNP or TDX on the host: [`detect`] looks for them, and a
//! confidential job is refused, clearly, where neither is present; it is never run as a plain VM.
//! Without them, a guest runs under TCG emulation (stock kernels hang under these machines' KVM)
//! and says what it is: a separate kernel between the job and the host, not confidentiality.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use enclava_core::{Error, ErrorCode};

/// What a plain VM job is, in words a submitter sees.
pub const ISOLATION: &str = "Not confidential: the host can see everything. A plain VM (qemu, TCG emulation): its own \
    kernel, no network device, memory and CPU limits, stopped at its deadline";

/// What a confidential VM job is, in words.
pub const CONFIDENTIAL_ISOLATION: &str =
    "Confidential VM: guest memory encrypted and integrity-protected by the CPU (SEV-SNP or TDX), no network device";

/// The confidential-VM technology a host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmTee {
    SevSnp,
    Tdx,
}

impl VmTee {
    pub fn as_str(self) -> &'static str {
        match self {
            VmTee::SevSnp => "sev-snp",
            VmTee::Tdx => "tdx",
        }
    }
}

/// SEV-SNP or TDX, where the host's KVM offers it (`/dev/sev` and `kvm_amd`'s `sev_snp`, or
/// `kvm_intel`'s `tdx`); `None` otherwise, never a guess.
pub fn detect() -> Option<VmTee> {
    detect_in(Path::new("/"))
}

fn detect_in(root: &Path) -> Option<VmTee> {
    let yes = |p: &str| std::fs::read_to_string(root.join(p)).is_ok_and(|s| matches!(s.trim(), "Y" | "y" | "1"));
    if root.join("dev/sev").exists() && yes("sys/module/kvm_amd/parameters/sev_snp") {
        return Some(VmTee::SevSnp);
    }
    if yes("sys/module/kvm_intel/parameters/tdx") {
        return Some(VmTee::Tdx);
    }
    None
}

/// One job for a VM.
#[derive(Debug, Clone)]
pub struct VmJob {
    /// Run by `/bin/sh -c` in the guest, with busybox's applets on its PATH.
    pub command: String,
    /// Files put in the guest's `/in`.
    pub inputs: Vec<(String, Vec<u8>)>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Duration,
    /// Run only as a confidential VM (refused where the host has none).
    pub confidential: bool,
    /// A folder for the job's initramfs and serial logs (removed by the caller).
    pub work: PathBuf,
}

/// How a VM job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// The command's status.
    Exited(i32),
    /// The guest stopped without reporting one (a crash or a kernel panic).
    NoStatus,
    Deadline {
        timeout: Duration,
    },
}

impl VmOutcome {
    pub fn success(&self) -> bool {
        *self == VmOutcome::Exited(0)
    }
}

impl std::fmt::Display for VmOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmOutcome::Exited(code) => write!(f, "exited with status {code}"),
            VmOutcome::NoStatus => write!(f, "its VM stopped before the command reported a status"),
            VmOutcome::Deadline { timeout } => {
                write!(
                    f,
                    "its VM was stopped at its deadline of {:.3} s (raise the job's timeout)",
                    timeout.as_secs_f64()
                )
            }
        }
    }
}

/// What a VM job did.
#[derive(Debug)]
pub struct VmReport {
    pub outcome: VmOutcome,
    /// The command's stdout and stderr, together.
    pub output: Vec<u8>,
    pub wall: Duration,
    pub isolation: &'static str,
}

/// The largest output kept.
const MAX_OUTPUT: u64 = 16 << 20;

/// The launcher: where qemu, the guest kernel and a static busybox are.
#[derive(Debug, Clone)]
pub struct VmLauncher {
    qemu: PathBuf,
    kernel: PathBuf,
    busybox: PathBuf,
    tee: Option<VmTee>,
}

impl VmLauncher {
    /// Finds qemu (`qemu-system-x86_64` on PATH), a guest kernel (`kernel`, else
    /// `ENCLAVA_VM_KERNEL`, else `/boot/vmlinuz*`, else `~/.cache/enclava/vm/vmlinuz*`) and a
    /// static busybox; says what is missing and how to get it.
    pub fn find(kernel: Option<&Path>) -> Result<VmLauncher, Error> {
        let missing = |what: &str| Error::new(ErrorCode::FailedPrecondition, what.to_owned());
        let qemu = which("qemu-system-x86_64")
            .ok_or_else(|| missing("no qemu-system-x86_64: install qemu-system-x86 to run VM jobs"))?;
        let kernel = match kernel
            .map(Path::to_owned)
            .or_else(|| std::env::var_os("ENCLAVA_VM_KERNEL").map(PathBuf::from))
        {
            Some(k) => k,
            None => default_kernel().ok_or_else(|| {
                missing(
                    "no guest kernel: set ENCLAVA_VM_KERNEL to a bzImage, or put one at ~/.cache/enclava/vm/vmlinuz \
                     (scripts/test fetches Debian's)",
                )
            })?,
        };
        if !kernel.is_file() {
            return Err(missing(&format!("the guest kernel {} does not exist", kernel.display())));
        }
        let busybox = ["/usr/bin/busybox", "/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| missing("no static busybox for the guest: install busybox-static"))?;
        Ok(VmLauncher { qemu, kernel, busybox, tee: detect() })
    }

    /// The confidential-VM technology this host has, if any.
    pub fn tee(&self) -> Option<VmTee> {
        self.tee
    }

    /// qemu's command line for `job` booting `initrd`, with its serial logs in `job.work`.
    /// A confidential job without SEV-SNP or TDX is refused here.
    pub fn command_line(&self, job: &VmJob, initrd: &Path) -> Result<Vec<String>, Error> {
        let mut args: Vec<String> = vec![self.qemu.display().to_string()];
        let memory = job.memory_mib.clamp(64, 64 * 1024);
        match (job.confidential, self.tee) {
            (true, None) => {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    "this host has neither SEV-SNP nor TDX: a confidential VM job cannot run here (it is never run as a plain VM)",
                ));
            }
            (true, Some(VmTee::SevSnp)) => args.extend([
                "-accel".into(),
                "kvm".into(),
                "-machine".into(),
                "q35,confidential-guest-support=sev0,memory-backend=ram0".into(),
                "-object".into(),
                format!("memory-backend-memfd,id=ram0,size={memory}M,share=true"),
                "-object".into(),
                "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1".into(),
            ]),
            (true, Some(VmTee::Tdx)) => args.extend(
                [
                    "-accel",
                    "kvm",
                    "-machine",
                    "q35,kernel-irqchip=split,confidential-guest-support=tdx0",
                    "-object",
                    "tdx-guest,id=tdx0",
                ]
                .map(String::from),
            ),
            (false, _) => args.extend(["-accel", "tcg", "-machine", "q35"].map(String::from)),
        }
        let serial = |name: &str| format!("file:{}", job.work.join(name).display());
        args.extend([
            "-m".into(),
            format!("{memory}M"),
            "-smp".into(),
            job.cpus.clamp(1, 64).to_string(),
            "-nodefaults".into(),
            "-no-reboot".into(),
            "-nic".into(),
            "none".into(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            "console=ttyS0 panic=-1 quiet loglevel=0".into(),
            "-serial".into(),
            serial("console.log"),
            "-serial".into(),
            serial("output.bin"),
            "-serial".into(),
            serial("status.txt"),
        ]);
        Ok(args)
    }

    /// Boots a guest for `job`, waits for it to power off or for its deadline, and reports.
    pub async fn run(&self, job: &VmJob) -> Result<VmReport, Error> {
        let io = |what: &str, e: std::io::Error| Error::unavailable(format!("{what}: {e}"));
        std::fs::create_dir_all(&job.work).map_err(|e| io("cannot create the VM's folder", e))?;
        let initrd = job.work.join("initrd.cpio");
        let busybox = std::fs::read(&self.busybox).map_err(|e| io("cannot read busybox", e))?;
        std::fs::write(&initrd, initramfs(&busybox, &job.command, &job.inputs)?)
            .map_err(|e| io("cannot write the initramfs", e))?;
        let argv = self.command_line(job, &initrd)?;
        let (program, rest) = argv.split_first().ok_or_else(|| Error::internal("empty command line"))?;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| io("qemu does not start", e))?;
        let outcome = match tokio::time::timeout(job.timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => None,
            Ok(Ok(status)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = (&mut e).take(4096).read_to_string(&mut err).await;
                }
                return Err(Error::unavailable(format!(
                    "qemu failed ({status}): {}",
                    enclava_core::text::prefix(err.trim(), 300)
                )));
            }
            Ok(Err(e)) => return Err(io("waiting for qemu failed", e)),
            Err(_) => {
                let _ = child.kill().await;
                Some(VmOutcome::Deadline { timeout: job.timeout })
            }
        };
        let mut output = Vec::new();
        if let Ok(f) = std::fs::File::open(job.work.join("output.bin")) {
            use std::io::Read;
            let _ = f.take(MAX_OUTPUT).read_to_end(&mut output);
        }
        let outcome = outcome.unwrap_or_else(|| {
            std::fs::read_to_string(job.work.join("status.txt"))
                .ok()
                .and_then(|s| s.trim().strip_prefix("exit ").and_then(|n| n.trim().parse().ok()))
                .map_or(VmOutcome::NoStatus, VmOutcome::Exited)
        });
        let isolation = if job.confidential { CONFIDENTIAL_ISOLATION } else { ISOLATION };
        Ok(VmReport { outcome, output, wall: started.elapsed(), isolation })
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn default_kernel() -> Option<PathBuf> {
    let mut dirs = vec![PathBuf::from("/boot")];
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cache/enclava/vm"));
    }
    dirs.iter().find_map(|d| {
        let mut found: Vec<PathBuf> = std::fs::read_dir(d)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz")))
            .collect();
        found.sort();
        found.pop()
    })
}

/// The guest's `/init`: busybox's applets, the job's command with its output on the second
/// serial port and its status on the third, then power off.
const INIT: &str = "#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
stty -F /dev/ttyS1 raw -echo
stty -F /dev/ttyS2 raw -echo
cd /in
/bin/sh /job.sh > /dev/ttyS1 2>&1 < /dev/null
echo \"exit $?\" > /dev/ttyS2
sync
poweroff -f
";

/// A `newc` initramfs holding busybox, `/init`, the job and its inputs (names checked: one path
/// component each).
pub fn initramfs(busybox: &[u8], command: &str, inputs: &[(String, Vec<u8>)]) -> Result<Vec<u8>, Error> {
    let mut w = Cpio { out: Vec::with_capacity(busybox.len() + 4096), ino: 1 };
    for d in ["bin", "dev", "proc", "sys", "tmp", "in"] {
        w.entry(d, 0o040_755, &[], (0, 0));
    }
    w.entry("dev/console", 0o020_600, &[], (5, 1));
    w.entry("bin/busybox", 0o100_755, busybox, (0, 0));
    w.entry("init", 0o100_755, INIT.as_bytes(), (0, 0));
    w.entry("job.sh", 0o100_644, command.as_bytes(), (0, 0));
    for (name, bytes) in inputs {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
            return Err(Error::invalid(format!("input name {} is not a file name", enclava_core::text::quote(name))));
        }
        w.entry(&format!("in/{name}"), 0o100_644, bytes, (0, 0));
    }
    w.entry("TRAILER!!!", 0, &[], (0, 0));
    Ok(w.out)
}

struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        let namesize = name.len() + 1;
        let fields = [self.ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, namesize as u32, 0];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initramfs_is_newc_and_refuses_paths_as_input_names() {
        let img = initramfs(b"BB", "echo hi", &[("a.txt".into(), b"xyz".to_vec())]).expect("built");
        assert!(img.starts_with(b"070701"));
        assert_eq!(img.len() % 4, 0);
        let text = String::from_utf8_lossy(&img);
        for name in ["bin/busybox", "init", "job.sh", "in/a.txt", "dev/console", "TRAILER!!!"] {
            assert!(text.contains(name), "{name}");
        }
        for bad in ["../x", "a/b", "", ".."] {
            assert!(initramfs(b"BB", "true", &[(bad.into(), Vec::new())]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn confidential_vms_need_the_hardware_and_say_which() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(detect_in(dir.path()), None);
        let snp = dir.path().join("sys/module/kvm_amd/parameters");
        std::fs::create_dir_all(&snp).expect("dirs");
        std::fs::write(snp.join("sev_snp"), "Y\n").expect("write");
        assert_eq!(detect_in(dir.path()), None, "sev_snp without /dev/sev is no SEV-SNP");
        std::fs::create_dir_all(dir.path().join("dev")).expect("dev");
        std::fs::write(dir.path().join("dev/sev"), "").expect("sev");
        assert_eq!(detect_in(dir.path()), Some(VmTee::SevSnp));

        let launcher = VmLauncher {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            kernel: "/k".into(),
            busybox: "/bb".into(),
            tee: None,
        };
        let job = VmJob {
            command: "true".into(),
            inputs: Vec::new(),
            memory_mib: 128,
            cpus: 1,
            timeout: Duration::from_secs(1),
            confidential: true,
            work: dir.path().to_owned(),
        };
        let err = launcher.command_line(&job, Path::new("/i")).expect_err("refused");
        assert_eq!(err.code, ErrorCode::FailedPrecondition);
        assert!(err.message.contains("never run as a plain VM"), "{err}");
        let plain =
            launcher.command_line(&VmJob { confidential: false, ..job.clone() }, Path::new("/i")).expect("plain");
        assert!(plain.windows(2).any(|w| w == ["-accel", "tcg"]) && plain.windows(2).any(|w| w == ["-nic", "none"]));
        let snp = VmLauncher { tee: Some(VmTee::SevSnp), ..launcher.clone() }
            .command_line(&job, Path::new("/i"))
            .expect("snp");
        assert!(snp.iter().any(|a| a.starts_with("sev-snp-guest")) && snp.windows(2).any(|w| w == ["-accel", "kvm"]));
        let tdx = VmLauncher { tee: Some(VmTee::Tdx), ..launcher }.command_line(&job, Path::new("/i")).expect("tdx");
        assert!(tdx.iter().any(|a| a.starts_with("tdx-guest")));
    }
}
