//! The hash-chained audit log: append-only records, each carrying a MAC (keyed by the KEK) over the
//! record and the MAC before it, a head row that every write locks (so the chain stays linear even
//! with several servers on one PostgreSQL), and an anchor file beside the server that records the
//! head durably, so a database rolled back as a whole (rows and head together) is still caught.
//!
//! A component writes through [`AuditLog::begin`]: its statements run in the returned transaction
//! and [`AuditTx::commit`] appends its records in the same COMMIT, so a change and its proof land
//! together or not at all.
//!
//! At start, before any write, [`AuditLog::check`] compares the database with the anchor: a
//! database older than the anchor (a lost WAL, a restored backup) stops the server unless the
//! operator accepts the rollback, a choice [`AuditLog::open`] records in the log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use enclava_core::{Error, ErrorCode};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::kek::{KeyWrapper, sync_dir};
use crate::{Database, Migrations, Write, is_missing_table, now_ms};

/// The audit log's tables.
pub const MIGRATIONS: Migrations = &[&[
    "CREATE TABLE IF NOT EXISTS audit (seq BIGINT PRIMARY KEY, at_ms BIGINT NOT NULL, actor TEXT NOT NULL, \
     action TEXT NOT NULL, model TEXT NOT NULL, measurement TEXT NOT NULL, subject TEXT NOT NULL, \
     detail TEXT NOT NULL, mac TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_head (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL, mac TEXT NOT NULL)",
    "INSERT INTO audit_head (id, seq, mac) VALUES (1, 0, '') ON CONFLICT (id) DO NOTHING",
]];

/// The columns [`read_row`] reads, in its order (`resource` is stored as `model`).
pub const COLUMNS: &str = "seq, at_ms, actor, action, model, measurement, subject, detail";

/// One audit event before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// Who acted: a user id, a service identity, `operator`, or `enclave:<platform>:<measurement>`.
    pub actor: String,
    /// What they did (`register`, `grant`, `release`, `deny`, …).
    pub action: String,
    /// What it was done to (a model id; empty when none).
    pub resource: String,
    /// The enclave measurement involved (empty when none).
    pub measurement: String,
    /// The user or identity it was for.
    pub subject: String,
    /// A reason, a version, a count.
    pub detail: String,
}

impl AuditEntry {
    /// An entry at `at_ms`.
    pub fn new(
        at_ms: i64,
        actor: &str,
        action: &str,
        resource: &str,
        measurement: &str,
        subject: &str,
        detail: &str,
    ) -> AuditEntry {
        AuditEntry {
            at_ms,
            actor: actor.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            measurement: measurement.to_owned(),
            subject: subject.to_owned(),
            detail: detail.to_owned(),
        }
    }
}

/// How the log is kept.
#[derive(Debug, Clone, Default)]
pub struct AuditOptions {
    /// The anchor file (in the server's data folder); `None`: no anchor (no rollback check).
    pub anchor: Option<PathBuf>,
    /// Start on a database older than the anchor; the choice is recorded in the log.
    pub accept_rollback: bool,
}

/// What [`AuditLog::check`] found, for [`AuditLog::open`].
#[derive(Debug, Clone)]
pub struct AnchorCheck {
    anchor: Option<Head>,
    db_head: Head,
    rolled_back: Option<String>,
}

/// The result of walking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub records: i64,
    /// The first problem found.
    pub problem: Option<String>,
}

#[derive(Debug, Clone)]
struct Head {
    seq: i64,
    mac: String,
}

/// The audit log of one database.
#[derive(Debug, Clone)]
pub struct AuditLog {
    db: Database,
    mac: Arc<dyn KeyWrapper>,
    anchor: Option<PathBuf>,
    anchor_seq: Arc<AtomicI64>,
    anchor_lock: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// A write transaction that commits with audit records. Its statements run on it as on a
/// connection (`&mut *tx`).
#[derive(Debug)]
pub struct AuditTx<'a> {
    log: &'a AuditLog,
    write: Write,
    head: Head,
}

