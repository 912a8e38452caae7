//! The key broker's database: users, models, wrapped keys, grants, request keys and the
//! hash-chained audit log, on SQLite (a file, WAL, fully synchronous) or PostgreSQL, through one
//! set of portable SQL statements and one set of migrations.
//!
//! Every change commits together with its audit rows, in one transaction that first locks the
//! audit head, so the chain stays linear even with several brokers on one PostgreSQL. A write is
//! acknowledged only after its COMMIT returned; a connection whose write failed is closed, never
//! handed back to the pool in a state nobody knows (an open transaction there would make later
//! "commits" on it vanish).
//!
//! At start, before any write, the database is checked against the audit anchor (a file the broker
//! writes durably beside it): a database older than the anchor (lost WAL, a restored backup) makes
//! the broker refuse to start unless the operator accepts the rollback, which is audited. The KEK
//! is checked against a check value in the database.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Row};
use zeroize::Zeroizing;

use crate::error::{ErrorCode, KeysError};
use crate::kek::{KekSource, KeyWrapper, check_value, opens_check, sync_dir};
use enclava_contracts::keys::rest::{AuditCheck, AuditRecord, GrantView, ModelView, RequestKeyView};

/// Which database the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Portable DDL (TEXT and BIGINT only, binary values as hex or base64), applied in order; the
/// index of a statement list is its schema version.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS models (id TEXT PRIMARY KEY, owner TEXT NOT NULL, policy TEXT, \
     current_version BIGINT NOT NULL, generation BIGINT NOT NULL, created_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS model_keys (model TEXT NOT NULL, version BIGINT NOT NULL, wrapped TEXT NOT NULL, \
     created_at BIGINT NOT NULL, PRIMARY KEY (model, version))",
        "CREATE TABLE IF NOT EXISTS grants (model TEXT NOT NULL, measurement TEXT NOT NULL, user_id TEXT NOT NULL, \
     granted_at BIGINT NOT NULL, revoked_at BIGINT, PRIMARY KEY (model, measurement, user_id))",
        "CREATE TABLE IF NOT EXISTS request_keys (user_id TEXT NOT NULL, model TEXT NOT NULL, measurement TEXT NOT NULL, \
     wrapped TEXT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (user_id, model, measurement))",
        "CREATE TABLE IF NOT EXISTS audit (seq BIGINT PRIMARY KEY, at_ms BIGINT NOT NULL, actor TEXT NOT NULL, \
     action TEXT NOT NULL, model TEXT NOT NULL, measurement TEXT NOT NULL, subject TEXT NOT NULL, \
     detail TEXT NOT NULL, mac TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS audit_head (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL, mac TEXT NOT NULL)",
        "INSERT INTO audit_head (id, seq, mac) VALUES (1, 0, '') ON CONFLICT (id) DO NOTHING",
    ],
    &[
        "CREATE TABLE IF NOT EXISTS kek_check (id BIGINT PRIMARY KEY, sealed TEXT NOT NULL)",
        "ALTER TABLE users ADD COLUMN admin BIGINT NOT NULL DEFAULT 0",
        "CREATE TABLE IF NOT EXISTS invites (token_hash TEXT PRIMARY KEY, created_by TEXT NOT NULL, admin BIGINT NOT NULL, \
     created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, used_by TEXT, used_at BIGINT)",
    ],
];

/// How the store is opened, besides its URL and KEK.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// The audit anchor file (in the broker's data folder); `None`: no anchor (no rollback check).
    pub anchor: Option<PathBuf>,
    /// Start on a database older than the anchor (lost WAL, a restored backup); the choice is
    /// recorded in the audit log.
    pub accept_rollback: bool,
    /// Extra PRAGMAs run on every SQLite connection, e.g. `max_page_count = 500`.
    pub sqlite_pragmas: Vec<String>,
}

/// One audit event before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// A user id, or `enclave:<platform>:<measurement>` for releases.
    pub actor: String,
    /// `register`, `model-key`, `grant`, `revoke`, `request-key`, `release`, `deny`.
    pub action: String,
    pub model: String,
    pub measurement: String,
    /// The user a grant names, or the users whose request keys a release carried.
    pub subject: String,
    /// A denial's reason, a version, a count.
    pub detail: String,
}

/// A model's row, as the release path reads it.
#[derive(Debug, Clone)]
pub struct ModelRow {
    pub owner: String,
    pub policy: Option<String>,
    pub current_version: u64,
    pub generation: i64,
}

