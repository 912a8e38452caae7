//! Federation end to end: three organisations, a node each, a federated mean over a CSV split
//! across them. Each node opens only its own input; the server's database holds no readable input
//! or result; a result changed by one byte is refused; roles decide who creates, sees and kills
//! tasks; a subtask whose parent failed is killed, not run; a node's key must match the server's
//! copy.

use std::time::Duration;

use enclava_client::fed::{FedClient, TaskRequest};
use enclava_contracts::fed::{NewCollaboration, NewNode};
use enclava_core::ErrorCode;
use enclava_host::fed::{FedNode, FedNodeConfig};
use enclava_sandbox::{Sandbox, SandboxBuilder};
use zeroize::Zeroizing;

/// Each organisation's share of the trial: (values, their sum).
const SHARES: [(&str, &str); 3] = [("acme", "1\n2\n3\n"), ("globex", "10\n20\n"), ("initech", "100\n")];

/// A process algorithm: the partial sum and count of the first column of its `trial` database.
const PARTIAL: &str = r#"awk '{ s += $1; n += 1 } END { printf "{\"sum\": %d, \"count\": %d}", s, n }' "$TRIAL_DATABASE_URI" > "$OUTPUT_FILE""#;

struct Network {
    sandbox: Sandbox,
    admin: FedClient,
    /// A researcher per organisation, by organisation name.
    researchers: Vec<(String, FedClient)>,
    collab: String,
    nodes: Vec<(String, Zeroizing<String>, std::path::PathBuf)>,
}

async fn user(sandbox: &Sandbox) -> (String, FedClient) {
    let (id, token) = sandbox.broker().expect("keys").identity().register(None).await.expect("register");
    (id, FedClient::new(sandbox.url(), Some(Zeroizing::new(token))))
}

async fn network() -> Network {
    network_on(SandboxBuilder::new().configure(|c| c.farm_lease_ms = 1000)).await
}

async fn network_on(builder: SandboxBuilder) -> Network {
    let sandbox = builder.start().await.expect("starts");
    let admin = FedClient::new(sandbox.url(), Some(Zeroizing::new(sandbox.admin().await.expect("admin"))));
    let mut researchers = Vec::new();
    for (org, _) in SHARES {
        admin.create_organisation(org).await.expect("organisation");
        let (id, client) = user(&sandbox).await;
        admin.add_member(org, &id, &["researcher"]).await.expect("member");
        researchers.push((org.to_owned(), client));
    }
    let collab = admin
        .create_collaboration(&NewCollaboration {
            name: "study1".into(),
            organisations: SHARES.iter().map(|(o, _)| o.to_string()).collect(),
            encrypted: true,
            require_attestation: None,
        })
        .await
        .expect("collaboration");
    let mut nodes = Vec::new();
    for (org, share) in SHARES {
        let created = admin
            .create_node(&NewNode { collaboration: collab.id.clone(), organisation: Some(org.into()), name: None })
            .await
            .expect("node");
        let dir = sandbox.dir().join(format!("node-{org}"));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("trial.csv"), share).expect("data");
        nodes.push((org.to_owned(), Zeroizing::new(created.api_key), dir));
    }
    Network { sandbox, admin, researchers, collab: collab.id, nodes }
}

fn node_config(n: &Network, i: usize) -> FedNodeConfig {
    let (_, key, dir) = &n.nodes[i];
    let mut c = FedNodeConfig::new(n.sandbox.url(), key.clone(), dir);
    c.data.insert("trial".into(), dir.join("trial.csv"));
    c.rootfs =
        Some(enclava_process::busybox_root(&dir.join("fs"), enclava_sandbox::BUSYBOX_APPLETS).expect("busybox root"));
    c.timeout = Duration::from_secs(20);
    c
}

/// A sealed process task at the organisations of `inputs` in the network's collaboration.
fn sealed_task<'a>(n: &'a Network, algorithm: &'a [u8], inputs: &'a [(&'a str, serde_json::Value)]) -> TaskRequest<'a> {
    TaskRequest {
        collaboration: &n.collab,
        name: "task",
        kind: "process",
        algorithm,
        inputs,
        databases: &[],
        readable: false,
        policy: None,
        parent: None,
    }
}

/// The sum of the partial sums (`{"sum": …}`) in `results`.
fn summed(results: &[enclava_client::fed::RunOutcome]) -> i64 {
    results
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(r.result.as_deref().expect("result")).expect("json")["sum"]
                .as_i64()
                .expect("sum")
        })
        .sum()
}

