//! The farm (GPUX): content-addressed job files, hosts that register with evidence binding their
//! key and measured capacity to a fresh server nonce, and jobs kept durably in the shared database
//! and placed on a host that fits them (security level, the submitter's accepted hosts, the
//! executor and root filesystem, free cores and memory). Hosts pull work under a lease they renew;
//! a job whose lease expires is re-queued with the reason, and only the completion carrying the
//! current lease is kept, so every job ends with exactly one result. Receipts go into the
//! hash-chained audit log with the completion.
//!
//! # Layout
//! - [`Farm`]: the operations, on [`enclava_store::Database`]; [`Farm::sweep`] re-queues expired
//!   leases.
//! - [`rest`]: the REST routes under `/farm/v1`; [`role`]: the `farm` role of `enclava server`.
//!
//! What the server cannot check it does not pretend to: it stores hosts' evidence for submitters
//! to verify under their own policy; a confidential job names, by the job keys it carries, the
//! only hosts that could open it, and is placed on no other.

pub mod rest;
pub mod role;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use enclava_contracts::farm::{
    Completion, HostCapacity, HostRegistration, HostView, JobOutput, JobSpec, JobView, Leased, Security, SignedReceipt,
    security_status,
};
use enclava_core::{Error, ErrorCode};
use enclava_identity::Principal;
use enclava_store::audit::{AuditEntry, AuditLog};
use enclava_store::{Backend, Database, Migrations, now_ms, push_reason, random_hex};
use sqlx::Row;
use sqlx::any::AnyRow;

/// The farm's tables.
pub const MIGRATIONS: Migrations = &[
    &[
        "CREATE TABLE farm_files (sha256 TEXT PRIMARY KEY, size BIGINT NOT NULL, owner TEXT NOT NULL, data TEXT NOT NULL, \
     created_ms BIGINT NOT NULL)",
        "CREATE TABLE farm_nonces (nonce TEXT PRIMARY KEY, expires_ms BIGINT NOT NULL)",
        "CREATE TABLE farm_hosts (id TEXT PRIMARY KEY, token_hash TEXT NOT NULL, platform TEXT NOT NULL, \
     measurement TEXT NOT NULL, pubkey TEXT NOT NULL, capacity TEXT NOT NULL, nonce TEXT NOT NULL, evidence TEXT NOT NULL, \
     offer_mcpu BIGINT NOT NULL, offer_memory BIGINT NOT NULL, kinds TEXT NOT NULL, rootfs TEXT NOT NULL, \
     bound_ms BIGINT NOT NULL, last_seen_ms BIGINT NOT NULL)",
        "CREATE TABLE farm_jobs (id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT NOT NULL, security TEXT NOT NULL, \
     spec TEXT NOT NULL, eligible TEXT NOT NULL, rootfs TEXT NOT NULL, mcpu BIGINT NOT NULL, memory BIGINT NOT NULL, \
     state TEXT NOT NULL, host TEXT, lease TEXT, lease_until_ms BIGINT NOT NULL, attempts BIGINT NOT NULL, \
     reasons TEXT NOT NULL, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, success BIGINT, result TEXT, \
     receipt TEXT)",
        "CREATE INDEX farm_jobs_state ON farm_jobs (state, created_ms)",
        "CREATE INDEX farm_jobs_owner ON farm_jobs (owner, created_ms)",
    ],
    &[
        // Who stored each file (they may read it back) and whether they pinned it against collection.
        "CREATE TABLE farm_file_owners (sha256 TEXT NOT NULL, owner TEXT NOT NULL, pinned BIGINT NOT NULL, \
     PRIMARY KEY (sha256, owner))",
        "INSERT INTO farm_file_owners (sha256, owner, pinned) SELECT sha256, owner, 0 FROM farm_files",
        // When a file was last stored (again): unpinned files unused for the retention are collected.
        "ALTER TABLE farm_files ADD COLUMN touched_ms BIGINT NOT NULL DEFAULT 0",
        "UPDATE farm_files SET touched_ms = created_ms",
        "CREATE INDEX farm_hosts_token ON farm_hosts (token_hash)",
    ],
];

/// How the farm runs.
#[derive(Debug, Clone)]
pub struct FarmConfig {
    /// Registration nonces each source address may ask for per minute (0: no limit).
    pub nonces_per_minute: u32,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// Runs a job may have before it fails (each lease that expires is one).
    pub max_attempts: u32,
    /// The largest job file.
    pub max_file_bytes: usize,
    /// Unpinned job files no queued or running job names are deleted once not stored again for
    /// this long.
    pub file_retention: Duration,
    /// A host not seen for this long is offline.
    pub host_timeout: Duration,
    /// A host id may be taken by a registration without its token only after the host was not
    /// seen for this long (a restarted host presents the token it kept and reclaims it at once).
    pub host_reclaim: Duration,
}

impl Default for FarmConfig {
    fn default() -> FarmConfig {
        FarmConfig {
            nonces_per_minute: 60,
            lease: Duration::from_secs(10),
            max_attempts: 3,
            max_file_bytes: 32 << 20,
            file_retention: Duration::from_secs(24 * 3600),
            host_timeout: Duration::from_secs(15),
            host_reclaim: Duration::from_secs(3600),
        }
    }
}

/// Live nonces at most (anonymous callers cannot grow the table past it).
const MAX_NONCES: i64 = 10_000;
const NONCE_TTL_MS: i64 = 60_000;

