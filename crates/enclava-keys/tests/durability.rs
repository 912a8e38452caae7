//! Nothing acknowledged is lost and nothing is silently replaced: a missing or wrong key-encryption
//! key stops the broker instead of making a new one; a stored key that does not open is an operator
//! error, not a refusal; a rolled-back database (lost WAL, old copy) refuses to start until the
//! operator accepts it, which is audited; a full disk (SQLite's `max_page_count`, PostgreSQL's
//! `disk_full`) fails writes with 503 and never acknowledges one that did not commit; invites,
//! closed registration and audited ownership refusals; private files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use enclava_keys::{Broker, BrokerConfig, ErrorCode, KekSource, KeysError, KeysMetrics, Registration};
use enclava_testkit::PgDatabase;
use sqlx::Row;

mod common;
use common::*;

fn sqlite(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("keys.db").display())
}

fn kek_file(dir: &Path) -> KekSource {
    KekSource::File(dir.join("kek.key"))
}

async fn open_with(config: BrokerConfig, kek: KekSource) -> Result<Broker, KeysError> {
    Broker::open(config, kek, Arc::new(KeysMetrics::new())).await
}

async fn raw(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.expect("raw db")
}

fn err(r: Result<impl std::fmt::Debug, KeysError>) -> KeysError {
    r.expect_err("must fail")
}

