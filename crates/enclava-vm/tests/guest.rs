//! A real guest: qemu under TCG boots the guest kernel with a generated initramfs, runs a job
//! with its inputs and no network device, reports its output and status, and is stopped at its
//! deadline. Needs qemu-system-x86, a guest kernel and busybox-static (`scripts/test` gets them).

use std::time::Duration;

use enclava_vm::{VmJob, VmLauncher, VmOutcome};

fn job(dir: &std::path::Path, command: &str, timeout: Duration) -> VmJob {
    VmJob {
        command: command.into(),
        inputs: vec![("numbers.txt".into(), b"3\n1\n2\n".to_vec())],
        memory_mib: 192,
        cpus: 1,
        timeout,
        confidential: false,
        work: dir.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_guest_runs_a_job_without_a_network_and_stops_at_its_deadline() {
    let launcher = VmLauncher::find(None).expect("qemu, a guest kernel and busybox (run scripts/test)");
    let dir = tempfile::tempdir().expect("tmp");
    let report = launcher
        .run(&job(
            &dir.path().join("a"),
            "echo inside $(uname -s); sort -n /in/numbers.txt | tr '\\n' ,; echo; ls /sys/class/net; exit 3",
            Duration::from_secs(120),
        ))
        .await
        .expect("runs");
    let out = String::from_utf8_lossy(&report.output);
    assert_eq!(report.outcome, VmOutcome::Exited(3), "{out}");
    assert!(out.contains("inside Linux") && out.contains("1,2,3,"), "{out}");
    let nets: Vec<&str> = out.lines().skip(2).collect();
    assert_eq!(nets, vec!["lo"], "no network device but loopback: {out}");
    assert!(report.isolation.starts_with("Not confidential"));

    let report = launcher.run(&job(&dir.path().join("b"), "sleep 600", Duration::from_secs(4))).await.expect("runs");
    assert_eq!(report.outcome, VmOutcome::Deadline { timeout: Duration::from_secs(4) });

    // A confidential VM is refused on a host without SEV-SNP or TDX, never run as a plain one.
    if launcher.tee().is_none() {
        let err = launcher
            .run(&VmJob { confidential: true, ..job(&dir.path().join("c"), "true", Duration::from_secs(5)) })
            .await
            .expect_err("refused");
        assert!(err.message.contains("neither SEV-SNP nor TDX"), "{err}");
    }
}