/// The farm's operations.
#[derive(Debug, Clone)]
pub struct Farm {
    db: Database,
    audit: AuditLog,
    identity: Arc<enclava_identity::Identity>,
    config: FarmConfig,
    /// Woken when a job becomes queued (hosts waiting for work ask again).
    queued: Arc<tokio::sync::Notify>,
    /// Submissions waiting for the next group commit.
    submissions: tokio::sync::mpsc::Sender<Pending>,
    /// Nonces per source address.
    nonce_limit: Option<Arc<enclava_server::limit::RateLimiter>>,
    /// When this server started: no lease expires in its first lease period, since hosts could
    /// not renew while it was down.
    started_ms: i64,
}

/// A submission waiting for its commit.
#[derive(Debug)]
struct Pending {
    owner: String,
    spec: JobSpec,
    json: String,
    reply: tokio::sync::oneshot::Sender<Result<JobView, Error>>,
}

impl Pending {
    /// Whether a stored (or just batched) job under this id is this same submission (a retry):
    /// anything else under the id is refused.
    fn same_job(&self, json: &str, owner: &str) -> Result<(), Error> {
        if json == self.json && owner == self.owner {
            Ok(())
        } else {
            Err(Error::new(ErrorCode::AlreadyExists, "another job has this id: choose a new one"))
        }
    }
}

/// Records that a host was seen (it leased or renewed).
async fn touch_host(w: &mut enclava_store::Write, host: &str, now: i64) -> Result<(), Error> {
    sqlx::query("UPDATE farm_hosts SET last_seen_ms = $1 WHERE id = $2").bind(now).bind(host).execute(&mut **w).await?;
    Ok(())
}

/// Submissions committed together at most.
const BATCH: usize = 128;
/// Jobs in one submission at most.
pub const MAX_BATCH: usize = 256;

fn stopped() -> Error {
    Error::unavailable("the farm stopped before the job was stored: submit it again")
}

/// Who reads a job file.
#[derive(Debug, Clone)]
pub enum Reader {
    User(Principal),
    Host(Host),
}

fn no_file(hash: &str) -> Error {
    Error::not_found(format!("no job file {} that you may read", enclava_core::text::quote(hash)))
}

/// A host as its token identifies it.
#[derive(Debug, Clone)]
pub struct Host {
    pub id: String,
    pub platform: String,
}

fn conflict(m: impl Into<String>) -> Error {
    Error::new(ErrorCode::FailedPrecondition, m)
}

fn job_view(r: &AnyRow) -> Result<JobView, Error> {
    let security: String = r.try_get("security")?;
    let reasons: String = r.try_get("reasons")?;
    Ok(JobView {
        id: r.try_get("id")?,
        owner: r.try_get("owner")?,
        kind: r.try_get("kind")?,
        security: if security == "confidential" { Security::Confidential } else { Security::Plaintext },
        state: r.try_get("state")?,
        host: r.try_get("host")?,
        host_platform: None,
        attempts: r.try_get::<i64, _>("attempts")?.max(0) as u32,
        reasons: serde_json::from_str(&reasons).unwrap_or_default(),
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
    })
}

const JOB_COLUMNS: &str = "id, owner, kind, security, state, host, attempts, reasons, created_ms, updated_ms";

