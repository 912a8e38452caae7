//! A real bubblewrap sandbox on a busybox root filesystem: the job sees only loopback, holds no
//! capabilities, cannot write outside its folder, and is killed at its deadline; bad jobs get clear
//! errors. Needs `bwrap`, `prlimit` and a static `busybox` (scripts/test installs them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use enclava_process::{ProcessJob, ProcessLimits, ProcessOutcome, ProcessSandbox};

/// A root filesystem of one static busybox and its applets, an `/etc` and a `/sbin` link.
fn rootfs(dir: &Path) -> PathBuf {
    let root = enclava_process::busybox_root(
        dir,
        &["sh", "cat", "touch", "sleep", "grep", "echo", "id", "ls", "head", "rm", "wget", "nc"],
    )
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
        binds: Vec::new(),
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

#[tokio::test]
async fn read_only_mounts_appear_inside_and_cannot_be_written() {
    let f = fixture();
    let host = f.work.parent().expect("dir").join("tools");
    std::fs::create_dir(&host).expect("mkdir");
    std::fs::write(host.join("tool.txt"), "a tool").expect("write");
    let sandbox = ProcessSandbox::find().expect("bubblewrap installed");
    let mut j = job(&f, "cat /opt/tools/tool.txt; echo x > /opt/tools/new.txt && echo wrote");
    j.binds = vec![(host.clone(), "/opt/tools".into())];
    let report = sandbox.run(&j).await.expect("starts");
    let out = String::from_utf8_lossy(&report.stdout);
    assert!(out.starts_with("a tool"), "{out}");
    assert!(!out.contains("wrote"), "{out}");
    assert!(!host.join("new.txt").exists());
    for bad in ["relative", "/work", "/opt/../etc", "/tmp", "/"] {
        j.binds = vec![(host.clone(), bad.into())];
        let e = sandbox.run(&j).await.expect_err(bad);
        assert!(e.message.contains("read-only mount"), "{bad}: {e}");
    }
}

/// The one way out of a sandbox: a listener the host opens on the sandbox's own loopback before
/// the job starts. The job reaches it at once (no retry), and still reaches nothing else.
#[tokio::test]
async fn a_listener_opened_inside_the_sandbox_is_the_jobs_only_way_out() {
    if !enclava_process::running_as_root() {
        eprintln!("skipped: opening a listener inside a sandbox needs root");
        return;
    }
    let f = fixture();
    let sandbox = ProcessSandbox::find().expect("bubblewrap installed");
    let outside = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let outside_port = outside.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    let serve = Box::new(move |l: std::net::TcpListener| {
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            let (mut s, _) = l.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.expect("read");
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
        })
    });
    let script = format!(
        "wget -qO- http://127.0.0.1:7601/hi; echo; wget -T 2 -qO- http://127.0.0.1:{outside_port}/ || echo unreachable"
    );
    let report = sandbox
        .run_serving(&job(&f, &script), Some(enclava_process::Listen { port: 7601, serve }))
        .await
        .expect("starts");
    let out = String::from_utf8_lossy(&report.stdout);
    assert_eq!(report.outcome, ProcessOutcome::Exited(0), "{out} {}", String::from_utf8_lossy(&report.stderr));
    assert!(out.starts_with("hello\n"), "{out}");
    assert!(out.contains("unreachable"), "{out}");
    assert!(rx.recv_timeout(Duration::from_secs(5)).expect("request").starts_with("GET /hi "));
}
