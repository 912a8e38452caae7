//! The `enclava` command as a user runs it: real `server` and `node` processes on a real Redis,
//! `find` with and without `--json`, a node killed with SIGKILL, a node restarted on its data
//! folder, options from the environment and the config file, and clear errors; the key broker
//! through `enclava keys`, and killed with SIGKILL mid-way through a batch of grants on SQLite and
//! PostgreSQL.

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
    // Servers keep key-broker files under XDG_DATA_HOME when given no --data-dir: never the tester's home.
    let data = std::env::temp_dir().join(format!("enclava-cli-tests-{}", std::process::id()));
    c.args(args).env("ENCLAVA_CONFIG_DIR", "/nonexistent").env("XDG_DATA_HOME", data).env_remove("ENCLAVA_CONFIG");
    c.env_remove("ENCLAVA_KEK");
    c
}

fn spawn(args: &[&str]) -> Proc {
    Proc(
        enclava(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn enclava"),
    )
}

/// Reads the instance id a starting node prints (`instance ID listening on ADDR`).
fn read_id(p: &mut Proc) -> String {
    let mut line = String::new();
    BufReader::new(p.0.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("node prints its id");
    line.split_whitespace().nth(1).expect("instance id").to_owned()
}

/// This test binary's sim deployment root (`enclava sim init`, once).
fn sim_root() -> &'static str {
    static ROOT: std::sync::OnceLock<(tempfile::TempDir, String)> = std::sync::OnceLock::new();
    &ROOT
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tmp");
            let root = dir.path().join("root").to_str().expect("utf-8").to_owned();
            assert!(run(enclava(&["sim", "init", "--out", &root]).stdin(Stdio::null())).status.success());
            (dir, root)
        })
        .1
}

/// Starts a node (with `extra` flags; this binary's sim root unless they name one) and reads the
/// instance id it prints.
fn start_node(redis: &str, dir: &std::path::Path, data: &[&str], extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["node", "--platform", "sim", "--registry", redis, "--listen", "127.0.0.1:0", "--data-dir"];
    let dir = dir.to_str().expect("utf-8 path");
    args.push(dir);
    for d in data {
        args.extend(["--data", d]);
    }
    if !extra.contains(&"--sim-root") {
        args.extend(["--sim-root", sim_root()]);
    }
    args.extend(extra);
    let mut p = spawn(&args);
    let id = read_id(&mut p);
    (p, id)
}

fn run(c: &mut Command) -> Output {
    c.output().expect("run enclava")
}

