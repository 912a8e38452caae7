//! What a Wasm job cannot do, each with a clear outcome, on one engine that keeps serving: import a
//! socket or a host function, open files outside its folders or write to a read-only one, grow past
//! its memory, run past its fuel or its deadline, or trap.

use std::time::Duration;

use enclava_core::ErrorCode;
use enclava_executor::Executor;
use enclava_wasm::{Job, Outcome, Preopen, RunLimits, WasmConfig, WasmEngine, WasmExecutor};
use zeroize::Zeroizing;

/// Copies stdin to stdout.
const ECHO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $n i32)
    (loop $more
      (i32.store (i32.const 0) (i32.const 1024))
      (i32.store (i32.const 4) (i32.const 4096))
      (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $n (i32.load (i32.const 8)))
      (if (i32.gt_u (local.get $n) (i32.const 0))
        (then
          (i32.store (i32.const 16) (i32.const 1024))
          (i32.store (i32.const 20) (local.get $n))
          (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
          (br $more))))))"#;

/// Opens `path` in the first pre-opened folder (fd 3) with `oflags` and `rights`, and exits with
/// the errno (0 when it opened).
fn open_in_folder(path: &str, oflags: u32, rights: u64) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "{path}")
  (func (export "_start")
    (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const {len})
      (i32.const {oflags}) (i64.const {rights}) (i64.const 0) (i32.const 0) (i32.const 8)))))"#,
        len = path.len()
    )
}

const FD_READ: u64 = 1 << 1;
const FD_WRITE: u64 = 1 << 6;
const O_CREAT: u32 = 1;

/// The engine reads WAT as well as binary modules.
fn wasm(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

fn engine() -> WasmEngine {
    WasmEngine::new(WasmConfig { pool_instances: 8, ..WasmConfig::default() }).expect("engine")
}

fn run(engine: &WasmEngine, text: &str, job: Job) -> enclava_wasm::RunReport {
    let program = engine.compile(&wasm(text)).expect("compiles");
    engine.run(&program, job).expect("runs")
}

fn echo_works(engine: &WasmEngine) {
    let report = run(engine, ECHO, Job { stdin: b"still serving".to_vec(), ..Job::default() });
    assert_eq!(report.outcome, Outcome::Exited(0));
    assert_eq!(report.stdout.as_slice(), b"still serving");
}

#[test]
fn a_module_runs_and_reports_what_it_used() {
    let engine = engine();
    let report = run(&engine, ECHO, Job { stdin: b"hello".to_vec(), ..Job::default() });
    assert!(report.outcome.success(), "{}", report.outcome);
    assert_eq!(report.stdout.as_slice(), b"hello");
    assert!(report.fuel_used > 0, "fuel is the work unit");
    assert_eq!(report.peak_memory_bytes, 64 << 10, "one page");
    let a = engine.compile(&wasm(ECHO)).expect("cached");
    let b = engine.compile(&wasm(ECHO)).expect("cached");
    assert_eq!(a.digest(), b.digest());

    let exit3 = r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1) (func (export "_start") (call $exit (i32.const 3))))"#;
    assert_eq!(run(&engine, exit3, Job::default()).outcome, Outcome::Exited(3));
    // WASI calls need the module's memory; a module without one gets the reason, not a crash.
    let no_memory = r#"(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (func (export "_start") (call $exit (i32.const 3))))"#;
    match run(&engine, no_memory, Job::default()).outcome {
        Outcome::Trapped(why) => assert!(why.contains("memory export"), "{why}"),
        other => panic!("{other}"),
    }
}