/// The database.
#[derive(Debug, Clone)]
pub struct Store {
    /// The database URL without its password, for messages.
    target: String,
    pool: AnyPool,
    backend: Backend,
    kek: Arc<dyn KeyWrapper>,
    /// Where the latest audit head is also written, so a database rolled back as a whole (rows
    /// and head together) is still caught by `audit --verify`.
    anchor: Option<PathBuf>,
    anchor_seq: Arc<AtomicI64>,
    anchor_lock: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn redact(url: &str) -> String {
    // postgres://user:password@host → postgres://user:***@host
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The SQLite file a `sqlite://` URL names (`None` for in-memory databases).
fn sqlite_file(rest: &str) -> Option<PathBuf> {
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:" && !rest.contains("mode=memory")).then(|| PathBuf::from(path))
}

/// Creates the database file only its owner can read (SQLite gives its `-wal` and `-shm` files the
/// same mode), or narrows an existing one that others could read.
fn private_file(path: &std::path::Path) -> Result<(), KeysError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io =
        |e: std::io::Error| KeysError::unavailable(format!("cannot create the key database {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            for p in [path.to_owned(), path.with_extension("db-wal"), path.with_extension("db-shm")] {
                if let Ok(m) = std::fs::metadata(&p)
                    && m.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(path = %p.display(), "the key database was readable by others: narrowing it to its owner");
                    let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
                }
            }
            Ok(())
        }
        Err(e) => Err(io(e)),
    }
}

/// Reads the anchor file: `None` when there is none.
fn read_anchor(path: &std::path::Path) -> Result<Option<Head>, KeysError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let parsed = text.trim().split_once(' ').and_then(|(seq, mac)| {
                let seq: i64 = seq.parse().ok()?;
                (seq >= 0 && mac.len() <= 128 && mac.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| Head { seq, mac: mac.to_owned() })
            });
            parsed.map(Some).ok_or_else(|| {
                KeysError::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "the audit anchor {} is damaged; restore it from your backup (or remove it to trust the database as it is)",
                        path.display()
                    ),
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KeysError::unavailable(format!("cannot read the audit anchor {}: {e}", path.display()))),
    }
}