impl std::ops::Deref for AuditTx<'_> {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.write
    }
}

impl std::ops::DerefMut for AuditTx<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.write
    }
}

impl AuditTx<'_> {
    /// Appends `entries` to the chain and commits. Acknowledged only once COMMIT returned; the
    /// anchor follows after.
    pub async fn commit(mut self, entries: &[AuditEntry]) -> Result<(), Error> {
        let mut head = self.head.clone();
        for e in entries {
            let seq = head.seq + 1;
            let mac = hex::encode(self.log.mac.audit_mac(&chain_bytes(&head.mac, seq, e)));
            sqlx::query(
                "INSERT INTO audit (seq, at_ms, actor, action, model, measurement, subject, detail, mac) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(seq)
            .bind(e.at_ms)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.resource)
            .bind(&e.measurement)
            .bind(&e.subject)
            .bind(&e.detail)
            .bind(&mac)
            .execute(&mut *self.write)
            .await?;
            head = Head { seq, mac };
        }
        sqlx::query("UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1")
            .bind(head.seq)
            .bind(&head.mac)
            .execute(&mut *self.write)
            .await?;
        self.write.commit().await?;
        self.log.write_anchor(&head, false);
        Ok(())
    }
}

impl AuditLog {
    /// Compares the database with the anchor, before migrations and before any write. Refuses a
    /// rolled-back database unless `options.accept_rollback`.
    pub async fn check(db: &Database, options: &AuditOptions) -> Result<AnchorCheck, Error> {
        let anchor = match &options.anchor {
            Some(p) => read_anchor(p)?,
            None => None,
        };
        let pool = db.pool();
        let target = db.target();
        let db_head = read_head(pool).await?;
        let rolled_back = match &anchor {
            Some(a) if a.seq > db_head.seq => Some(format!(
                "the database {target} holds audit records up to {}, but the server's anchor names record {}",
                db_head.seq, a.seq
            )),
            Some(a) if a.seq > 0 && record_mac(pool, a.seq).await?.as_deref() != Some(a.mac.as_str()) => Some(format!(
                "the database {target} has another audit record {} than the one the server's anchor names",
                a.seq
            )),
            _ => None,
        };
        if let (Some(what), false) = (&rolled_back, options.accept_rollback) {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "{what}: the database was rolled back (a lost or damaged WAL file, or a restored backup), and writes \
                     acknowledged after record {} are missing. Restore the newest copy of the database, or start with \
                     --accept-rollback to go on from this one (that choice is recorded in the audit log). Nothing was changed",
                    db_head.seq
                ),
            ));
        }
        Ok(AnchorCheck { anchor, db_head, rolled_back })
    }

    /// Creates the log's tables when new, and opens it with `mac` (the KEK) after `check`: an
    /// accepted rollback is recorded and the anchor reset to this database; a database with
    /// records but no anchor gets one.
    pub async fn open(
        db: Database,
        mac: Arc<dyn KeyWrapper>,
        options: &AuditOptions,
        check: AnchorCheck,
    ) -> Result<AuditLog, Error> {
        db.migrate("audit", MIGRATIONS, None).await?;
        let log = AuditLog {
            db,
            mac,
            anchor: options.anchor.clone(),
            anchor_seq: Arc::new(AtomicI64::new(check.anchor.as_ref().map_or(0, |a| a.seq))),
            anchor_lock: Arc::default(),
        };
        if let Some(what) = check.rolled_back {
            tracing::warn!(%what, "starting on a rolled-back database, as the operator asked (--accept-rollback)");
            log.append(&[AuditEntry::new(now_ms(), "operator", "accept-rollback", "", "", "", &what)]).await?;
            // The one time the anchor moves back: the operator said this database is the truth.
            log.anchor_seq.store(0, Ordering::Relaxed);
            log.force_anchor().await?;
        } else if check.anchor.is_none() && log.anchor.is_some() && check.db_head.seq > 0 {
            tracing::warn!(
                anchor = ?log.anchor,
                "no audit anchor beside a database with records: writing one now (a rollback before this start cannot be detected)"
            );
            log.force_anchor().await?;
        }
        Ok(log)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Starts a write: a transaction holding the head's lock (SQLite's write lock, taken at
    /// BEGIN; PostgreSQL's row lock on the head), so writers queue here and the chain stays linear.
    pub async fn begin(&self) -> Result<AuditTx<'_>, Error> {
        let mut write = self.db.begin_write().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT seq, mac FROM audit_head WHERE id = 1{}",
            self.db.lock_clause()
        )))
        .fetch_one(&mut *write)
        .await?;
        let head = Head { seq: row.try_get(0)?, mac: row.try_get(1)? };
        Ok(AuditTx { log: self, write, head })
    }

    /// Appends entries on their own, as one commit.
    pub async fn append(&self, entries: &[AuditEntry]) -> Result<(), Error> {
        self.begin().await?.commit(entries).await
    }

    /// Whether the first record (if any) carries this KEK's MAC: a check of a KEK against a
    /// database made before KEK check values.
    pub async fn first_record_matches(db: &Database, kek: &dyn KeyWrapper) -> Result<bool, Error> {
        let q = format!("SELECT {COLUMNS}, mac FROM audit ORDER BY seq LIMIT 1");
        let Some(r) = sqlx::query(sqlx::AssertSqlSafe(q)).fetch_optional(db.pool()).await? else { return Ok(true) };
        let (seq, e) = read_row(&r)?;
        let mac: String = r.try_get(8)?;
        Ok(seq != 1 || hex::encode(kek.audit_mac(&chain_bytes("", seq, &e))) == mac)
    }

    /// How many records the log holds.
    pub async fn records(&self) -> Result<i64, Error> {
        Ok(sqlx::query("SELECT COUNT(*) FROM audit").fetch_one(self.db.pool()).await?.try_get(0)?)
    }

    /// Walks the whole chain: sequence numbers without gaps, every MAC, the head, and the anchor
    /// file. Reports the first problem; a verified head becomes the anchor.
    pub async fn verify(&self) -> Result<Verdict, Error> {
        let pool = self.db.pool();
        let head_row = sqlx::query("SELECT seq, mac FROM audit_head WHERE id = 1").fetch_one(pool).await?;
        let head = Head { seq: head_row.try_get(0)?, mac: head_row.try_get(1)? };
        let anchor = match &self.anchor {
            Some(p) => read_anchor(p)?,
            None => None,
        };
        let q = format!("SELECT {COLUMNS}, mac FROM audit ORDER BY seq");
        let rows = sqlx::query(sqlx::AssertSqlSafe(q)).fetch_all(pool).await?;
        let records = rows.len() as i64;
        let fail = |problem: String| Verdict { ok: false, records, problem: Some(problem) };
        let mut prev = Head { seq: 0, mac: String::new() };
        let mut anchor_seen = anchor.as_ref().is_none_or(|a| a.seq == 0);
        for r in &rows {
            let (seq, e) = read_row(r)?;
            let mac: String = r.try_get(8)?;
            if seq != prev.seq + 1 {
                return Ok(fail(format!("record {} is missing (deleted)", prev.seq + 1)));
            }
            if hex::encode(self.mac.audit_mac(&chain_bytes(&prev.mac, seq, &e))) != mac {
                return Ok(fail(format!("record {seq} was edited (its MAC does not match)")));
            }
            if let Some(a) = &anchor
                && a.seq == seq
            {
                if a.mac != mac {
                    return Ok(fail(format!("record {seq} differs from the server's anchor")));
                }
                anchor_seen = true;
            }
            prev = Head { seq, mac };
        }
        if prev.seq != head.seq || prev.mac != head.mac {
            return Ok(fail(format!(
                "the log ends at record {} but its head says {} (records deleted at the end)",
                prev.seq, head.seq
            )));
        }
        if !anchor_seen {
            let a = anchor.map(|a| a.seq).unwrap_or_default();
            return Ok(fail(format!(
                "the server's anchor names record {a}, which the log no longer has (rolled back)"
            )));
        }
        self.write_anchor(&head, true);
        Ok(Verdict { ok: true, records, problem: None })
    }

    /// Brings the anchor up to date (at shutdown).
    pub async fn close(&self) {
        if let Err(e) = self.force_anchor().await {
            tracing::warn!(error = %e, "cannot update the audit anchor at shutdown");
        }
    }

    /// Records the head in the anchor file, durably, at most every 100 ms unless `force` (a file
    /// sync per release would cost more than the release): a rollback of more than the last
    /// 100 ms is always caught. The anchor never moves back.
    fn write_anchor(&self, head: &Head, force: bool) {
        let Some(path) = &self.anchor else { return };
        let mut last = self.anchor_lock.lock().unwrap_or_else(|p| p.into_inner());
        if head.seq <= self.anchor_seq.load(Ordering::Relaxed)
            || (!force && last.is_some_and(|t: std::time::Instant| t.elapsed() < std::time::Duration::from_millis(100)))
        {
            return;
        }
        *last = Some(std::time::Instant::now());
        match write_anchor_file(path, head) {
            Ok(()) => self.anchor_seq.store(head.seq, Ordering::Relaxed),
            Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot write the audit anchor"),
        }
    }

    async fn force_anchor(&self) -> Result<(), Error> {
        let head = read_head(self.db.pool()).await?;
        self.write_anchor(&head, true);
        Ok(())
    }
}

