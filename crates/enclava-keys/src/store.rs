//! The key broker's database: users, models, wrapped keys, grants, request keys and the
//! hash-chained audit log, on SQLite (a file, WAL, fully synchronous) or PostgreSQL, through one
//! set of portable SQL statements and one set of migrations.
//!
//! Every change commits together with its audit rows, in one transaction that first locks the
//! audit head, so the chain stays linear even with several brokers on one PostgreSQL.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Row, Transaction};
use zeroize::Zeroizing;

use crate::api::{AuditCheck, AuditRecord, GrantView, ModelView, RequestKeyView};
use crate::error::KeysError;
use crate::kek::KeyWrapper;

/// Which database the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Portable DDL (TEXT and BIGINT only, binary values as hex or base64), applied in order; the
/// index of a statement list is its schema version.
const MIGRATIONS: &[&[&str]] = &[&[
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
]];

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

impl Store {
    /// Opens (creating when needed) the database at `url`: `sqlite://path` or `postgres://…`.
    /// `anchor` is a file for the audit head (the broker's data folder).
    pub async fn open(url: &str, kek: Arc<dyn KeyWrapper>, anchor: Option<PathBuf>) -> Result<Store, KeysError> {
        install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if rest.is_empty() {
                return Err(KeysError::invalid("--database sqlite:// needs a file path, e.g. sqlite://keys.db"));
            }
            let sep = if rest.contains('?') { '&' } else { '?' };
            let url = if rest.contains("mode=") {
                format!("sqlite://{rest}")
            } else {
                format!("sqlite://{rest}{sep}mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(KeysError::invalid(format!(
                "unsupported --database {:?}: use sqlite://FILE or postgres://USER@HOST/DB",
                redact(url)
            )));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .acquire_timeout(std::time::Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; FULL syncs every commit, so
                        // nothing acknowledged is lost on a crash or power cut.
                        for pragma in
                            ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "PRAGMA busy_timeout = 10000"]
                        {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| {
                KeysError::new(
                    crate::error::ErrorCode::Unavailable,
                    format!("cannot open the key database {}: {e}", redact(&url)),
                )
            })?;
        let store =
            Store { pool, backend, kek, anchor, anchor_seq: Arc::new(AtomicI64::new(0)), anchor_lock: Arc::default() };
        store.migrate().await?;
        tracing::info!(database = %redact(&url), ?backend, "key store open");
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn kek(&self) -> &dyn KeyWrapper {
        self.kek.as_ref()
    }

    async fn migrate(&self) -> Result<(), KeysError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").execute(&mut *tx).await?;
        let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
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
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Starts a write: a transaction holding the audit head's lock.
    async fn begin_write(&self) -> Result<(Transaction<'static, Any>, Head), KeysError> {
        let mut tx = self.pool.begin().await?;
        // A write first, so SQLite takes its write lock now (waiting politely) and PostgreSQL
        // locks the head row: writers queue here, and the chain stays linear.
        sqlx::query("UPDATE audit_head SET seq = seq WHERE id = 1").execute(&mut *tx).await?;
        let row = sqlx::query("SELECT seq, mac FROM audit_head WHERE id = 1").fetch_one(&mut *tx).await?;
        let head = Head { seq: row.try_get(0)?, mac: row.try_get(1)? };
        Ok((tx, head))
    }

    /// Appends `entries` to the chain inside `tx` and commits.
    async fn commit_with_audit(
        &self,
        mut tx: Transaction<'static, Any>,
        mut head: Head,
        entries: &[AuditEntry],
    ) -> Result<(), KeysError> {
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
            .execute(&mut *tx)
            .await?;
            head = Head { seq, mac };
        }
        sqlx::query("UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1")
            .bind(head.seq)
            .bind(&head.mac)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.write_anchor(&head);
        Ok(())
    }

    /// Records the head in the anchor file, at most every 100 ms (a file rename per release would
    /// cost more than the release): a rollback of more than the last 100 ms is always caught.
    fn write_anchor(&self, head: &Head) {
        let Some(path) = &self.anchor else { return };
        let mut last = self.anchor_lock.lock().unwrap_or_else(|p| p.into_inner());
        if head.seq <= self.anchor_seq.load(Ordering::Relaxed)
            || last.is_some_and(|t: std::time::Instant| t.elapsed() < std::time::Duration::from_millis(100))
        {
            return;
        }
        *last = Some(std::time::Instant::now());
        let tmp = path.with_extension("tmp");
        let text = format!("{} {}\n", head.seq, head.mac);
        match std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)) {
            Ok(()) => self.anchor_seq.store(head.seq, Ordering::Relaxed),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot write the audit anchor"),
        }
    }

    /// Appends audit entries on their own (releases and denials), as one commit.
    pub async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), KeysError> {
        let (tx, head) = self.begin_write().await?;
        self.commit_with_audit(tx, head, entries).await
    }

    pub async fn create_user(&self, id: &str, token_hash: &str) -> Result<(), KeysError> {
        let now = now_ms();
        let (mut tx, head) = self.begin_write().await?;
        sqlx::query("INSERT INTO users (id, token_hash, created_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(token_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let entry = entry(now, id, "register", "", "", id, "");
        self.commit_with_audit(tx, head, &[entry]).await
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

    async fn owned(tx: &mut Transaction<'static, Any>, user: &str, model: &str) -> Result<(), KeysError> {
        let owner: Option<String> = sqlx::query("SELECT owner FROM models WHERE id = $1")
            .bind(model)
            .fetch_optional(&mut **tx)
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
        let anchor = self.anchor.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| {
            let (seq, mac) = t.trim().split_once(' ')?;
            Some(Head { seq: seq.parse().ok()?, mac: mac.to_owned() })
        });
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
        if let Some(path) = &self.anchor {
            let _ = std::fs::write(path, format!("{} {}\n", head.seq, head.mac));
            self.anchor_seq.fetch_max(head.seq, Ordering::Relaxed);
        }
        Ok(AuditCheck { ok: true, records: rows.len() as i64, problem: None })
    }

    /// Closes the pool (tests, shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[derive(Debug, Clone)]
struct Head {
    seq: i64,
    mac: String,
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

async fn bump(tx: &mut Transaction<'static, Any>, model: &str) -> Result<(), KeysError> {
    sqlx::query("UPDATE models SET generation = generation + 1 WHERE id = $1").bind(model).execute(&mut **tx).await?;
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
