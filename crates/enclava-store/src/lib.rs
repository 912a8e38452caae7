//! Storage every component shares: one database (SQLite, a file in WAL mode with every commit
//! synced, or PostgreSQL) behind one pool, migrations kept per component, write transactions that
//! are acknowledged only after COMMIT returned, the hash-chained audit log with its anchor
//! ([`audit`]), and the key-encryption key that wraps secrets at rest ([`kek`]).
//!
//! Components (identity, the key broker, and next the farm and federation) each bring their own
//! migrations ([`Database::migrate`]) and write through [`audit::AuditLog::begin`], so every change
//! a component makes commits together with the audit record that proves it.
//!
//! Errors are the core's ([`enclava_core::Error`]): a store failure is UNAVAILABLE with what
//! happened and "nothing was changed".

pub mod audit;
pub mod kek;

use std::path::PathBuf;

use enclava_core::Error;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Row};

/// Which database the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How the database is opened, besides its URL.
#[derive(Debug, Clone, Default)]
pub struct DbOptions {
    /// Extra PRAGMAs run on every SQLite connection, e.g. `max_page_count = 500`.
    pub sqlite_pragmas: Vec<String>,
}

/// A component's migrations: statement lists applied in order; a list's index + 1 is the
/// component's schema version. Portable SQL only (TEXT and BIGINT, `$1` parameters).
pub type Migrations = &'static [&'static [&'static str]];

/// One database, shared by the components of a server.
#[derive(Debug, Clone)]
pub struct Database {
    /// The URL without its password, for messages.
    target: String,
    pool: AnyPool,
    backend: Backend,
}

/// `bytes` random bytes as lowercase hex: leases, nonces, row ids.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::fill(&mut b[..]);
    hex::encode(b)
}

/// A row's reasons (a JSON list of strings, the last 16 kept) with `reason` added: why a job or
/// run moved, in words, for whoever reads its status.
pub fn push_reason(reasons: &str, reason: &str) -> String {
    let mut list: Vec<String> = serde_json::from_str(reasons).unwrap_or_default();
    list.push(reason.to_owned());
    if list.len() > 16 {
        list.drain(..list.len() - 16);
    }
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
}

/// Milliseconds since the Unix epoch, as stored.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `postgres://user:password@host` → `postgres://user:***@host`.
pub fn redact(url: &str) -> String {
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
fn private_file(path: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| Error::unavailable(format!("cannot create the database {}: {e}", path.display()));
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
                    tracing::warn!(path = %p.display(), "the database was readable by others: narrowing it to its owner");
                    let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
                }
            }
            Ok(())
        }
        Err(e) => Err(io(e)),
    }
}

