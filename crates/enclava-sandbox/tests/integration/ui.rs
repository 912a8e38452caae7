//! The dashboard: in a real headless Chromium (Debian's `chromium`, driven by `playwright-core`
//! from npm, both installed by `scripts/test`) a user signs in, sees the enclaves of a running
//! sandbox with what their evidence proved, sees a model turn hot and a killed node disappear,
//! sees a job's receipt, and is refused another user's model; screenshots of each page are saved
//! under `target/tmp/ui-screenshots`. Without a browser: the session cookie's attributes, CSRF and
//! origin checks, sign-out ending a session, and the Content-Security-Policy on every answer.

use std::path::PathBuf;
use std::time::Duration;

use enclava_attest::Policy;
use enclava_client::farm::{FarmClient, Submission, accepted_hosts};
use enclava_contracts::farm::Security;
use enclava_model::{BlobStore, FolderStore, ModelKey, package_blob_name};
use enclava_sandbox::{NodeSpec, Sandbox, SandboxBuilder};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use zeroize::Zeroizing;

const MODEL: &str = "acme/ui-model";

fn measurement() -> String {
    enclava_node::tee::sim_measurement(enclava_node::tee::sim_workload().as_bytes())
}

/// One HTTP/1.1 request on loopback: (status, lowercase head, body).
async fn call(
    sandbox: &Sandbox,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(sandbox.addr()).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", sandbox.addr());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.expect("in time").expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (h, b) = text.split_once("\r\n\r\n").map(|(h, b)| (h.to_lowercase(), b.to_owned())).unwrap_or_default();
    (status, h, b)
}