/// Writes the anchor durably: a new private file, synced, renamed over the old one, and the
/// folder synced, so a crash leaves the old anchor or the new one, whole.
fn write_anchor_file(path: &std::path::Path, head: &Head) -> std::io::Result<()> {
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

impl Store {
    /// Opens (creating when needed) the database at `url` (`sqlite://path` or `postgres://…`) with
    /// the KEK from `kek`, after checking it against the anchor and the KEK against the database.
    pub async fn open(url: &str, kek: &KekSource, options: StoreOptions) -> Result<Store, KeysError> {
        install_default_drivers();
        let (backend, url, file) =
            if let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
                if rest.is_empty() {
                    return Err(KeysError::invalid("--database sqlite:// needs a file path, e.g. sqlite://keys.db"));
                }
                let sep = if rest.contains('?') { '&' } else { '?' };
                let url = if rest.contains("mode=") {
                    format!("sqlite://{rest}")
                } else {
                    format!("sqlite://{rest}{sep}mode=rwc")
                };
                (Backend::Sqlite, url, sqlite_file(rest))
            } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                (Backend::Postgres, url.to_owned(), None)
            } else {
                return Err(KeysError::invalid(format!(
                    "unsupported --database {}: use sqlite://FILE or postgres://USER@HOST/DB",
                    enclava_core::text::quote(&redact(url))
                )));
            };
        if let Some(f) = &file {
            private_file(f)?;
        }
        let target = redact(&url);
        let pragmas = options.sqlite_pragmas.clone();
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .acquire_timeout(std::time::Duration::from_secs(5))
            .after_connect(move |conn, _| {
                let pragmas = pragmas.clone();
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; FULL syncs every commit, so
                        // nothing acknowledged is lost on a crash or power cut.
                        for pragma in
                            ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "PRAGMA busy_timeout = 10000"]
                        {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                        for p in &pragmas {
                            sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA {p}"))).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| KeysError::unavailable(format!("cannot open the key database {target}: {e}")))?;

        // Before any write: is this database older than the anchor says it must be?
        let anchor = match &options.anchor {
            Some(p) => read_anchor(p)?,
            None => None,
        };
        let db_head = read_head(&pool).await?;
        let rolled_back = match &anchor {
            Some(a) if a.seq > db_head.seq => Some(format!(
                "the key database {target} holds audit records up to {}, but this broker's anchor names record {}",
                db_head.seq, a.seq
            )),
            Some(a) if a.seq > 0 && record_mac(&pool, a.seq).await?.as_deref() != Some(a.mac.as_str()) => {
                Some(format!(
                    "the key database {target} has another audit record {} than the one this broker's anchor names",
                    a.seq
                ))
            }
            _ => None,
        };
        if let (Some(what), false) = (&rolled_back, options.accept_rollback) {
            pool.close().await;
            return Err(KeysError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "{what}: the database was rolled back (a lost or damaged WAL file, or a restored backup), and writes \
                     acknowledged after record {} are missing. Restore the newest copy of the database, or start with \
                     --accept-rollback to go on from this one (that choice is recorded in the audit log). Nothing was changed",
                    db_head.seq
                ),
            ));
        }

        migrate(&pool).await?;
        let empty = is_empty(&pool).await?;
        let store = Store {
            target,
            kek: kek.open(empty)?,
            pool,
            backend,
            anchor: options.anchor.clone(),
            anchor_seq: Arc::new(AtomicI64::new(anchor.as_ref().map_or(0, |a| a.seq))),
            anchor_lock: Arc::default(),
        };
        store.check_kek(kek, empty).await?;
        tracing::info!(database = %store.target, ?backend, "key store open");

        if let Some(what) = rolled_back {
            tracing::warn!(%what, "starting on a rolled-back key database, as the operator asked (--accept-rollback)");
            let e = entry(now_ms(), "operator", "accept-rollback", "", "", "", &what);
            store.append_audit(&[e]).await?;
            // The one time the anchor moves back: the operator said this database is the truth.
            store.anchor_seq.store(0, Ordering::Relaxed);
            store.force_anchor().await?;
        } else if anchor.is_none() && store.anchor.is_some() && db_head.seq > 0 {
            tracing::warn!(
                anchor = ?store.anchor,
                "no audit anchor beside a database with records: writing one now (a rollback before this start cannot be detected)"
            );
            store.force_anchor().await?;
        }
        Ok(store)
    }

    /// Checks the KEK against the database's check value, writing one for a new database (or one
    /// made before check values, after checking the KEK opens what is stored).
    async fn check_kek(&self, source: &KekSource, empty: bool) -> Result<(), KeysError> {
        let wrong = || {
            KeysError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "the key-encryption key from {} does not open the key database {}: it is not the key the database was \
                     made with. Restore the original key (the kek.key file from your backup, or ENCLAVA_KEK) and start \
                     again; nothing was changed",
                    source.describe(),
                    self.target
                ),
            )
        };
        let stored: Option<String> = sqlx::query("SELECT sealed FROM kek_check WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        match stored {
            Some(v) if opens_check(self.kek.as_ref(), &v) => return Ok(()),
            Some(_) => return Err(wrong()),
            None => {}
        }
        if !empty && !self.kek_opens_existing().await? {
            return Err(wrong());
        }
        sqlx::query("INSERT INTO kek_check (id, sealed) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
            .bind(check_value(self.kek.as_ref())?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// For a database made before check values: the KEK verifies its first audit record and opens
    /// one stored key.
    async fn kek_opens_existing(&self) -> Result<bool, KeysError> {
        if let Some(r) = sqlx::query(
            "SELECT seq, at_ms, actor, action, model, measurement, subject, detail, mac FROM audit ORDER BY seq LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?
        {
            let (seq, e) = audit_row(&r)?;
            let mac: String = r.try_get(8)?;
            if hex::encode(self.kek.audit_mac(&chain_bytes("", seq, &e))) != mac && seq == 1 {
                return Ok(false);
            }
        }
        if let Some(r) =
            sqlx::query("SELECT model, version, wrapped FROM model_keys LIMIT 1").fetch_optional(&self.pool).await?
        {
            let (model, version): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
            let wrapped = hex::decode(r.try_get::<String, _>(2)?).unwrap_or_default();
            return Ok(self.kek.try_unwrap(&model_key_context(&model, version as u64), &wrapped).is_some());
        }
        Ok(true)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn kek(&self) -> &dyn KeyWrapper {
        self.kek.as_ref()
    }

    /// Starts a write: a transaction holding the audit head's lock (SQLite's write lock, taken at
    /// BEGIN; PostgreSQL's row lock on the head), so writers queue here and the chain stays linear.
    async fn begin_write(&self) -> Result<(Write, Head), KeysError> {
        let conn = self.pool.acquire().await?;
        let mut w = Write { conn, committed: false };
        let begin = if self.backend == Backend::Sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" };
        sqlx::query(begin).execute(&mut *w).await?;
        let lock = if self.backend == Backend::Sqlite { "" } else { " FOR UPDATE" };
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT seq, mac FROM audit_head WHERE id = 1{lock}")))
            .fetch_one(&mut *w)
            .await?;
        let head = Head { seq: row.try_get(0)?, mac: row.try_get(1)? };
        Ok((w, head))
    }

    /// Appends `entries` to the chain inside `w` and commits. Acknowledged only once COMMIT
    /// returned; the anchor follows after.
    async fn commit_with_audit(&self, mut w: Write, mut head: Head, entries: &[AuditEntry]) -> Result<(), KeysError> {
        for e in entries {
            let seq = head.seq + 1;
            let mac = hex::encode(self.kek.audit_mac(&chain_bytes(&head.mac, seq, e)));
            sqlx::query(
                "INSERT INTO audit (seq, at_ms, actor, action, model, measurement, subject, detail, mac) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(seq)
            .bind(e.at_ms)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.model)
            .bind(&e.measurement)
            .bind(&e.subject)
            .bind(&e.detail)
            .bind(&mac)
            .execute(&mut *w)
            .await?;
            head = Head { seq, mac };
        }
        sqlx::query("UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1")
            .bind(head.seq)
            .bind(&head.mac)
            .execute(&mut *w)
            .await?;
        w.commit().await?;
        self.write_anchor(&head, false);
        Ok(())
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

    /// Writes the anchor for the database's current head now.
    async fn force_anchor(&self) -> Result<(), KeysError> {
        let head = read_head(&self.pool).await?;
        self.write_anchor(&head, true);
        Ok(())
    }

    /// Appends audit entries on their own (releases and denials), as one commit.
    pub async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), KeysError> {
        let (tx, head) = self.begin_write().await?;
        self.commit_with_audit(tx, head, entries).await
    }

    /// Creates a user. With `invite` (an invite token's hash) the invite is used up in the same
    /// transaction, and an admin invite makes an administrator.
    pub async fn create_user(&self, id: &str, token_hash: &str, invite: Option<&str>) -> Result<bool, KeysError> {
        let now = now_ms();
        let (mut tx, head) = self.begin_write().await?;
        let mut admin = false;
        if let Some(invite) = invite {
            let row =
                sqlx::query("SELECT admin FROM invites WHERE token_hash = $1 AND used_by IS NULL AND expires_at > $2")
                    .bind(invite)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(row) = row else {
                return Err(KeysError::forbidden(
                    "this invite is unknown, used or expired: ask an administrator for a new one",
                ));
            };
            admin = row.try_get::<i64, _>(0)? != 0;
            sqlx::query("UPDATE invites SET used_by = $1, used_at = $2 WHERE token_hash = $3")
                .bind(id)
                .bind(now)
                .bind(invite)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("INSERT INTO users (id, token_hash, created_at, admin) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(token_hash)
            .bind(now)
            .bind(i64::from(admin))
            .execute(&mut *tx)
            .await?;
        let detail = match (invite, admin) {
            (None, _) => "",
            (Some(_), false) => "with an invite",
            (Some(_), true) => "with an administrator invite",
        };
        self.commit_with_audit(tx, head, &[entry(now, id, "register", "", "", id, detail)]).await?;
        Ok(admin)
    }

    /// Stores a one-time invite (by its hash) made by `by` (a user id, or `operator`).
    pub async fn create_invite(
        &self,
        by: &str,
        token_hash: &str,
        admin: bool,
        expires_at: i64,
    ) -> Result<(), KeysError> {
        let now = now_ms();
        let (mut tx, head) = self.begin_write().await?;
        if by == "operator" {
            // A new bootstrap invite replaces the unused ones before it.
            sqlx::query("DELETE FROM invites WHERE created_by = 'operator' AND used_by IS NULL")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO invites (token_hash, created_by, admin, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(by)
        .bind(i64::from(admin))
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        let detail = if admin { "administrator invite" } else { "invite" };
        self.commit_with_audit(tx, head, &[entry(now, by, "invite", "", "", "", detail)]).await
    }

    /// Whether `user` is an administrator.
    pub async fn is_admin(&self, user: &str) -> Result<bool, KeysError> {
        let row = sqlx::query("SELECT admin FROM users WHERE id = $1").bind(user).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?.is_some_and(|a| a != 0))
    }

    /// Whether any administrator exists.
    pub async fn has_admin(&self) -> Result<bool, KeysError> {
        let n: i64 =
            sqlx::query("SELECT COUNT(*) FROM users WHERE admin <> 0").fetch_one(&self.pool).await?.try_get(0)?;
        Ok(n > 0)
    }

    pub async fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<String>, KeysError> {
        let row = sqlx::query("SELECT id FROM users WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    pub async fn model(&self, model: &str) -> Result<Option<ModelRow>, KeysError> {
        let row = sqlx::query("SELECT owner, policy, current_version, generation FROM models WHERE id = $1")
            .bind(model)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(ModelRow {
                owner: r.try_get(0)?,
                policy: r.try_get(1)?,
                current_version: r.try_get::<i64, _>(2)? as u64,
                generation: r.try_get(3)?,
            }),
            None => None,
        })
    }

    /// Adds a new version of `model`'s key (creating the model, owned by `user`, when it is new).
    /// `must_exist` is rotation: the model must already be there. Returns the new version.
    pub async fn add_model_key(
        &self,
        user: &str,
        model: &str,
        key: &[u8],
        policy: Option<&str>,
        must_exist: bool,
    ) -> Result<u64, KeysError> {
        let now = now_ms();
        let (mut tx, head) = self.begin_write().await?;
        let row = sqlx::query("SELECT owner, current_version FROM models WHERE id = $1")
            .bind(model)
            .fetch_optional(&mut *tx)
            .await?;
        let version = match row {
            Some(r) => {
                let owner: String = r.try_get(0)?;
                if owner != user {
                    return Err(not_yours(model));
                }
                let v: i64 = r.try_get(1)?;
                sqlx::query(
                    "UPDATE models SET current_version = $1, generation = generation + 1, \
                     policy = COALESCE($2, policy) WHERE id = $3",
                )
                .bind(v + 1)
                .bind(policy)
                .bind(model)
                .execute(&mut *tx)
                .await?;
                v + 1
            }
            None if must_exist => return Err(KeysError::not_found(format!("no model {model:?}: upload a key first"))),
            None => {
                sqlx::query(
                    "INSERT INTO models (id, owner, policy, current_version, generation, created_at) \
                     VALUES ($1, $2, $3, 1, 1, $4)",
                )
                .bind(model)
                .bind(user)
                .bind(policy)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                1
            }
        };
        let wrapped = self.kek.wrap(&model_key_context(model, version as u64), key)?;
        sqlx::query("INSERT INTO model_keys (model, version, wrapped, created_at) VALUES ($1, $2, $3, $4)")
            .bind(model)
            .bind(version)
            .bind(hex::encode(wrapped))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let action = if must_exist { "rotate" } else { "model-key" };
        let detail = format!("version {version}{}", if policy.is_some() { ", policy set" } else { "" });
        self.commit_with_audit(tx, head, &[entry(now, user, action, model, "", "", &detail)]).await?;
        Ok(version as u64)
    }

    async fn owned(conn: &mut AnyConnection, user: &str, model: &str) -> Result<(), KeysError> {
        let owner: Option<String> = sqlx::query("SELECT owner FROM models WHERE id = $1")
            .bind(model)
            .fetch_optional(conn)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        match owner {
            Some(o) if o == user => Ok(()),
            Some(_) => Err(not_yours(model)),
            None => Err(KeysError::not_found(format!(
                "no model {model:?}: upload its key first (`enclava keys model-key --model {model}`)"
            ))),
        }
    }

    /// Grants `grantee`'s requests, served by enclaves measuring `measurement`, access to `model`.
    pub async fn grant(&self, owner: &str, model: &str, measurement: &str, grantee: &str) -> Result<(), KeysError> {
        let now = now_ms();
        let (mut tx, head) = self.begin_write().await?;
        Self::owned(&mut tx, owner, model).await?;
        let exists = sqlx::query("SELECT id FROM users WHERE id = $1").bind(grantee).fetch_optional(&mut *tx).await?;
        if exists.is_none() {
            return Err(KeysError::not_found(format!("no user {grantee:?} (`enclava keys whoami` prints a user id)")));
        }
        sqlx::query(
            "INSERT INTO grants (model, measurement, user_id, granted_at, revoked_at) VALUES ($1, $2, $3, $4, NULL) \
             ON CONFLICT (model, measurement, user_id) DO UPDATE SET granted_at = $4, revoked_at = NULL",
        )
        .bind(model)
        .bind(measurement)
        .bind(grantee)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        bump(&mut tx, model).await?;
        self.commit_with_audit(tx, head, &[entry(now, owner, "grant", model, measurement, grantee, "")]).await
    }

    /// Revokes matching active grants of `model`; `None` matches any. Returns how many.
    pub async fn revoke(
        &self,
        owner: &str,
        model: &str,
        measurement: Option<&str>,
        grantee: Option<&str>,
    ) -> Result<u64, KeysError> {
        let now = now_ms();
        let (mut tx, head) = self.begin_write().await?;
        Self::owned(&mut tx, owner, model).await?;
        let n = sqlx::query(
            "UPDATE grants SET revoked_at = $1 WHERE model = $2 AND revoked_at IS NULL \
             AND ($3 = '' OR measurement = $3) AND ($4 = '' OR user_id = $4)",
        )
        .bind(now)
        .bind(model)
        .bind(measurement.unwrap_or(""))
        .bind(grantee.unwrap_or(""))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        bump(&mut tx, model).await?;
        let e = entry(
            now,
            owner,
            "revoke",
            model,
            measurement.unwrap_or("*"),
            grantee.unwrap_or("*"),
            &format!("{n} grants"),
        );
        self.commit_with_audit(tx, head, &[e]).await?;
        Ok(n)
    }

    /// Stores `user`'s key for requests to `model` on enclaves measuring `measurement`.
    pub async fn put_request_key(
        &self,
        user: &str,
        model: &str,
        measurement: &str,
        key: &[u8],
    ) -> Result<(), KeysError> {
        let now = now_ms();
        let (mut tx, head) = self.begin_write().await?;
        if sqlx::query("SELECT id FROM models WHERE id = $1").bind(model).fetch_optional(&mut *tx).await?.is_none() {
            return Err(KeysError::not_found(format!("no model {model:?}")));
        }
        let wrapped = self.kek.wrap(&request_key_context(user, model, measurement), key)?;
        sqlx::query(
            "INSERT INTO request_keys (user_id, model, measurement, wrapped, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (user_id, model, measurement) DO UPDATE SET wrapped = $4, created_at = $5",
        )
        .bind(user)
        .bind(model)
        .bind(measurement)
        .bind(hex::encode(wrapped))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        bump(&mut tx, model).await?;
        self.commit_with_audit(tx, head, &[entry(now, user, "request-key", model, measurement, user, "")]).await
    }

    /// The models `user` owns (or just `model`), with their grants.
    pub async fn list_models(&self, user: &str, model: Option<&str>) -> Result<Vec<ModelView>, KeysError> {
        let rows = sqlx::query(
            "SELECT id, current_version, policy, created_at FROM models WHERE owner = $1 AND ($2 = '' OR id = $2) ORDER BY id",
        )
        .bind(user)
        .bind(model.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get(0)?;
            let grants = sqlx::query(
                "SELECT measurement, user_id, granted_at, revoked_at FROM grants WHERE model = $1 ORDER BY measurement, user_id",
            )
            .bind(&id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|g| {
                Ok(GrantView {
                    measurement: g.try_get(0)?,
                    user: g.try_get(1)?,
                    granted_at_ms: g.try_get(2)?,
                    revoked_at_ms: g.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
            out.push(ModelView {
                id,
                current_version: r.try_get::<i64, _>(1)? as u64,
                has_policy: r.try_get::<Option<String>, _>(2)?.is_some(),
                created_at_ms: r.try_get(3)?,
                grants,
            });
        }
        Ok(out)
    }

    /// `user`'s request keys (never the keys themselves).
    pub async fn list_request_keys(&self, user: &str, model: Option<&str>) -> Result<Vec<RequestKeyView>, KeysError> {
        let rows = sqlx::query(
            "SELECT model, measurement, created_at FROM request_keys WHERE user_id = $1 AND ($2 = '' OR model = $2) \
             ORDER BY model, measurement",
        )
        .bind(user)
        .bind(model.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(RequestKeyView { model: r.try_get(0)?, measurement: r.try_get(1)?, created_at_ms: r.try_get(2)? })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Audit records `user` may see: their own actions and everything about models they own.
    pub async fn audit_for(&self, user: &str, limit: i64) -> Result<Vec<AuditRecord>, KeysError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, actor, action, model, measurement, subject, detail FROM audit \
             WHERE actor = $1 OR subject = $1 OR model IN (SELECT id FROM models WHERE owner = $1) \
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(user)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                let (seq, e) = audit_row(r)?;
                Ok(AuditRecord {
                    seq,
                    at_ms: e.at_ms,
                    actor: e.actor,
                    action: e.action,
                    model: e.model,
                    measurement: e.measurement,
                    subject: e.subject,
                    detail: e.detail,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        out.reverse();
        Ok(out)
    }

    /// Walks the whole chain: sequence numbers without gaps, every MAC, the head, and the anchor
    /// file. Reports the first problem.
    pub async fn verify_audit(&self) -> Result<AuditCheck, KeysError> {
        let head_row = sqlx::query("SELECT seq, mac FROM audit_head WHERE id = 1").fetch_one(&self.pool).await?;
        let head = Head { seq: head_row.try_get(0)?, mac: head_row.try_get(1)? };
        let anchor = match &self.anchor {
            Some(p) => read_anchor(p)?,
            None => None,
        };
        let rows = sqlx::query(
            "SELECT seq, at_ms, actor, action, model, measurement, subject, detail, mac FROM audit ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut prev = Head { seq: 0, mac: String::new() };
        let mut anchor_seen = anchor.as_ref().is_none_or(|a| a.seq == 0);
        let fail = |records: i64, problem: String| AuditCheck { ok: false, records, problem: Some(problem) };
        for r in &rows {
            let (seq, e) = audit_row(r)?;
            let mac: String = r.try_get(8)?;
            if seq != prev.seq + 1 {
                return Ok(fail(rows.len() as i64, format!("record {} is missing (deleted)", prev.seq + 1)));
            }
            let expect = hex::encode(self.kek.audit_mac(&chain_bytes(&prev.mac, seq, &e)));
            if expect != mac {
                return Ok(fail(rows.len() as i64, format!("record {seq} was edited (its MAC does not match)")));
            }
            if let Some(a) = &anchor
                && a.seq == seq
            {
                if a.mac != mac {
                    return Ok(fail(rows.len() as i64, format!("record {seq} differs from the broker's anchor")));
                }
                anchor_seen = true;
            }
            prev = Head { seq, mac };
        }
        if prev.seq != head.seq || prev.mac != head.mac {
            return Ok(fail(
                rows.len() as i64,
                format!(
                    "the log ends at record {} but its head says {} (records deleted at the end)",
                    prev.seq, head.seq
                ),
            ));
        }
        if !anchor_seen {
            let a = anchor.map(|a| a.seq).unwrap_or_default();
            return Ok(fail(
                rows.len() as i64,
                format!("the broker's anchor names record {a}, which the log no longer has (rolled back)"),
            ));
        }
        // A verified head is a safe anchor: later rollbacks below it are caught.
        self.write_anchor(&head, true);
        Ok(AuditCheck { ok: true, records: rows.len() as i64, problem: None })
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), KeysError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the store on shutdown: the anchor brought up to date, SQLite's WAL checkpointed
    /// into the database file (so the file alone is a whole copy), then the pool closed.
    pub async fn close(&self) {
        if let Err(e) = self.force_anchor().await {
            tracing::warn!(error = %e, "cannot update the audit anchor at shutdown");
        }
        if self.backend == Backend::Sqlite {
            match sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await {
                Ok(_) => tracing::info!("key database checkpointed"),
                Err(e) => tracing::warn!(error = %e, "cannot checkpoint the key database's WAL"),
            }
        }
        self.pool.close().await;
    }
}

#[derive(Debug, Clone)]
struct Head {
    seq: i64,
    mac: String,
}

/// A write transaction on one pooled connection, begun and committed by hand. Dropped without a
/// successful commit (any error on the way), its connection is closed rather than returned to the
/// pool: closing rolls the transaction back, and no connection in an unknown state is reused.
struct Write {
    conn: PoolConnection<Any>,
    committed: bool,
}

impl Write {
    async fn commit(&mut self) -> Result<(), KeysError> {
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        self.committed = true;
        Ok(())
    }
}

impl std::ops::Deref for Write {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Write {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}

impl Drop for Write {
    fn drop(&mut self) {
        if !self.committed {
            self.conn.close_on_drop();
        }
    }
}

/// Applies the migrations not applied yet, in one transaction.
async fn migrate(pool: &AnyPool) -> Result<(), KeysError> {
    let mut tx = pool.begin().await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").execute(&mut *tx).await?;
    let current: i64 =
        sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetch_one(&mut *tx).await?.try_get(0)?;
    if current as usize > MIGRATIONS.len() {
        return Err(KeysError::internal(format!(
            "the key database has schema version {current}, newer than this broker knows ({}); upgrade enclava",
            MIGRATIONS.len()
        )));
    }
    for (i, statements) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        for s in statements.iter() {
            sqlx::query(*s).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO schema_version (version) VALUES ($1)").bind(i as i64 + 1).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Whether the database holds nothing yet (no users, models, audit records or KEK check).
async fn is_empty(pool: &AnyPool) -> Result<bool, KeysError> {
    let n: i64 = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM models) + (SELECT COUNT(*) FROM audit) \
         + (SELECT COUNT(*) FROM kek_check)",
    )
    .fetch_one(pool)
    .await?
    .try_get(0)?;
    Ok(n == 0)
}

/// The audit head; record 0 for a database without the table yet (a new one).
async fn read_head(pool: &AnyPool) -> Result<Head, KeysError> {
    match sqlx::query("SELECT seq, mac FROM audit_head WHERE id = 1").fetch_optional(pool).await {
        Ok(Some(r)) => Ok(Head { seq: r.try_get(0)?, mac: r.try_get(1)? }),
        Ok(None) => Ok(Head { seq: 0, mac: String::new() }),
        // No table: a database this broker has not set up yet.
        Err(sqlx::Error::Database(e))
            if e.message().contains("no such table") || e.code().as_deref() == Some("42P01") =>
        {
            Ok(Head { seq: 0, mac: String::new() })
        }
        Err(e) => Err(e.into()),
    }
}

/// The MAC of audit record `seq`, if the database has it.
async fn record_mac(pool: &AnyPool, seq: i64) -> Result<Option<String>, KeysError> {
    match sqlx::query("SELECT mac FROM audit WHERE seq = $1").bind(seq).fetch_optional(pool).await {
        Ok(r) => Ok(r.map(|r| r.try_get(0)).transpose()?),
        Err(sqlx::Error::Database(e))
            if e.message().contains("no such table") || e.code().as_deref() == Some("42P01") =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// An audit row selected as `seq, at_ms, actor, action, model, measurement, subject, detail, …`.
fn audit_row(r: &sqlx::any::AnyRow) -> Result<(i64, AuditEntry), sqlx::Error> {
    let e = AuditEntry {
        at_ms: r.try_get(1)?,
        actor: r.try_get(2)?,
        action: r.try_get(3)?,
        model: r.try_get(4)?,
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
    for f in [prev_mac, &e.actor, &e.action, &e.model, &e.measurement, &e.subject, &e.detail] {
        out.extend_from_slice(&(f.len() as u32).to_be_bytes());
        out.extend_from_slice(f.as_bytes());
    }
    out
}

async fn bump(conn: &mut AnyConnection, model: &str) -> Result<(), KeysError> {
    sqlx::query("UPDATE models SET generation = generation + 1 WHERE id = $1").bind(model).execute(conn).await?;
    Ok(())
}

fn not_yours(model: &str) -> KeysError {
    KeysError::forbidden(format!("model {model:?} belongs to another user; only its owner can change it"))
}

pub(crate) fn entry(
    at_ms: i64,
    actor: &str,
    action: &str,
    model: &str,
    measurement: &str,
    subject: &str,
    detail: &str,
) -> AuditEntry {
    AuditEntry {
        at_ms,
        actor: actor.to_owned(),
        action: action.to_owned(),
        model: model.to_owned(),
        measurement: measurement.to_owned(),
        subject: subject.to_owned(),
        detail: detail.to_owned(),
    }
}

fn model_key_context(model: &str, version: u64) -> String {
    format!("model-key|{model}|{version}")
}

fn request_key_context(user: &str, model: &str, measurement: &str) -> String {
    format!("request-key|{user}|{model}|{measurement}")
}

/// Everything a release needs about one model, read at one generation.
#[derive(Debug)]
pub struct ModelSnapshot {
    pub row: ModelRow,
    /// Active grants as (measurement, user).
    pub grants: Vec<(String, String)>,
    /// Unwrapped key versions.
    pub keys: Vec<(u64, Zeroizing<Vec<u8>>)>,
    /// Unwrapped request keys as (user, measurement, key).
    pub request_keys: Vec<(String, String, Zeroizing<Vec<u8>>)>,
}

impl Store {
    /// The model's generation: it changes with every key, grant or request-key change.
    pub async fn generation(&self, model: &str) -> Result<Option<i64>, KeysError> {
        let row =
            sqlx::query("SELECT generation FROM models WHERE id = $1").bind(model).fetch_optional(&self.pool).await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    /// Reads a model's release material. The row (and its generation) is read first, so the rest
    /// is at least that new; a cache keyed by that generation is never staler than the database.
    pub async fn snapshot(&self, model: &str) -> Result<Option<ModelSnapshot>, KeysError> {
        let Some(row) = self.model(model).await? else { return Ok(None) };
        let grants = sqlx::query("SELECT measurement, user_id FROM grants WHERE model = $1 AND revoked_at IS NULL")
            .bind(model)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let mut keys = Vec::new();
        for r in sqlx::query("SELECT version, wrapped FROM model_keys WHERE model = $1")
            .bind(model)
            .fetch_all(&self.pool)
            .await?
        {
            let version = r.try_get::<i64, _>(0)? as u64;
            keys.push((version, self.unwrap_stored(&model_key_context(model, version), &r.try_get::<String, _>(1)?)?));
        }
        let mut request_keys = Vec::new();
        for r in sqlx::query("SELECT user_id, measurement, wrapped FROM request_keys WHERE model = $1")
            .bind(model)
            .fetch_all(&self.pool)
            .await?
        {
            let (user, m): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            let key = self.unwrap_stored(&request_key_context(&user, model, &m), &r.try_get::<String, _>(2)?)?;
            request_keys.push((user, m, key));
        }
        Ok(Some(ModelSnapshot { row, grants, keys, request_keys }))
    }

    /// Unwraps a key stored as hex for the row `context` names.
    fn unwrap_stored(&self, context: &str, hex_text: &str) -> Result<Zeroizing<Vec<u8>>, KeysError> {
        let wrapped = hex::decode(hex_text).map_err(|_| KeysError::internal("a stored key is not hex"))?;
        self.kek.unwrap(context, &wrapped)
    }
}