fn find_json(server: &str, data: &str, limit: &str) -> serde_json::Value {
    let out =
        run(enclava(&["find", "--server", server, "--data", data, "--limit", limit, "--json"]).stdin(Stdio::null()));
    assert!(out.status.success(), "find failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("find --json prints JSON")
}

fn ids(v: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = v["found"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["instanceId"].as_str().map(String::from)).collect())
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
    let (d1, d2) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let (mut n1, id1) = start_node(&redis.url(), d1.path(), &["acme/gpt2", "acme/bert"], &[]);
    let (_n2, id2) = start_node(&redis.url(), d2.path(), &["acme/gpt2"], &[]);
    assert_ne!(id1, id2);
    let mut both = vec![id1.clone(), id2.clone()];
    both.sort();
    wait_for("both nodes found", Duration::from_secs(10), || {
        std::net::TcpStream::connect(&listen).is_ok() && ids(&find_json(&server_url, "acme/gpt2", "5")) == both
    });

    // --json prints the FindEnclaveResponse with the seed's camelCase names.
    let v = find_json(&server_url, "acme/bert", "5");
    let e = &v["found"][0];
    assert_eq!(e["instanceId"], id1.as_str());
    for field in ["serviceName", "platform", "serviceVersion", "connectionString", "pubkey", "attestation"] {
        assert!(e.get(field).is_some(), "{field} missing in {v}");
    }
    assert_eq!(e["platform"], "sim");
    assert!(e["policy"]["mrenclave"].as_str().is_some_and(|m| m.len() == 96));

    // The table for people.
    let out = run(enclava(&["find", "--server", &server_url, "--data", "acme/bert"]).stdin(Stdio::null()));
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
            assert!(!present, "killed node returned {:?} after SIGKILL", asked.duration_since(killed));
        }
        gone |= !present;
        assert!(found.contains(&id2));
    }
    assert!(gone);

    // Restarted on the same data folder: the same instance id, found again.
    let (_n1b, id1b) = start_node(&redis.url(), d1.path(), &["acme/gpt2", "acme/bert"], &[]);
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
        .env("ENCLAVA_SIM_ROOT", sim_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut node = Proc(node.spawn().expect("node"));
    let id = read_id(&mut node);
    wait_for("found through config file and env", Duration::from_secs(10), || {
        let out = run(enclava(&["find", "--json"])
            .env("ENCLAVA_CONFIG", cfg)
            .env("ENCLAVA_DATA", "from/file")
            .stdin(Stdio::null()));
        out.status.success() && ids(&serde_json::from_slice(&out.stdout).unwrap_or_default()) == vec![id.clone()]
    });
    let keys = Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "--raw", "keys", "cfgtest:*"])
        .output()
        .expect("redis-cli");
    assert!(String::from_utf8_lossy(&keys.stdout).contains("cfgtest:enclava:bydataaccess:from/file"));

    let help = run(&mut enclava(&["server", "--help"]));
    let help = String::from_utf8_lossy(&help.stdout);
    for want in ["[env: ENCLAVA_REGISTRY=]", "[env: ENCLAVA_LISTEN=]", "config file"] {
        assert!(help.contains(want), "server --help lacks {want:?}:\n{help}");
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let cases: &[(&[&str], &str)] = &[
        (&["find", "--server", "http://127.0.0.1:1", "--data", "x"], "cannot reach the enclave manager"),
        (&["server", "--registry", "bogus://x"], "unknown registry"),
        (&["node", "--platform", "tdx", "--data-dir", "/tmp/enclava-cli-test-tdx"], "not available on this host"),
        (&["node", "--platform", "sim", "--data-dir", "/tmp/enclava-cli-test-sim"], "enclava sim init"),
        (&["--config", "/nonexistent/enclava.toml", "find"], "does not exist"),
        (&["server", "--namespace", "has space"], "whitespace"),
    ];
    for (args, want) in cases {
        let out = run(enclava(args).stdin(Stdio::null()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?} should say {want:?}, said: {err}");
    }
}

#[test]
fn dev_demo_runs_green_from_a_clean_folder() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port().expect("port");
    let out = run(enclava(&["dev", "--demo-only", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path().join("dev"))
        .stdin(Stdio::null()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("[13/13]") && text.contains("demo done") && text.contains("identical"), "{text}");
    assert!(text.contains("federated mean: 536 / 8 = 67.00"), "the federation step: {text}");
    assert!(text.contains("/ui lists") && text.contains("live enclaves"), "the dashboard step: {text}");
    assert!(
        text.contains("5 sequential sealed requests through") && text.contains("served 5") && text.contains("served 0"),
        "the pool step: {text}"
    );
    assert!(
        text.contains("through its node's local proxy") && text.contains("mean 67.00 over 8 rows"),
        "vantage6: {text}"
    );
    assert!(
        text.contains("receipt VERIFIED") && text.contains("\"pre-loaded and confidential!\""),
        "the farm step: {text}"
    );
    assert!(text.contains("\"hello from wasm!\"") && text.contains("units of fuel"), "the Wasm step: {text}");
}

#[test]
fn infer_direct_and_serverless_against_a_serving_dev() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("dev");
    let port = free_port().expect("port");
    let url = format!("http://127.0.0.1:{port}");
    let mut dev = Proc(
        enclava(&["dev", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dev"),
    );
    // The demo prints the commands to try; the serverless one names a node's endpoint.
    let mut endpoint = None;
    let mut lines = BufReader::new(dev.0.stdout.take().expect("stdout")).lines();
    for line in lines.by_ref() {
        let line = line.expect("dev output");
        if let Some(rest) = line.split("--serverless ").nth(1) {
            endpoint = Some(rest.trim().to_owned());
        }
        if line.contains("Ctrl-C to stop") {
            break;
        }
    }
    let endpoint = endpoint.expect("dev prints a serverless command");
    let input = data.join("input.npy");
    let input = input.to_str().expect("utf-8");
    let policy = data.join("policy.toml");
    let model = "demo/tiny-classifier";

    let direct = run(enclava(&["infer", "--server", &url, "--model", model, "--input", input, "--json", "--policy"])
        .arg(&policy)
        .stdin(Stdio::null()));
    let direct: serde_json::Value = serde_json::from_str(&ok_text(&direct)).expect("json");
    assert_eq!(direct["enclave"]["platform"], "sim");

    let serverless = run(enclava(&["infer", "--server", &url, "--model", model, "--input", input, "--json"])
        .args(["--serverless", &endpoint])
        .env("ENCLAVA_CONFIG_DIR", data.join("config"))
        .env("ENCLAVA_POLICY", &policy) // set for direct mode; serverless mode does not use it
        .stdin(Stdio::null()));
    let serverless: serde_json::Value = serde_json::from_str(&ok_text(&serverless)).expect("json");
    assert_eq!(serverless["output"], direct["output"], "the same answer both ways");
    assert!(serverless["serverless"]["user"].as_str().is_some_and(|u| u.starts_with("u_")), "{serverless}");

    // Without an identity or a request key: a clear error, nothing sent.
    let out = run(enclava(&["infer", "--server", &url, "--model", model, "--input", input])
        .args(["--serverless", &endpoint])
        .env("ENCLAVA_CONFIG_DIR", dir.path().join("empty"))
        .stdin(Stdio::null()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("enclava keys request-key"), "{err}");

    // The farm, from the command line, on the hosts the demo started.
    let config = data.join("config");
    let farm_policy = data.join("farm-policy.toml");
    let farm = |args: &[&str]| {
        let mut c = enclava(args);
        c.env("ENCLAVA_CONFIG_DIR", &config).env("ENCLAVA_SERVER", &url).stdin(Stdio::null());
        run(&mut c)
    };
    let hosts = farm(&["hosts", "--json", "--policy", farm_policy.to_str().expect("utf-8")]);
    let hosts: serde_json::Value = serde_json::from_str(&ok_text(&hosts)).expect("json");
    let sim = hosts.as_array().expect("list").iter().find(|h| h["platform"] == "sim").expect("a sim host");
    assert_eq!(sim["status"], "Simulated TEE: testing only");
    assert!(sim["capacityProof"].as_str().is_some_and(|p| p.contains("verified against your policy")), "{sim}");
    let app = dir.path().join("reverse.wat");
    std::fs::write(&app, enclava_wasm::examples::REVERSE).expect("write");
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "ILC eht morf").expect("write");
    let out = farm(
        &["job", "submit", app.to_str().expect("utf-8"), "--confidential", "--wait", "--cpu", "0.5"]
            .into_iter()
            .chain(["--memory", "32MiB", "--policy", farm_policy.to_str().expect("utf-8")])
            .chain(["--stdin", input.to_str().expect("utf-8")])
            .collect::<Vec<_>>(),
    );
    let text = ok_text(&out);
    assert!(text.contains("security: Simulated TEE: testing only") && text.ends_with("from the CLI"), "{text}");
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("job ").and_then(|r| r.split_whitespace().next()).filter(|i| i.len() == 32))
        .expect("the job id")
        .to_owned();
    let receipt = farm(&["job", "receipt", &id, "--verify", "--policy", farm_policy.to_str().expect("utf-8")]);
    assert!(ok_text(&receipt).contains("VERIFIED: job"), "{}", ok_text(&receipt));
    let list = farm(&["job", "list", "--json"]);
    assert!(ok_text(&list).contains(&id));
    let status = farm(&["job", "status", &id]);
    assert!(ok_text(&status).contains("succeeded (confidential wasm job)"), "{}", ok_text(&status));
    // A confidential job needs a policy; a sandboxed command cannot be confidential.
    let out = farm(&["job", "submit", app.to_str().expect("utf-8"), "--confidential"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--policy"));
    let out =
        farm(&["job", "submit", "--confidential", "--cmd", "true", "--policy", farm_policy.to_str().expect("utf-8")]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not confidential"));
    // Content-addressed files.
    let hash = ok_text(&farm(&["file", "add", input.to_str().expect("utf-8")]));
    assert_eq!(hash.trim().len(), 64);
    assert_eq!(ok_text(&farm(&["file", "cat", hash.trim()])), "ILC eht morf");
    drop(lines);
}

#[test]
fn evidence_verify_exit_codes_and_messages() {
    let td = concat!(env!("CARGO_MANIFEST_DIR"), "/../enclava-attest/testdata");
    let dir = tempfile::tempdir().expect("tmp");
    let allow = dir.path().join("allow.toml");
    std::fs::write(&allow, "[tdx]\nany_measurement = true\n").expect("write");
    let quote = format!("{td}/tdx-v4-2023/quote_debug_td.dat");
    let coll = format!("{td}/tdx-v4-2023/collateral.json");
    let run_verify = |extra: &[&str]| {
        let mut args = vec!["evidence", "verify"];
        args.extend(extra);
        run(enclava(&args).stdin(Stdio::null()))
    };
    // Accepted by a policy that allows debug; denied, with the reason, by one that does not.
    let debug_ok = dir.path().join("debug.toml");
    std::fs::write(&debug_ok, "allow_debug = true\n[tdx]\nany_measurement = true\n").expect("write");
    let out = run_verify(&[
        &quote,
        "--collateral",
        &coll,
        "--at",
        "2023-07-01T01:00:00Z",
        "--policy",
        debug_ok.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let out = run_verify(&[
        &quote,
        "--collateral",
        &coll,
        "--at",
        "2023-07-01T01:00:00Z",
        "--policy",
        allow.to_str().expect("utf-8"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("DENIED") && text.contains("debug"), "{text}");
    // Past the window: denied as expired collateral.
    let out = run_verify(&[&quote, "--collateral", &coll, "--at", "2023-08-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("expired collateral"));
    // SNP with DER and PEM certificates and a CRL, as JSON.
    let out = run_verify(&[
        &format!("{td}/sev-snp/milan-virtee/report.bin"),
        "--certs",
        &format!("{td}/sev-snp/milan-virtee/vcek.der,{td}/sev-snp/amd/milan_cert_chain.pem"),
        "--crl",
        &format!("{td}/sev-snp/amd/milan_crl.pem"),
        "--at",
        "2025-07-01T00:00:00Z",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["claims"]["platform"], "sev-snp");
    // Unusable input: exit 2 with what to do.
    let out = run_verify(&[&format!("{td}/sev-snp/milan-virtee/report.bin")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VCEK"));
    let out = run_verify(&["/nonexistent"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sim_init_node_evidence_and_find_verify() {
    let redis = RedisServer::start().expect("redis");
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("root");
    let out = run(enclava(&["sim", "init", "--out", root.to_str().expect("utf-8")]).stdin(Stdio::null()));
    assert!(out.status.success());
    let root_pub = std::fs::read_to_string(root.join("sim-root.pub")).expect("pub").trim().to_owned();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&root_pub));
    let again = run(enclava(&["sim", "init", "--out", root.to_str().expect("utf-8")]).stdin(Stdio::null()));
    assert_eq!(again.status.code(), Some(2), "never replaces a root");

    let port = free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let server_url = format!("http://{listen}");
    let _server = spawn(&["server", "--registry", &redis.url(), "--listen", &listen]);
    let node_dir = dir.path().join("node");

    let (_node, _) = start_node(&redis.url(), &node_dir, &["m"], &["--sim-root", root.to_str().expect("utf-8")]);
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, format!("[sim]\nroot = \"{root_pub}\"\nany_measurement = true\n")).expect("write");
    let policy_s = policy.to_str().expect("utf-8").to_owned();
    wait_for("verified through find --verify", Duration::from_secs(10), || {
        let out = run(enclava(&["find", "--server", &server_url, "--data", "m", "--verify", "--policy", &policy_s])
            .stdin(Stdio::null()));
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("verified against")
    });
    // Under another deployment's root: refused, with why, exit 1.
    let other = dir.path().join("other");
    assert!(
        run(enclava(&["sim", "init", "--out", other.to_str().expect("utf-8")]).stdin(Stdio::null())).status.success()
    );
    let other_pub = std::fs::read_to_string(other.join("sim-root.pub")).expect("pub").trim().to_owned();
    std::fs::write(&policy, format!("[sim]\nroot = \"{other_pub}\"\nany_measurement = true\n")).expect("write");
    let out = run(enclava(&["find", "--server", &server_url, "--data", "m", "--verify", "--policy", &policy_s])
        .stdin(Stdio::null()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("REFUSED") && text.contains("another deployment"), "{text}");
}

#[test]
fn dry_run_shows_what_a_policy_would_do_over_a_folder() {
    let td = concat!(env!("CARGO_MANIFEST_DIR"), "/../enclava-attest/testdata");
    let dir = tempfile::tempdir().expect("tmp");
    let evidence = dir.path().join("evidence");
    std::fs::create_dir(&evidence).expect("mkdir");
    let out = run(enclava(&[
        "evidence",
        "verify",
        &format!("{td}/tdx-v4-2023/quote_debug_td.dat"),
        "--collateral",
        &format!("{td}/tdx-v4-2023/collateral.json"),
        "--at",
        "2023-07-01T01:00:00Z",
        "--json",
    ])
    .stdin(Stdio::null()));
    std::fs::write(evidence.join("debug-td.json"), &out.stdout).expect("write");
    std::fs::copy(format!("{td}/aws-nitro/attestation_prod.cose"), evidence.join("nitro.cose")).expect("copy");
    std::fs::write(evidence.join("junk.bin"), b"junk").expect("write");
    let policy = dir.path().join("p.toml");
    std::fs::write(&policy, "[tdx]\nany_measurement = true\n[nitro]\nany_measurement = true\n").expect("write");
    let out = run(enclava(&[
        "evidence",
        "dry-run",
        "--policy",
        policy.to_str().expect("utf-8"),
        "--at",
        "2025-01-06T16:07:05Z",
    ])
    .arg(&evidence)
    .stdin(Stdio::null()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("DENY   debug-td.json") && text.contains("debug mode"), "{text}");
    assert!(text.contains("ACCEPT nitro.cose"), "{text}");
    assert!(text.contains("SKIP   junk.bin"), "{text}");
    assert!(text.contains("1 accepted, 1 denied, 1 unusable"), "{text}");
}

/// `enclava keys …` with its own config folder (one identity per folder).
fn keys(server: &str, config: &std::path::Path, args: &[&str]) -> Output {
    let mut c = enclava(&["keys", "--server", server]);
    c.args(args).env("ENCLAVA_CONFIG_DIR", config).stdin(Stdio::null());
    run(&mut c)
}

fn ok_text(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// A plain HTTP/1.1 request on loopback (status, body).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other("no status"))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn start_keys_server(database: &str, dir: &std::path::Path, port: u16) -> Proc {
    start_server("keys", database, dir, port)
}

/// `enclava server` with `roles` on `database`, its data in `dir/srv`, once it answers /health.
fn start_server(roles: &str, database: &str, dir: &std::path::Path, port: u16) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let srv = dir.join("srv");
    let p = spawn(&[
        "server",
        "--roles",
        roles,
        "--database",
        database,
        "--listen",
        &listen,
        "--data-dir",
        srv.to_str().expect("utf-8"),
    ]);
    wait_for("the server", Duration::from_secs(20), || {
        http(&listen, "GET", "/health", None, "").is_ok_and(|(s, _)| s == 200)
    });
    p
}

#[test]
fn keys_cli_register_grant_revoke_list_audit() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port().expect("port");
    let db = format!("sqlite://{}", dir.path().join("keys.db").display());
    let _server = start_keys_server(&db, dir.path(), port);
    let url = format!("http://127.0.0.1:{port}");
    let (alice_dir, bob_dir) = (dir.path().join("alice"), dir.path().join("bob"));
    let alice = ok_text(&keys(&url, &alice_dir, &["register"]));
    assert!(alice.starts_with("u_"), "{alice}");
    assert_eq!(ok_text(&keys(&url, &alice_dir, &["whoami"])), alice);
    let bob = ok_text(&keys(&url, &bob_dir, &["register"]));
    let again = keys(&url, &alice_dir, &["register"]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already holds identity"));

    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[sgx]\nany_measurement = true\n").expect("policy");
    let out = ok_text(&keys(
        &url,
        &alice_dir,
        &["model-key", "--model", "acme/m", "--policy", policy.to_str().expect("utf-8")],
    ));
    assert!(out.contains("key version 1 stored"), "{out}");
    assert!(alice_dir.join("model-keys/acme/m/v1.key").is_file(), "the generated key is kept for the owner");
    let m = "ab".repeat(32);
    ok_text(&keys(&url, &alice_dir, &["grant", "--model", "acme/m", "--measurement", &m, "--user", &bob]));
    ok_text(&keys(&url, &bob_dir, &["request-key", "--model", "acme/m", "--measurement", &m]));
    assert!(ok_text(&keys(&url, &alice_dir, &["rotate", "--model", "acme/m"])).contains("key version 2"));

    // Only the owner touches the model, with a clear error and exit code 2.
    let stolen = keys(&url, &bob_dir, &["model-key", "--model", "acme/m"]);
    assert_eq!(stolen.status.code(), Some(2));
    let stolen_err = String::from_utf8_lossy(&stolen.stderr);
    assert!(
        stolen_err.contains("belongs to another user") && stolen_err.contains("(permission_denied)"),
        "{stolen_err}"
    );
    let no_cred = keys(&url, &dir.path().join("nobody"), &["whoami"]);
    assert!(String::from_utf8_lossy(&no_cred.stderr).contains("keys --server"), "says to register first");

    let listing: serde_json::Value =
        serde_json::from_str(&ok_text(&keys(&url, &alice_dir, &["list", "--json"]))).expect("json");
    assert_eq!(listing["models"][0]["id"], "acme/m");
    assert_eq!(listing["models"][0]["currentVersion"], 2);
    assert_eq!(listing["models"][0]["grants"][0]["user"], bob.as_str());
    let bob_list = ok_text(&keys(&url, &bob_dir, &["list"]));
    assert!(bob_list.contains("you own no models") && bob_list.contains("acme/m"), "{bob_list}");
    assert!(ok_text(&keys(&url, &alice_dir, &["revoke", "--model", "acme/m"])).contains("revoked 1 grant"));

    let audit = ok_text(&keys(&url, &alice_dir, &["audit"]));
    for action in ["model-key", "grant", "rotate", "revoke"] {
        assert!(audit.contains(action), "{audit}");
    }
    assert!(ok_text(&keys(&url, &alice_dir, &["audit", "--verify"])).contains("audit log intact"));
    let (status, doc) = http(&format!("127.0.0.1:{port}"), "GET", "/openapi.json", None, "").expect("openapi");
    assert_eq!(status, 200);
    assert!(doc.contains("/keys/v1/grants") && doc.contains("/keys/v1/release"), "{doc}");

    // Someone edits the database behind the broker's back: --verify says so and exits 1.
    let raw = Command::new("sqlite3")
        .arg(dir.path().join("keys.db"))
        .arg("UPDATE audit SET detail = 'x' WHERE seq = 2")
        .status();
    if raw.is_ok_and(|s| s.success()) {
        let o = keys(&url, &alice_dir, &["audit", "--verify"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&o.stdout).contains("record 2 was edited"));
    }
}

/// Grants from 4 clients at once; the broker is killed with SIGKILL mid-way; after a restart on
/// the same database every acknowledged grant is there and the audit chain verifies.
fn kill_mid_batch(database: &str) {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port().expect("port");
    let addr = format!("127.0.0.1:{port}");
    let mut server = start_keys_server(database, dir.path(), port);
    let (_, reg) = http(&addr, "POST", "/keys/v1/users", None, "").expect("register");
    let reg: serde_json::Value = serde_json::from_str(&reg).expect("json");
    let (owner, token) =
        (reg["userId"].as_str().expect("id").to_owned(), reg["token"].as_str().expect("token").to_owned());
    let body = r#"{"model":"acme/m","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#;
    assert_eq!(http(&addr, "POST", "/keys/v1/model-keys", Some(&token), body).expect("key").0, 201);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (addr, token, owner, acked, next) =
                (addr.clone(), token.clone(), owner.clone(), acked.clone(), next.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let m = format!("{i:064x}");
                    let body = format!(r#"{{"model":"acme/m","measurement":"{m}","user":"{owner}"}}"#);
                    match http(&addr, "POST", "/keys/v1/grants", Some(&token), &body) {
                        Ok((204, _)) => acked.lock().expect("lock").push(m),
                        Ok((s, b)) => panic!("grant refused before the kill: {s} {b}"),
                        Err(_) => return, // the broker is gone
                    }
                }
            })
        })
        .collect();
    wait_for("some acknowledged grants", Duration::from_secs(20), || acked.lock().expect("lock").len() >= 60);
    server.0.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
    let _ = server.0.wait();
    for w in workers {
        w.join().expect("worker");
    }
    let acked = acked.lock().expect("lock").clone();
    let _server = start_keys_server(database, dir.path(), port);
    let (status, listing) = http(&addr, "GET", "/keys/v1/models", Some(&token), "").expect("list");
    assert_eq!(status, 200, "{listing}");
    let listing: serde_json::Value = serde_json::from_str(&listing).expect("json");
    let stored: std::collections::HashSet<String> = listing["models"][0]["grants"]
        .as_array()
        .expect("grants")
        .iter()
        .filter_map(|g| g["measurement"].as_str().map(String::from))
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|m| !stored.contains(*m)).collect();
    assert!(lost.is_empty(), "{} acknowledged grants lost after SIGKILL: {lost:?}", lost.len());
    let (_, check) = http(&addr, "GET", "/keys/v1/audit/verify", Some(&token), "").expect("verify");
    assert!(check.contains("\"ok\":true"), "{check}");
}

#[test]
fn sigkill_mid_batch_of_grants_loses_nothing_acknowledged_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    kill_mid_batch(&format!("sqlite://{}", dir.path().join("keys.db").display()));
}

#[test]
fn sigkill_mid_batch_of_grants_loses_nothing_acknowledged_postgres() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let db = rt.block_on(enclava_testkit::PgDatabase::create()).expect("postgres");
    kill_mid_batch(&db.url);
    rt.block_on(db.drop_db());
}

/// Enclave info written into Redis by someone else: a measurement with multibyte characters is
/// skipped, and long multibyte ids and addresses are shown cut on characters; `find` never panics.
#[test]
fn find_shows_foreign_registry_data_without_panicking() {
    let redis = RedisServer::start().expect("redis");
    let port = free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let server_url = format!("http://{listen}");
    let _server = spawn(&["server", "--registry", &redis.url(), "--listen", &listen, "--roles", "manager"]);
    let client = redis::Client::open(redis.url()).expect("url");
    let mut c = client.get_connection().expect("connect");
    let long_id = "ü".repeat(40);
    let measurement = "ab".repeat(48);
    let bad = "é€".repeat(10);
    for (id, m) in [(long_id.as_str(), measurement.as_str()), ("bad-measurement", bad.as_str())] {
        let info = serde_json::json!({
            "instanceId": id, "serviceName": "enclava", "platform": "sim", "serviceVersion": "1",
            "policy": {"mrenclave": m}, "attestation": "", "pubkey": "", "connectionString": "é".repeat(100),
            "dataAccess": {"foreign/x": {"hot": false}},
        });
        let _: () = redis::pipe()
            .cmd("SETEX")
            .arg(format!("enclava:service:enclava:{id}:presence"))
            .arg(30)
            .arg(id)
            .cmd("SETEX")
            .arg(format!("enclava:enclava:service:{id}:info"))
            .arg(30)
            .arg(info.to_string())
            .cmd("HSET")
            .arg("enclava:enclava:bydataaccess:foreign/x")
            .arg(id)
            .arg(format!(r#"{{"hot":false,"mrenclave":"{m}"}}"#))
            .query(&mut c)
            .expect("write foreign data");
    }
    wait_for("server up", Duration::from_secs(10), || std::net::TcpStream::connect(&listen).is_ok());
    let out =
        run(enclava(&["find", "--server", &server_url, "--data", "foreign/x", "--limit", "5"]).stdin(Stdio::null()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "find failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&"ü".repeat(33)) && text.contains('…'), "{text}");
    assert!(!text.contains("bad-measurement"), "the malformed entry is skipped: {text}");
    let v = find_json(&server_url, "foreign/x", "5");
    assert_eq!(ids(&v), vec![long_id]);
}

/// Runs `enclava server` expecting it to refuse to start; returns what it printed.
fn refused_start(args: &[&str]) -> String {
    let mut p = enclava(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = p.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = p.kill();
            panic!("the server started although it must refuse: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(p.stderr.as_mut().expect("stderr"), &mut err).expect("read");
    assert!(!status.success(), "{err}");
    err
}

/// After SIGKILL the newest commits live only in SQLite's WAL; with the WAL lost the broker refuses
/// to start (naming --accept-rollback) and moves nothing, starts when the operator accepts, and
/// the audit chain verifies. A deleted KEK file stops it too, and no new one is made.
#[test]
fn a_lost_wal_or_kek_stops_the_broker_until_the_operator_acts() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port().expect("port");
    let addr = format!("127.0.0.1:{port}");
    let db_file = dir.path().join("keys.db");
    let db = format!("sqlite://{}", db_file.display());
    let srv = dir.path().join("srv");
    let mut server = start_keys_server(&db, dir.path(), port);
    for _ in 0..3 {
        assert_eq!(http(&addr, "POST", "/keys/v1/users", None, "").expect("register").0, 201);
        std::thread::sleep(Duration::from_millis(120));
    }
    server.0.kill().expect("SIGKILL");
    let _ = server.0.wait();
    for f in ["keys.db-wal", "keys.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let anchor = std::fs::read(srv.join("audit.anchor")).expect("anchor");
    let args =
        ["server", "--roles", "keys", "--database", &db, "--listen", &addr, "--data-dir", srv.to_str().expect("utf-8")];
    let err = refused_start(&args);
    assert!(err.contains("rolled back") && err.contains("--accept-rollback"), "{err}");
    assert_eq!(std::fs::read(srv.join("audit.anchor")).expect("anchor"), anchor, "the anchor did not move");

    let mut accepted = args.to_vec();
    accepted.push("--accept-rollback");
    let mut p = spawn(&accepted);
    wait_for("the key broker", Duration::from_secs(20), || {
        http(&addr, "GET", "/health", None, "").is_ok_and(|(s, _)| s == 200)
    });
    let (_, reg) = http(&addr, "POST", "/keys/v1/users", None, "").expect("register");
    let token =
        serde_json::from_str::<serde_json::Value>(&reg).expect("json")["token"].as_str().expect("token").to_owned();
    let (_, check) = http(&addr, "GET", "/keys/v1/audit/verify", Some(&token), "").expect("verify");
    assert!(check.contains("\"ok\":true"), "{check}");
    let (_, audit) = http(&addr, "GET", "/keys/v1/audit", Some(&token), "").expect("audit");
    assert!(audit.is_empty() || audit.starts_with('['), "{audit}");
    p.0.kill().expect("kill");
    let _ = p.0.wait();

    std::fs::remove_file(srv.join("kek.key")).expect("rm kek");
    let err = refused_start(&args);
    assert!(err.contains("kek.key") && err.contains("missing"), "{err}");
    assert!(!srv.join("kek.key").exists(), "no new key-encryption key");
}

/// A BlindAI manifest, written the way BlindAI's tooling writes them (`_hex` strings, `key= "…"`
/// spacing), judges the real SGX sample: its attributes, XFRM and MISCSELECT pass under BlindAI's
/// masks, and only its TCB status is refused; a manifest for another enclave is refused by
/// measurement. Never "unknown field".
#[test]
fn evidence_verify_reads_blindai_manifests_as_blindai_writes_them() {
    let td = concat!(env!("CARGO_MANIFEST_DIR"), "/../enclava-attest/testdata");
    let dir = tempfile::tempdir().expect("tmp");
    let manifest = |mr: &str| {
        format!(
            "# Enclave policy file. Determines which enclaves are accept by the\n\
             # service provider (after their quote data has been verified)\n\
             # WARNING : This file is automatically generated by `scripts/gen_enclave_info_toml.py`\n\
             mr_enclave = \"{mr}\"\nmisc_select_hex = \"0x0\"\nmisc_mask_hex= \"0xffffffff\"\n\
             attributes_flags_hex= \"0x4\"\nattributes_xfrm_hex= \"0x3\"\n\
             attributes_mask_flags_hex= \"0xfffffffffffffffd\"\nattributes_mask_xfrm_hex= \"0xffffffffffffff1b\"\n\
             # Set to true to allow enclaves compiled in DEBUG mode\nallow_debug = false\n"
        )
    };
    let verify = |policy: &str| {
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, policy).expect("write");
        let quote = format!("{td}/sgx-dcap-v3/quote.dat");
        let coll = format!("{td}/sgx-dcap-v3/collateral.json");
        let out = run(enclava(&[
            "evidence",
            "verify",
            &quote,
            "--collateral",
            &coll,
            "--at",
            "2025-07-01T00:00:00Z",
            "--policy",
            path.to_str().expect("utf-8"),
        ])
        .stdin(Stdio::null()));
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, text) = verify(&manifest("33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"));
    assert_eq!(code, Some(1), "{text}");
    let denial = text.split("DENIED").nth(1).unwrap_or_default();
    assert!(denial.contains("TCB status ConfigurationAndSWHardeningNeeded"), "{text}");
    assert!(!text.contains("unknown field"), "{text}");
    for not in ["attributes", "MISCSELECT", "measurement"] {
        assert!(!denial.contains(not), "{not} in {denial}");
    }
    let (code, text) = verify(&manifest(&"ab".repeat(32)));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("measurement"), "{text}");
}

#[test]
fn capacity_is_measured_and_an_offer_beyond_it_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = run(enclava(&["capacity", "--json", "--data-dir"]).arg(dir.path()).stdin(Stdio::null()));
    let c: serde_json::Value = serde_json::from_str(&ok_text(&out)).expect("json");
    assert!(c["cores"].as_f64().is_some_and(|n| n > 0.0), "{c}");
    assert!(
        c["memory_bytes"].as_u64().is_some_and(|n| n > 0) && c["disk_bytes"].as_u64().is_some_and(|n| n > 0),
        "{c}"
    );
    assert!(c["gpus_how"].as_str().is_some(), "{c}");

    let out =
        run(enclava(&["capacity", "--offer", "cpu=1,memory=1MiB", "--data-dir"]).arg(dir.path()).stdin(Stdio::null()));
    assert!(ok_text(&out).contains("offer accepted"));
    let out = run(enclava(&["capacity", "--offer", "cpu=4096", "--data-dir"]).arg(dir.path()).stdin(Stdio::null()));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cpu=4096 but"), "{out:?}");

    // A node does not start with an offer beyond what its host has.
    let out = run(enclava(&["node", "--offer", "cpu=4096,memory=4GiB", "--data-dir"])
        .arg(dir.path().join("node"))
        .stdin(Stdio::null()));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the offer exceeds what this host has"), "{err}");
    let out = run(enclava(&["node", "--offer", "bandwidth=1G", "--data-dir"])
        .arg(dir.path().join("node"))
        .stdin(Stdio::null()));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bandwidth is measured"), "{out:?}");
}

/// vantage6's node verbs on a named federation node: `new` keeps it, `start` runs it in the
/// background, `list` shows it running, `files` shows where things are, a task runs on it,
/// `attach` shows its log, `stop` ends it.
#[test]
fn fed_node_new_start_list_files_attach_stop() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port().expect("port");
    let listen = format!("127.0.0.1:{port}");
    let srv = dir.path().join("srv");
    let database = format!("sqlite://{}", dir.path().join("fed.db").display());
    let _server = start_server("keys,federation", &database, dir.path(), port);
    let url = format!("http://{listen}");
    let config = dir.path().join("config");
    let invite = std::fs::read_to_string(srv.join("admin-invite")).expect("admin invite");
    ok_text(&keys(&url, &config, &["register", "--invite", invite.trim()]));
    let fed = |args: &[&str]| {
        let mut c = enclava(&[args[0], "--server", &url, "--config-dir", config.to_str().expect("utf-8")]);
        c.args(&args[1..]);
        run(&mut c)
    };
    ok_text(&fed(&["org", "create", "acme"]));
    ok_text(&fed(&["collab", "create", "study1", "--orgs", "acme"]));
    let data = dir.path().join("trial.csv");
    std::fs::write(&data, "1\n2\n3\n").expect("data");
    let data_arg = format!("trial={}", data.display());
    let made = ok_text(&fed(&[
        "fed-node",
        "new",
        "acme-node",
        "--collab",
        "study1",
        "--org",
        "acme",
        "--data",
        &data_arg,
        "--process",
    ]));
    assert!(made.contains("enclava fed-node start acme-node"), "{made}");
    let again = fed(&["fed-node", "new", "acme-node", "--collab", "study1", "--org", "acme"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already a node acme-node"));
    assert!(ok_text(&fed(&["fed-node", "list"])).contains("acme-node: stopped"));
    let started = ok_text(&fed(&["fed-node", "start", "acme-node"]));
    assert!(started.contains("node acme-node started"), "{started}");
    // The server marks it online at its first call, just after it says it runs.
    let mut listed = String::new();
    for _ in 0..50 {
        listed = ok_text(&fed(&["fed-node", "list"]));
        if listed.contains("online") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(listed.contains("acme-node: running") && listed.contains("online"), "{listed}");
    let files = ok_text(&fed(&["fed-node", "files", "acme-node"]));
    assert!(files.contains("node.log") && files.contains(&format!("database trial: {}", data.display())), "{files}");
    let task = |args: &[&str]| {
        let mut all = vec!["task", "create", "--collab", "study1", "--orgs", "acme", "--wait"];
        all.extend_from_slice(args);
        ok_text(&fed(&all))
    };
    let out = task(&[
        "--cmd",
        r#"awk '{ s += $1 } END { printf "{\"sum\": %d}", s }' "$TRIAL_DATABASE_URI" > "$OUTPUT_FILE""#,
        "--database",
        "trial",
    ]);
    assert!(out.contains("\"sum\": 6") || out.contains("\"sum\":6"), "{out}");
    // An image brings its own root filesystem.
    let image = enclava_process::busybox_root(&dir.path().join("image"), &["sh"]).expect("busybox-static");
    std::fs::write(image.join("greeting"), "hello from the image").expect("file");
    let image = image.to_str().expect("utf-8");
    let out = task(&["--image", image, "--cmd", r#"read g < /greeting; echo "\"$g\"" > "$OUTPUT_FILE""#]);
    assert!(out.contains("hello from the image"), "{out}");
    let stopped = ok_text(&fed(&["fed-node", "stop", "acme-node"]));
    assert!(stopped.contains("node acme-node stopped"), "{stopped}");
    assert!(ok_text(&fed(&["fed-node", "list"])).contains("acme-node: stopped"));
    let log = ok_text(&fed(&["fed-node", "attach", "acme-node"]));
    assert!(log.contains("federation node acme-node") && log.contains("stopping"), "{log}");
    let bad = fed(&["fed-node", "start", "../escape"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("a node name is"));
}
