//! The farm's placement rules on both backends (SQLite, and a throwaway PostgreSQL cluster):
//! confidential jobs go only to hosts their submitter sealed them to, placement stays within a
//! host's offer, a registration nonce works once, an expired lease re-queues its job and only the
//! current lease's completion is kept, and two farm replicas on one database lease every job
//! exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use enclava_contracts::farm::{
    Completion, HostCapacity, HostRegistration, JobSpec, Receipt, SealedBlob, Security, SignedReceipt,
};
use enclava_core::ErrorCode;
use enclava_farm::{Farm, FarmConfig, Host, Reader};
use enclava_identity::{Identity, Registration};
use enclava_store::audit::{AuditLog, AuditOptions};
use enclava_store::kek::LocalKek;
use enclava_store::{Database, DbOptions};
use enclava_testkit::PgDatabase;

async fn open(url: &str, lease: Duration) -> Farm {
    open_with(url, FarmConfig { lease, ..Default::default() }).await
}

async fn open_with(url: &str, config: FarmConfig) -> Farm {
    let db = Database::open(url, DbOptions::default()).await.expect("db");
    let options = AuditOptions::default();
    let check = AuditLog::check(&db, &options).await.expect("check");
    let audit = AuditLog::open(db, Arc::new(LocalKek::from_bytes(&[3; 32], "t")), &options, check).await.expect("log");
    let identity = Arc::new(Identity::open(audit.clone(), Registration::Open, None).await.expect("identity"));
    Farm::open(audit, identity, config).await.expect("farm")
}

fn capacity(cores: f64, kinds: &[&str]) -> String {
    serde_json::to_string(&HostCapacity {
        offer_cores: cores,
        offer_memory_bytes: 1 << 30,
        cores,
        cores_how: "test".into(),
        memory_bytes: 1 << 30,
        memory_how: "test".into(),
        disk_bytes: 1 << 30,
        gpus: Vec::new(),
        gpus_how: "none".into(),
        bandwidth_bytes_per_s: 0,
        bandwidth_how: String::new(),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        rootfs: Vec::new(),
    })
    .expect("json")
}

async fn host(farm: &Farm, id: &str, platform: &str, cores: f64) -> Host {
    let nonce = farm.nonce(None).await.expect("nonce");
    let reg = HostRegistration {
        id: id.into(),
        platform: platform.into(),
        measurement: String::new(),
        pubkey: vec![7; 32],
        capacity: capacity(cores, &["wasm"]),
        nonce: nonce.clone(),
        evidence: if platform == "plaintext" { Vec::new() } else { vec![1, 2, 3] },
    };
    let token = farm.register(&reg, None).await.expect("register");
    // The nonce is spent.
    let again = farm.register(&reg, Some(&token)).await.expect_err("nonce reused");
    assert_eq!(again.code, ErrorCode::Stale);
    farm.host(&token).await.expect("token")
}

fn spec(id: u32, security: Security, hosts: &[&str], cpu: f64) -> JobSpec {
    let wraps: BTreeMap<String, SealedBlob> =
        hosts.iter().map(|h| (h.to_string(), SealedBlob { enc: vec![0; 32], ciphertext: vec![0; 48] })).collect();
    JobSpec {
        id: format!("{id:032x}"),
        kind: "wasm".into(),
        security,
        program: enclava_contracts::farm::sha256_hex(b"program"),
        rootfs: None,
        args: Vec::new(),
        args_file: None,
        stdin: None,
        inputs: Vec::new(),
        cpu,
        memory_bytes: 1 << 20,
        timeout_ms: 1000,
        key_wraps: wraps,
        result_key: if security == Security::Confidential { vec![9; 32] } else { Vec::new() },
    }
}