/// Signs in through the API: (the cookie pair `enclava_ui=…`, the CSRF token, the head).
async fn sign_in(sandbox: &Sandbox, token: &str) -> (String, String, String) {
    let body = serde_json::json!({ "token": token }).to_string();
    let (status, head, body) =
        call(sandbox, "POST", "/ui/api/session", &[("Content-Type", "application/json")], body.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let csrf =
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["csrf"].as_str().expect("csrf").to_owned();
    (cookie, csrf, head)
}

/// A model owned by `owner`, released to sim nodes, with a request key so a test can send it
/// serverless requests.
async fn publish(sandbox: &Sandbox, owner: &str) -> enclava_client::infer::UserKey {
    let broker = sandbox.broker().expect("keys role");
    let key = ModelKey::generate().expect("key");
    let v =
        broker.put_model_key(owner, MODEL, key.as_bytes(), Some(&sandbox.sim_policy(&[])), false).await.expect("key");
    broker.grant(owner, MODEL, &measurement(), owner).await.expect("grant");
    let package = enclava_model::encrypt(MODEL, v, &key, &enclava_runtime::generate::tiny(9)).expect("encrypt");
    FolderStore::new(sandbox.blobs()).put(&package_blob_name(MODEL, v), &package).await.expect("blob");
    let request_key = ModelKey::generate().expect("request key");
    broker.put_request_key(owner, MODEL, &measurement(), request_key.as_bytes()).await.expect("request key");
    enclava_client::infer::UserKey::new(owner, &measurement(), request_key.as_bytes())
}

/// Reads an event stream up to its next `changed` event.
async fn next_change(events: &mut tokio::io::Lines<BufReader<tokio::net::TcpStream>>) {
    loop {
        let line = events.next_line().await.expect("read").expect("open");
        if line.starts_with("event: changed") {
            return;
        }
    }
}

/// An enclave someone listed with markup in its info, kept alive until the test ends.
async fn list_injected(sandbox: &Sandbox) {
    let info = serde_json::json!({
        "instanceId": "evil-1", "platform": "sim", "policy": { "mrenclave": measurement() },
        "connectionString": "127.0.0.1:9", "dataAccess": {},
        "hostname": "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\">",
    });
    let info = enclava_registry::EnclaveInfoJson::parse(&info.to_string()).expect("info");
    let reg = sandbox.registry().clone();
    reg.publish("evil-1", &info.to_json(), &info.index_entries()).await.expect("publish");
    tokio::spawn(async move {
        loop {
            let _ = reg.heartbeat("evil-1").await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_http_only_same_site_csrf_checked_and_end_on_sign_out() {
    let sandbox = SandboxBuilder::new().start().await.expect("starts");
    let broker = sandbox.broker().expect("keys role").clone();
    let (a, token_a) = broker.register(None).await.expect("register");
    let (b, token_b) = broker.register(None).await.expect("register");
    list_injected(&sandbox).await;

    let (status, head, _) = call(&sandbox, "GET", "/ui", &[], b"").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{head}");
    let (cookie_a, csrf_a, head) = sign_in(&sandbox, &token_a).await;
    let set = head.lines().find(|l| l.starts_with("set-cookie:")).expect("set-cookie");
    assert!(set.contains("httponly") && set.contains("samesite=strict") && set.contains("path=/ui"), "{set}");
    assert!(!set.contains(&token_a.to_lowercase()), "the credential never goes to the browser");
    let (cookie_b, _, _) = sign_in(&sandbox, &token_b).await;
    assert_ne!(cookie_a, cookie_b);
    let who = |cookie: String| {
        let sandbox = &sandbox;
        async move { call(sandbox, "GET", "/ui/api/session", &[("Cookie", &cookie)], b"").await }
    };
    let (status, head, body) = who(cookie_a.clone()).await;
    assert!(status == 200 && body.contains(&a) && !body.contains(&b), "{body}");
    assert!(head.contains("content-security-policy"), "API answers carry the CSP too");
    assert_eq!(who(format!("{cookie_a}0")).await.0, 401, "a guessed cookie is nobody's");
    assert_eq!(who("enclava_ui=".into()).await.0, 401);
    assert_eq!(call(&sandbox, "GET", "/ui/api/models", &[], b"").await.0, 401, "no cookie, no models");
    assert_eq!(call(&sandbox, "GET", "/ui/api/events", &[], b"").await.0, 401, "no cookie, no live feed");

    // Signing in from another site, or as a form, is refused; signing out needs the CSRF token.
    let body = serde_json::json!({ "token": token_a }).to_string();
    let evil = [("Content-Type", "application/json"), ("Origin", "http://evil.example")];
    assert_eq!(call(&sandbox, "POST", "/ui/api/session", &evil, body.as_bytes()).await.0, 403);
    let form = [("Content-Type", "text/plain")];
    assert_eq!(call(&sandbox, "POST", "/ui/api/session", &form, body.as_bytes()).await.0, 400);
    let out = |csrf: &str| {
        vec![
            ("Cookie", cookie_a.clone()),
            ("Content-Type", "application/json".into()),
            ("X-CSRF-Token", csrf.to_owned()),
        ]
    };
    let headers = out("wrong");
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(call(&sandbox, "POST", "/ui/api/session/end", &headers, b"{}").await.0, 403);
    let headers = out(&csrf_a);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(call(&sandbox, "POST", "/ui/api/session/end", &headers, b"{}").await.0, 204);
    assert_eq!(who(cookie_a).await.0, 401, "a session ended is over for whoever holds its cookie");
    assert_eq!(who(cookie_b).await.0, 200, "other sessions go on");

    // A signed-in page's event stream says when a model turns hot on an enclave.
    let (cookie_c, _, _) = sign_in(&sandbox, &token_b).await;
    let mut stream = tokio::net::TcpStream::connect(sandbox.addr()).await.expect("connect");
    let get = format!("GET /ui/api/events HTTP/1.1\r\nHost: {}\r\nCookie: {cookie_c}\r\n\r\n", sandbox.addr());
    stream.write_all(get.as_bytes()).await.expect("write");
    let mut events = BufReader::new(stream).lines();
    tokio::time::timeout(Duration::from_secs(5), next_change(&mut events)).await.expect("the first look");
    let hot = serde_json::json!({
        "instanceId": "evil-1", "platform": "sim", "policy": { "mrenclave": measurement() },
        "connectionString": "127.0.0.1:9", "dataAccess": { "acme/x": { "hot": true } },
        "hostname": "<script>window.pwned = 1</script>",
    });
    let hot = enclava_registry::EnclaveInfoJson::parse(&hot.to_string()).expect("info");
    sandbox.registry().publish("evil-1", &hot.to_json(), &hot.index_entries()).await.expect("publish");
    tokio::time::timeout(Duration::from_secs(2), next_change(&mut events)).await.expect("a change event within 2 s");
    drop(events);

    // The injected entry comes back as data (the browser test shows it is never run).
    let (_, _, body) = call(&sandbox, "GET", "/ui/api/enclaves", &[], b"").await;
    assert!(body.contains("<script>window.pwned = 1</script>"), "{body}");
    sandbox.stop().await;
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("ENCLAVA_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(path.exists(), "no Chromium at {}: install Debian's chromium (scripts/test does)", path.display());
    path
}

/// Where `scripts/test` installs playwright-core.
fn node_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/tmp".into());
    let dir = home.join(".cache/enclava/node");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not in {}: run scripts/test (it installs it with npm)",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_chromium_a_user_sees_enclaves_models_turn_hot_a_killed_node_go_a_receipt_and_not_anothers_model() {
    let (chromium, node_dir) = (chromium(), node_dir());
    let sandbox = SandboxBuilder::new().configure(|c| c.release_rate = 0).start().await.expect("starts");
    let broker = sandbox.broker().expect("keys role").clone();
    let (owner, token_a) = broker.register(None).await.expect("register");
    let (_, token_b) = broker.register(None).await.expect("register");
    let user_key = publish(&sandbox, &owner).await;
    let n1 = sandbox.detached_node(NodeSpec::new("ui1").serve(&[MODEL])).await.expect("node 1");
    let n2 = sandbox.detached_node(NodeSpec::new("ui2").serve(&[MODEL])).await.expect("node 2");
    for n in [&n1, &n2] {
        n.wait_hot(MODEL, Duration::from_secs(30)).await.expect("hot");
    }
    let (node1, node2) = (n1.instance_id().to_owned(), n2.instance_id().to_owned());
    list_injected(&sandbox).await;

    // A confidential job on a sim farm host, finished, with its receipt.
    let (_host, _agent) =
        sandbox.farm_host(NodeSpec::new("ui-host"), Some("cpu=1,memory=512MiB"), &[]).await.expect("farm host");
    let farm = FarmClient::new(sandbox.url(), Some(Zeroizing::new(token_a.clone())));
    let hosts = farm.hosts().await.expect("hosts");
    let policy = Policy::parse(&sandbox.sim_policy(&[])).expect("policy");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
    let (ok, _) = accepted_hosts(&hosts, &policy, &Default::default(), now, "wasm", 0.5, 32 << 20).await;
    let sub = Submission {
        kind: "wasm",
        security: Security::Confidential,
        program: enclava_wasm::examples::REVERSE.as_bytes(),
        stdin: Some(b"!ih"),
        inputs: &[],
        args: &[],
        rootfs: None,
        cpu: 0.5,
        memory_bytes: 32 << 20,
        timeout: Duration::from_secs(10),
    };
    let job = farm.submit_job(&sub, &ok).await.expect("submitted");
    let done = farm.wait(&job.view.id, Duration::from_secs(30)).await.expect("finishes");
    assert_eq!(done.state, "succeeded", "{done:?}");

    // The browser script, next to its playwright-core.
    let script = node_dir.join("ui_browser.mjs");
    std::fs::write(&script, include_str!("ui_browser.mjs")).expect("script");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let _ = std::fs::remove_dir_all(&shots); // only this run's screenshots
    std::fs::create_dir_all(&shots).expect("screenshots folder");
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .env("BASE", sandbox.url())
        .env("TOKEN_A", &token_a)
        .env("TOKEN_B", &token_b)
        .env("NODE1", &node1)
        .env("NODE2", &node2)
        .env("MODEL", MODEL)
        .env("JOB", &job.view.id)
        .env("SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (Debian's nodejs)");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut n1 = Some(n1);
    let mut seen = Vec::new();
    let driven = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(line) = out.next_line().await.expect("read") {
            println!("browser: {line}");
            seen.push(line.clone());
            match line.as_str() {
                "READY evict" => assert!(n2.evict(MODEL), "evicted"),
                "READY load" => {
                    let endpoint = format!("http://{}{}", n2.addr(), enclava_client::infer::PATH);
                    let opts = enclava_client::infer::ServerlessOptions::new(endpoint, MODEL, user_key.clone());
                    let x = enclava_runtime::generate::sample_input(&[1, 3, 32, 32], 1).expect("input").to_npy();
                    enclava_client::infer::infer_serverless(&opts, &x).await.expect("loads and answers");
                }
                "READY kill" => n1.take().expect("node 1").abort(),
                l if l == "DONE" || l.starts_with("FAILED") => break,
                _ => continue,
            }
            stdin.write_all(b"go\n").await.expect("signal");
        }
    })
    .await;
    assert!(driven.is_ok(), "the browser test did not finish in time: {seen:?}");
    drop(stdin);
    let status = child.wait().await.expect("exits");
    assert!(status.success() && seen.iter().any(|l| l == "DONE"), "{seen:?}");
    for name in ["1-sign-in", "2-enclaves", "3-model-hot", "4-node-killed", "5-models", "6-farm", "9-other-user"] {
        assert!(shots.join(format!("{name}.png")).exists(), "screenshot {name}");
    }
    let gone =
        seen.iter().find_map(|l| l.strip_prefix("GONE_MS ")).and_then(|v| v.parse::<u64>().ok()).expect("timing");
    assert!(gone < 10_000, "a killed node left the page after {gone} ms");
    n2.shutdown().await;
    sandbox.stop().await;
}