/// Starts `request` and waits until it completed (failing with its runs otherwise).
async fn completed(
    client: &FedClient,
    request: &TaskRequest<'_>,
) -> (enclava_contracts::fed::TaskView, Zeroizing<[u8; 32]>) {
    let (task, seed) = client.start_task(request).await.expect("task");
    let done = client.wait(&task.id, Duration::from_secs(60)).await.expect("ends");
    assert_eq!(done.status, "completed", "{:?}", client.runs(&task.id).await);
    (task, seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_mean_over_three_organisations_sealed_end_to_end() {
    let n = network().await;
    let mut running = Vec::new();
    for i in 0..3 {
        running.push(FedNode::start(node_config(&n, i)).await.expect("node starts"));
    }
    let (_, acme) = &n.researchers[0];
    let inputs: Vec<(&str, serde_json::Value)> = SHARES
        .iter()
        .map(|(o, _)| (*o, serde_json::json!({"method": "partial_mean", "kwargs": {"column": 0}})))
        .collect();
    let request = TaskRequest { name: "mean", databases: &["trial"], ..sealed_task(&n, PARTIAL.as_bytes(), &inputs) };
    let (task, seed) = acme.start_task(&request).await.expect("task");
    assert_eq!(task.job, task.id, "a top-level task starts its own job");
    assert!(task.runs.ends_with(&format!("runs?task={}", task.id)), "linked: {task:?}");
    let done = acme.wait(&task.id, Duration::from_secs(60)).await.expect("ends");
    assert_eq!(done.status, "completed", "{:?}", acme.runs(&task.id).await);
    let results = acme.results(&task.id, &seed, false, None).await.expect("results open");
    let (mut sum, mut count) = (0i64, 0i64);
    for r in &results {
        let v: serde_json::Value = serde_json::from_slice(r.result.as_deref().expect("a result")).expect("json");
        sum += v["sum"].as_i64().expect("sum");
        count += v["count"].as_i64().expect("count");
    }
    assert_eq!((sum, count), (136, 6), "the federated mean is 136/6");

    // An algorithm cannot make its node read a file of the node's through a link.
    let sneaky = TaskRequest { algorithm: br#"ln -s /etc/passwd "$OUTPUT_FILE""#, inputs: &inputs[..1], ..request };
    let (sneaky, _) = acme.start_task(&sneaky).await.expect("task");
    assert_eq!(acme.wait(&sneaky.id, Duration::from_secs(30)).await.expect("ends").status, "failed");
    let why = acme.runs(&sneaky.id).await.expect("runs");
    assert!(why[0].reasons.iter().any(|r| r.contains("not a regular file")), "{:?}", why[0].reasons);

    // A job's temporary folder is shared by a task and its subtasks, and no other job sees it.
    let writer = TaskRequest {
        algorithm: br#"echo from-the-parent > "$TEMPORARY_FOLDER/note"; sleep 2; echo done > "$OUTPUT_FILE""#,
        inputs: &inputs[..1],
        ..request
    };
    let (parent, _) = acme.start_task(&writer).await.expect("parent");
    let reader = br#"sleep 1; cat "$TEMPORARY_FOLDER/note" > "$OUTPUT_FILE""#;
    let (child, child_seed) = subtask(acme, &parent, "acme", reader).await;
    let (other, other_seed) = acme
        .start_task(&TaskRequest { algorithm: br#"ls "$TEMPORARY_FOLDER" > "$OUTPUT_FILE""#, ..writer })
        .await
        .expect("another job");
    for (t, seed, expect) in [(&child, &child_seed, "from-the-parent\n"), (&other, &other_seed, "")] {
        assert_eq!(acme.wait(&t.id, Duration::from_secs(30)).await.expect("ends").status, "completed");
        let r = acme.results(&t.id, seed, false, None).await.expect("results");
        assert_eq!(String::from_utf8_lossy(r[0].result.as_deref().expect("result")), expect, "task {}", t.name);
    }

    // The diagnostic (vantage6's feature test) passes at every node.
    let features = acme.test_features(&n.collab, &["trial"], None).await.expect("features");
    assert_eq!(features.len(), 3);
    for (org, checks) in &features {
        let checks = checks.as_ref().expect("ran");
        for (name, ok) in checks.as_object().expect("object") {
            assert_eq!(ok, &serde_json::Value::Bool(true), "{org}: {name} in {checks}");
        }
    }

    // The server's database holds no readable input or result.
    let db = n.sandbox.broker().expect("keys").store().audit().database().clone();
    use sqlx::Row;
    for r in sqlx::query("SELECT input, result FROM fed_runs").fetch_all(db.pool()).await.expect("rows") {
        let input: String = r.try_get(0).expect("input");
        let result: Option<String> = r.try_get(1).expect("result");
        assert!(!input.contains("partial_mean"), "a readable input in the database: {input}");
        let result = result.unwrap_or_default();
        assert!(!result.contains("sum"), "a readable result in the database");
    }
    // A result changed by one byte is refused.
    let runs = acme.runs(&task.id).await.expect("runs");
    let mut changed = runs[0].result.clone();
    let at = changed.len() / 2;
    changed[at] ^= 1;
    let key = enclava_seal::KeyPair::from_seed(&seed);
    let result_key = key.public().to_vec();
    let binding = enclava_contracts::fed::RunBinding {
        task: &task.id,
        run: &runs[0].id,
        organisation: &runs[0].organisation.id,
        collaboration: &task.collaboration.id,
        kind: &task.kind,
        algorithm: &task.algorithm,
        databases: &task.databases,
        result_key: &result_key,
    };
    enclava_client::fed::open_result(Some(&key), &binding, &runs[0].result).expect("the stored result opens");
    let refused = enclava_client::fed::open_result(Some(&key), &binding, &changed);
    assert!(refused.is_err(), "a changed result opens");
    let other_run = enclava_contracts::fed::RunBinding { run: &runs[1].id, ..binding };
    assert!(enclava_client::fed::open_result(Some(&key), &other_run, &runs[0].result).is_err(), "another run's");
    // One organisation's sealed input does not open with another's key, nor for another run.
    let globex_key = std::fs::read_to_string(n.nodes[1].2.join("organisation.key")).expect("key");
    let globex_seed: [u8; 32] = hex::decode(globex_key.trim()).expect("hex").try_into().expect("32");
    let globex = enclava_seal::KeyPair::from_seed(&globex_seed);
    let acme_org = acme.organisation("acme").await.expect("acme");
    let acme_binding = enclava_contracts::fed::RunBinding { organisation: &acme_org.id, ..binding };
    let sealed = enclava_client::fed::seal_input(&acme_org.public_key, &acme_binding, b"{}").expect("seal");
    let leased = |org: &str, run: &str| enclava_contracts::fed::LeasedRun {
        run: run.into(),
        task: task.id.clone(),
        job: task.id.clone(),
        organisation: org.into(),
        collaboration: task.collaboration.id.clone(),
        initiator: String::new(),
        initiator_organisation: None,
        kind: task.kind.clone(),
        algorithm: task.algorithm.clone(),
        databases: task.databases.clone(),
        encrypted: true,
        attested: false,
        sealed: Some(sealed.clone()),
        plain: None,
        result_key: result_key.clone(),
        lease: String::new(),
        lease_ms: 0,
    };
    assert!(enclava_client::fed::open_input(&globex, &leased(&acme_org.id, &runs[0].id)).is_err());

    // Roles: another organisation's researcher sees the task (same collaboration) but may not
    // kill it; a user outside every collaboration sees nothing; a user without a role creates
    // nothing.
    let (_, globex_researcher) = &n.researchers[1];
    globex_researcher.task(&task.id).await.expect("a collaborator sees it");
    let kill = globex_researcher.kill(&task.id).await.expect_err("not theirs to kill");
    assert_eq!(kill.code, ErrorCode::PermissionDenied);
    let (_, outsider) = user(&n.sandbox).await;
    assert_eq!(outsider.task(&task.id).await.expect_err("outsider").code, ErrorCode::NotFound);
    assert!(outsider.collaborations().await.expect("list").is_empty());
    assert!(outsider.tasks(&n.collab).await.expect("list").is_empty(), "an outsider lists no tasks");
    assert!(globex_researcher.tasks(&n.collab).await.expect("list").iter().any(|t| t.id == task.id));
    // Lists are paged: two pages of one are two different tasks, newest first.
    let first = acme.tasks_page(&n.collab, 1, 0).await.expect("page 1");
    let second = acme.tasks_page(&n.collab, 1, 1).await.expect("page 2");
    assert_eq!((first.len(), second.len()), (1, 1));
    assert_ne!(first[0].id, second[0].id);
    assert!(first[0].created_ms >= second[0].created_ms);
    let stored = outsider.add_algorithm(b"echo outsider".to_vec()).await.expect_err("no researcher anywhere");
    assert_eq!(stored.code, ErrorCode::PermissionDenied);
    let (plain_id, plain) = user(&n.sandbox).await;
    n.admin.add_member("acme", &plain_id, &[]).await.expect("member without a role");
    let e = plain.start_task(&request).await.expect_err("no researcher role");
    assert!(matches!(e.code, ErrorCode::PermissionDenied | ErrorCode::NotFound), "{e:?}");
    // Readable input is refused in an encrypted collaboration.
    let mut bare = enclava_contracts::fed::NewTask {
        id: enclava_client::farm::new_job_id(),
        collaboration: n.collab.clone(),
        name: "bare".into(),
        kind: "process".into(),
        algorithm: task.algorithm.clone(),
        organisations: vec![enclava_contracts::fed::OrgInput {
            organisation: "acme".into(),
            sealed: None,
            plain: Some("{}".into()),
        }],
        result_key: vec![1; 32],
        databases: Vec::new(),
        parent: None,
    };
    assert_eq!(acme.create_task(&bare).await.expect_err("readable").code, ErrorCode::InvalidArgument);

    // A subtask whose parent failed is killed, not run: globex's node is down while acme's run
    // of the parent fails, and when it comes back the subtask waiting for it is not started.
    let globex_node = running.remove(1);
    globex_node.shutdown().await;
    let failing = TaskRequest { algorithm: b"sleep 2; echo broken >&2; exit 3", inputs: &inputs[..1], ..request };
    let (parent, _) = acme.start_task(&failing).await.expect("parent");
    bare.id = enclava_client::farm::new_job_id();
    bare.parent = Some(parent.id.clone());
    let globex_id = acme.organisation("globex").await.expect("globex").id;
    let child_run = enclava_contracts::fed::run_id(&bare.id, 0);
    let child_binding = enclava_contracts::fed::RunBinding {
        task: &bare.id,
        run: &child_run,
        organisation: &globex_id,
        collaboration: &bare.collaboration,
        kind: &bare.kind,
        algorithm: &bare.algorithm,
        databases: &bare.databases,
        result_key: &bare.result_key,
    };
    let child_input = enclava_client::fed::seal_input(&globex.public()[..], &child_binding, b"{}").expect("seal");
    bare.organisations = vec![enclava_contracts::fed::OrgInput {
        organisation: "globex".into(),
        sealed: Some(child_input),
        plain: None,
    }];
    let child = acme.create_task(&bare).await.expect("subtask");
    assert_eq!(child.job, parent.job, "a subtask shares its parent's job");
    let parent_done = acme.wait(&parent.id, Duration::from_secs(30)).await.expect("parent ends");
    assert_eq!(parent_done.status, "failed");
    let why = acme.runs(&parent.id).await.expect("runs");
    assert!(why[0].reasons.iter().any(|r| r.contains("exited") || r.contains("exit")), "{:?}", why[0].reasons);
    assert!(why[0].reasons.iter().all(|r| !r.contains("broken")), "logs stay on the node by default");
    running.insert(1, FedNode::start(node_config(&n, 1)).await.expect("globex again"));
    let child_done = acme.wait(&child.id, Duration::from_secs(30)).await.expect("child ends");
    assert_eq!(child_done.status, "killed", "{:?}", acme.runs(&child.id).await);
    let child_runs = acme.runs(&child.id).await.expect("runs");
    assert!(child_runs[0].reasons.iter().any(|r| r.contains("parent")), "{:?}", child_runs[0].reasons);

    // A node's policy: initech's node takes tasks only from globex's users, so acme's task is
    // not allowed there, and says why.
    running.remove(2).shutdown().await;
    let mut picky = node_config(&n, 2);
    picky.allowed_organisations = Some([acme.organisation("globex").await.expect("globex").id].into());
    running.push(FedNode::start(picky).await.expect("initech again"));
    let (refused, _) = acme.start_task(&TaskRequest { inputs: &inputs[2..], ..request }).await.expect("task");
    assert_eq!(acme.wait(&refused.id, Duration::from_secs(30)).await.expect("ends").status, "failed");
    let runs = acme.runs(&refused.id).await.expect("runs");
    assert_eq!(runs[0].status, "not allowed", "{runs:?}");
    assert!(runs[0].reasons.iter().any(|r| r.contains("policy")), "{:?}", runs[0].reasons);

    // A node whose key is not the one the server holds for its organisation is refused at start.
    let (_, key, _) = &n.nodes[2];
    let other_dir = n.sandbox.dir().join("initech-other");
    let wrong = FedNodeConfig::new(n.sandbox.url(), key.clone(), &other_dir);
    let e = FedNode::start(wrong).await.expect_err("another key");
    assert!(e.message.contains("public key"), "{e:?}");

    for node in running {
        node.shutdown().await;
    }
    n.sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_mid_run_loses_nothing_and_runs_nothing_twice() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = enclava_testkit::free_port().expect("port");
    let builder = || {
        SandboxBuilder::new().dir(dir.path().join("fed")).configure(move |c| {
            c.listen = format!("127.0.0.1:{port}");
            c.farm_lease_ms = 3000;
        })
    };
    let n = network_on(builder()).await;
    let mut running = Vec::new();
    for i in 0..3 {
        running.push(FedNode::start(node_config(&n, i)).await.expect("node starts"));
    }
    let (_, acme) = &n.researchers[0];
    let inputs: Vec<(&str, serde_json::Value)> =
        SHARES.iter().map(|(o, _)| (*o, serde_json::json!({"method": "partial_mean"}))).collect();
    let slow = format!("sleep 1; {PARTIAL}");
    let request = TaskRequest { name: "mean", databases: &["trial"], ..sealed_task(&n, slow.as_bytes(), &inputs) };
    let (task, seed) = acme.start_task(&request).await.expect("task");
    crate::support::eventually("the runs start", Duration::from_secs(10), || async {
        acme.runs(&task.id).await.is_ok_and(|r| r.iter().any(|r| r.status == "active"))
    })
    .await;
    // The server goes away mid-run and comes back on the same address and database.
    let researchers: Vec<String> = n.researchers.iter().map(|(o, _)| o.clone()).collect();
    let token = acme.token().map(str::to_owned).expect("token");
    n.sandbox.stop().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sandbox = builder().start().await.expect("restarts");
    let acme = FedClient::new(sandbox.url(), Some(Zeroizing::new(token)));
    let done = acme.wait(&task.id, Duration::from_secs(60)).await.expect("ends");
    assert_eq!(done.status, "completed", "{:?}", acme.runs(&task.id).await);
    for r in acme.runs(&task.id).await.expect("runs") {
        assert_eq!(r.attempts, 1, "run {} ran more than once: {:?}", r.id, r.reasons);
    }
    let results = acme.results(&task.id, &seed, false, None).await.expect("results");
    let sum = summed(&results);
    assert_eq!(sum, 136, "{researchers:?}");
    for node in running {
        node.shutdown().await;
    }
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attested_collaboration_admits_only_nodes_whose_evidence_passes_and_drops_one_that_stops() {
    let sandbox = SandboxBuilder::new().configure(|c| c.farm_lease_ms = 1000).start().await.expect("starts");
    let admin = FedClient::new(sandbox.url(), Some(Zeroizing::new(sandbox.admin().await.expect("admin"))));
    for org in ["t1", "t2", "t3"] {
        admin.create_organisation(org).await.expect("organisation");
    }
    let (me, researcher) = user(&sandbox).await;
    admin.add_member("t1", &me, &["researcher"]).await.expect("member");
    let collab = admin
        .create_collaboration(&NewCollaboration {
            name: "secure".into(),
            organisations: vec!["t1".into(), "t2".into(), "t3".into()],
            encrypted: true,
            require_attestation: Some(sandbox.sim_policy(&[])),
        })
        .await
        .expect("an attested collaboration");
    let policy = enclava_attest::Policy::parse(&sandbox.sim_policy(&[])).expect("policy");
    let mut keys = Vec::new();
    for org in ["t1", "t2", "t3"] {
        let created = admin
            .create_node(&NewNode { collaboration: collab.id.clone(), organisation: Some(org.into()), name: None })
            .await
            .expect("node");
        keys.push(Zeroizing::new(created.api_key));
    }
    let config = |i: usize, dir: &str| {
        let d = sandbox.dir().join(dir);
        let mut c = FedNodeConfig::new(sandbox.url(), keys[i].clone(), &d);
        c.timeout = Duration::from_secs(20);
        c
    };
    // Without a TEE, a node does not join.
    let e = FedNode::start(config(0, "bare")).await.expect_err("no attester");
    assert!(e.message.contains("requires attestation"), "{e:?}");
    // A sim node of another deployment (another root) fails the collaboration's policy.
    let other_root = sandbox.dir().join("other-root");
    enclava_attest::sim::SimRoot::load_or_init(&other_root).expect("another deployment's root");
    let mut spec = enclava_sandbox::NodeSpec::new("fed-t3");
    spec.sim_root = Some(other_root);
    let foreign = sandbox.detached_node(spec).await.expect("node");
    let mut c3 = config(2, "t3");
    c3.attester = Some(foreign.attester());
    let e = FedNode::start(c3).await.expect_err("another deployment's evidence");
    assert!(e.message.contains("policy"), "{e:?}");
    let nodes = researcher.nodes(Some(&collab.id)).await.expect("nodes");
    let t3 = nodes.iter().find(|n| n.attestation_failure.is_some()).expect("the refused node shows why");
    assert!(t3.attestation.is_none());
    // Two sim nodes of this deployment join; a task runs on them, its inputs sealed to their TEE
    // keys (the organisation keys do not open them).
    let mut running = Vec::new();
    let mut handles = Vec::new();
    for (i, name) in [(0, "fed-t1"), (1, "fed-t2")] {
        let node = sandbox.detached_node(enclava_sandbox::NodeSpec::new(name)).await.expect("node");
        let mut c = config(i, name);
        c.attester = Some(node.attester());
        running.push(FedNode::start(c).await.expect("admitted"));
        handles.push(node);
    }
    let inputs: Vec<(&str, serde_json::Value)> =
        ["t1", "t2"].iter().map(|o| (*o, serde_json::json!({"method": "echo"}))).collect();
    let request = TaskRequest {
        collaboration: &collab.id,
        name: "attested",
        kind: "wasm",
        algorithm: enclava_wasm::examples::REVERSE.as_bytes(),
        inputs: &inputs,
        databases: &[],
        readable: false,
        policy: Some(&policy),
        parent: None,
    };
    // The server's copy of the policy is not enough: the initiator gives its own.
    let e = researcher.start_task(&TaskRequest { policy: None, ..request }).await.expect_err("no policy");
    assert!(e.message.contains("policy"), "{e:?}");
    let (task, seed) = researcher.start_task(&request).await.expect("task");
    let done = researcher.wait(&task.id, Duration::from_secs(30)).await.expect("ends");
    assert_eq!(done.status, "completed", "{:?}", researcher.runs(&task.id).await);
    let results = researcher.results(&task.id, &seed, false, Some(&policy)).await.expect("results");
    let reversed: String = r#"{"method":"echo"}"#.chars().rev().collect();
    assert!(results.iter().all(|r| r.result.as_deref() == Some(reversed.as_bytes())), "{results:?}");
    // Each result carries its node's receipt, verified under the initiator's policy.
    for r in &results {
        let receipt = r.receipt.as_ref().expect("a verified receipt");
        assert_eq!((receipt.platform.as_str(), receipt.program_sha256.as_str()), ("sim", task.algorithm.as_str()));
        assert!(receipt.fuel > 0, "{receipt:?}");
    }
    // The organisation's own key does not open what was sealed to its node's TEE.
    let db = sandbox.broker().expect("keys").store().audit().database().clone();
    use sqlx::Row;
    let row = sqlx::query("SELECT input FROM fed_runs WHERE id = $1")
        .bind(enclava_contracts::fed::run_id(&task.id, 0))
        .fetch_one(db.pool())
        .await
        .expect("row");
    let stored: enclava_contracts::fed::OrgInput =
        serde_json::from_str(&row.try_get::<String, _>(0).expect("input")).expect("json");
    let org_seed = std::fs::read_to_string(sandbox.dir().join("fed-t1/organisation.key")).expect("org key");
    let org_key = enclava_seal::KeyPair::from_seed(&hex::decode(org_seed.trim()).expect("hex").try_into().expect("32"));
    let as_org = enclava_contracts::fed::LeasedRun {
        run: enclava_contracts::fed::run_id(&task.id, 0),
        task: task.id.clone(),
        job: task.id.clone(),
        organisation: stored.organisation.clone(),
        collaboration: collab.id.clone(),
        initiator: String::new(),
        initiator_organisation: None,
        kind: "wasm".into(),
        algorithm: task.algorithm.clone(),
        databases: Vec::new(),
        encrypted: true,
        attested: false,
        sealed: stored.sealed.clone(),
        plain: None,
        result_key: enclava_seal::KeyPair::from_seed(&seed).public().to_vec(),
        lease: String::new(),
        lease_ms: 0,
    };
    assert!(
        enclava_client::fed::open_input(&org_key, &as_org).is_err(),
        "the organisation key opened a TEE-sealed input"
    );
    // A task naming the refused organisation is not sealed to anything.
    let with_t3: Vec<(&str, serde_json::Value)> = vec![("t3", serde_json::json!({}))];
    let e = researcher.start_task(&TaskRequest { inputs: &with_t3, ..request }).await.expect_err("not admitted");
    assert!(e.message.contains("not admitted"), "{e:?}");
    // A node whose evidence stops passing is dropped: garbage evidence from t2's credential.
    let t2 = FedClient::new(sandbox.url(), Some(keys[1].clone()));
    let nonce = t2.node_nonce().await.expect("nonce");
    let bad =
        enclava_contracts::fed::AttestRequest { nonce, public_key: vec![9; 32], evidence: b"not evidence".to_vec() };
    assert_eq!(t2.attest(&bad).await.expect_err("refused").code, ErrorCode::PermissionDenied);
    let e = t2.lease(1, Duration::ZERO).await.expect_err("dropped");
    assert!(e.message.contains("not admitted"), "{e:?}");
    let e = researcher.start_task(&request).await.expect_err("t2 dropped");
    assert!(e.message.contains("not admitted"), "{e:?}");
    for node in running {
        node.shutdown().await;
    }
    for h in handles {
        h.shutdown().await;
    }
    foreign.shutdown().await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_federation_runs_on_postgresql_too() {
    let db = enclava_testkit::PgDatabase::create().await.expect("postgres");
    let url = db.url.clone();
    let n = network_on(SandboxBuilder::new().configure(move |c| {
        c.database = Some(url.clone());
        c.farm_lease_ms = 1000;
    }))
    .await;
    let mut running = Vec::new();
    for i in 0..3 {
        running.push(FedNode::start(node_config(&n, i)).await.expect("node starts"));
    }
    let (_, acme) = &n.researchers[0];
    let inputs: Vec<(&str, serde_json::Value)> =
        SHARES.iter().map(|(o, _)| (*o, serde_json::json!({"method": "partial_mean"}))).collect();
    let request = TaskRequest { name: "mean", databases: &["trial"], ..sealed_task(&n, PARTIAL.as_bytes(), &inputs) };
    // Several tasks at once: every run leased once (SKIP LOCKED), every task completed.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(acme.start_task(&request).await.expect("task"));
    }
    for (task, seed) in &tasks {
        let done = acme.wait(&task.id, Duration::from_secs(60)).await.expect("ends");
        assert_eq!(done.status, "completed", "{:?}", acme.runs(&task.id).await);
        let results = acme.results(&task.id, seed, false, None).await.expect("results");
        let sum = summed(&results);
        assert_eq!(sum, 136);
        for r in acme.runs(&task.id).await.expect("runs") {
            assert_eq!(r.attempts, 1, "{r:?}");
        }
    }
    for node in running {
        node.shutdown().await;
    }
    n.sandbox.stop().await;
    db.drop_db().await;
}

/// A subtask of `parent` at organisation `org` (the same job), its input sealed to that
/// organisation's key; returns it with its result seed.
async fn subtask(
    c: &FedClient,
    parent: &enclava_contracts::fed::TaskView,
    org: &str,
    algorithm: &[u8],
) -> (enclava_contracts::fed::TaskView, [u8; 32]) {
    let hash = c.add_algorithm(algorithm.to_vec()).await.expect("algorithm");
    let o = c.organisation(org).await.expect("organisation");
    let seed = [5u8; 32];
    let result_key = enclava_seal::KeyPair::from_seed(&seed).public().to_vec();
    let id = enclava_client::farm::new_job_id();
    let run = enclava_contracts::fed::run_id(&id, 0);
    let binding = enclava_contracts::fed::RunBinding {
        task: &id,
        run: &run,
        organisation: &o.id,
        collaboration: &parent.collaboration.id,
        kind: "process",
        algorithm: &hash,
        databases: &[],
        result_key: &result_key,
    };
    let sealed = enclava_client::fed::seal_input(&o.public_key, &binding, b"{}").expect("seal");
    let t = enclava_contracts::fed::NewTask {
        id,
        collaboration: parent.collaboration.id.clone(),
        name: "subtask".into(),
        kind: "process".into(),
        algorithm: hash,
        organisations: vec![enclava_contracts::fed::OrgInput { organisation: o.id, sealed: Some(sealed), plain: None }],
        result_key,
        databases: Vec::new(),
        parent: Some(parent.id.clone()),
    };
    (c.create_task(&t).await.expect("subtask"), seed)
}

/// A node that runs vantage6 Python algorithms: the host's Python and vantage6-algorithm-tools
/// bound read-only into its busybox root filesystem, as a container image would carry them, and a
/// `cohort` database with a header row.
fn python_node(n: &Network, i: usize) -> (FedNodeConfig, enclava_sandbox::Vantage6Python) {
    let v6 = enclava_sandbox::Vantage6Python::find().expect("vantage6 tools");
    let mut c = node_config(n, i);
    let (org, _, dir) = &n.nodes[i];
    let algorithms = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/vantage6");
    c.mounts = v6.mounts(c.rootfs.as_deref().expect("rootfs"), &algorithms).expect("mounts");
    let share = SHARES.iter().find(|(o, _)| o == org).expect("share").1;
    std::fs::write(dir.join("cohort.csv"), format!("age\n{share}")).expect("data");
    c.data.insert("cohort".into(), dir.join("cohort.csv"));
    c.timeout = Duration::from_secs(120);
    (c, v6)
}

/// A Python algorithm written with vantage6-algorithm-tools from PyPI runs unchanged in the
/// sandboxed-process executor: its central function lists the collaboration's organisations and
/// makes a subtask at each through the node's local proxy (inputs sealed per organisation there),
/// waits for it, reads the results the proxy opens for it, and returns the mean. The proxy
/// answers only with the run's token, and only for the run's own subtasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vantage6_python_algorithm_runs_unchanged_with_its_subtasks_through_the_local_proxy() {
    assert!(
        enclava_process::running_as_root(),
        "the local proxy needs the node to run as root (scripts/test runs as root in CI)"
    );
    let n = network().await;
    let mut running = Vec::new();
    let mut command = String::new();
    for i in 0..3 {
        let (config, v6) = python_node(&n, i);
        command = v6.command("v6_mean");
        running.push(FedNode::start(config).await.expect("node starts"));
    }
    let (_, acme) = &n.researchers[0];
    let inputs = [("acme", serde_json::json!({"method": "central", "kwargs": {"column": "age"}}))];
    let request =
        TaskRequest { name: "vantage6 mean", databases: &["cohort"], ..sealed_task(&n, command.as_bytes(), &inputs) };
    let (task, seed) = acme.start_task(&request).await.expect("task");
    let done = acme.wait(&task.id, Duration::from_secs(240)).await.expect("ends");
    let runs = acme.runs(&task.id).await.expect("runs");
    assert_eq!(done.status, "completed", "{runs:?}");
    let results = acme.results(&task.id, &seed, false, None).await.expect("results");
    let out: serde_json::Value = serde_json::from_slice(results[0].result.as_deref().expect("result")).expect("json");
    assert_eq!(out["count"], 6, "{out}");
    assert_eq!(out["organisations"], 3, "{out}");
    assert!((out["mean"].as_f64().expect("mean") - 136.0 / 6.0).abs() < 1e-9, "{out}");
    // The subtask: made by acme's node for the algorithm, the researcher's, one run per
    // organisation, every input sealed (the collaboration is encrypted).
    let tasks = acme.tasks(&n.collab).await.expect("tasks");
    let child = tasks.iter().find(|t| t.parent.as_ref().is_some_and(|p| p.id == task.id)).expect("a subtask");
    assert_eq!(child.job, task.job);
    assert_eq!(child.algorithm, task.algorithm);
    assert_eq!(child.initiator, task.initiator);
    assert_eq!(child.status, "completed");
    assert_eq!(acme.runs(&child.id).await.expect("runs").len(), 3);
    // A node may make subtasks only of a run it holds: acme's node, the run over, is refused.
    let node = FedClient::new(n.sandbox.url(), Some(n.nodes[0].1.clone()));
    let again = TaskRequest { parent: Some(&task.id), inputs: &inputs, ..request };
    let e = node.start_task(&again).await.expect_err("no active run");
    assert_eq!(e.code, ErrorCode::FailedPrecondition, "{e}");
    for node in running {
        node.shutdown().await;
    }
}

/// The local proxy answers only calls carrying the run's token, shows only the run's own task,
/// and makes subtasks only with the run's own algorithm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_proxy_answers_only_the_runs_token_for_the_runs_own_tasks() {
    let n = network().await;
    let node = FedNode::start(node_config(&n, 0)).await.expect("node starts");
    let script = r#"P="$HOST:$PORT$API_PATH"; T=$(cat "$TOKEN_FILE"); A="Authorization: Bearer $T"
{
wget -qO- "$P/organization" >/dev/null 2>&1 && echo no-token:open || echo no-token:refused
wget -qO- --header "Authorization: Bearer x$T" "$P/organization" >/dev/null 2>&1 && echo bad-token:open || echo bad-token:refused
wget -qO- --header "$A" "$P/organization" | grep -q '"data"' && echo token:listed
wget -qO- --header "$A" "$P/task/$TASK_ID/status" | grep -q '"active"' && echo own-task:active
wget -qO- --header "$A" "$P/task/0123456789abcdef0123456789abcdef" >/dev/null 2>&1 && echo other-task:open || echo other-task:refused
wget -qO- --header "$A" --header "Content-Type: application/json" --post-data '{"image": "another", "organizations": [{"id": "acme"}]}' "$P/task" >/dev/null 2>&1 && echo other-image:open || echo other-image:refused
} > "$OUTPUT_FILE""#;
    let (_, acme) = &n.researchers[0];
    let inputs = [("acme", serde_json::json!({}))];
    let request = TaskRequest { name: "probe the proxy", ..sealed_task(&n, script.as_bytes(), &inputs) };
    let (task, seed) = completed(acme, &request).await;
    let results = acme.results(&task.id, &seed, false, None).await.expect("results");
    let out = String::from_utf8(results[0].result.clone().expect("result")).expect("utf-8");
    assert_eq!(
        out,
        "no-token:refused\nbad-token:refused\ntoken:listed\nown-task:active\nother-task:refused\nother-image:refused\n"
    );
    node.shutdown().await;
}

/// An image (vantage6's algorithm image) brings its own root filesystem: a node with none of its
/// own runs it, unpacked once by digest; an archive that would write outside its folder is
/// refused and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_brings_its_own_root_filesystem_and_cannot_write_outside_it() {
    let n = network().await;
    let mut config = node_config(&n, 0);
    let image_dir = n.nodes[0].2.join("image");
    let rootfs = enclava_process::busybox_root(&image_dir, &["sh", "awk", "cat"]).expect("busybox");
    std::fs::write(rootfs.join("motto"), "from the image").expect("motto");
    config.rootfs = None;
    let work_dir = config.work_dir.clone();
    let node = FedNode::start(config).await.expect("node starts");
    let command = r#"cat /motto > "$OUTPUT_FILE""#;
    let image = enclava_client::fed::pack_image(&rootfs, command).expect("pack");
    assert_eq!(image, enclava_client::fed::pack_image(&rootfs, command).expect("pack"), "packing is reproducible");
    let (_, acme) = &n.researchers[0];
    let inputs = [("acme", serde_json::json!({}))];
    let request =
        TaskRequest { name: "image", kind: "image", databases: &["trial"], ..sealed_task(&n, &image, &inputs) };
    let (task, seed) = completed(acme, &request).await;
    let out = acme.results(&task.id, &seed, false, None).await.expect("results");
    assert_eq!(out[0].result.as_deref(), Some(&b"from the image"[..]));
    assert!(work_dir.join("images").join(&task.algorithm).join("rootfs/motto").exists(), "unpacked once, by digest");

    // A link inside the archive, then a file written through it: refused, nothing outside.
    let outside = n.sandbox.dir().join("outside");
    std::fs::create_dir_all(&outside).expect("dir");
    let mut evil = tar::Builder::new(Vec::new());
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    evil.append_link(&mut link, "rootfs/escape", &outside).expect("link");
    let mut file = tar::Header::new_gnu();
    file.set_size(5);
    file.set_mode(0o644);
    evil.append_data(&mut file, "rootfs/escape/pwned", &b"pwned"[..]).expect("file");
    let evil = evil.into_inner().expect("archive");
    let (task, _) = acme.start_task(&TaskRequest { algorithm: &evil, ..request }).await.expect("task");
    let done = acme.wait(&task.id, Duration::from_secs(60)).await.expect("ends");
    let runs = acme.runs(&task.id).await.expect("runs");
    assert_eq!(done.status, "failed", "{runs:?}");
    assert!(runs[0].reasons.iter().any(|r| r.contains("not an archive this node unpacks")), "{runs:?}");
    assert!(!outside.join("pwned").exists(), "nothing written outside the image's folder");

    // Links the archive makes are never followed on the host: a root filesystem that is a link to
    // the host's `/`, a manifest that is a link to `/dev/zero`.
    for (name, target) in [("rootfs", "/"), (enclava_client::fed::IMAGE_MANIFEST, "/dev/zero")] {
        let mut evil = tar::Builder::new(Vec::new());
        if name != "rootfs" {
            let mut dir = tar::Header::new_gnu();
            dir.set_entry_type(tar::EntryType::Directory);
            dir.set_mode(0o755);
            dir.set_size(0);
            evil.append_data(&mut dir, "rootfs", &b""[..]).expect("dir");
        } else {
            let manifest = br#"{"cmd": "cat /etc/shadow > \"$OUTPUT_FILE\""}"#;
            let mut file = tar::Header::new_gnu();
            file.set_size(manifest.len() as u64);
            file.set_mode(0o644);
            evil.append_data(&mut file, enclava_client::fed::IMAGE_MANIFEST, &manifest[..]).expect("manifest");
        }
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        evil.append_link(&mut link, name, target).expect("link");
        let evil = evil.into_inner().expect("archive");
        let (task, _) = acme.start_task(&TaskRequest { algorithm: &evil, ..request }).await.expect("task");
        let done = acme.wait(&task.id, Duration::from_secs(60)).await.expect("ends");
        let runs = acme.runs(&task.id).await.expect("runs");
        assert_eq!(done.status, "failed", "{name}: {runs:?}");
        assert!(runs[0].reasons.iter().any(|r| r.contains("not links")), "{name}: {runs:?}");
        assert!(runs[0].result.is_empty(), "{name}");
    }
    node.shutdown().await;
}
