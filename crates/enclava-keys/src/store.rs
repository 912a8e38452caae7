//! The key broker's tables: models, wrapped keys, grants and request keys, on the shared database
//! ([`enclava_store`]) beside the identity tables and the audit log. Every change commits together
//! with its audit record ([`AuditLog::begin`]), and is acknowledged only after its COMMIT returned.
//!
//! At start, before any write, the database is checked against the audit anchor, and the KEK
//! against the check value the database keeps.

use std::path::PathBuf;
use std::sync::Arc;

use sqlx::{AnyConnection, Row};
use zeroize::Zeroizing;

use crate::error::{ErrorCode, KeysError};
use enclava_contracts::keys::rest::{AuditCheck, AuditRecord, GrantView, ModelView, RequestKeyView};
use enclava_store::audit::{self, AuditLog, AuditOptions};
use enclava_store::kek::{KekSource, KeyWrapper, check_value, opens_check};
use enclava_store::{Database, DbOptions, Migrations};

pub use enclava_store::audit::AuditEntry;
pub use enclava_store::{Backend, now_ms};

/// The key broker's own tables (the users and invites it once kept are the identity component's
/// now, the audit log the store's). Older releases kept this version in `schema_version`.
const MIGRATIONS: Migrations = &[
    &[
        "CREATE TABLE IF NOT EXISTS models (id TEXT PRIMARY KEY, owner TEXT NOT NULL, policy TEXT, \
     current_version BIGINT NOT NULL, generation BIGINT NOT NULL, created_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS model_keys (model TEXT NOT NULL, version BIGINT NOT NULL, wrapped TEXT NOT NULL, \
     created_at BIGINT NOT NULL, PRIMARY KEY (model, version))",
        "CREATE TABLE IF NOT EXISTS grants (model TEXT NOT NULL, measurement TEXT NOT NULL, user_id TEXT NOT NULL, \
     granted_at BIGINT NOT NULL, revoked_at BIGINT, PRIMARY KEY (model, measurement, user_id))",
        "CREATE TABLE IF NOT EXISTS request_keys (user_id TEXT NOT NULL, model TEXT NOT NULL, measurement TEXT NOT NULL, \
     wrapped TEXT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (user_id, model, measurement))",
    ],
    &["CREATE TABLE IF NOT EXISTS kek_check (id BIGINT PRIMARY KEY, sealed TEXT NOT NULL)"],
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

/// A model's row, as the release path reads it.
#[derive(Debug, Clone)]
pub struct ModelRow {
    pub owner: String,
    pub policy: Option<String>,
    pub current_version: u64,
    pub generation: i64,
}

/// The key broker's view of the database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
    audit: AuditLog,
    kek: Arc<dyn KeyWrapper>,
}

/// An audit entry (the broker's field order: actor, action, model, measurement, subject, detail).
pub(crate) fn entry(
    at_ms: i64,
    actor: &str,
    action: &str,
    model: &str,
    measurement: &str,
    subject: &str,
    detail: &str,
) -> AuditEntry {
    AuditEntry::new(at_ms, actor, action, model, measurement, subject, detail)
}

impl Store {
    /// Opens (creating when needed) the database at `url` (`sqlite://path` or `postgres://…`) with
    /// the KEK from `kek`, after checking it against the anchor and the KEK against the database.
    pub async fn open(url: &str, kek: &KekSource, options: StoreOptions) -> Result<Store, KeysError> {
        let db = Database::open(url, DbOptions { sqlite_pragmas: options.sqlite_pragmas.clone() }).await?;
        let audit_options = AuditOptions { anchor: options.anchor.clone(), accept_rollback: options.accept_rollback };
        // Before any write: is this database older than the anchor says it must be?
        let check = match AuditLog::check(&db, &audit_options).await {
            Ok(c) => c,
            Err(e) => {
                db.close().await;
                return Err(e);
            }
        };
        db.migrate("audit", audit::MIGRATIONS, None).await?;
        db.migrate("identity", enclava_identity::MIGRATIONS, None).await?;
        db.migrate("keys", MIGRATIONS, Some("schema_version")).await?;
        let empty = is_empty(&db).await?;
        let wrapper = kek.open(empty)?;
        check_kek(&db, wrapper.as_ref(), kek, empty).await?;
        let audit = AuditLog::open(db.clone(), wrapper.clone(), &audit_options, check).await?;
        tracing::info!(database = %db.target(), backend = ?db.backend(), "key store open");
        Ok(Store { db, audit, kek: wrapper })
    }

    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    pub fn kek(&self) -> &dyn KeyWrapper {
        self.kek.as_ref()
    }