fn completion(job: &str, host: &str, lease: &str) -> Completion {
    let receipt = Receipt {
        version: 1,
        job: job.into(),
        host: host.into(),
        platform: "plaintext".into(),
        executor: "wasm".into(),
        isolation: "test".into(),
        program_sha256: String::new(),
        input_sha256: String::new(),
        output_sha256: enclava_contracts::farm::sha256_hex(b"out"),
        bytes_in: 0,
        bytes_out: 3,
        fuel: 1,
        wall_ms: 1,
        peak_memory_bytes: 0,
        outcome: "exited with status 0".into(),
        issued_at: 0,
    };
    Completion {
        lease: lease.into(),
        success: true,
        result: b"out".to_vec(),
        receipt: SignedReceipt { receipt: serde_json::to_string(&receipt).expect("json"), evidence: Vec::new() },
    }
}

async fn suite(url: &str) {
    let farm = open(url, Duration::from_millis(300)).await;
    let (user, _) = farm.identity().register(None).await.expect("user");
    let caller = farm.identity().user(&user).await.expect("principal");
    farm.add_file(&user, b"program", false).await.expect("file");
    let tee = host(&farm, "tee-host", "sim", 1.0).await;
    let plain = host(&farm, "plain-host", "plaintext", 1.0).await;

    // A confidential job sealed to tee-host never goes to plain-host.
    let conf = farm.submit(&user, &spec(1, Security::Confidential, &["tee-host"], 0.6)).await.expect("submit");
    assert!(farm.lease(&plain, 8, &BTreeSet::new()).await.expect("lease").is_empty());
    let leased = farm.lease(&tee, 8, &BTreeSet::new()).await.expect("lease");
    assert_eq!(leased.iter().map(|l| l.job.id.as_str()).collect::<Vec<_>>(), vec![conf.id.as_str()]);
    // Within the offer: 0.6 of 1 core is held, a second 0.6 job does not fit on tee-host.
    let second = farm.submit(&user, &spec(2, Security::Plaintext, &[], 0.6)).await.expect("submit");
    assert!(farm.lease(&tee, 8, &BTreeSet::new()).await.expect("lease").is_empty(), "over tee-host's offer");
    let on_plain = farm.lease(&plain, 8, &BTreeSet::new()).await.expect("lease");
    assert_eq!(on_plain.len(), 1);
    assert_eq!(on_plain[0].job.id, second.id);
    // The same spec submitted again is the same job; another spec under its id is refused.
    assert_eq!(farm.submit(&user, &spec(2, Security::Plaintext, &[], 0.6)).await.expect("same").id, second.id);
    let clash = farm.submit(&user, &spec(2, Security::Plaintext, &[], 0.5)).await.expect_err("clash");
    assert_eq!(clash.code, ErrorCode::AlreadyExists);
    // A job naming a file the farm does not have is refused.
    let mut missing = spec(3, Security::Plaintext, &[], 0.1);
    missing.program = enclava_contracts::farm::sha256_hex(b"never added");
    assert_eq!(farm.submit(&user, &missing).await.expect_err("missing").code, ErrorCode::InvalidArgument);

    // tee-host keeps renewing; plain-host goes silent, so its lease expires and the job is
    // queued again, and its late completion is not kept.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        farm.renew(&tee, &conf.id, &leased[0].lease).await.expect("renew");
        farm.sweep().await.expect("sweep");
    }
    let view = farm.job(&caller, &second.id).await.expect("job");
    assert_eq!(view.state, "queued", "{view:?}");
    assert!(view.reasons.iter().any(|r| r.contains("stopped renewing")), "{view:?}");
    let late = farm.complete(&plain, &second.id, &completion(&second.id, "plain-host", &on_plain[0].lease)).await;
    assert_eq!(late.expect_err("stale lease").code, ErrorCode::FailedPrecondition);
    let again = farm.lease(&plain, 8, &BTreeSet::new()).await.expect("lease");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
    let done = completion(&second.id, "plain-host", &again[0].lease);
    farm.complete(&plain, &second.id, &done).await.expect("complete");
    farm.complete(&plain, &second.id, &done).await.expect("the same completion again is acknowledged");
    assert_eq!(
        farm.renew(&plain, &second.id, &again[0].lease).await.expect_err("done").code,
        ErrorCode::FailedPrecondition
    );
    let out = farm.output(&caller, &second.id).await.expect("output");
    assert_eq!(out.result, b"out");
    // A receipt for another job is refused.
    let wrong = completion("ffffffffffffffffffffffffffffffff", "tee-host", &leased[0].lease);
    assert_eq!(farm.complete(&tee, &conf.id, &wrong).await.expect_err("wrong").code, ErrorCode::InvalidArgument);
    // Cancel reaches the host at its next renewal.
    farm.cancel(&caller, &conf.id).await.expect("cancel");
    assert_eq!(
        farm.renew(&tee, &conf.id, &leased[0].lease).await.expect_err("cancelled").code,
        ErrorCode::FailedPrecondition
    );
    // Another user sees nothing.
    let (other, _) = farm.identity().register(None).await.expect("user");
    let other = farm.identity().user(&other).await.expect("principal");
    assert_eq!(farm.job(&other, &conf.id).await.expect_err("not theirs").code, ErrorCode::NotFound);
    assert!(farm.jobs(&other, 100).await.expect("list").is_empty());
    // Job files: only who stored one reads it back or names it in a job; a host only while it
    // holds a job naming it.
    let secret = farm.add_file(&user, b"user one's data", false).await.expect("file");
    let program = enclava_contracts::farm::sha256_hex(b"program");
    assert_eq!(farm.file(&Reader::User(caller.clone()), &secret).await.expect("own"), b"user one's data");
    assert_eq!(farm.file(&Reader::User(other.clone()), &secret).await.expect_err("theirs").code, ErrorCode::NotFound);
    assert_eq!(farm.file(&Reader::Host(plain.clone()), &secret).await.expect_err("no job").code, ErrorCode::NotFound);
    let mut steal = spec(4, Security::Plaintext, &[], 0.1);
    steal.stdin = Some(secret.clone());
    let (thief, _) = farm.identity().register(None).await.expect("user");
    farm.add_file(&thief, b"program", false).await.expect("file");
    let refused = farm.submit(&thief, &steal).await.expect_err("not theirs");
    assert!(refused.message.contains("not stored"), "{refused:?}");
    let reads = farm.submit(&user, &steal).await.expect("submit");
    let got = farm.lease(&plain, 8, &BTreeSet::new()).await.expect("lease");
    assert_eq!(got.iter().map(|l| l.job.id.as_str()).collect::<Vec<_>>(), vec![reads.id.as_str()]);
    assert_eq!(farm.file(&Reader::Host(plain.clone()), &secret).await.expect("leased"), b"user one's data");
    assert_eq!(
        farm.file(&Reader::Host(tee.clone()), &program).await.expect_err("not its job").code,
        ErrorCode::NotFound
    );
    farm.complete(&plain, &reads.id, &completion(&reads.id, "plain-host", &got[0].lease)).await.expect("done");
    assert_eq!(farm.file(&Reader::Host(plain.clone()), &secret).await.expect_err("done").code, ErrorCode::NotFound);

    // Among the jobs a host may take, those whose files it has cached go first; a batch is
    // answered job by job, in order.
    let warm_program = farm.add_file(&user, b"program two", false).await.expect("file");
    let cold = spec(5, Security::Plaintext, &[], 0.1);
    let mut warm = spec(6, Security::Plaintext, &[], 0.1);
    warm.program = warm_program.clone();
    let mut invalid = spec(7, Security::Plaintext, &[], 0.1);
    invalid.cpu = 0.0;
    let answers = farm.submit_many(&user, &[cold.clone(), invalid, warm.clone()]).await.expect("batch");
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0].as_ref().expect("cold").id, cold.id);
    assert_eq!(answers[1].as_ref().expect_err("invalid").code, ErrorCode::InvalidArgument);
    assert_eq!(answers[2].as_ref().expect("warm").id, warm.id);
    let has: BTreeSet<&str> = [warm_program.as_str()].into();
    let first = farm.lease(&plain, 1, &has).await.expect("lease");
    assert_eq!(first[0].job.id, warm.id, "the job whose program the host has goes first");
    let next = farm.lease(&plain, 1, &has).await.expect("lease");
    assert_eq!(next[0].job.id, cold.id, "then the oldest");

    // A host id is not taken over while its holder was seen recently; its holder re-binds.
    let nonce = farm.nonce(None).await.expect("nonce");
    let takeover = HostRegistration {
        id: "tee-host".into(),
        platform: "plaintext".into(),
        measurement: String::new(),
        pubkey: vec![8; 32],
        capacity: capacity(1.0, &["wasm"]),
        nonce,
        evidence: Vec::new(),
    };
    let e = farm.register(&takeover, None).await.expect_err("taken");
    // Nonces are limited per source address.
    let limited = open_with(url, FarmConfig { nonces_per_minute: 2, ..Default::default() }).await;
    let addr = Some(std::net::IpAddr::from([192, 0, 2, 1]));
    limited.nonce(addr).await.expect("first");
    limited.nonce(addr).await.expect("second");
    let e3 = limited.nonce(addr).await.expect_err("third");
    assert_eq!(e3.code, ErrorCode::RateLimited);
    assert!(e3.retry_after.is_some());
    limited.nonce(Some(std::net::IpAddr::from([192, 0, 2, 2]))).await.expect("another source");
    assert_eq!(e.code, ErrorCode::AlreadyExists);
    assert!(e.message.contains("token"), "{e:?}");

    let hosts = farm.hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 2);
    assert!(hosts.iter().any(|h| h.id == "plain-host" && h.status.starts_with("Not confidential")));

    // Two replicas on one database, eight hosts leasing at once: every job leased exactly once.
    let replica = Arc::new(open(url, Duration::from_secs(30)).await);
    let first = Arc::new(farm);
    let mut hosts = Vec::new();
    for i in 0..8 {
        let f = if i % 2 == 0 { &first } else { &replica };
        hosts.push((f.clone(), host(f, &format!("h{i}"), "plaintext", 64.0).await));
    }
    const JOBS: u32 = 120;
    for i in 0..JOBS {
        first.submit(&user, &spec(100 + i, Security::Plaintext, &[], 0.1)).await.expect("submit");
    }
    let mut tasks = Vec::new();
    for (f, h) in hosts {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..40 {
                got.extend(f.lease(&h, 4, &BTreeSet::new()).await.expect("lease").into_iter().map(|l| l.job.id));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("joined"));
    }
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "a job was leased twice");
    assert_eq!(all.len(), JOBS as usize, "every job was leased");

    // Collection: a file a running job names stays, and so does a pinned one; an unused,
    // unpinned one goes (here the retention is zero).
    let collector = open_with(url, FarmConfig { file_retention: Duration::ZERO, ..Default::default() }).await;
    let pinned = collector.add_file(&user, b"keep me", true).await.expect("pinned");
    let loose = collector.add_file(&user, b"drop me", false).await.expect("loose");
    tokio::time::sleep(Duration::from_millis(5)).await;
    collector.collect_files().await.expect("collect");
    let reader = Reader::User(caller.clone());
    assert_eq!(collector.file(&reader, &loose).await.expect_err("collected").code, ErrorCode::NotFound);
    collector.file(&reader, &pinned).await.expect("pinned stays");
    collector.file(&reader, &enclava_contracts::farm::sha256_hex(b"program")).await.expect("a running job names it");
    collector.unpin_file(&user, &pinned).await.expect("unpin");
    tokio::time::sleep(Duration::from_millis(5)).await;
    collector.collect_files().await.expect("collect");
    assert_eq!(collector.file(&reader, &pinned).await.expect_err("collected").code, ErrorCode::NotFound);
    // Stored again, it is back.
    assert_eq!(collector.add_file(&user, b"drop me", false).await.expect("again"), loose);
    collector.file(&reader, &loose).await.expect("stored again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    suite(&format!("sqlite://{}/farm.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_postgres() {
    let db = PgDatabase::create().await.expect("postgres");
    suite(&db.url).await;
    db.drop_db().await;
}