/// A model `acme/m` owned by a new user, granted to M1 for that user, with a sim policy.
async fn seed(b: &Broker, sim: &Sim) -> String {
    let (alice, _) = b.register(None).await.expect("register");
    b.put_model_key(&alice, "acme/m", &MODEL_KEY, Some(&sim.policy()), false).await.expect("key");
    b.grant(&alice, "acme/m", &hexm(&M1), &alice).await.expect("grant");
    alice
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_kek_refuses_to_start_and_is_never_replaced() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let sim = Sim::new();
    let b = open_with(BrokerConfig::new(sqlite(d), d), kek_file(d)).await.expect("first start makes a KEK");
    let alice = seed(&b, &sim).await;
    b.shutdown().await;
    drop(b);
    let original = std::fs::read(d.join("kek.key")).expect("kek");

    // Missing: refused, with what to do, and no new key made.
    std::fs::remove_file(d.join("kek.key")).expect("rm");
    let e = err(open_with(BrokerConfig::new(sqlite(d), d), kek_file(d)).await);
    assert_eq!(e.code, ErrorCode::FailedPrecondition);
    assert!(e.message.contains("missing") && e.message.contains("Restore"), "{e}");
    assert!(!d.join("kek.key").exists(), "no new KEK for a database with keys");

    // Wrong: refused, nothing written.
    std::fs::write(d.join("kek.key"), [0x42; 32]).expect("write");
    let e = err(open_with(BrokerConfig::new(sqlite(d), d), kek_file(d)).await);
    assert_eq!(e.code, ErrorCode::FailedPrecondition);
    assert!(e.message.contains("does not open"), "{e}");
    let e = err(open_with(
        BrokerConfig::new(sqlite(d), d),
        KekSource::Key(Arc::new(enclava_keys::LocalKek::from_bytes(&[7; 32], "other"))),
    )
    .await);
    assert!(e.message.contains("does not open"), "{e}");

    // Restored: everything works, and the audit log is whole.
    std::fs::write(d.join("kek.key"), &original).expect("restore");
    let b = open_with(BrokerConfig::new(sqlite(d), d), kek_file(d)).await.expect("restored key opens");
    let (req, kp) = request(&b, &sim, M1, "acme/m", &[]);
    let r = b.release(req.clone()).await.expect("released");
    assert_eq!(open_release(&r, &kp, &req.nonce).model_key.as_bytes(), &MODEL_KEY);
    assert!(b.verify_audit().await.expect("verify").ok);
    assert!(b.audit(&alice, 100).await.expect("audit").iter().any(|r| r.action == "release"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_key_that_does_not_open_is_an_operator_error_not_a_refusal() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let sim = Sim::new();
    let b = open(&sqlite(d), d, Duration::from_secs(60)).await;
    seed(&b, &sim).await;
    // Someone edits the wrapped key in the database (or restores rows from another broker).
    let pool = raw(&sqlite(d)).await;
    sqlx::query("UPDATE model_keys SET wrapped = $1").bind(hex::encode([1u8; 60])).execute(&pool).await.expect("edit");
    sqlx::query("UPDATE models SET generation = generation + 1").execute(&pool).await.expect("bump");
    let (req, _) = request(&b, &sim, M1, "acme/m", &[]);
    let e = err(b.release(req).await);
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(e.message.contains("operator"), "{e}");
    assert!(!e.message.contains("grant"), "never 'not granted': {e}");
}

/// Opens a broker on `d` with `accept_rollback`.
async fn reopen(d: &Path, accept_rollback: bool) -> Result<Broker, KeysError> {
    let mut config = BrokerConfig::new(sqlite(d), d);
    config.accept_rollback = accept_rollback;
    open_with(config, kek_file(d)).await
}

fn file_hash(p: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(p).unwrap_or_default()).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_database_refuses_to_start_until_the_operator_accepts() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let b = reopen(d, false).await.expect("open");
    for _ in 0..3 {
        b.register(None).await.expect("register");
    }
    // The database file alone, while its newest commits are still only in the WAL …
    let old = d.join("old.db");
    std::fs::copy(d.join("keys.db"), &old).expect("copy");
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..3 {
        b.register(None).await.expect("register");
    }
    b.shutdown().await;
    drop(b);
    // … comes back without its WAL, as after a crash and a lost `keys.db-wal`.
    std::fs::rename(&old, d.join("keys.db")).expect("roll back");
    for f in ["keys.db-wal", "keys.db-shm"] {
        let _ = std::fs::remove_file(d.join(f));
    }
    let (anchor_before, db_before) = (file_hash(&d.join("audit.anchor")), file_hash(&d.join("keys.db")));
    let e = err(reopen(d, false).await);
    assert_eq!(e.code, ErrorCode::FailedPrecondition);
    assert!(e.message.contains("rolled back") && e.message.contains("--accept-rollback"), "{e}");
    assert_eq!(file_hash(&d.join("audit.anchor")), anchor_before, "the anchor is not moved");
    assert_eq!(file_hash(&d.join("keys.db")), db_before, "nothing is written before the check");
    // A refused start stays refused.
    assert!(reopen(d, false).await.is_err());

    // The operator accepts: it starts, the choice is in the log, and the chain verifies.
    let b = reopen(d, true).await.expect("accepted");
    let (admin_view, _) = b.register(None).await.expect("writes work again");
    let pool = raw(&sqlite(d)).await;
    let accepted: i64 =
        sqlx::query("SELECT COUNT(*) FROM audit WHERE action = 'accept-rollback' AND actor = 'operator'")
            .fetch_one(&pool)
            .await
            .expect("count")
            .try_get(0)
            .expect("n");
    assert_eq!(accepted, 1, "the rollback is audited");
    let check = b.verify_audit().await.expect("verify");
    assert!(check.ok, "{check:?}");
    assert!(!admin_view.is_empty());
    b.shutdown().await;
    drop(b);
    // And the next start is clean.
    reopen(d, false).await.expect("clean start after acceptance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_files_are_private_and_the_wal_is_checkpointed_on_shutdown() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let b = reopen(d, false).await.expect("open");
    b.register(None).await.expect("register");
    for f in ["keys.db", "keys.db-wal", "audit.anchor", "kek.key"] {
        let mode = std::fs::metadata(d.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f} is {:o}", mode & 0o777);
    }
    b.shutdown().await;
    drop(b);
    let wal = std::fs::metadata(d.join("keys.db-wal")).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal, 0, "a clean shutdown leaves everything in keys.db");
}

/// Registers until the store refuses; every refusal is a 503 that says the disk is full.
async fn fill(b: &Broker) -> (Vec<(String, String)>, usize) {
    let mut acked = Vec::new();
    let mut refused = 0;
    for _ in 0..400 {
        match b.register(None).await {
            Ok(u) => acked.push(u),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
                assert!(e.message.contains("disk"), "{e}");
                refused += 1;
            }
        }
    }
    (acked, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_acknowledges_a_lost_write_on_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let sim = Sim::new();
    let b = reopen(d, false).await.expect("open");
    let alice = seed(&b, &sim).await;
    let (bob, _) = b.register(None).await.expect("bob");
    b.grant(&alice, "acme/m", &hexm(&M1), &bob).await.expect("grant bob");
    b.shutdown().await;
    drop(b);
    let pages: i64 =
        sqlx::query("PRAGMA page_count").fetch_one(&raw(&sqlite(d)).await).await.expect("pages").try_get(0).expect("n");

    // A disk with room for a few more pages.
    let mut config = BrokerConfig::new(sqlite(d), d);
    config.sqlite_pragmas = vec![format!("max_page_count = {}", pages + 6)];
    let b = open_with(config, kek_file(d)).await.expect("open on a nearly full disk");
    let (acked, refused) = fill(&b).await;
    assert!(refused > 0 && !acked.is_empty(), "{} acknowledged, {refused} refused", acked.len());
    let revoked = b.revoke(&alice, "acme/m", None, Some(&bob)).await;
    if let Err(e) = &revoked {
        assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    }
    // Every reader sees one consistent log, call after call.
    let first = b.verify_audit().await.expect("verify");
    assert!(first.ok, "{first:?}");
    for _ in 0..8 {
        let again = b.verify_audit().await.expect("verify");
        assert!(again.ok && again.records == first.records, "{again:?} after {first:?}");
    }
    b.shutdown().await;
    drop(b);

    // After a restart with room again: exactly what was acknowledged is there.
    let b = reopen(d, false).await.expect("reopen");
    for (id, token) in &acked {
        assert_eq!(&b.authenticate(token).await.expect("an acknowledged user survives"), id);
    }
    let users: i64 = sqlx::query("SELECT COUNT(*) FROM users")
        .fetch_one(&raw(&sqlite(d)).await)
        .await
        .expect("n")
        .try_get(0)
        .expect("n");
    assert_eq!(users as usize, acked.len() + 2, "no unacknowledged user was kept");
    let grants = b.list(&alice, Some("acme/m")).await.expect("list").models[0].grants.clone();
    let bobs = grants.iter().find(|g| g.user == bob).expect("bob's grant");
    assert_eq!(bobs.revoked_at_ms.is_some(), revoked.is_ok(), "the revocation stands exactly when it was acknowledged");
    assert!(b.verify_audit().await.expect("verify").ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_acknowledges_a_lost_write_on_postgres() {
    let db = PgDatabase::create().await.expect("postgres");
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let sim = Sim::new();
    let b = open(&db.url, d, Duration::from_secs(60)).await;
    let alice = seed(&b, &sim).await;
    let before = b.verify_audit().await.expect("verify");
    // PostgreSQL itself raises disk_full (SQLSTATE 53100) on every audited write.
    let pool = raw(&db.url).await;
    for sql in [
        "CREATE FUNCTION enclava_full() RETURNS trigger AS $$ BEGIN \
         RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER enclava_full BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION enclava_full()",
    ] {
        sqlx::query(sql).execute(&pool).await.expect("trigger");
    }
    let (acked, refused) = fill(&b).await;
    assert!(acked.is_empty() && refused > 0);
    let e = err(b.revoke(&alice, "acme/m", None, None).await);
    assert_eq!(e.code, ErrorCode::Unavailable);
    let (req, _) = request(&b, &sim, M1, "acme/m", &[]);
    assert_eq!(err(b.release(req).await).code, ErrorCode::Unavailable, "a release that cannot be audited is not made");
    sqlx::query("DROP TRIGGER enclava_full ON audit").execute(&pool).await.expect("space again");
    let after = b.verify_audit().await.expect("verify");
    assert!(after.ok && after.records == before.records, "nothing half-written: {after:?}");
    let grants = b.list(&alice, Some("acme/m")).await.expect("list").models[0].grants.clone();
    assert!(grants.iter().all(|g| g.revoked_at_ms.is_none()), "the refused revocation did not happen");
    b.register(None).await.expect("writes work again");
    pool.close().await;
    b.store().close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_by_invite_or_closed_and_refused_ownership_is_audited() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let mut config = BrokerConfig::new(sqlite(d), d);
    config.registration = Registration::Invite;
    let b = open_with(config, kek_file(d)).await.expect("open");
    // No administrator yet: a one-time administrator invite only the operator can read.
    let path: PathBuf = d.join("admin-invite");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).expect("admin invite").permissions().mode() & 0o777, 0o600);
    }
    let admin_invite = std::fs::read_to_string(&path).expect("read");
    assert_eq!(err(b.register(None).await).code, ErrorCode::PermissionDenied, "no invite, no account");
    let (admin, _) = b.register(Some(admin_invite.trim())).await.expect("the operator registers");
    assert_eq!(err(b.register(Some(admin_invite.trim())).await).code, ErrorCode::PermissionDenied, "used once");
    let (invite, _) = b.invite(&admin, false).await.expect("an administrator invites");
    let (carol, _) = b.register(Some(&invite)).await.expect("invited");
    assert_eq!(err(b.register(Some(&invite)).await).code, ErrorCode::PermissionDenied, "one time only");
    assert_eq!(err(b.invite(&carol, false).await).code, ErrorCode::PermissionDenied, "users do not invite");
    assert_eq!(err(b.register(Some("eki_made_up")).await).code, ErrorCode::PermissionDenied);

    // Another user's attempts on a model they do not own are refused and audited for its owner.
    let sim = Sim::new();
    b.put_model_key(&admin, "acme/m", &MODEL_KEY, Some(&sim.policy()), false).await.expect("key");
    assert_eq!(err(b.grant(&carol, "acme/m", &hexm(&M1), &carol).await).code, ErrorCode::PermissionDenied);
    assert_eq!(err(b.revoke(&carol, "acme/m", None, None).await).code, ErrorCode::PermissionDenied);
    assert_eq!(err(b.put_model_key(&carol, "acme/m", &[1; 32], None, true).await).code, ErrorCode::PermissionDenied);
    assert_eq!(err(b.put_model_key(&carol, "acme/m", &[1; 32], None, false).await).code, ErrorCode::PermissionDenied);
    let seen = b.audit(&admin, 100).await.expect("audit");
    for action in ["grant refused", "revoke refused", "rotate refused", "model-key refused"] {
        assert!(
            seen.iter().any(|r| r.action == "deny" && r.actor == carol && r.detail.starts_with(action)),
            "{action}: {seen:?}"
        );
    }
    assert!(b.verify_audit().await.expect("verify").ok);
    b.shutdown().await;
    drop(b);

    let mut config = BrokerConfig::new(sqlite(d), d);
    config.registration = Registration::Closed;
    let b = open_with(config, kek_file(d)).await.expect("open closed");
    let e = err(b.register(None).await);
    assert!(e.code == ErrorCode::PermissionDenied && e.message.contains("closed"), "{e}");
}