    /// The audit log the broker writes to (shared with the identity component).
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Appends audit entries on their own (releases and denials), as one commit.
    pub async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), KeysError> {
        self.audit.append(entries).await
    }

    pub async fn model(&self, model: &str) -> Result<Option<ModelRow>, KeysError> {
        let row = sqlx::query("SELECT owner, policy, current_version, generation FROM models WHERE id = $1")
            .bind(model)
            .fetch_optional(self.db.pool())
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
        let mut tx = self.audit.begin().await?;
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
        tx.commit(&[entry(now, user, action, model, "", "", &detail)]).await?;
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
        let mut tx = self.audit.begin().await?;
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
        tx.commit(&[entry(now, owner, "grant", model, measurement, grantee, "")]).await
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
        let mut tx = self.audit.begin().await?;
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
        tx.commit(&[e]).await?;
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
        let mut tx = self.audit.begin().await?;
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
        tx.commit(&[entry(now, user, "request-key", model, measurement, user, "")]).await
    }

    /// The models `user` owns (or just `model`), with their grants.
    pub async fn list_models(&self, user: &str, model: Option<&str>) -> Result<Vec<ModelView>, KeysError> {
        let rows = sqlx::query(
            "SELECT id, current_version, policy, created_at FROM models WHERE owner = $1 AND ($2 = '' OR id = $2) ORDER BY id",
        )
        .bind(user)
        .bind(model.unwrap_or(""))
        .fetch_all(self.db.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.try_get(0)?;
            let grants = sqlx::query(
                "SELECT measurement, user_id, granted_at, revoked_at FROM grants WHERE model = $1 ORDER BY measurement, user_id",
            )
            .bind(&id)
            .fetch_all(self.db.pool())
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
        .fetch_all(self.db.pool())
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
        .fetch_all(self.db.pool())
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                let (seq, e) = audit::read_row(r)?;
                Ok(AuditRecord {
                    seq,
                    at_ms: e.at_ms,
                    actor: e.actor,
                    action: e.action,
                    model: e.resource,
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
        let v = self.audit.verify().await?;
        Ok(AuditCheck { ok: v.ok, records: v.records, problem: v.problem })
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), KeysError> {
        self.db.ping().await
    }

    /// Closes the store on shutdown: the anchor brought up to date, SQLite's WAL checkpointed
    /// into the database file (so the file alone is a whole copy), then the pool closed.
    pub async fn close(&self) {
        self.audit.close().await;
        self.db.close().await;
    }
}

/// Checks the KEK against the database's check value, writing one for a new database (or one
/// made before check values, after checking the KEK opens what is stored).
async fn check_kek(db: &Database, kek: &dyn KeyWrapper, source: &KekSource, empty: bool) -> Result<(), KeysError> {
    let wrong = || {
        KeysError::new(
            ErrorCode::FailedPrecondition,
            format!(
                "the key-encryption key from {} does not open the key database {}: it is not the key the database was \
                 made with. Restore the original key (the kek.key file from your backup, or ENCLAVA_KEK) and start \
                 again; nothing was changed",
                source.describe(),
                db.target()
            ),
        )
    };
    let stored: Option<String> = sqlx::query("SELECT sealed FROM kek_check WHERE id = 1")
        .fetch_optional(db.pool())
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    match stored {
        Some(v) if opens_check(kek, &v) => return Ok(()),
        Some(_) => return Err(wrong()),
        None => {}
    }
    if !empty && !kek_opens_existing(db, kek).await? {
        return Err(wrong());
    }
    sqlx::query("INSERT INTO kek_check (id, sealed) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
        .bind(check_value(kek)?)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// For a database made before check values: the KEK verifies its first audit record and opens
/// one stored key.
async fn kek_opens_existing(db: &Database, kek: &dyn KeyWrapper) -> Result<bool, KeysError> {
    if !AuditLog::first_record_matches(db, kek).await? {
        return Ok(false);
    }
    if let Some(r) =
        sqlx::query("SELECT model, version, wrapped FROM model_keys LIMIT 1").fetch_optional(db.pool()).await?
    {
        let (model, version): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
        let wrapped = hex::decode(r.try_get::<String, _>(2)?).unwrap_or_default();
        return Ok(kek.try_unwrap(&model_key_context(&model, version as u64), &wrapped).is_some());
    }
    Ok(true)
}

/// Whether the database holds nothing yet (no users, models, audit records or KEK check).
async fn is_empty(db: &Database) -> Result<bool, KeysError> {
    let n: i64 = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM models) + (SELECT COUNT(*) FROM audit) \
         + (SELECT COUNT(*) FROM kek_check)",
    )
    .fetch_one(db.pool())
    .await?
    .try_get(0)?;
    Ok(n == 0)
}

async fn bump(conn: &mut AnyConnection, model: &str) -> Result<(), KeysError> {
    sqlx::query("UPDATE models SET generation = generation + 1 WHERE id = $1").bind(model).execute(conn).await?;
    Ok(())
}

fn not_yours(model: &str) -> KeysError {
    KeysError::forbidden(format!("model {model:?} belongs to another user; only its owner can change it"))
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
        let row = sqlx::query("SELECT generation FROM models WHERE id = $1")
            .bind(model)
            .fetch_optional(self.db.pool())
            .await?;
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
            .fetch_all(self.db.pool())
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let mut keys = Vec::new();
        for r in sqlx::query("SELECT version, wrapped FROM model_keys WHERE model = $1")
            .bind(model)
            .fetch_all(self.db.pool())
            .await?
        {
            let version = r.try_get::<i64, _>(0)? as u64;
            keys.push((version, self.unwrap_stored(&model_key_context(model, version), &r.try_get::<String, _>(1)?)?));
        }
        let mut request_keys = Vec::new();
        for r in sqlx::query("SELECT user_id, measurement, wrapped FROM request_keys WHERE model = $1")
            .bind(model)
            .fetch_all(self.db.pool())
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