/// A row selected as [`COLUMNS`] (then anything).
pub fn read_row(r: &AnyRow) -> Result<(i64, AuditEntry), sqlx::Error> {
    let e = AuditEntry {
        at_ms: r.try_get(1)?,
        actor: r.try_get(2)?,
        action: r.try_get(3)?,
        resource: r.try_get(4)?,
        measurement: r.try_get(5)?,
        subject: r.try_get(6)?,
        detail: r.try_get(7)?,
    };
    Ok((r.try_get(0)?, e))
}

/// What a row's MAC covers: the previous MAC, its sequence number and every field, each
/// length-prefixed so no two rows share an encoding.
fn chain_bytes(prev_mac: &str, seq: i64, e: &AuditEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"enclava/audit/v1\0");
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&e.at_ms.to_be_bytes());
    for f in [prev_mac, &e.actor, &e.action, &e.resource, &e.measurement, &e.subject, &e.detail] {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f.as_bytes());
    }
    out
}

/// The head; record 0 for a database without the table yet (a new one).
async fn read_head(pool: &AnyPool) -> Result<Head, Error> {
    match sqlx::query("SELECT seq, mac FROM audit_head WHERE id = 1").fetch_optional(pool).await {
        Ok(Some(r)) => Ok(Head { seq: r.try_get(0)?, mac: r.try_get(1)? }),
        Ok(None) => Ok(Head { seq: 0, mac: String::new() }),
        Err(e) if is_missing_table(&e) => Ok(Head { seq: 0, mac: String::new() }),
        Err(e) => Err(e.into()),
    }
}