/// A database an earlier release made (the key broker kept users, invites and the audit log in
/// its own migrations, versioned in `schema_version`) opens unchanged: nothing re-created, its
/// users and chain intact, the identity and audit components recorded at their versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_the_components_split_opens_unchanged() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let sim = Sim::new();
    let b = open_with(BrokerConfig::new(sqlite(d), d), kek_file(d)).await.expect("open");
    let alice = seed(&b, &sim).await;
    b.shutdown().await;
    drop(b);
    // Make it look like the earlier release left it: one version table, no per-component rows.
    let pool = raw(&sqlite(d)).await;
    for s in [
        "DROP TABLE schema_versions",
        "CREATE TABLE schema_version (version BIGINT NOT NULL)",
        "INSERT INTO schema_version (version) VALUES (1), (2)",
        "DROP TABLE organisations",
        "DROP TABLE services",
        "DROP TABLE role_assignments",
        "ALTER TABLE users DROP COLUMN organisation",
    ] {
        sqlx::query(s).execute(&pool).await.expect(s);
    }
    pool.close().await;
    let b = open_with(BrokerConfig::new(sqlite(d), d), kek_file(d)).await.expect("reopens");
    assert_eq!(b.list(&alice, None).await.expect("list").models.len(), 1, "the model is still there");
    assert!(b.verify_audit().await.expect("verify").ok, "the chain is intact");
    let versions: Vec<(String, i64)> = sqlx::query("SELECT component, version FROM schema_versions ORDER BY component")
        .fetch_all(&raw(&sqlite(d)).await)
        .await
        .expect("versions")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(versions, [("audit".into(), 1), ("identity".into(), 2), ("keys".into(), 2)]);
    b.shutdown().await;
}
