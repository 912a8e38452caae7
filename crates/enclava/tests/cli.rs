//! The `enclava` command as a user runs it: real `server` and `node` processes on a real Redis,
//! `find` with and without `--json`, a node killed with SIGKILL, a node restarted on its data
//! folder, options from the environment and the config file, and clear errors.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use enclava_testkit::{RedisServer, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_enclava");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn enclava(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("ENCLAVA_CONFIG_DIR", "/nonexistent")
        .env_remove("ENCLAVA_CONFIG");
    c
}

fn spawn(args: &[&str]) -> Proc {
    Proc(
        enclava(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn enclava"),
    )
}

/// Starts a node and reads the instance id it prints.
fn start_node(redis: &str, dir: &std::path::Path, data: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "node",
        "--platform",
        "sim",
        "--registry",
        redis,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
    ];
    let dir = dir.to_str().expect("utf-8 path");
    args.push(dir);
    for d in data {
        args.extend(["--data", d]);
    }
    let mut p = spawn(&args);
    let mut line = String::new();
    BufReader::new(p.0.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("node prints its id");
    let id = line
        .split_whitespace()
        .nth(1)
        .expect("instance id")
        .to_owned();
    (p, id)
}

fn run(c: &mut Command) -> Output {
    c.output().expect("run enclava")
}

fn find_json(server: &str, data: &str, limit: &str) -> serde_json::Value {
    let out = run(enclava(&[
        "find", "--server", server, "--data", data, "--limit", limit, "--json",
    ])
    .stdin(Stdio::null()));
    assert!(
        out.status.success(),
        "find failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("find --json prints JSON")
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = v["found"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["instanceId"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn server_nodes_find_and_a_sigkilled_node() {
    let redis = RedisServer::start().expect("redis");
    let port = free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let server_url = format!("http://{listen}");
    let _server = spawn(&["server", "--registry", &redis.url(), "--listen", &listen]);
    let (d1, d2) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let (mut n1, id1) = start_node(&redis.url(), d1.path(), &["acme/gpt2", "acme/bert"]);
    let (_n2, id2) = start_node(&redis.url(), d2.path(), &["acme/gpt2"]);
    assert_ne!(id1, id2);
    let mut both = vec![id1.clone(), id2.clone()];
    both.sort();
    wait_for("both nodes found", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&listen).is_ok()
            && ids(&find_json(&server_url, "acme/gpt2", "5")) == both
    });

    // --json prints the FindEnclaveResponse with the seed's camelCase names.
    let v = find_json(&server_url, "acme/bert", "5");
    let e = &v["found"][0];
    assert_eq!(e["instanceId"], id1.as_str());
    for field in [
        "serviceName",
        "platform",
        "serviceVersion",
        "connectionString",
        "pubkey",
        "attestation",
    ] {
        assert!(e.get(field).is_some(), "{field} missing in {v}");
    }
    assert_eq!(e["platform"], "sim");
    assert!(
        e["policy"]["mrenclave"]
            .as_str()
            .is_some_and(|m| m.len() == 96)
    );

    // The table for people.
    let out = run(
        enclava(&["find", "--server", &server_url, "--data", "acme/bert"]).stdin(Stdio::null()),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("INSTANCE") && text.contains(&id1), "{text}");

    // SIGKILL: never returned by a call made more than 3 s after the kill.
    n1.0.kill().expect("SIGKILL");
    let killed = Instant::now();
    let _ = n1.0.wait();
    let mut gone = false;
    while killed.elapsed() < Duration::from_secs(5) {
        let asked = Instant::now();
        let found = ids(&find_json(&server_url, "acme/gpt2", "5"));
        let present = found.contains(&id1);
        if asked.duration_since(killed) > Duration::from_millis(3050) {
            assert!(
                !present,
                "killed node returned {:?} after SIGKILL",
                asked.duration_since(killed)
            );
        }
        gone |= !present;
        assert!(found.contains(&id2));
    }
    assert!(gone);

    // Restarted on the same data folder: the same instance id, found again.
    let (_n1b, id1b) = start_node(&redis.url(), d1.path(), &["acme/gpt2", "acme/bert"]);
    assert_eq!(id1b, id1, "same sealed identity, same id");
    wait_for("restarted node found", Duration::from_secs(5), || {
        ids(&find_json(&server_url, "acme/bert", "5")) == vec![id1.clone()]
    });
}

#[test]
fn options_come_from_flags_environment_and_config_file() {
    let redis = RedisServer::start().expect("redis");
    let port = free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let cfg_dir = tempfile::tempdir().expect("tmp");
    let cfg = cfg_dir.path().join("enclava.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nregistry = \"{url}\"\nlisten = \"{listen}\"\nnamespace = \"cfgtest\"\n\n\
             [node]\nregistry = \"{url}\"\nnamespace = \"cfgtest\"\ndata = [\"from/file\"]\n\n\
             [find]\nserver = \"http://{listen}\"\n",
            url = redis.url()
        ),
    )
    .expect("write config");
    let cfg = cfg.to_str().expect("utf-8");
    let _server = spawn(&["--config", cfg, "server"]);
    let node_dir = tempfile::tempdir().expect("tmp");
    let mut node = enclava(&["node", "--listen", "127.0.0.1:0"]);
    node.env("ENCLAVA_CONFIG", cfg)
        .env("ENCLAVA_DATA_DIR", node_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut node = Proc(node.spawn().expect("node"));
    let mut line = String::new();
    BufReader::new(node.0.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("id line");
    let id = line.split_whitespace().nth(1).expect("id").to_owned();
    wait_for(
        "found through config file and env",
        Duration::from_secs(10),
        || {
            let out = run(enclava(&["find", "--json"])
                .env("ENCLAVA_CONFIG", cfg)
                .env("ENCLAVA_DATA", "from/file")
                .stdin(Stdio::null()));
            out.status.success()
                && ids(&serde_json::from_slice(&out.stdout).unwrap_or_default()) == vec![id.clone()]
        },
    );
    let keys = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port().to_string(),
            "--raw",
            "keys",
            "cfgtest:*",
        ])
        .output()
        .expect("redis-cli");
    assert!(
        String::from_utf8_lossy(&keys.stdout).contains("cfgtest:enclava:bydataaccess:from/file")
    );

    let help = run(&mut enclava(&["server", "--help"]));
    let help = String::from_utf8_lossy(&help.stdout);
    for want in [
        "[env: ENCLAVA_REGISTRY=]",
        "[env: ENCLAVA_LISTEN=]",
        "config file",
    ] {
        assert!(help.contains(want), "server --help lacks {want:?}:\n{help}");
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["find", "--server", "http://127.0.0.1:1", "--data", "x"],
            "cannot reach the enclave manager",
        ),
        (&["server", "--registry", "bogus://x"], "unknown registry"),
        (
            &[
                "node",
                "--platform",
                "tdx",
                "--data-dir",
                "/tmp/enclava-cli-test-tdx",
            ],
            "not available on this host",
        ),
        (
            &["--config", "/nonexistent/enclava.toml", "find"],
            "does not exist",
        ),
        (&["server", "--namespace", "has space"], "whitespace"),
    ];
    for (args, want) in cases {
        let out = run(enclava(args).stdin(Stdio::null()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(want),
            "{args:?} should say {want:?}, said: {err}"
        );
    }
}

#[test]
fn dev_demo_runs_green_from_a_clean_folder() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port().expect("port");
    let out = run(enclava(&[
        "dev",
        "--demo-only",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(dir.path().join("dev"))
    .stdin(Stdio::null()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("[4/4]") && text.contains("demo done"),
        "{text}"
    );
}