#[test]
fn sockets_and_host_functions_are_refused_before_running() {
    let engine = engine();
    for (import, says) in [
        (r#"(import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))"#, "no network"),
        (r#"(import "wasi_snapshot_preview1" "sock_open" (func (param i32 i32 i32) (result i32)))"#, "no network"),
        (r#"(import "env" "connect" (func (param i32) (result i32)))"#, "only WASI preview 1"),
        (r#"(import "wasi_snapshot_preview1" "no_such_call" (func))"#, "does not link"),
        (
            r#"(import "wasi_snapshot_preview1" "poll_oneoff" (func (param i32 i32 i32 i32) (result i32)))"#,
            "cannot wait",
        ),
    ] {
        let text = format!(r#"(module {import} (func (export "_start")))"#);
        let e = engine.compile(&wasm(&text)).expect_err("refused");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains(says), "{}", e.message);
    }
    let e = engine.compile(b"\0asm garbage").expect_err("not wasm");
    assert!(e.message.contains("not a valid Wasm module"), "{}", e.message);
    let e = engine.compile(&wasm("(module)")).expect_err("no _start");
    assert!(e.message.contains("no _start"), "{}", e.message);
    echo_works(&engine);
}

#[test]
fn files_outside_the_folders_cannot_be_reached() {
    let engine = engine();
    let root = tempfile::tempdir().expect("tmp");
    let inside = root.path().join("job");
    std::fs::create_dir(&inside).expect("mkdir");
    std::fs::write(inside.join("input.txt"), "mine").expect("write");
    std::fs::write(root.path().join("secret.txt"), "not yours").expect("write");
    let job = |writable| Job {
        dirs: vec![Preopen { host: inside.clone(), guest: "/data".into(), writable }],
        ..Job::default()
    };

    let exit =
        |path: &str, oflags, rights, writable| match run(&engine, &open_in_folder(path, oflags, rights), job(writable))
            .outcome
        {
            Outcome::Exited(code) => code,
            other => panic!("{path}: {other}"),
        };
    assert_eq!(exit("input.txt", 0, FD_READ, false), 0, "its own folder opens");
    for path in ["../secret.txt", "/etc/passwd", "../../../../etc/passwd", "/data/../secret.txt"] {
        let errno = exit(path, 0, FD_READ, true);
        assert!(errno == 76 || errno == 63 || errno == 44, "{path}: errno {errno} (ENOTCAPABLE or EPERM expected)");
    }
    // A read-only folder cannot be written; a writable one can, but only inside.
    assert_ne!(exit("new.txt", O_CREAT, FD_WRITE, false), 0, "read-only folder");
    assert!(!inside.join("new.txt").exists());
    assert_eq!(exit("new.txt", O_CREAT, FD_WRITE, true), 0, "writable folder");
    assert!(inside.join("new.txt").exists());
    assert_ne!(exit("../escaped.txt", O_CREAT, FD_WRITE, true), 0);
    assert!(!root.path().join("escaped.txt").exists());
    // No folder at all: there is no fd 3.
    let none = run(&engine, &open_in_folder("input.txt", 0, FD_READ), Job::default()).outcome;
    assert_eq!(none, Outcome::Exited(8), "EBADF");
    echo_works(&engine);
}

#[test]
fn memory_fuel_and_deadline_stop_a_run_with_their_reason() {
    let engine = engine();
    let grow = r#"(module (memory 1) (func (export "_start") (loop $l (drop (memory.grow (i32.const 16))) (br $l))))"#;
    let spin = r#"(module (func (export "_start") (loop $l (br $l))))"#;
    let small = RunLimits { memory_bytes: 8 << 20, ..RunLimits::default() };
    let report = run(&engine, grow, Job { limits: Some(small), ..Job::default() });
    assert_eq!(report.outcome, Outcome::MemoryLimit { limit: 8 << 20 });
    assert!(report.outcome.to_string().contains("memory limit of 8 MiB"));
    assert!(report.peak_memory_bytes <= 8 << 20);

    let fuel = RunLimits { fuel: 1_000_000, ..RunLimits::default() };
    let report = run(&engine, spin, Job { limits: Some(fuel), ..Job::default() });
    assert_eq!(report.outcome, Outcome::OutOfFuel { fuel: 1_000_000 });
    assert_eq!(report.fuel_used, 1_000_000);

    let deadline = RunLimits { fuel: u64::MAX / 2, timeout: Duration::from_millis(200), ..RunLimits::default() };
    let report = run(&engine, spin, Job { limits: Some(deadline), ..Job::default() });
    assert_eq!(report.outcome, Outcome::Deadline { timeout: Duration::from_millis(200) });
    assert!(report.wall < Duration::from_secs(5), "stopped near its deadline: {:?}", report.wall);

    let trap = r#"(module (func (export "_start") unreachable))"#;
    match run(&engine, trap, Job::default()).outcome {
        Outcome::Trapped(why) => assert!(why.contains("unreachable"), "{why}"),
        other => panic!("{other}"),
    }
    echo_works(&engine);
}

#[test]
fn the_executor_answers_stdout_and_refuses_a_failing_run_as_bad_input() {
    let executor = WasmExecutor::with_defaults();
    assert_eq!(executor.kind(), "wasm");
    let echo = executor.load("acme/echo", Zeroizing::new(wasm(ECHO))).expect("loads");
    let out = echo.invoke(b"sealed in, sealed out").expect("runs");
    assert_eq!(out.bytes.as_slice(), b"sealed in, sealed out");
    assert!(out.usage.units > 0);
    let trap = executor
        .load("acme/trap", Zeroizing::new(wasm(r#"(module (func (export "_start") unreachable))"#)))
        .expect("loads");
    let e = trap.invoke(b"x").expect_err("traps");
    assert_eq!(e.code, ErrorCode::BadInput);
    assert!(e.message.contains("trapped"), "{}", e.message);
    let e = executor.load("acme/bad", Zeroizing::new(b"nope".to_vec())).expect_err("refused");
    assert_eq!(e.code, ErrorCode::InvalidArgument);
}

#[test]
fn output_beyond_its_limit_is_reported_and_asked_limits_never_exceed_the_engine() {
    let engine = engine();
    // Writes 64 KiB of zeros to stdout.
    let chatty = r#"(module
      (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 2)
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 65536))
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
    let small = RunLimits { max_output_bytes: 1000, ..RunLimits::default() };
    let report = run(&engine, chatty, Job { limits: Some(small), ..Job::default() });
    assert!(report.output_truncated || matches!(report.outcome, Outcome::OutputLimit { limit: 1000 }), "{report:?}");
    assert!(report.stdout.len() <= 1000);
    assert!(!format!("{report:?}").contains("0, 0, 0"), "Debug shows sizes, not bytes");

    // Asking for more than the engine gives (an endless timeout, endless fuel) is clamped, not a panic.
    let greedy =
        RunLimits { timeout: Duration::MAX, fuel: u64::MAX, memory_bytes: u64::MAX, max_output_bytes: usize::MAX };
    let report = run(&engine, ECHO, Job { stdin: b"ok".to_vec(), limits: Some(greedy), ..Job::default() });
    assert_eq!((report.outcome, report.stdout.as_slice()), (Outcome::Exited(0), &b"ok"[..]));
}