impl Farm {
    /// Creates the farm's tables when new.
    pub async fn open(
        audit: AuditLog,
        identity: Arc<enclava_identity::Identity>,
        config: FarmConfig,
    ) -> Result<Farm, Error> {
        let db = audit.database().clone();
        db.migrate("farm", MIGRATIONS, None).await?;
        let (submissions, mut rx) = tokio::sync::mpsc::channel::<Pending>(1024);
        let nonce_limit =
            enclava_server::limit::RateLimiter::new(config.nonces_per_minute, Duration::from_secs(60)).map(Arc::new);
        let farm = Farm {
            db,
            audit,
            identity,
            config,
            queued: Arc::new(tokio::sync::Notify::new()),
            submissions,
            nonce_limit,
            started_ms: now_ms(),
        };
        // The committer holds a clone without the sender, so it ends when the last `Farm` does.
        let committer = Farm { submissions: tokio::sync::mpsc::channel(1).0, ..farm.clone() };
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                committer.store_batch(batch).await;
            }
        });
        Ok(farm)
    }

    /// Completes when a job was queued after this was called (see `Notified::enable`).
    pub fn queued(&self) -> &tokio::sync::Notify {
        &self.queued
    }

    pub fn config(&self) -> &FarmConfig {
        &self.config
    }

    pub fn identity(&self) -> &Arc<enclava_identity::Identity> {
        &self.identity
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Stores a job file for `owner` (who may then read it back); its SHA-256 (hex) names it.
    /// Storing the same bytes again changes nothing but the file's retention clock; `pin` keeps
    /// it from collection until unpinned.
    pub async fn add_file(&self, owner: &str, bytes: &[u8], pin: bool) -> Result<String, Error> {
        if bytes.len() > self.config.max_file_bytes {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!("a job file is at most {} MiB", self.config.max_file_bytes >> 20),
            ));
        }
        let hash = enclava_contracts::farm::sha256_hex(bytes);
        let now = now_ms();
        // Read first: a file stored recently, by this owner, pinned as asked, needs no write.
        let known = sqlx::query(
            "SELECT f.touched_ms, o.pinned FROM farm_files f LEFT JOIN farm_file_owners o \
             ON o.sha256 = f.sha256 AND o.owner = $2 WHERE f.sha256 = $1",
        )
        .bind(&hash)
        .bind(owner)
        .fetch_optional(self.db.pool())
        .await?;
        if let Some(r) = &known {
            let (touched, pinned): (i64, Option<i64>) = (r.try_get(0)?, r.try_get(1)?);
            let fresh = now - touched < (self.config.file_retention.as_millis() / 4) as i64;
            if fresh && pinned.is_some_and(|p| p == 1 || !pin) {
                return Ok(hash);
            }
        }
        let mut w = self.db.begin_write().await?;
        if known.is_none() {
            sqlx::query(
                "INSERT INTO farm_files (sha256, size, owner, data, created_ms, touched_ms) VALUES ($1, $2, $3, $4, $5, $5) \
                 ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(&hash)
            .bind(bytes.len() as i64)
            .bind(owner)
            .bind(STANDARD.encode(bytes))
            .bind(now)
            .execute(&mut *w)
            .await?;
        }
        let stored = sqlx::query("UPDATE farm_files SET touched_ms = $1 WHERE sha256 = $2")
            .bind(now)
            .bind(&hash)
            .execute(&mut *w)
            .await?
            .rows_affected();
        if stored != 1 {
            // Collected between the read and this write: store it again.
            sqlx::query(
                "INSERT INTO farm_files (sha256, size, owner, data, created_ms, touched_ms) VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(&hash)
            .bind(bytes.len() as i64)
            .bind(owner)
            .bind(STANDARD.encode(bytes))
            .bind(now)
            .execute(&mut *w)
            .await?;
        }
        sqlx::query(
            "INSERT INTO farm_file_owners (sha256, owner, pinned) VALUES ($1, $2, $3) ON CONFLICT (sha256, owner) \
             DO UPDATE SET pinned = CASE WHEN $3 = 1 THEN 1 ELSE farm_file_owners.pinned END",
        )
        .bind(&hash)
        .bind(owner)
        .bind(i64::from(pin))
        .execute(&mut *w)
        .await?;
        w.commit().await?;
        Ok(hash)
    }

    /// Unpins `owner`'s pin on a file (others' pins stay); the file is collected when nothing
    /// else keeps it.
    pub async fn unpin_file(&self, owner: &str, hash: &str) -> Result<(), Error> {
        let mut w = self.db.begin_write().await?;
        let n = sqlx::query("UPDATE farm_file_owners SET pinned = 0 WHERE sha256 = $1 AND owner = $2")
            .bind(hash)
            .bind(owner)
            .execute(&mut *w)
            .await?
            .rows_affected();
        w.commit().await?;
        if n == 0 {
            return Err(no_file(hash));
        }
        Ok(())
    }

    /// A job file's bytes, for a reader who may see them: a user who stored it (or an admin), or
    /// a host holding the lease of a job that names it. Anyone else is told there is no such
    /// file.
    pub async fn file(&self, reader: &Reader, hash: &str) -> Result<Vec<u8>, Error> {
        let allowed = match reader {
            Reader::User(p) if p.is_admin() => true,
            Reader::User(p) => sqlx::query("SELECT 1 FROM farm_file_owners WHERE sha256 = $1 AND owner = $2")
                .bind(hash)
                .bind(&p.id)
                .fetch_optional(self.db.pool())
                .await?
                .is_some(),
            Reader::Host(h) => sqlx::query("SELECT spec FROM farm_jobs WHERE host = $1 AND state = 'running'")
                .bind(&h.id)
                .fetch_all(self.db.pool())
                .await?
                .iter()
                .filter_map(|r| r.try_get::<String, _>(0).ok())
                .filter_map(|s| serde_json::from_str::<JobSpec>(&s).ok())
                .any(|spec| spec.files().contains(&hash)),
        };
        if !allowed {
            return Err(no_file(hash));
        }
        let row = sqlx::query("SELECT data FROM farm_files WHERE sha256 = $1")
            .bind(hash)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| no_file(hash))?;
        let data: String = row.try_get(0)?;
        STANDARD.decode(data).map_err(|_| Error::internal("a stored job file is damaged"))
    }

    /// Deletes job files nobody pinned, no queued or running job names, and not stored again for
    /// the retention; returns how many.
    pub async fn collect_files(&self) -> Result<u64, Error> {
        let cutoff = now_ms() - self.config.file_retention.as_millis() as i64;
        let candidates: Vec<String> = sqlx::query(
            "SELECT sha256 FROM farm_files WHERE touched_ms < $1 AND NOT EXISTS \
             (SELECT 1 FROM farm_file_owners o WHERE o.sha256 = farm_files.sha256 AND o.pinned = 1) LIMIT 1024",
        )
        .bind(cutoff)
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        let mut w = self.db.begin_write().await?;
        // Read under the write lock: a job submitted meanwhile keeps its files.
        let mut keep = std::collections::BTreeSet::new();
        for r in
            sqlx::query("SELECT spec FROM farm_jobs WHERE state IN ('queued', 'running')").fetch_all(&mut *w).await?
        {
            if let Ok(spec) = serde_json::from_str::<JobSpec>(&r.try_get::<String, _>(0)?) {
                keep.extend(spec.files().into_iter().map(str::to_owned));
            }
        }
        let mut deleted = 0;
        for h in candidates.iter().filter(|h| !keep.contains(*h)) {
            let n = sqlx::query(
                "DELETE FROM farm_files WHERE sha256 = $1 AND touched_ms < $2 AND NOT EXISTS \
                 (SELECT 1 FROM farm_file_owners o WHERE o.sha256 = farm_files.sha256 AND o.pinned = 1)",
            )
            .bind(h)
            .bind(cutoff)
            .execute(&mut *w)
            .await?
            .rows_affected();
            if n == 1 {
                sqlx::query("DELETE FROM farm_file_owners WHERE sha256 = $1").bind(h).execute(&mut *w).await?;
                deleted += 1;
            }
        }
        w.commit().await?;
        if deleted > 0 {
            tracing::info!(files = deleted, "unused job files collected");
        }
        Ok(deleted)
    }

    /// Whether `source` may download a bandwidth probe now (the same limit as nonces).
    pub fn allow_probe(&self, source: Option<std::net::IpAddr>) -> Result<(), Error> {
        match self.nonce_limit.as_ref().map(|l| l.check(source)) {
            Some(Err(secs)) => Err(Error::rate_limited("bandwidth probes", secs)),
            _ => Ok(()),
        }
    }

    /// A one-use nonce a host binds into its registration's evidence (valid 60 s), within the
    /// per-source limit for `source` (the caller's address, when known).
    pub async fn nonce(&self, source: Option<std::net::IpAddr>) -> Result<String, Error> {
        if let Some(Err(secs)) = self.nonce_limit.as_ref().map(|l| l.check(source)) {
            return Err(Error::rate_limited("registration nonces", secs));
        }
        let now = now_ms();
        let mut w = self.db.begin_write().await?;
        sqlx::query("DELETE FROM farm_nonces WHERE expires_ms < $1").bind(now).execute(&mut *w).await?;
        let live: i64 = sqlx::query("SELECT COUNT(*) FROM farm_nonces").fetch_one(&mut *w).await?.try_get(0)?;
        if live >= MAX_NONCES {
            return Err(Error { retry_after: Some(5), ..Error::unavailable("too many hosts registering at once") });
        }
        let nonce = random_hex(32);
        sqlx::query("INSERT INTO farm_nonces (nonce, expires_ms) VALUES ($1, $2)")
            .bind(&nonce)
            .bind(now + NONCE_TTL_MS)
            .execute(&mut *w)
            .await?;
        w.commit().await?;
        Ok(nonce)
    }

    /// Registers a host, or re-binds its key and capacity: the nonce must be one this farm issued
    /// and unused. A host still online re-registers only with its current token. Returns the
    /// host's new token.
    pub async fn register(&self, reg: &HostRegistration, token: Option<&str>) -> Result<String, Error> {
        let id_ok = !reg.id.is_empty()
            && reg.id.len() <= 128
            && reg.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if !id_ok {
            return Err(Error::invalid("a host id is 1-128 letters, digits, '.', '_', ':' or '-'"));
        }
        let capacity: HostCapacity = serde_json::from_str(&reg.capacity)
            .map_err(|e| Error::invalid(format!("the capacity is not a capacity: {e}")))?;
        if !(capacity.offer_cores > 0.0 && capacity.offer_cores <= capacity.cores + 1e-9)
            || capacity.offer_memory_bytes == 0
            || capacity.offer_memory_bytes > capacity.memory_bytes
        {
            return Err(Error::invalid("the offer exceeds the measured capacity (or offers nothing)"));
        }
        if reg.pubkey.len() != 32 {
            return Err(Error::invalid("a host key is 32 bytes (X25519)"));
        }
        let attests = reg.platform != "plaintext";
        if attests && reg.evidence.is_empty() {
            return Err(Error::invalid(format!(
                "a {} host must send evidence",
                enclava_core::text::quote(&reg.platform)
            )));
        }
        let now = now_ms();
        let mut w = self.db.begin_write().await?;
        let used = sqlx::query("DELETE FROM farm_nonces WHERE nonce = $1 AND expires_ms >= $2")
            .bind(&reg.nonce)
            .bind(now)
            .execute(&mut *w)
            .await?
            .rows_affected();
        if used != 1 {
            return Err(Error::new(ErrorCode::Stale, "the nonce is unknown, used or expired: ask for a new one"));
        }
        let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT token_hash, last_seen_ms FROM farm_hosts WHERE id = $1{}",
            self.db.lock_clause()
        )))
        .bind(&reg.id)
        .fetch_optional(&mut *w)
        .await?;
        // A host re-binding with its current token keeps it (its running jobs use it).
        let mut keep = false;
        if let Some(row) = existing {
            let hash: String = row.try_get(0)?;
            let seen: i64 = row.try_get(1)?;
            let recent = now - seen < self.config.host_reclaim.as_millis() as i64;
            keep = token.is_some_and(|t| enclava_identity::token_hash(t) == hash);
            if recent && !keep {
                return Err(Error::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "host id {} was seen {} s ago: only its holder re-registers (with the token it kept in \
                         its work folder); another host may take the id after {} s away",
                        enclava_core::text::quote(&reg.id),
                        (now - seen).max(0) / 1000,
                        self.config.host_reclaim.as_secs()
                    ),
                ));
            }
        }
        let new_token = match token {
            Some(t) if keep => t.to_owned(),
            _ => format!("ekh_{}", random_hex(32)),
        };
        sqlx::query("DELETE FROM farm_hosts WHERE id = $1").bind(&reg.id).execute(&mut *w).await?;
        sqlx::query(
            "INSERT INTO farm_hosts (id, token_hash, platform, measurement, pubkey, capacity, nonce, evidence, offer_mcpu, \
             offer_memory, kinds, rootfs, bound_ms, last_seen_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&reg.id)
        .bind(enclava_identity::token_hash(&new_token))
        .bind(&reg.platform)
        .bind(&reg.measurement)
        .bind(STANDARD.encode(&reg.pubkey))
        .bind(&reg.capacity)
        .bind(&reg.nonce)
        .bind(STANDARD.encode(&reg.evidence))
        .bind((capacity.offer_cores * 1000.0) as i64)
        .bind(capacity.offer_memory_bytes as i64)
        .bind(format!(",{},", capacity.kinds.join(",")))
        .bind(format!(",{},", capacity.rootfs.join(",")))
        .bind(now)
        .bind(now)
        .execute(&mut *w)
        .await?;
        w.commit().await?;
        tracing::info!(host = %reg.id, platform = %reg.platform, cores = capacity.offer_cores, "farm host registered");
        Ok(new_token)
    }

    /// The host a token belongs to.
    pub async fn host(&self, token: &str) -> Result<Host, Error> {
        let row = sqlx::query("SELECT id, platform FROM farm_hosts WHERE token_hash = $1")
            .bind(enclava_identity::token_hash(token))
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(enclava_identity::unauthenticated)?;
        Ok(Host { id: row.try_get(0)?, platform: row.try_get(1)? })
    }

    /// Every host, with its load.
    pub async fn hosts(&self) -> Result<Vec<HostView>, Error> {
        let now = now_ms();
        let rows = sqlx::query(
            "SELECT h.id, h.platform, h.measurement, h.pubkey, h.capacity, h.nonce, h.evidence, h.last_seen_ms, h.bound_ms, \
             COUNT(j.id), CAST(COALESCE(SUM(j.mcpu), 0) AS BIGINT), CAST(COALESCE(SUM(j.memory), 0) AS BIGINT) FROM farm_hosts h \
             LEFT JOIN farm_jobs j ON j.host = h.id AND j.state = 'running' \
             GROUP BY h.id, h.platform, h.measurement, h.pubkey, h.capacity, h.nonce, h.evidence, h.last_seen_ms, h.bound_ms \
             ORDER BY h.id",
        )
        .fetch_all(self.db.pool())
        .await?;
        let timeout = self.config.host_timeout.as_millis() as i64;
        rows.iter()
            .map(|r| {
                let platform: String = r.try_get(1)?;
                let last_seen: i64 = r.try_get(7)?;
                let decode = |s: String| STANDARD.decode(s).map_err(|_| Error::internal("a stored host is damaged"));
                Ok(HostView {
                    id: r.try_get(0)?,
                    status: security_status(&platform).to_owned(),
                    platform,
                    measurement: r.try_get(2)?,
                    pubkey: decode(r.try_get(3)?)?,
                    capacity: r.try_get(4)?,
                    nonce: r.try_get(5)?,
                    evidence: decode(r.try_get(6)?)?,
                    online: now - last_seen < timeout,
                    last_seen_ms: last_seen,
                    bound_at_ms: r.try_get(8)?,
                    running: r.try_get::<i64, _>(9)?.max(0) as u64,
                    cpu_used: r.try_get::<i64, _>(10)? as f64 / 1000.0,
                    memory_used: r.try_get::<i64, _>(11)?.max(0) as u64,
                })
            })
            .collect()
    }

    /// Accepts jobs (at most [`MAX_BATCH`]): each answered on its own, as [`Farm::submit`] would,
    /// committed with whatever else arrives together.
    pub async fn submit_many(&self, owner: &str, specs: &[JobSpec]) -> Result<Vec<Result<JobView, Error>>, Error> {
        if specs.len() > MAX_BATCH {
            return Err(Error::invalid(format!("at most {MAX_BATCH} jobs in one submission")));
        }
        let mut answers = Vec::with_capacity(specs.len());
        for spec in specs {
            answers.push(self.enqueue(owner, spec).await?);
        }
        let mut out = Vec::with_capacity(answers.len());
        for a in answers {
            out.push(match a {
                Ok(rx) => rx.await.map_err(|_| stopped())?,
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }

    /// Hands a valid job to the group committer; `Err` inside for a job that is not valid.
    async fn enqueue(
        &self,
        owner: &str,
        spec: &JobSpec,
    ) -> Result<Result<tokio::sync::oneshot::Receiver<Result<JobView, Error>>, Error>, Error> {
        if let Err(e) = spec.validate() {
            return Ok(Err(Error::invalid(e)));
        }
        let json = serde_json::to_string(spec).map_err(|e| Error::internal(e.to_string()))?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = Pending { owner: owner.to_owned(), spec: spec.clone(), json, reply };
        self.submissions
            .send(pending)
            .await
            .map_err(|_| Error::unavailable("the farm is stopping: submit again shortly"))?;
        Ok(Ok(answer))
    }

    /// Accepts a job. A job submitted again with the same id and spec is the same job.
    /// Submissions arriving together commit together (one transaction, one sync): each is
    /// answered only after that commit.
    pub async fn submit(&self, owner: &str, spec: &JobSpec) -> Result<JobView, Error> {
        let answer = self.enqueue(owner, spec).await??;
        answer.await.map_err(|_| stopped())?
    }

    /// Stores a batch of submissions in one transaction; every one gets its own answer after the
    /// commit (or the store's error, with nothing stored).
    async fn store_batch(&self, batch: Vec<Pending>) {
        let mut answers: Vec<Result<JobView, Error>> = Vec::with_capacity(batch.len());
        let result: Result<(), Error> = async {
            let mut w = self.db.begin_write().await?;
            let now = now_ms();
            let mut taken = std::collections::BTreeMap::new();
            for p in &batch {
                answers.push(Self::insert(&mut w, p, now, &mut taken).await?);
            }
            w.commit().await
        }
        .await;
        if let Err(e) = result {
            answers = batch.iter().map(|_| Err(e.clone())).collect();
        } else if answers.iter().any(Result::is_ok) {
            self.queued.notify_waiters();
        }
        for (p, a) in batch.into_iter().zip(answers) {
            let _ = p.reply.send(a);
        }
    }

    /// One submission inside a batch's transaction: `Ok(Err)` refuses it alone.
    async fn insert(
        w: &mut enclava_store::Write,
        p: &Pending,
        now: i64,
        taken: &mut std::collections::BTreeMap<String, (String, String, JobView)>,
    ) -> Result<Result<JobView, Error>, Error> {
        let spec = &p.spec;
        // The same job twice in one batch (a client's retry).
        if let Some((json, owner, view)) = taken.get(&spec.id) {
            return Ok(p.same_job(json, owner).map(|()| view.clone()));
        }
        if let Some(row) =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {JOB_COLUMNS}, spec FROM farm_jobs WHERE id = $1")))
                .bind(&spec.id)
                .fetch_optional(&mut **w)
                .await?
        {
            let (json, owner): (String, String) = (row.try_get("spec")?, row.try_get("owner")?);
            return Ok(p.same_job(&json, &owner).and_then(|()| job_view(&row)));
        }
        // Only files the submitter stored (so proved it has): a job naming another user's file
        // would read it out through its output.
        for f in spec.files() {
            let found = sqlx::query(
                "SELECT 1 FROM farm_files f JOIN farm_file_owners o ON o.sha256 = f.sha256 WHERE f.sha256 = $1 \
                 AND o.owner = $2",
            )
            .bind(f)
            .bind(&p.owner)
            .fetch_optional(&mut **w)
            .await?;
            if found.is_none() {
                return Ok(Err(Error::invalid(format!(
                    "the job names file {}… which you have not stored in the farm: add it first (`enclava file add`)",
                    enclava_core::text::prefix(f, 16)
                ))));
            }
        }
        let eligible = match spec.security {
            Security::Plaintext => "*".to_owned(),
            Security::Confidential => format!(",{},", spec.key_wraps.keys().cloned().collect::<Vec<_>>().join(",")),
        };
        sqlx::query(
            "INSERT INTO farm_jobs (id, owner, kind, security, spec, eligible, rootfs, mcpu, memory, state, host, lease, \
             lease_until_ms, attempts, reasons, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', NULL, NULL, 0, 0, '[]', $10, $10)",
        )
        .bind(&spec.id)
        .bind(&p.owner)
        .bind(spec.executor())
        .bind(spec.security.as_str())
        .bind(&p.json)
        .bind(&eligible)
        .bind(match (spec.kind.as_str(), &spec.rootfs) {
            ("process", None) => "busybox".to_owned(),
            (_, r) => r.clone().unwrap_or_default(),
        })
        .bind((spec.cpu * 1000.0).ceil() as i64)
        .bind(spec.memory_bytes as i64)
        .bind(now)
        .execute(&mut **w)
        .await?;
        let view = JobView {
            id: spec.id.clone(),
            owner: p.owner.clone(),
            kind: spec.executor().to_owned(),
            security: spec.security,
            state: "queued".into(),
            host: None,
            host_platform: None,
            attempts: 0,
            reasons: Vec::new(),
            created_ms: now,
            updated_ms: now,
        };
        taken.insert(spec.id.clone(), (p.json.clone(), p.owner.clone(), view.clone()));
        Ok(Ok(view))
    }

    async fn job_row(&self, id: &str) -> Result<(JobView, AnyRow), Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {JOB_COLUMNS}, success, result, receipt FROM farm_jobs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| Error::not_found(format!("no job {}", enclava_core::text::quote(id))))?;
        let mut view = job_view(&row)?;
        if let Some(h) = &view.host {
            view.host_platform = sqlx::query("SELECT platform FROM farm_hosts WHERE id = $1")
                .bind(h)
                .fetch_optional(self.db.pool())
                .await?
                .and_then(|r| r.try_get(0).ok());
        }
        Ok((view, row))
    }

    fn may_see(caller: &Principal, view: &JobView) -> Result<(), Error> {
        if caller.id == view.owner || caller.is_admin() {
            Ok(())
        } else {
            Err(Error::not_found(format!("no job {}", enclava_core::text::quote(&view.id))))
        }
    }

    /// One job, for its owner (or an administrator).
    pub async fn job(&self, caller: &Principal, id: &str) -> Result<JobView, Error> {
        let (view, _) = self.job_row(id).await?;
        Self::may_see(caller, &view)?;
        Ok(view)
    }

    /// The caller's jobs, newest first (an administrator's: everyone's).
    pub async fn jobs(&self, caller: &Principal, limit: u32) -> Result<Vec<JobView>, Error> {
        let limit = i64::from(limit.clamp(1, 1000));
        let rows = if caller.is_admin() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {JOB_COLUMNS} FROM farm_jobs ORDER BY created_ms DESC, id LIMIT $1"
            )))
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?
        } else {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {JOB_COLUMNS} FROM farm_jobs WHERE owner = $1 ORDER BY created_ms DESC, id LIMIT $2"
            )))
            .bind(&caller.id)
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?
        };
        rows.iter().map(job_view).collect()
    }

    /// A finished job's result and receipt.
    pub async fn output(&self, caller: &Principal, id: &str) -> Result<JobOutput, Error> {
        let (view, row) = self.job_row(id).await?;
        Self::may_see(caller, &view)?;
        let (Some(success), Some(result), Some(receipt)) = (
            row.try_get::<Option<i64>, _>("success")?,
            row.try_get::<Option<String>, _>("result")?,
            row.try_get::<Option<String>, _>("receipt")?,
        ) else {
            return Err(conflict(format!("job {} has no result yet: it is {}", view.id, view.state)));
        };
        Ok(JobOutput {
            success: success != 0,
            result: STANDARD.decode(result).map_err(|_| Error::internal("a stored result is damaged"))?,
            receipt: serde_json::from_str::<SignedReceipt>(&receipt)
                .map_err(|_| Error::internal("a stored receipt is damaged"))?,
        })
    }

    /// Cancels a queued or running job (its host learns it at its next renewal).
    pub async fn cancel(&self, caller: &Principal, id: &str) -> Result<JobView, Error> {
        let view = self.job(caller, id).await?;
        let mut w = self.db.begin_write().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT state, reasons FROM farm_jobs WHERE id = $1{}",
            self.db.lock_clause()
        )))
        .bind(id)
        .fetch_one(&mut *w)
        .await?;
        let state: String = row.try_get(0)?;
        if !matches!(state.as_str(), "queued" | "running") {
            return Err(conflict(format!("job {} is already {state}", view.id)));
        }
        let reasons = push_reason(&row.try_get::<String, _>(1)?, &format!("cancelled by {}", caller.id));
        sqlx::query(
            "UPDATE farm_jobs SET state = 'cancelled', reasons = $1, updated_ms = $2 WHERE id = $3 \
             AND state IN ('queued', 'running')",
        )
        .bind(&reasons)
        .bind(now_ms())
        .bind(id)
        .execute(&mut *w)
        .await?;
        w.commit().await?;
        self.job(caller, id).await
    }

    /// Places up to `max` queued jobs on `host` and leases them to it: only jobs it may run (any
    /// plaintext job; a confidential one whose submitter sealed its key to this host), of an
    /// executor and root filesystem it offers, within its free cores and memory. Among the oldest
    /// queued jobs, those whose files are all in `cached` (the host has them) go first.
    pub async fn lease(
        &self,
        host: &Host,
        max: u32,
        cached: &std::collections::BTreeSet<&str>,
    ) -> Result<Vec<Leased>, Error> {
        let now = now_ms();
        // Nothing this host may take: no write (and no sync), unless its heartbeat is due.
        let pattern = format!("%,{},%", host.id);
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM farm_jobs WHERE state = 'queued' AND (eligible = '*' OR eligible LIKE $1)), \
             (SELECT last_seen_ms FROM farm_hosts WHERE id = $2)",
        )
        .bind(&pattern)
        .bind(&host.id)
        .fetch_one(self.db.pool())
        .await?;
        let (waiting, seen): (i64, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
        let Some(seen) = seen else { return Err(enclava_identity::unauthenticated()) };
        if waiting == 0 && now - seen < 1000 {
            return Ok(Vec::new());
        }
        let mut w = self.db.begin_write().await?;
        // The heartbeat write locks the host's row first: two leases for one host (two replicas)
        // take turns, so neither counts the other's jobs as free capacity.
        touch_host(&mut w, &host.id, now).await?;
        let h = sqlx::query("SELECT offer_mcpu, offer_memory, kinds, rootfs FROM farm_hosts WHERE id = $1")
            .bind(&host.id)
            .fetch_optional(&mut *w)
            .await?
            .ok_or_else(enclava_identity::unauthenticated)?;
        let (offer_mcpu, offer_memory): (i64, i64) = (h.try_get(0)?, h.try_get(1)?);
        let (kinds, rootfs): (String, String) = (h.try_get(2)?, h.try_get(3)?);
        let used = sqlx::query(
            "SELECT CAST(COALESCE(SUM(mcpu), 0) AS BIGINT), CAST(COALESCE(SUM(memory), 0) AS BIGINT) FROM farm_jobs WHERE host = $1 AND state = 'running'",
        )
        .bind(&host.id)
        .fetch_one(&mut *w)
        .await?;
        let (mut free_mcpu, mut free_memory) =
            (offer_mcpu - used.try_get::<i64, _>(0)?, offer_memory - used.try_get::<i64, _>(1)?);
        let skip = if self.db.backend() == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let candidates = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, kind, rootfs, mcpu, memory, spec, attempts FROM farm_jobs WHERE state = 'queued' \
             AND (eligible = '*' OR eligible LIKE $1) ORDER BY created_ms, id LIMIT 256{skip}"
        )))
        .bind(&pattern)
        .fetch_all(&mut *w)
        .await?;
        let lease_ms = self.config.lease.as_millis() as i64;
        let mut out = Vec::new();
        let mut candidates: Vec<(bool, AnyRow, JobSpec)> = candidates
            .into_iter()
            .map(|r| {
                let job: JobSpec = serde_json::from_str(&r.try_get::<String, _>(5)?)
                    .map_err(|_| Error::internal("a stored job is damaged"))?;
                let warm = !cached.is_empty() && job.files().iter().all(|f| cached.contains(f));
                Ok((warm, r, job))
            })
            .collect::<Result<_, Error>>()?;
        // Stable: warm jobs first, each group still oldest first.
        candidates.sort_by_key(|(warm, _, _)| !warm);
        for (_, r, job) in candidates {
            if out.len() >= max as usize {
                break;
            }
            let (kind, fs): (String, String) = (r.try_get(1)?, r.try_get(2)?);
            let (mcpu, memory): (i64, i64) = (r.try_get(3)?, r.try_get(4)?);
            if !kinds.contains(&format!(",{kind},"))
                || (kind == "process" && !rootfs.contains(&format!(",{fs},")))
                || mcpu > free_mcpu
                || memory > free_memory
            {
                continue;
            }
            let id: String = r.try_get(0)?;
            // LIKE only narrows the search: the job must name this host exactly.
            if job.security == Security::Confidential && !job.key_wraps.contains_key(&host.id) {
                continue;
            }
            let lease = random_hex(16);
            let attempt = r.try_get::<i64, _>(6)? + 1;
            sqlx::query(
                "UPDATE farm_jobs SET state = 'running', host = $1, lease = $2, lease_until_ms = $3, attempts = $4, \
                 updated_ms = $5 WHERE id = $6",
            )
            .bind(&host.id)
            .bind(&lease)
            .bind(now + lease_ms)
            .bind(attempt)
            .bind(now)
            .bind(&id)
            .execute(&mut *w)
            .await?;
            free_mcpu -= mcpu;
            free_memory -= memory;
            out.push(Leased { job, lease, attempt: attempt as u32, lease_ms: lease_ms as u64 });
        }
        w.commit().await?;
        for l in &out {
            tracing::info!(job = %l.job.id, host = %host.id, attempt = l.attempt, "job placed");
        }
        Ok(out)
    }

    /// Extends a lease. Fails when the job was cancelled or re-queued: the host stops running it.
    pub async fn renew(&self, host: &Host, id: &str, lease: &str) -> Result<u64, Error> {
        let now = now_ms();
        let lease_ms = self.config.lease.as_millis() as i64;
        let mut w = self.db.begin_write().await?;
        let n = sqlx::query(
            "UPDATE farm_jobs SET lease_until_ms = $1 WHERE id = $2 AND host = $3 AND lease = $4 AND state = 'running'",
        )
        .bind(now + lease_ms)
        .bind(id)
        .bind(&host.id)
        .bind(lease)
        .execute(&mut *w)
        .await?
        .rows_affected();
        touch_host(&mut w, &host.id, now).await?;
        w.commit().await?;
        if n == 1 {
            Ok(lease_ms as u64)
        } else {
            Err(conflict("this lease is no longer held (the job was cancelled or placed again): stop running it"))
        }
    }

    /// Records a job's result and receipt, with the receipt in the audit log. Only the current
    /// lease's completion counts; the same completion sent again is acknowledged again.
    pub async fn complete(&self, host: &Host, id: &str, c: &Completion) -> Result<(), Error> {
        let receipt_json = serde_json::to_string(&c.receipt).map_err(|e| Error::internal(e.to_string()))?;
        let receipt: enclava_contracts::farm::Receipt = serde_json::from_str(&c.receipt.receipt)
            .map_err(|e| Error::invalid(format!("the receipt is not a receipt: {e}")))?;
        if receipt.job != id || receipt.host != host.id {
            return Err(Error::invalid("the receipt names another job or host"));
        }
        let mut tx = self.audit.begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT state, host, lease, owner, reasons FROM farm_jobs WHERE id = $1{}",
            self.db.lock_clause()
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::not_found(format!("no job {}", enclava_core::text::quote(id))))?;
        let (state, holder, lease): (String, Option<String>, Option<String>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let ours = holder.as_deref() == Some(host.id.as_str()) && lease.as_deref() == Some(c.lease.as_str());
        if !ours {
            return Err(conflict("this lease is no longer held: the job was placed again, its result is not kept"));
        }
        match state.as_str() {
            "running" => {}
            "succeeded" | "failed" => return Ok(()),
            other => return Err(conflict(format!("the job is {other}: its result is not kept"))),
        }
        let owner: String = row.try_get(3)?;
        let now = now_ms();
        let outcome = if c.success { "succeeded" } else { "failed" };
        let reasons =
            push_reason(&row.try_get::<String, _>(4)?, &format!("{outcome} on {}: {}", host.id, receipt.outcome));
        sqlx::query(
            "UPDATE farm_jobs SET state = $1, success = $2, result = $3, receipt = $4, reasons = $5, updated_ms = $6 \
             WHERE id = $7",
        )
        .bind(outcome)
        .bind(i64::from(c.success))
        .bind(STANDARD.encode(&c.result))
        .bind(&receipt_json)
        .bind(&reasons)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let detail = format!(
            "{outcome}; receipt sha256 {}; output sha256 {}",
            enclava_contracts::farm::sha256_hex(c.receipt.receipt.as_bytes()),
            receipt.output_sha256
        );
        tx.commit(&[AuditEntry::new(
            now,
            &format!("host:{}", host.id),
            "farm-receipt",
            id,
            &host.platform,
            &owner,
            &detail,
        )])
        .await?;
        tracing::info!(job = %id, host = %host.id, %outcome, "job finished");
        Ok(())
    }

    /// Re-queues jobs whose lease expired (their host stopped renewing), or fails them after the
    /// last attempt; returns how many it moved.
    pub async fn sweep(&self) -> Result<u64, Error> {
        let now = now_ms();
        if now - self.started_ms < self.config.lease.as_millis() as i64 {
            return Ok(0);
        }
        let mut w = self.db.begin_write().await?;
        // Replicas sweep side by side: each takes rows no other holds, and moves a job only if its
        // lease is still the expired one it read (a renewal or completion in between wins).
        let skip = if self.db.backend() == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let expired = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, host, attempts, reasons, lease FROM farm_jobs WHERE state = 'running' AND lease_until_ms < $1 \
             LIMIT 256{skip}"
        )))
        .bind(now)
        .fetch_all(&mut *w)
        .await?;
        let mut moved = 0u64;
        for r in &expired {
            let (id, host): (String, Option<String>) = (r.try_get(0)?, r.try_get(1)?);
            let lease: Option<String> = r.try_get(4)?;
            let attempts: i64 = r.try_get(2)?;
            let last = attempts >= i64::from(self.config.max_attempts);
            let reason = format!(
                "host {} stopped renewing its lease (attempt {attempts} of {}){}",
                host.unwrap_or_default(),
                self.config.max_attempts,
                if last { ": no attempts left" } else { ": queued again" }
            );
            let reasons = push_reason(&r.try_get::<String, _>(3)?, &reason);
            let n = sqlx::query(
                "UPDATE farm_jobs SET state = $1, host = NULL, lease = NULL, reasons = $2, updated_ms = $3 WHERE id = $4 \
                 AND state = 'running' AND lease = $5 AND lease_until_ms < $6",
            )
            .bind(if last { "failed" } else { "queued" })
            .bind(&reasons)
            .bind(now)
            .bind(&id)
            .bind(&lease)
            .bind(now)
            .execute(&mut *w)
            .await?
            .rows_affected();
            if n == 1 {
                tracing::warn!(job = %id, %reason, "lease expired");
                moved += 1;
            }
        }
        w.commit().await?;
        if moved > 0 {
            self.queued.notify_waiters();
        }
        Ok(moved)
    }

    /// Counts of jobs per state, for metrics and health.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, Error> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) FROM farm_jobs GROUP BY state").fetch_all(self.db.pool()).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }
}