/// The MAC of record `seq`, if the database has it.
async fn record_mac(pool: &AnyPool, seq: i64) -> Result<Option<String>, Error> {
    match sqlx::query("SELECT mac FROM audit WHERE seq = $1").bind(seq).fetch_optional(pool).await {
        Ok(r) => Ok(r.map(|r| r.try_get(0)).transpose()?),
        Err(e) if is_missing_table(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Reads the anchor file: `None` when there is none.
fn read_anchor(path: &Path) -> Result<Option<Head>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let parsed = text.trim().split_once(' ').and_then(|(seq, mac)| {
                let seq: i64 = seq.parse().ok()?;
                (seq >= 0 && mac.len() <= 128 && mac.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| Head { seq, mac: mac.to_owned() })
            });
            parsed.map(Some).ok_or_else(|| {
                Error::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "the audit anchor {} is damaged; restore it from your backup (or remove it to trust the database as it is)",
                        path.display()
                    ),
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::unavailable(format!("cannot read the audit anchor {}: {e}", path.display()))),
    }
}

/// Writes the anchor durably: a new private file, synced, renamed over the old one, and the
/// folder synced, so a crash leaves the old anchor or the new one, whole.
fn write_anchor_file(path: &Path, head: &Head) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(format!("{} {}\n", head.seq, head.mac).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DbOptions;
    use crate::kek::LocalKek;

    async fn open(dir: &Path, accept: bool) -> Result<AuditLog, Error> {
        let url = format!("sqlite://{}", dir.join("a.db").display());
        let db = Database::open(&url, DbOptions::default()).await?;
        let options = AuditOptions { anchor: Some(dir.join("anchor")), accept_rollback: accept };
        let check = AuditLog::check(&db, &options).await?;
        AuditLog::open(db, Arc::new(LocalKek::from_bytes(&[3; 32], "test")), &options, check).await
    }

    #[tokio::test]
    async fn a_change_commits_with_its_record_and_the_chain_verifies() {
        let dir = tempfile::tempdir().expect("tmp");
        let log = open(dir.path(), false).await.expect("open");
        log.database().migrate("t", &[&["CREATE TABLE t (x BIGINT)"]], None).await.expect("migrate");
        let mut tx = log.begin().await.expect("begin");
        sqlx::query("INSERT INTO t (x) VALUES (1)").execute(&mut *tx).await.expect("insert");
        tx.commit(&[AuditEntry::new(1, "u", "put", "t", "", "", "x=1")]).await.expect("commit");
        // Dropped without commit: neither the row nor a record.
        let mut tx = log.begin().await.expect("begin");
        sqlx::query("INSERT INTO t (x) VALUES (2)").execute(&mut *tx).await.expect("insert");
        drop(tx);
        log.append(&[AuditEntry::new(2, "u", "look", "", "", "", "")]).await.expect("append");
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM t").fetch_one(log.database().pool()).await.expect("n").get(0);
        assert_eq!((n, log.records().await.expect("records")), (1, 2));
        assert_eq!(log.verify().await.expect("verify"), Verdict { ok: true, records: 2, problem: None });
        assert!(AuditLog::first_record_matches(log.database(), &LocalKek::from_bytes(&[3; 32], "t")).await.expect("m"));
        assert!(
            !AuditLog::first_record_matches(log.database(), &LocalKek::from_bytes(&[4; 32], "t")).await.expect("m")
        );
        sqlx::query("UPDATE audit SET detail = 'x=9' WHERE seq = 1")
            .execute(log.database().pool())
            .await
            .expect("edit");
        assert!(log.verify().await.expect("verify").problem.expect("edited").contains("record 1 was edited"));
        log.close().await;
        log.database().close().await;

        // The database loses its last record and head (a restored copy): refused, then accepted.
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let db = Database::open(&url, DbOptions::default()).await.expect("open");
        sqlx::query("DELETE FROM audit WHERE seq = 2").execute(db.pool()).await.expect("rm");
        sqlx::query("UPDATE audit_head SET seq = 1").execute(db.pool()).await.expect("head");
        db.close().await;
        let e = open(dir.path(), false).await.expect_err("rolled back");
        assert!(e.message.contains("rolled back") && e.message.contains("--accept-rollback"), "{e}");
        let log = open(dir.path(), true).await.expect("accepted");
        let last = sqlx::query("SELECT action FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_one(log.database().pool())
            .await
            .expect("last");
        assert_eq!(last.get::<String, _>(0), "accept-rollback");
    }
}
