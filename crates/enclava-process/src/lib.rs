//! Plaintext sandboxed processes (GPUX's "plain text sandbox"): a job's command runs on a root
//! filesystem folder the submitter provides, inside bubblewrap, with
//!
//! - every namespace unshared: no network but its own loopback, its own pids, IPC and hostname;
//! - an unprivileged user inside (uid and gid 1000) and every capability dropped;
//! - the root filesystem's entries bound read-only onto an empty root that is itself read-only,
//!   a fresh `/proc` and minimal `/dev`, a private `/tmp`, and one writable folder at `/work`;
//! - per-process address-space, CPU-time, file-size and open-file limits (`prlimit`), and a
//!   cleared environment. There is no cgroup limit on the number of processes or on their total
//!   memory: these hosts' hybrid cgroups are not delegated, so a job that forks many processes is
//!   bounded only by each one's limits and by its deadline;
//! - a wall-clock deadline, after which bubblewrap is killed and the job with it
//!   (`--die-with-parent`).
//!
//! This is isolation from the host's other work, not confidentiality: the host can see everything
//! the job does, and [`ISOLATION`] says so wherever a job's status is shown.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use enclava_core::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a sandboxed process job is, in words a submitter sees.
pub const ISOLATION: &str = "Not confidential: the host can see everything. Sandboxed process (bubblewrap): \
    loopback-only network, no capabilities, read-only root, private /tmp, per-process CPU-time and memory limits, killed at its deadline";

/// Where a job's writable folder appears inside the sandbox.
pub const WORK_DIR: &str = "/work";
/// Where a folder shared with other jobs (a federated job's runs) appears, when there is one.
pub const SHARED_DIR: &str = "/shared";

/// What one job may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    /// Wall-clock time before the job is killed.
    pub timeout: Duration,
    /// Address space of each process, in bytes.
    pub memory_bytes: u64,
    /// CPU time of each process, in seconds.
    pub cpu_seconds: u64,
    /// The largest file it may write, in bytes.
    pub file_bytes: u64,
    /// Bytes of stdout (and, separately, of stderr) kept; the rest is read and dropped.
    pub max_output_bytes: usize,
}

impl Default for ProcessLimits {
    fn default() -> ProcessLimits {
        ProcessLimits {
            timeout: Duration::from_secs(60),
            memory_bytes: 1 << 30,
            cpu_seconds: 60,
            file_bytes: 1 << 30,
            max_output_bytes: 16 << 20,
        }
    }
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct ProcessJob {
    /// The root filesystem folder (a busybox or debootstrap tree).
    pub rootfs: PathBuf,
    /// The command and its arguments, as paths inside the root filesystem.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The host folder mounted writable at [`WORK_DIR`], where inputs are and outputs go.
    pub work: PathBuf,
    /// A host folder mounted writable at [`SHARED_DIR`] (shared with other jobs), if any.
    pub shared: Option<PathBuf>,
    pub stdin: Vec<u8>,
    pub limits: ProcessLimits,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// Its status (bubblewrap reports a job killed by signal N as 128 + N: SIGXCPU, 24, when it
    /// used up its CPU time).
    Exited(i32),
    /// The sandbox itself was killed by a signal.
    Signalled(i32),
    /// Killed at its deadline.
    Deadline { timeout: Duration },
}

impl ProcessOutcome {
    pub fn success(&self) -> bool {
        *self == ProcessOutcome::Exited(0)
    }
}

impl std::fmt::Display for ProcessOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessOutcome::Exited(code) if (129..=160).contains(code) => {
                write!(f, "exited with status {code} (killed by signal {}: SIGXCPU is its CPU-time limit)", code - 128)
            }
            ProcessOutcome::Exited(code) => write!(f, "exited with status {code}"),
            ProcessOutcome::Signalled(sig) => write!(f, "its sandbox was killed by signal {sig}"),
            ProcessOutcome::Deadline { timeout } => {
                write!(f, "was killed at its deadline of {:.3} s (raise the job's timeout)", timeout.as_secs_f64())
            }
        }
    }
}

/// What a job did.
#[derive(Debug)]
pub struct ProcessReport {
    pub outcome: ProcessOutcome,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub wall: Duration,
}

/// The sandbox: where bubblewrap and prlimit are.
#[derive(Debug, Clone)]
pub struct ProcessSandbox {
    bwrap: PathBuf,
    prlimit: PathBuf,
}

impl ProcessSandbox {
    /// Finds bubblewrap and prlimit on `PATH`, or says how to install them.
    pub fn find() -> Result<ProcessSandbox, Error> {
        let bwrap = which("bwrap").ok_or_else(|| {
            Error::unavailable(
                "bubblewrap is not installed: install it (apt-get install bubblewrap) to run sandboxed jobs",
            )
        })?;
        let prlimit = which("prlimit").ok_or_else(|| {
            Error::unavailable("prlimit is not installed: install util-linux to run sandboxed jobs with limits")
        })?;
        Ok(ProcessSandbox { bwrap, prlimit })
    }