impl Database {
    /// Opens (creating when needed) the database at `url`: `sqlite://FILE` or `postgres://…`.
    pub async fn open(url: &str, options: DbOptions) -> Result<Database, Error> {
        install_default_drivers();
        let (backend, url, file) =
            if let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
                if rest.is_empty() {
                    return Err(Error::invalid("--database sqlite:// needs a file path, e.g. sqlite://keys.db"));
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
                return Err(Error::invalid(format!(
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
            .map_err(|e| Error::unavailable(format!("cannot open the database {target}: {e}")))?;
        tracing::info!(database = %target, ?backend, "database open");
        Ok(Database { target, pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL without its password.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Applies `component`'s migrations not applied yet, in one transaction. `legacy` names a
    /// single-row-per-version table an older release kept this component's version in (read once,
    /// when the component has no row yet).
    pub async fn migrate(&self, component: &str, migrations: Migrations, legacy: Option<&str>) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query("SELECT version FROM schema_versions WHERE component = $1")
            .bind(component)
            .fetch_optional(&mut *tx)
            .await?;
        let mut current: i64 = match row {
            Some(r) => r.try_get(0)?,
            None => -1,
        };
        if current < 0 {
            current = match legacy {
                Some(table) if self.table_exists(&mut tx, table).await? => legacy_version(&mut tx, table).await?,
                _ => 0,
            };
            sqlx::query("INSERT INTO schema_versions (component, version) VALUES ($1, $2)")
                .bind(component)
                .bind(current)
                .execute(&mut *tx)
                .await?;
        }
        if current as usize > migrations.len() {
            return Err(Error::internal(format!(
                "the database {} has {component} schema version {current}, newer than this release knows ({}); upgrade enclava",
                self.target,
                migrations.len()
            )));
        }
        for (i, statements) in migrations.iter().enumerate().skip(current as usize) {
            for s in statements.iter() {
                sqlx::query(*s).execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE schema_versions SET version = $1 WHERE component = $2")
                .bind(i as i64 + 1)
                .bind(component)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether `table` exists (asked of the catalog: a failed statement would abort a PostgreSQL
    /// transaction).
    pub async fn table_exists(&self, conn: &mut AnyConnection, table: &str) -> Result<bool, Error> {
        let q = match self.backend {
            Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1",
            Backend::Postgres => {
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1"
            }
        };
        Ok(sqlx::query(q).bind(table).fetch_optional(conn).await?.is_some())
    }

    /// Starts a write transaction on one connection (SQLite: `BEGIN IMMEDIATE`, taking the write
    /// lock at once). See [`Write`].
    pub async fn begin_write(&self) -> Result<Write, Error> {
        let conn = self.pool.acquire().await?;
        let mut w = Write { conn, committed: false };
        let begin = if self.backend == Backend::Sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" };
        sqlx::query(begin).execute(&mut *w).await?;
        Ok(w)
    }

    /// `" FOR UPDATE"` on PostgreSQL (a row lock), nothing on SQLite (whose write lock `BEGIN
    /// IMMEDIATE` already holds).
    pub fn lock_clause(&self) -> &'static str {
        if self.backend == Backend::Sqlite { "" } else { " FOR UPDATE" }
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool; SQLite's WAL is checkpointed into the database file first, so the file
    /// alone is a whole copy.
    pub async fn close(&self) {
        if self.backend == Backend::Sqlite {
            match sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await {
                Ok(_) => tracing::info!(database = %self.target, "database checkpointed"),
                Err(e) => tracing::warn!(error = %e, "cannot checkpoint the database's WAL"),
            }
        }
        self.pool.close().await;
    }
}

/// The version an older release recorded in `table`.
async fn legacy_version(conn: &mut AnyConnection, table: &str) -> Result<i64, Error> {
    let q = format!("SELECT COALESCE(MAX(version), 0) FROM {table}");
    Ok(sqlx::query(sqlx::AssertSqlSafe(q)).fetch_one(&mut *conn).await?.try_get(0)?)
}

/// Whether `e` says a table does not exist (SQLite's message, PostgreSQL's 42P01).
pub fn is_missing_table(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.message().contains("no such table") || d.code().as_deref() == Some("42P01"))
}

/// A write transaction on one pooled connection, begun and committed by hand. Dropped without a
/// successful commit (any error on the way), its connection is closed rather than returned to the
/// pool: closing rolls the transaction back, and no connection in an unknown state is reused (an
/// open transaction there would make later "commits" on it vanish).
pub struct Write {
    conn: PoolConnection<Any>,
    committed: bool,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Write").field("committed", &self.committed).finish()
    }
}

impl Write {
    /// Commits; the write is acknowledged only when this returned `Ok`.
    pub async fn commit(&mut self) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const A: Migrations = &[&["CREATE TABLE a (x BIGINT)"], &["ALTER TABLE a ADD COLUMN y BIGINT"]];

    #[tokio::test]
    async fn migrations_are_per_component_and_resumable() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = Database::open(&url, DbOptions::default()).await.expect("open");
        db.migrate("a", &A[..1], None).await.expect("v1");
        db.migrate("a", A, None).await.expect("v2");
        db.migrate("a", A, None).await.expect("again: nothing to do");
        db.migrate("b", &[&["CREATE TABLE b (x BIGINT)"]], None).await.expect("another component");
        let err = db.migrate("a", &A[..1], None).await.expect_err("newer than known");
        assert!(err.message.contains("upgrade enclava"), "{err}");
        // A component whose version an older release kept in its own table.
        sqlx::query("CREATE TABLE old_version (version BIGINT NOT NULL)").execute(db.pool()).await.expect("t");
        sqlx::query("INSERT INTO old_version (version) VALUES (1)").execute(db.pool()).await.expect("row");
        db.migrate("c", &[&["CREATE TABLE c1 (x BIGINT)"], &["CREATE TABLE c2 (x BIGINT)"]], Some("old_version"))
            .await
            .expect("legacy");
        assert!(sqlx::query("SELECT * FROM c1").execute(db.pool()).await.is_err(), "version 1 was not re-run");
        sqlx::query("SELECT * FROM c2").execute(db.pool()).await.expect("version 2 ran");
        db.close().await;
        assert!(Database::open("mysql://x", DbOptions::default()).await.is_err());
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u:***@h/db");
    }
}
