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
//!   (`--die-with-parent`);
//! - optionally, host folders bound read-only at paths inside (an interpreter and its packages,
//!   like a container's read-only volumes), and one TCP listener the host opens on the sandbox's
//!   own loopback before the job starts ([`ProcessSandbox::run_serving`]): the only way out of the
//!   sandbox, answered by the host (a federation node's local proxy). Opening it joins the
//!   sandbox's network namespace from a short-lived thread, which needs root.
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
    /// Host folders bound read-only at absolute paths inside, over the root filesystem's entries.
    pub binds: Vec<(PathBuf, String)>,
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
        self.command_line_with(job, &[])
    }

    /// The command line with `extra` bubblewrap options first.
    fn command_line_with(&self, job: &ProcessJob, extra: &[String]) -> Result<Vec<String>, Error> {
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
        args.extend(extra.iter().cloned());
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
        for (host, inside) in &job.binds {
            let plain = inside.starts_with('/')
                && inside.len() > 1
                && !inside.contains('\0')
                && inside.split('/').all(|c| c != ".." && c != ".");
            if !plain || matches!(inside.as_str(), "/proc" | "/dev" | "/tmp" | WORK_DIR | SHARED_DIR) {
                return Err(Error::invalid(format!(
                    "a read-only mount must name an absolute path other than /proc, /dev, /tmp, /work and /shared, \
                     not {}",
                    enclava_core::text::quote(inside)
                )));
            }
            let host = host
                .canonicalize()
                .map_err(|e| Error::invalid(format!("the read-only mount {} cannot be used: {e}", host.display())))?;
            args.extend(["--ro-bind".into(), host.display().to_string(), inside.clone()]);
        }
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
        self.run_serving(job, None).await
    }

    /// Runs a job as [`ProcessSandbox::run`] does; with `listen`, first opens a TCP listener at
    /// `127.0.0.1:port` inside the sandbox's own network namespace and gives it to the callback
    /// (which serves it, on the host), and only then lets the job start. The job can reach that
    /// port and nothing else. Needs root: joining the sandbox's network namespace needs
    /// `CAP_SYS_ADMIN`.
    pub async fn run_serving(&self, job: &ProcessJob, listen: Option<Listen>) -> Result<ProcessReport, Error> {
        let started = Instant::now();
        let (mut child, gate) = match listen {
            None => (self.spawn(&self.command_line_with(job, &[])?, &[])?, None),
            Some(listen) => {
                let io = |e: std::io::Error| Error::unavailable(format!("cannot make the sandbox's pipes: {e}"));
                let (info_r, info_w) = std::io::pipe().map_err(io)?;
                let (block_r, block_w) = std::io::pipe().map_err(io)?;
                use std::os::fd::AsRawFd;
                let extra = [
                    "--info-fd".to_owned(),
                    info_w.as_raw_fd().to_string(),
                    "--block-fd".to_owned(),
                    block_r.as_raw_fd().to_string(),
                ];
                let argv = self.command_line_with(job, &extra)?;
                use std::os::fd::AsFd;
                let child = self.spawn(&argv, &[info_w.as_fd(), block_r.as_fd()]);
                // Only bubblewrap holds its ends now.
                drop(info_w);
                drop(block_r);
                let mut child = child?;
                match open_inside(info_r, listen.port).await {
                    Ok(listener) => (child, Some(((listen.serve)(listener), block_w))),
                    Err(e) => {
                        let _ = child.kill().await;
                        return Err(e);
                    }
                }
            }
        };
        let serving = gate.map(|(serving, mut gate)| {
            // One byte lets bubblewrap exec the job, now that its listener is there.
            use std::io::Write;
            let _ = gate.write_all(b"1");
            serving
        });
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
        if let Some(serving) = serving {
            serving.abort();
        }
        let stdout = out.await.unwrap_or_default();
        let stderr = err.await.unwrap_or_default();
        tracing::debug!(%outcome, ?wall, "sandboxed job ended");
        Ok(ProcessReport { outcome, stdout, stderr, wall })
    }
}

