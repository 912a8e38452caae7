//! A real bubblewrap sandbox on a busybox root filesystem: the job sees only loopback, holds no
//! capabilities, cannot write outside its folder, and is killed at its deadline; bad jobs get clear
//! errors. Needs `bwrap`, `prlimit` and a static `busybox` (scripts/test installs them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use enclava_process::{ProcessJob, ProcessLimits, ProcessOutcome, ProcessSandbox};

/// A root filesystem of one static busybox and its applets, an `/etc` and a `/sbin` link.
fn rootfs(dir: &Path) -> PathBuf {
    let root =
        enclava_process::busybox_root(dir, &["sh", "cat", "touch", "sleep", "grep", "echo", "id", "ls", "head", "rm"])
            .expect("busybox-static is installed (scripts/test installs it)");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::write(root.join("etc/motd"), "read-only").expect("write");
    std::os::unix::fs::symlink("bin", root.join("sbin")).expect("symlink");
    root
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    outside: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let root = rootfs(dir.path());
    let work = dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    std::fs::write(work.join("input.txt"), "42\n").expect("write");
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, "host").expect("write");
    Fixture { root, work, outside, _dir: dir }
}

fn job(f: &Fixture, script: &str) -> ProcessJob {
    ProcessJob {
        rootfs: f.root.clone(),
        shared: None,
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("GREETING".into(), "hi".into())],
        work: f.work.clone(),
        stdin: b"from stdin".to_vec(),
        limits: ProcessLimits { timeout: Duration::from_secs(20), ..ProcessLimits::default() },
    }
}

async fn sh(f: &Fixture, script: &str) -> (ProcessOutcome, String) {
    let sandbox = ProcessSandbox::find().expect("bubblewrap installed");
    let report = sandbox.run(&job(f, script)).await.expect("starts");
    let text = format!("{}{}", String::from_utf8_lossy(&report.stdout), String::from_utf8_lossy(&report.stderr));
    (report.outcome, text)
}

#[tokio::test]
async fn a_job_runs_with_its_input_folder_environment_and_stdin() {
    let f = fixture();
    let (outcome, out) = sh(&f, "cat /work/input.txt; echo $GREETING; cat; echo; echo done > /work/out.txt").await;
    assert_eq!(outcome, ProcessOutcome::Exited(0), "{out}");
    assert_eq!(out, "42\nhi\nfrom stdin\n");
    assert_eq!(std::fs::read_to_string(f.work.join("out.txt")).expect("output"), "done\n");
    let (outcome, _) = sh(&f, "exit 7").await;
    assert_eq!(outcome, ProcessOutcome::Exited(7));
}

#[tokio::test]
async fn the_job_sees_only_loopback_and_holds_no_capabilities() {
    let f = fixture();
    let (outcome, out) = sh(&f, "cat /proc/net/dev; grep Cap /proc/self/status; id -u").await;
    assert_eq!(outcome, ProcessOutcome::Exited(0), "{out}");
    let interfaces: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .filter(|n| !n.starts_with("Cap"))
        .collect();
    assert_eq!(interfaces, ["lo"], "only loopback: {out}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(out.contains(&format!("{cap}:\t0000000000000000")), "{cap} is empty: {out}");
    }
    assert!(out.trim_end().ends_with("1000"), "an unprivileged user: {out}");
}

#[tokio::test]
async fn the_job_cannot_write_outside_its_folder() {
    let f = fixture();
    let (outcome, out) = sh(
        &f,
        "touch /etc/new 2>/dev/null && echo wrote-etc; touch /new 2>/dev/null && echo wrote-root; \
         echo x > /bin/busybox 2>/dev/null && echo wrote-bin; rm /etc/motd 2>/dev/null && echo removed; \
         ls /; touch /tmp/scratch && echo tmp-ok; touch /work/ok && echo work-ok",
    )
    .await;
    assert_eq!(outcome, ProcessOutcome::Exited(0), "{out}");
    for bad in ["wrote-etc", "wrote-root", "wrote-bin", "removed"] {
        assert!(!out.contains(bad), "{bad}: {out}");
    }
    assert!(out.contains("tmp-ok") && out.contains("work-ok"), "{out}");
    assert!(!out.contains("outside.txt"), "the host's folders are not there: {out}");
    assert_eq!(std::fs::read_to_string(&f.outside).expect("host file"), "host");
    assert_eq!(std::fs::read_to_string(f.root.join("etc/motd")).expect("rootfs"), "read-only");
    assert!(f.work.join("ok").exists());
}

#[tokio::test]
async fn the_job_is_killed_at_its_deadline() {
    let f = fixture();
    let sandbox = ProcessSandbox::find().expect("bubblewrap installed");
    let mut j = job(&f, "echo started; sleep 3737; echo never > /work/late.txt");
    j.limits.timeout = Duration::from_millis(500);
    let report = sandbox.run(&j).await.expect("starts");
    assert_eq!(report.outcome, ProcessOutcome::Deadline { timeout: Duration::from_millis(500) });
    assert!(report.wall < Duration::from_secs(5), "{:?}", report.wall);
    assert_eq!(String::from_utf8_lossy(&report.stdout), "started\n");
    // Nothing of the job outlives it: its sleep is gone from the host's process table.
    let mut alive = true;
    for _ in 0..50 {
        alive = running("sleep 3737") || running("sleep\x003737");
        if !alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!alive, "the job's processes were killed with it");
    assert!(!f.work.join("late.txt").exists());
}

/// Whether any process on the host has `part` in its command line (arguments joined by NUL): the
/// job's shell (whose script names the sleep) or the sleep itself.
fn running(part: &str) -> bool {
    std::fs::read_dir("/proc").expect("/proc").filter_map(|e| e.ok()).any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.windows(part.len()).any(|w| w == part.as_bytes()))
    })
}

#[tokio::test]
async fn bad_jobs_get_clear_errors() {
    let f = fixture();
    let sandbox = ProcessSandbox::find().expect("bubblewrap installed");
    let mut j = job(&f, "true");
    j.rootfs = f.root.join("missing");
    assert!(sandbox.run(&j).await.expect_err("no rootfs").message.contains("root filesystem"));
    let mut j = job(&f, "true");
    j.argv.clear();
    assert!(sandbox.run(&j).await.expect_err("no command").message.contains("no command"));
    let mut j = job(&f, "true");
    j.env.push(("A=B".into(), "x".into()));
    assert!(sandbox.run(&j).await.expect_err("bad env").message.contains("not a valid name"));
    let mut j = job(&f, "true");
    j.argv = vec!["/bin/no-such-program".into()];
    let report = sandbox.run(&j).await.expect("bubblewrap starts");
    assert!(!report.outcome.success(), "{}", report.outcome);
}

#[tokio::test]
async fn a_root_filesystem_entry_that_is_not_utf8_is_refused() {
    use std::os::unix::ffi::OsStrExt;
    let f = fixture();
    let odd = std::ffi::OsStr::from_bytes(b"a\xff");
    std::fs::create_dir(f.root.join(odd)).expect("mkdir");
    let sandbox = ProcessSandbox::find().expect("bubblewrap installed");
    let e = sandbox.run(&job(&f, "true")).await.expect_err("refused");
    assert!(e.message.contains("not UTF-8"), "{}", e.message);
}