    /// The full command line a job runs with (for logs and tests).
    pub fn command_line(&self, job: &ProcessJob) -> Result<Vec<String>, Error> {
        let l = job.limits;
        let mut args: Vec<String> = vec![
            self.prlimit.display().to_string(),
            format!("--as={}", l.memory_bytes),
            format!("--cpu={}", l.cpu_seconds.max(1)),
            format!("--fsize={}", l.file_bytes),
            "--nofile=256".into(),
            "--core=0".into(),
            "--".into(),
            self.bwrap.display().to_string(),
        ];
        let flag = |args: &mut Vec<String>, items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
        flag(
            &mut args,
            &[
                "--unshare-all",
                "--unshare-user",
                "--uid",
                "1000",
                "--gid",
                "1000",
                "--hostname",
                "job",
                "--die-with-parent",
                "--new-session",
                "--cap-drop",
                "ALL",
                "--clearenv",
                "--tmpfs",
                "/",
            ],
        );
        let root = job.rootfs.canonicalize().map_err(|e| {
            Error::invalid(format!("the job's root filesystem {} cannot be used: {e}", job.rootfs.display()))
        })?;
        let entries = std::fs::read_dir(&root)
            .map_err(|e| Error::invalid(format!("the job's root filesystem {} cannot be read: {e}", root.display())))?;
        let mut names: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            // Names are passed to bubblewrap as text: a name that is not UTF-8 could be shown as
            // another entry's name, so it is refused rather than approximated.
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(Error::invalid(format!(
                    "the job's root filesystem has an entry whose name is not UTF-8 ({}): rename it",
                    enclava_core::text::quote(&entry.file_name().to_string_lossy())
                )));
            };
            if matches!(name.as_str(), "proc" | "dev" | "tmp" | "work") || name.contains('\0') {
                continue;
            }
            let path = root.join(&name);
            let inside = format!("/{name}");
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target =
                        std::fs::read_link(&path).map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
                    args.extend(["--symlink".into(), target.display().to_string(), inside]);
                }
                Ok(_) => args.extend(["--ro-bind".into(), path.display().to_string(), inside]),
                Err(e) => return Err(Error::invalid(format!("{}: {e}", path.display()))),
            }
        }
        let work = job
            .work
            .canonicalize()
            .map_err(|e| Error::invalid(format!("the job's folder {} cannot be used: {e}", job.work.display())))?;
        flag(&mut args, &["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
        args.extend(["--bind".into(), work.display().to_string(), WORK_DIR.into()]);
        if let Some(shared) = &job.shared {
            let shared = shared.canonicalize().map_err(|e| {
                Error::invalid(format!("the job's shared folder {} cannot be used: {e}", shared.display()))
            })?;
            args.extend(["--bind".into(), shared.display().to_string(), SHARED_DIR.into()]);
        }
        flag(
            &mut args,
            &["--remount-ro", "/", "--chdir", WORK_DIR, "--setenv", "PATH", "/usr/bin:/bin:/usr/sbin:/sbin"],
        );
        args.extend(["--setenv".into(), "HOME".into(), WORK_DIR.into()]);
        for (k, v) in &job.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(Error::invalid(format!(
                    "the environment variable {} is not a valid name",
                    enclava_core::text::quote(k)
                )));
            }
            args.extend(["--setenv".into(), k.clone(), v.clone()]);
        }
        if job.argv.is_empty() {
            return Err(Error::invalid("the job has no command"));
        }
        args.push("--".into());
        args.extend(job.argv.iter().cloned());
        Ok(args)
    }

    /// Runs a job to its end or its deadline. An error means it could not be started.
    pub async fn run(&self, job: &ProcessJob) -> Result<ProcessReport, Error> {
        let argv = self.command_line(job)?;
        let (program, rest) = argv.split_first().ok_or_else(|| Error::internal("empty command line"))?;
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::unavailable(format!("the sandbox does not start: {e}")))?;
        let started = Instant::now();
        let max = job.limits.max_output_bytes;
        let stdin = child.stdin.take();
        let input = job.stdin.clone();
        let feed = tokio::spawn(async move {
            if let Some(mut s) = stdin {
                // A job that does not read its input closes the pipe; that is not an error.
                let _ = s.write_all(&input).await;
            }
        });
        let out = tokio::spawn(read_capped(child.stdout.take(), max));
        let err = tokio::spawn(read_capped(child.stderr.take(), max));
        let outcome = match tokio::time::timeout(job.limits.timeout, child.wait()).await {
            Ok(Ok(status)) => match (status.code(), unix_signal(&status)) {
                (Some(code), _) => ProcessOutcome::Exited(code),
                (None, Some(sig)) => ProcessOutcome::Signalled(sig),
                (None, None) => ProcessOutcome::Exited(-1),
            },
            Ok(Err(e)) => return Err(Error::unavailable(format!("waiting for the job failed: {e}"))),
            Err(_) => {
                // SIGKILL to bubblewrap; --die-with-parent takes the job's processes with it.
                let _ = child.kill().await;
                ProcessOutcome::Deadline { timeout: job.limits.timeout }
            }
        };
        let wall = started.elapsed();
        feed.abort();
        let stdout = out.await.unwrap_or_default();
        let stderr = err.await.unwrap_or_default();
        tracing::debug!(%outcome, ?wall, "sandboxed job ended");
        Ok(ProcessReport { outcome, stdout, stderr, wall })
    }
}

/// A minimal root filesystem in `dir/rootfs`: the host's static busybox as `/bin/busybox` and a
/// link for each of `applets` (`sh`, `true`, …), to try the sandbox (the tests and the benchmark
/// use it). Needs busybox-static.
pub fn busybox_root(dir: &Path, applets: &[&str]) -> Result<PathBuf, Error> {
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or_else(|| Error::unavailable("no static busybox: install busybox-static"))?;
    let root = dir.join("rootfs");
    let io =
        |e: std::io::Error| Error::unavailable(format!("cannot build a root filesystem in {}: {e}", dir.display()));
    std::fs::create_dir_all(root.join("bin")).map_err(io)?;
    std::fs::copy(busybox, root.join("bin/busybox")).map_err(io)?;
    for applet in applets {
        // Built before (a restarted host on its folder): the link is already there.
        match std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            r => r.map_err(io)?,
        }
    }
    Ok(root)
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(r: Option<R>, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut r) = r else { return kept };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

fn unix_signal(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