impl ProcessSandbox {
    /// Starts `argv`, letting it inherit `inherit` (which stay closed-on-exec for everything
    /// else: they are inheritable only while [`SPAWNING`] is held, and every sandbox starts
    /// under it).
    fn spawn(&self, argv: &[String], inherit: &[std::os::fd::BorrowedFd<'_>]) -> Result<tokio::process::Child, Error> {
        let (program, rest) = argv.split_first().ok_or_else(|| Error::internal("empty command line"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(rest)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let flags = |f: rustix::io::FdFlags| {
            inherit.iter().try_for_each(|fd| rustix::io::fcntl_setfd(fd, f)).map_err(|e| {
                Error::unavailable(format!("cannot pass the sandbox its descriptors: {}", std::io::Error::from(e)))
            })
        };
        let _one = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
        flags(rustix::io::FdFlags::empty())?;
        let child = cmd.spawn().map_err(|e| Error::unavailable(format!("the sandbox does not start: {e}")));
        flags(rustix::io::FdFlags::CLOEXEC)?;
        child
    }
}

/// Serialises starting sandboxes that inherit descriptors.
static SPAWNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A listener to open inside a sandbox ([`ProcessSandbox::run_serving`]).
pub struct Listen {
    /// The port on the sandbox's loopback (any: the namespace is the sandbox's own).
    pub port: u16,
    /// Takes the listener (non-blocking) and starts serving it, before the job starts; the
    /// task it returns is stopped when the job ends, so the way out never outlives the job.
    pub serve: Box<dyn FnOnce(std::net::TcpListener) -> tokio::task::JoinHandle<()> + Send>,
}

/// Whether this process runs as root (its effective uid is 0): opening a listener inside a
/// sandbox needs it.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
}

impl std::fmt::Debug for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listen").field("port", &self.port).finish_non_exhaustive()
    }
}

/// Reads the sandbox's first process from bubblewrap's `--info-fd` and opens a listener at
/// `127.0.0.1:port` in its network namespace.
async fn open_inside(info: std::io::PipeReader, port: u16) -> Result<std::net::TcpListener, Error> {
    // A thread of its own reads the sandbox's pid, joins its namespace, binds, and ends: no
    // other work ever runs in the sandbox's namespace (a pool thread would be reused).
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_child_pid(info).and_then(|pid| bind_in(pid, port)));
    });
    match tokio::time::timeout(Duration::from_secs(20), rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(Error::internal("the thread opening the sandbox's listener stopped")),
        Err(_) => Err(Error::unavailable("the sandbox did not start within 20 s")),
    }
}

/// The `child-pid` bubblewrap writes to its info descriptor (a JSON object). Read until the
/// object closes, at most 4 KiB: the descriptor may stay open elsewhere.
fn read_child_pid(mut info: std::io::PipeReader) -> Result<u32, Error> {
    use std::io::Read;
    let mut text = Vec::new();
    let mut buf = [0u8; 512];
    while !text.contains(&b'}') && text.len() < 4096 {
        match info.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::unavailable(format!("reading the sandbox's process: {e}"))),
        }
    }
    let text = String::from_utf8_lossy(&text);
    let pid = text
        .split_once("\"child-pid\"")
        .and_then(|(_, rest)| rest.trim_start().strip_prefix(':'))
        .map(|rest| rest.trim_start().chars().take_while(char::is_ascii_digit).collect::<String>())
        .and_then(|digits| digits.parse::<u32>().ok());
    pid.ok_or_else(|| Error::unavailable("the sandbox did not start (bubblewrap reported no process)"))
}

fn bind_in(pid: u32, port: u16) -> Result<std::net::TcpListener, Error> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| Error::unavailable(format!("cannot find the sandbox's network: {e}")))?;
    // Never this host's own network: a process that is not the sandbox's (a reused pid) is
    // refused rather than joined.
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok();
    if ns.metadata().ok().map(|m| m.ino()) == own {
        return Err(Error::unavailable("the sandbox's process is not in a network of its own"));
    }
    rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&ns),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| {
        Error::unavailable(format!(
            "cannot open a port inside the sandbox ({e}): the local proxy needs this node to run as root"
        ))
    })?;
    // bubblewrap brings the sandbox's loopback up as it starts; wait for it, briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)) {
            Ok(l) => {
                l.set_nonblocking(true).map_err(|e| Error::unavailable(format!("the sandbox's listener: {e}")))?;
                return Ok(l);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(Error::unavailable(format!("cannot listen inside the sandbox: {e}"))),
        }
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
