//! Federation (vantage6's model): organisations with public keys, collaborations of them, one node
//! per (organisation, collaboration), tasks with an initiator and a job id shared with their
//! subtasks, and one run per organisation. The server keeps only what it must: each run's input
//! sealed to its organisation's key and its result sealed to the initiator's (readable only in a
//! collaboration created unencrypted). Nodes pull their runs under leases they hold while working,
//! so a node that disconnects, restarts or dies loses nothing and nothing runs twice; a run whose
//! parent task failed or was killed is killed, never restarted.
//!
//! # Layout
//! - [`Fed`]: the operations, on [`enclava_store::Database`], with access decided by the
//!   principal's roles ([`enclava_identity::rules`]) over the collaborations its organisation is
//!   in.
//! - [`rest`]: the REST routes under `/fed/v1`; [`role`]: the `federation` role.

pub mod rest;
pub mod role;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use enclava_contracts::fed::{
    AttestRequest, CollaborationView, CreatedNode, LeasedRun, Link, NewCollaboration, NewNode, NewTask,
    NodeAttestation, NodeView, OrgInput, OrganisationView, RunDone, RunView, TaskView,
};
use enclava_core::{Error, ErrorCode};
use enclava_identity::rules::{Operation, PrincipalKind, Target};
use enclava_identity::{Identity, Principal};
use enclava_store::audit::{AuditEntry, AuditLog};
use enclava_store::{Database, Migrations, now_ms, push_reason, random_hex};
use sqlx::Row;
use sqlx::any::AnyRow;

/// The federation's tables.
pub const MIGRATIONS: Migrations = &[
    &[
        "CREATE TABLE fed_org_keys (org TEXT PRIMARY KEY, pubkey TEXT NOT NULL)",
        "CREATE TABLE fed_collabs (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, encrypted BIGINT NOT NULL, \
     policy TEXT, created_by TEXT NOT NULL, created_ms BIGINT NOT NULL)",
        "CREATE TABLE fed_members (collab TEXT NOT NULL, org TEXT NOT NULL, PRIMARY KEY (collab, org))",
        "CREATE TABLE fed_nodes (id TEXT PRIMARY KEY, service TEXT NOT NULL UNIQUE, org TEXT NOT NULL, collab TEXT NOT NULL, \
     name TEXT NOT NULL, last_seen_ms BIGINT NOT NULL, created_ms BIGINT NOT NULL, UNIQUE (org, collab))",
        "CREATE TABLE fed_algorithms (sha256 TEXT PRIMARY KEY, owner TEXT NOT NULL, data TEXT NOT NULL, created_ms BIGINT NOT NULL)",
        "CREATE TABLE fed_tasks (id TEXT PRIMARY KEY, collab TEXT NOT NULL, name TEXT NOT NULL, initiator TEXT NOT NULL, \
     initiator_org TEXT, parent TEXT, job TEXT NOT NULL, kind TEXT NOT NULL, algorithm TEXT NOT NULL, databases TEXT NOT NULL, \
     result_key TEXT NOT NULL, spec TEXT NOT NULL, created_ms BIGINT NOT NULL)",
        "CREATE INDEX fed_tasks_collab ON fed_tasks (collab, created_ms)",
        "CREATE INDEX fed_tasks_parent ON fed_tasks (parent)",
        "CREATE TABLE fed_runs (id TEXT PRIMARY KEY, task TEXT NOT NULL, org TEXT NOT NULL, input TEXT NOT NULL, \
     state TEXT NOT NULL, node TEXT, lease TEXT, lease_until_ms BIGINT NOT NULL, attempts BIGINT NOT NULL, \
     reasons TEXT NOT NULL, result TEXT, receipt TEXT, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)",
        "CREATE INDEX fed_runs_queue ON fed_runs (org, state, created_ms)",
        "CREATE INDEX fed_runs_task ON fed_runs (task)",
    ],
    &[
        // Attested collaborations: one-use nonces for nodes, and each node's admission.
        "CREATE TABLE fed_nonces (nonce TEXT PRIMARY KEY, node TEXT NOT NULL, expires_ms BIGINT NOT NULL)",
        "CREATE TABLE fed_node_attest (node TEXT PRIMARY KEY, pubkey TEXT NOT NULL, evidence TEXT NOT NULL, \
     nonce TEXT NOT NULL, platform TEXT NOT NULL, measurement TEXT NOT NULL, attested_ms BIGINT NOT NULL, \
     until_ms BIGINT NOT NULL, failure TEXT)",
    ],
];

/// How the federation runs.
#[derive(Debug, Clone)]
pub struct FedConfig {
    /// How long a run's lease lasts without renewal.
    pub lease: Duration,
    /// Leases a run may lose (its node died) before it fails.
    pub max_attempts: u32,
    /// A node not seen for this long is offline.
    pub node_timeout: Duration,
    /// The largest algorithm.
    pub max_algorithm_bytes: usize,
    /// The largest result.
    pub max_result_bytes: usize,
    /// How long a node's admission to an attested collaboration holds before it must attest
    /// again (at most 10 minutes).
    pub attestation_valid: Duration,
    /// Verifies nodes' evidence for attested collaborations.
    pub verifier: Arc<enclava_collateral::EvidenceVerifier>,
}

impl Default for FedConfig {
    fn default() -> FedConfig {
        FedConfig {
            lease: Duration::from_secs(15),
            max_attempts: 3,
            node_timeout: Duration::from_secs(20),
            max_algorithm_bytes: 16 << 20,
            max_result_bytes: 8 << 20,
            attestation_valid: Duration::from_secs(600),
            verifier: Arc::new(enclava_collateral::EvidenceVerifier::default()),
        }
    }
}

/// The federation's operations.
#[derive(Debug, Clone)]
pub struct Fed {
    db: Database,
    audit: AuditLog,
    identity: Arc<Identity>,
    config: FedConfig,
    /// Woken when runs become pending (nodes waiting for work ask again).
    queued: Arc<tokio::sync::Notify>,
    /// When this server started: no lease expires in its first lease period, since nodes could
    /// not renew while it was down.
    started_ms: i64,
}

/// A node as its credential identifies it.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub organisation: String,
    pub collaboration: String,
}

const PREFIX: &str = "/fed/v1";
/// How deep a node's subtasks may nest (a task's subtasks are at depth 1).
const MAX_SUBTASK_DEPTH: usize = 8;

/// A node with its admission, for [`Fed::node_view_row`].
const NODE_SELECT: &str = "SELECT n.id, n.name, n.org, n.collab, n.last_seen_ms, a.pubkey, a.evidence, a.nonce, \
     a.platform, a.measurement, a.attested_ms, a.until_ms, a.failure FROM fed_nodes n \
     LEFT JOIN fed_node_attest a ON a.node = n.id";

fn link(kind: &str, id: &str) -> Link {
    Link { id: id.to_owned(), link: format!("{PREFIX}/{kind}/{id}") }
}

fn no(what: &str, id: &str) -> Error {
    Error::not_found(format!("no {what} {} that you may see", enclava_core::text::quote(id)))
}

fn forbidden(m: &str) -> Error {
    Error::forbidden(m.to_owned())
}

/// The first column of every row `sql` returns for `arg`, as strings.
async fn strings<'c, E>(ex: E, sql: &'static str, arg: &str) -> Result<Vec<String>, Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(sql).bind(arg.to_owned()).fetch_all(ex).await?.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// A task's status from its runs' states.
fn task_status(states: &[String]) -> &'static str {
    let any = |s: &str| states.iter().any(|x| x == s);
    if any("killed") {
        "killed"
    } else if any("failed") || any("not allowed") {
        "failed"
    } else if !states.is_empty() && states.iter().all(|s| s == "completed") {
        "completed"
    } else if any("active") || any("completed") {
        "active"
    } else {
        "pending"
    }
}

impl Fed {
    /// Creates the federation's tables when new.
    pub async fn open(audit: AuditLog, identity: Arc<Identity>, config: FedConfig) -> Result<Fed, Error> {
        let db = audit.database().clone();
        db.migrate("fed", MIGRATIONS, None).await?;
        Ok(Fed { db, audit, identity, config, queued: Arc::new(tokio::sync::Notify::new()), started_ms: now_ms() })
    }

    pub fn config(&self) -> &FedConfig {
        &self.config
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Completes when runs were queued after this was called (see `Notified::enable`).
    pub fn queued(&self) -> &tokio::sync::Notify {
        &self.queued
    }

    /// The caller behind `token`, with the collaborations it reaches: its organisation's (a
    /// node: its own collaboration only).
    pub async fn caller(&self, token: &str) -> Result<Principal, Error> {
        let mut p = self.identity.authenticate(token).await?;
        self.fill(&mut p).await?;
        Ok(p)
    }

    /// Fills in the collaborations `p` reaches.
    pub async fn fill(&self, p: &mut Principal) -> Result<(), Error> {
        p.collaborations = if p.kind == PrincipalKind::Node {
            strings(self.db.pool(), "SELECT collab FROM fed_nodes WHERE service = $1", &p.id).await?
        } else if let Some(org) = &p.organisation {
            self.org_collabs(org).await?
        } else {
            Vec::new()
        };
        Ok(())
    }

    /// The node a node principal is.
    pub async fn node(&self, p: &Principal) -> Result<Node, Error> {
        if p.kind != PrincipalKind::Node {
            return Err(forbidden("only a node's credential may do this"));
        }
        let r = sqlx::query("SELECT id, org, collab FROM fed_nodes WHERE service = $1")
            .bind(&p.id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| forbidden("this node credential belongs to no federation node"))?;
        Ok(Node { id: r.try_get(0)?, organisation: r.try_get(1)?, collaboration: r.try_get(2)? })
    }

    // ---- organisations ----

    /// Resolves an organisation id or name to its id.
    async fn org_id(&self, id_or_name: &str) -> Result<String, Error> {
        let r = sqlx::query("SELECT id FROM organisations WHERE id = $1 OR name = $1")
            .bind(id_or_name)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| Error::not_found(format!("no organisation {}", enclava_core::text::quote(id_or_name))))?;
        Ok(r.try_get(0)?)
    }

    fn org_view(&self, r: &AnyRow) -> Result<OrganisationView, Error> {
        let id: String = r.try_get(0)?;
        let key: Option<String> = r.try_get(2)?;
        Ok(OrganisationView {
            link: link("organisations", &id).link,
            id,
            name: r.try_get(1)?,
            public_key: match key {
                Some(k) => STANDARD.decode(k).map_err(|_| Error::internal("a stored key is damaged"))?,
                None => Vec::new(),
            },
        })
    }

    /// Whether `p` may see organisation `org`: its own, one in a collaboration it reaches, or any
    /// for an administrator.
    async fn may_see_org(&self, p: &Principal, org: &str) -> Result<bool, Error> {
        if p.is_admin() || p.organisation.as_deref() == Some(org) {
            return Ok(true);
        }
        let collabs = self.org_collabs(org).await?;
        Ok(collabs
            .iter()
            .any(|c| p.may(Operation::View, "organisation", &Target { collaboration: Some(c), ..Target::default() })))
    }

    async fn org_collabs(&self, org: &str) -> Result<Vec<String>, Error> {
        strings(self.db.pool(), "SELECT collab FROM fed_members WHERE org = $1", org).await
    }

    /// The organisations `p` may see.
    pub async fn organisations(&self, p: &Principal) -> Result<Vec<OrganisationView>, Error> {
        let rows = sqlx::query(
            "SELECT o.id, o.name, k.pubkey FROM organisations o LEFT JOIN fed_org_keys k ON k.org = o.id ORDER BY o.name",
        )
        .fetch_all(self.db.pool())
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let v = self.org_view(r)?;
            if self.may_see_org(p, &v.id).await? {
                out.push(v);
            }
        }
        Ok(out)
    }

    pub async fn organisation(&self, p: &Principal, id: &str) -> Result<OrganisationView, Error> {
        let r = sqlx::query(
            "SELECT o.id, o.name, k.pubkey FROM organisations o LEFT JOIN fed_org_keys k ON k.org = o.id \
             WHERE o.id = $1 OR o.name = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| no("organisation", id))?;
        let v = self.org_view(&r)?;
        if !self.may_see_org(p, &v.id).await? {
            return Err(no("organisation", id));
        }
        Ok(v)
    }

    /// Creates an organisation (administrators).
    pub async fn create_organisation(&self, p: &Principal, name: &str) -> Result<OrganisationView, Error> {
        let id = self.identity.create_organisation(p, name).await?;
        self.organisation(p, &id).await
    }

    /// Puts `user` in organisation `org` with `roles` (administrators, or that organisation's).
    pub async fn add_member(&self, p: &Principal, org: &str, user: &str, roles: &[String]) -> Result<(), Error> {
        let org = self.org_id(org).await?;
        if !roles.is_empty() && !p.is_admin() {
            return Err(forbidden("only an administrator assigns roles: add the member without --role, or ask one"));
        }
        self.identity.join(p, user, &org).await?;
        for r in roles {
            self.identity.assign(p, user, r).await?;
        }
        Ok(())
    }

    /// Sets an organisation's public key: by its node when none is set (vantage6's rule: a node
    /// uploads its key when the server has none), or by an administrator. A different key over an
    /// existing one is refused for a node: the organisation's nodes must share one key.
    pub async fn set_public_key(&self, p: &Principal, org: &str, key: &[u8]) -> Result<(), Error> {
        if key.len() != 32 {
            return Err(Error::invalid("an organisation key is 32 bytes (X25519)"));
        }
        let org = self.org_id(org).await?;
        let own_node = match p.kind {
            PrincipalKind::Node => self.node(p).await.is_ok_and(|n| n.organisation == org),
            _ => false,
        };
        let allowed = p.is_admin() || own_node;
        if !allowed {
            return Err(forbidden("only the organisation's node or an administrator sets its key"));
        }
        let mut w = self.db.begin_write().await?;
        let current = sqlx::query("SELECT pubkey FROM fed_org_keys WHERE org = $1")
            .bind(&org)
            .fetch_optional(&mut *w)
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?;
        let encoded = STANDARD.encode(key);
        match current {
            Some(c) if c == encoded => return Ok(()),
            Some(_) if !p.is_admin() => {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    "the server holds another key for this organisation: every node of an organisation uses the same \
                     private key (copy it from the organisation's first node), or an administrator replaces it",
                ));
            }
            _ => {}
        }
        sqlx::query("DELETE FROM fed_org_keys WHERE org = $1").bind(&org).execute(&mut *w).await?;
        sqlx::query("INSERT INTO fed_org_keys (org, pubkey) VALUES ($1, $2)")
            .bind(&org)
            .bind(&encoded)
            .execute(&mut *w)
            .await?;
        w.commit().await?;
        tracing::info!(org = %org, by = %p.id, "organisation key set");
        Ok(())
    }

    // ---- collaborations ----

    /// Creates a collaboration of existing organisations (administrators).
    pub async fn create_collaboration(&self, p: &Principal, c: &NewCollaboration) -> Result<CollaborationView, Error> {
        if !p.may(Operation::Create, "collaboration", &Target::global()) {
            return Err(forbidden("only an administrator creates collaborations"));
        }
        if !enclava_contracts::fed::label_ok(&c.name) {
            return Err(Error::invalid("a collaboration name is 1-64 letters, digits, '_' or '-'"));
        }
        if c.organisations.is_empty() || c.organisations.len() > 1000 {
            return Err(Error::invalid("a collaboration has 1 to 1000 organisations"));
        }
        if let Some(policy) = &c.require_attestation {
            enclava_attest::Policy::parse(policy)
                .map_err(|e| Error::invalid(format!("the attestation policy does not parse: {e}")))?;
            if !c.encrypted {
                return Err(Error::invalid(
                    "an attested collaboration is encrypted: inputs are sealed to attested keys",
                ));
            }
        }
        let mut orgs = BTreeSet::new();
        for o in &c.organisations {
            orgs.insert(self.org_id(o).await?);
        }
        let id = format!("c_{}", random_hex(8));
        let now = now_ms();
        let mut tx = self.audit.begin().await?;
        let taken =
            sqlx::query("SELECT 1 FROM fed_collabs WHERE name = $1").bind(&c.name).fetch_optional(&mut *tx).await?;
        if taken.is_some() {
            return Err(Error::new(ErrorCode::AlreadyExists, format!("a collaboration named {} exists", c.name)));
        }
        sqlx::query(
            "INSERT INTO fed_collabs (id, name, encrypted, policy, created_by, created_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(&c.name)
        .bind(i64::from(c.encrypted))
        .bind(c.require_attestation.as_deref())
        .bind(&p.id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for o in &orgs {
            sqlx::query("INSERT INTO fed_members (collab, org) VALUES ($1, $2)")
                .bind(&id)
                .bind(o)
                .execute(&mut *tx)
                .await?;
        }
        let detail = format!("{} organisations, encrypted {}", orgs.len(), c.encrypted);
        tx.commit(&[AuditEntry::new(now, &p.id, "collaboration", "", "", &id, &detail)]).await?;
        let mut admin = p.clone();
        admin.collaborations.push(id.clone());
        self.collaboration(&admin, &id).await
    }

    async fn collab_row(&self, id: &str) -> Result<Option<AnyRow>, Error> {
        Ok(sqlx::query("SELECT id, name, encrypted, policy FROM fed_collabs WHERE id = $1 OR name = $1")
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?)
    }

    async fn collab_view(&self, r: &AnyRow) -> Result<CollaborationView, Error> {
        let id: String = r.try_get(0)?;
        let orgs = sqlx::query("SELECT org FROM fed_members WHERE collab = $1 ORDER BY org")
            .bind(&id)
            .fetch_all(self.db.pool())
            .await?
            .iter()
            .map(|r| Ok(link("organisations", &r.try_get::<String, _>(0)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(CollaborationView {
            link: link("collaborations", &id).link,
            tasks: format!("{PREFIX}/tasks?collaboration={id}"),
            nodes: format!("{PREFIX}/nodes?collaboration={id}"),
            name: r.try_get(1)?,
            organisations: orgs,
            encrypted: r.try_get::<i64, _>(2)? != 0,
            require_attestation: r.try_get(3)?,
            id,
        })
    }

    fn sees_collab(p: &Principal, collab: &str) -> bool {
        p.is_admin()
            || p.may(Operation::View, "collaboration", &Target { collaboration: Some(collab), ..Target::default() })
            || (p.kind == PrincipalKind::Node && p.collaborations.iter().any(|c| c == collab))
    }

    pub async fn collaboration(&self, p: &Principal, id: &str) -> Result<CollaborationView, Error> {
        let r = self.collab_row(id).await?.ok_or_else(|| no("collaboration", id))?;
        let cid: String = r.try_get(0)?;
        if !Self::sees_collab(p, &cid) {
            return Err(no("collaboration", id));
        }
        self.collab_view(&r).await
    }

    pub async fn collaborations(&self, p: &Principal) -> Result<Vec<CollaborationView>, Error> {
        let rows = sqlx::query("SELECT id, name, encrypted, policy FROM fed_collabs ORDER BY name")
            .fetch_all(self.db.pool())
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let id: String = r.try_get(0)?;
            if Self::sees_collab(p, &id) {
                out.push(self.collab_view(r).await?);
            }
        }
        Ok(out)
    }

    // ---- nodes ----

    /// Creates the node of an organisation in a collaboration, with its API key (shown once).
    pub async fn create_node(&self, p: &Principal, n: &NewNode) -> Result<CreatedNode, Error> {
        let collab = self.collab_row(&n.collaboration).await?.ok_or_else(|| no("collaboration", &n.collaboration))?;
        let collab: String = collab.try_get(0)?;
        let org = match &n.organisation {
            Some(o) => self.org_id(o).await?,
            None => p.organisation.clone().ok_or_else(|| Error::invalid("name the node's --org"))?,
        };
        let member = sqlx::query("SELECT 1 FROM fed_members WHERE collab = $1 AND org = $2")
            .bind(&collab)
            .bind(&org)
            .fetch_optional(self.db.pool())
            .await?;
        if member.is_none() {
            return Err(Error::invalid("that organisation is not in that collaboration"));
        }
        // Only the organisation's own administrators (or the server's): a node receives the
        // organisation's runs and may set its key, so nobody else makes one for it.
        let target = Target { owner: None, organisation: Some(&org), collaboration: None };
        if !p.may(Operation::Create, "node", &target) {
            return Err(forbidden("only an administrator of the organisation creates its nodes"));
        }
        let name = n.name.clone().unwrap_or_else(|| format!("{org}-{collab}"));
        if !enclava_contracts::fed::label_ok(&name) {
            return Err(Error::invalid("a node name is 1-64 letters, digits, '_' or '-'"));
        }
        let exists = sqlx::query("SELECT id FROM fed_nodes WHERE org = $1 AND collab = $2")
            .bind(&org)
            .bind(&collab)
            .fetch_optional(self.db.pool())
            .await?;
        if exists.is_some() {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                "this organisation has a node in this collaboration already (one per pair, as in vantage6)",
            ));
        }
        let (service, api_key) = self.identity.issue_service_in(p, PrincipalKind::Node, Some(&org), None, None).await?;
        let id = format!("n_{}", random_hex(8));
        let now = now_ms();
        let mut w = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO fed_nodes (id, service, org, collab, name, last_seen_ms, created_ms) VALUES ($1, $2, $3, $4, $5, 0, $6)",
        )
        .bind(&id)
        .bind(&service)
        .bind(&org)
        .bind(&collab)
        .bind(&name)
        .bind(now)
        .execute(&mut *w)
        .await?;
        w.commit().await?;
        let node = self.node_view(&id).await?;
        Ok(CreatedNode { node, api_key })
    }

    pub async fn node_view(&self, id: &str) -> Result<NodeView, Error> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!("{NODE_SELECT} WHERE n.id = $1")))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| no("node", id))?;
        self.node_view_row(&r)
    }

    fn node_view_row(&self, r: &AnyRow) -> Result<NodeView, Error> {
        let id: String = r.try_get(0)?;
        let seen: i64 = r.try_get(4)?;
        let now = now_ms();
        let until: Option<i64> = r.try_get(11)?;
        let decode = |s: String| STANDARD.decode(s).map_err(|_| Error::internal("a stored attestation is damaged"));
        let attestation = match until {
            Some(until) if until > now => Some(NodeAttestation {
                public_key: decode(r.try_get(5)?)?,
                evidence: decode(r.try_get(6)?)?,
                nonce: r.try_get(7)?,
                platform: r.try_get(8)?,
                measurement: r.try_get(9)?,
                attested_ms: r.try_get(10)?,
                until_ms: until,
            }),
            _ => None,
        };
        let failure: Option<String> = r.try_get(12)?;
        let attestation_failure = match (until, failure) {
            (_, Some(f)) => Some(f),
            (Some(u), None) if u <= now => Some("its admission expired: it did not attest again in time".into()),
            _ => None,
        };
        Ok(NodeView {
            link: link("nodes", &id).link,
            name: r.try_get(1)?,
            organisation: link("organisations", &r.try_get::<String, _>(2)?),
            collaboration: link("collaborations", &r.try_get::<String, _>(3)?),
            online: now - seen < self.config.node_timeout.as_millis() as i64,
            last_seen_ms: seen,
            attestation,
            attestation_failure,
            id,
        })
    }

    /// The nodes `p` may see (of one collaboration, or all).
    pub async fn nodes(&self, p: &Principal, collab: Option<&str>) -> Result<Vec<NodeView>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{NODE_SELECT} ORDER BY n.name")))
            .fetch_all(self.db.pool())
            .await?;
        let mut out = Vec::new();
        for r in &rows {
            let v = self.node_view_row(r)?;
            if collab.is_some_and(|c| c != v.collaboration.id) {
                continue;
            }
            let t = Target {
                owner: None,
                organisation: Some(&v.organisation.id),
                collaboration: Some(&v.collaboration.id),
            };
            if p.may(Operation::View, "node", &t) {
                out.push(v);
            }
        }
        Ok(out)
    }

    // ---- algorithms ----

    /// Stores an algorithm (a Wasm module or a command); its SHA-256 names it.
    pub async fn add_algorithm(&self, p: &Principal, bytes: &[u8]) -> Result<String, Error> {
        // Only who may create tasks somewhere stores algorithms (anonymous growth is not free).
        let may_create = p.collaborations.iter().any(|c| {
            let t = Target { owner: None, organisation: p.organisation.as_deref(), collaboration: Some(c) };
            p.may(Operation::Create, "task", &t)
        });
        if !(p.is_admin() || may_create) {
            return Err(forbidden("only a researcher of a collaboration stores algorithms"));
        }
        if bytes.len() > self.config.max_algorithm_bytes {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!("an algorithm is at most {} MiB", self.config.max_algorithm_bytes >> 20),
            ));
        }
        let hash = enclava_contracts::farm::sha256_hex(bytes);
        let mut w = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO fed_algorithms (sha256, owner, data, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&hash)
        .bind(&p.id)
        .bind(STANDARD.encode(bytes))
        .bind(now_ms())
        .execute(&mut *w)
        .await?;
        w.commit().await?;
        Ok(hash)
    }

    /// An algorithm's bytes: for a node whose collaboration has a task running it, or for a user
    /// who may see such a task.
    pub async fn algorithm(&self, p: &Principal, hash: &str) -> Result<Vec<u8>, Error> {
        let collabs: Vec<String> =
            strings(self.db.pool(), "SELECT DISTINCT collab FROM fed_tasks WHERE algorithm = $1", hash).await?;
        let allowed = p.is_admin()
            || collabs.iter().any(|c| {
                p.collaborations.contains(c)
                    && (p.kind == PrincipalKind::Node
                        || p.may(Operation::View, "task", &Target { collaboration: Some(c), ..Target::default() }))
            });
        if !allowed {
            return Err(no("algorithm", hash));
        }
        let r = sqlx::query("SELECT data FROM fed_algorithms WHERE sha256 = $1")
            .bind(hash)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| no("algorithm", hash))?;
        STANDARD.decode(r.try_get::<String, _>(0)?).map_err(|_| Error::internal("a stored algorithm is damaged"))
    }

    // ---- tasks ----

    /// Creates a task and one pending run per organisation. The same task created again (same
    /// id, spec and initiator) is the same task.
    pub async fn create_task(&self, p: &Principal, t: &NewTask) -> Result<TaskView, Error> {
        t.validate().map_err(Error::invalid)?;
        let collab_row =
            self.collab_row(&t.collaboration).await?.ok_or_else(|| no("collaboration", &t.collaboration))?;
        let collab: String = collab_row.try_get(0)?;
        let encrypted = collab_row.try_get::<i64, _>(2)? != 0;
        let target = Target { owner: None, organisation: p.organisation.as_deref(), collaboration: Some(&collab) };
        let in_collab = p.collaborations.contains(&collab);
        // A node creates subtasks for an algorithm it is running (through its local proxy): only
        // of a task whose run at its organisation it holds, with the same algorithm (vantage6's
        // rule: a container's subtasks use its own image). The subtask is the parent's
        // initiator's, as in vantage6, so node policies and who may see it follow the parent.
        let mut initiator = (p.id.clone(), p.organisation.clone());
        if p.kind == PrincipalKind::Node && in_collab {
            initiator = self.node_subtask_initiator(p, t).await?;
        } else if !(p.is_admin() || in_collab && p.may(Operation::Create, "task", &target)) {
            return Err(forbidden(
                "you may not create tasks in this collaboration (your organisation must be in it, and you need the \
                 researcher role)",
            ));
        }
        let spec = serde_json::to_string(t).map_err(|e| Error::internal(e.to_string()))?;
        if let Some(r) = sqlx::query("SELECT spec, initiator FROM fed_tasks WHERE id = $1")
            .bind(&t.id)
            .fetch_optional(self.db.pool())
            .await?
        {
            let (s, i): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            if s == spec && i == initiator.0 {
                return self.task(p, &t.id).await;
            }
            return Err(Error::new(ErrorCode::AlreadyExists, "another task has this id: choose a new one"));
        }
        let members: BTreeSet<String> =
            strings(self.db.pool(), "SELECT org FROM fed_members WHERE collab = $1", &collab)
                .await?
                .into_iter()
                .collect();
        let mut orgs = Vec::new();
        for o in &t.organisations {
            let id = self.org_id(&o.organisation).await?;
            if !members.contains(&id) {
                return Err(Error::invalid(format!(
                    "organisation {} is not in this collaboration",
                    enclava_core::text::quote(&o.organisation)
                )));
            }
            if orgs.contains(&id) {
                return Err(Error::invalid("an organisation appears twice: one run per organisation"));
            }
            if encrypted && o.plain.is_some() {
                return Err(Error::invalid(
                    "this collaboration is encrypted: seal each organisation's input to its key (readable input is \
                     refused)",
                ));
            }
            orgs.push(id);
        }
        let known = sqlx::query("SELECT 1 FROM fed_algorithms WHERE sha256 = $1")
            .bind(&t.algorithm)
            .fetch_optional(self.db.pool())
            .await?;
        if known.is_none() {
            return Err(Error::invalid("the algorithm is not stored: upload it first (POST /fed/v1/algorithms)"));
        }
        let job = match &t.parent {
            None => t.id.clone(),
            Some(parent) => {
                let r = sqlx::query("SELECT job, collab FROM fed_tasks WHERE id = $1")
                    .bind(parent)
                    .fetch_optional(self.db.pool())
                    .await?
                    .ok_or_else(|| no("parent task", parent))?;
                if r.try_get::<String, _>(1)? != collab {
                    return Err(Error::invalid("a subtask runs in its parent's collaboration"));
                }
                let status = self.status_of(parent).await?;
                if matches!(status, "failed" | "killed" | "completed") {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!("the parent task is {status}: no subtasks after it ended"),
                    ));
                }
                r.try_get(0)?
            }
        };
        let now = now_ms();
        let mut tx = self.audit.begin().await?;
        sqlx::query(
            "INSERT INTO fed_tasks (id, collab, name, initiator, initiator_org, parent, job, kind, algorithm, databases, \
             result_key, spec, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&t.id)
        .bind(&collab)
        .bind(&t.name)
        .bind(&initiator.0)
        .bind(initiator.1.as_deref())
        .bind(t.parent.as_deref())
        .bind(&job)
        .bind(&t.kind)
        .bind(&t.algorithm)
        .bind(serde_json::to_string(&t.databases).map_err(|e| Error::internal(e.to_string()))?)
        .bind(STANDARD.encode(&t.result_key))
        .bind(&spec)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for (i, (o, org)) in t.organisations.iter().zip(&orgs).enumerate() {
            let input = OrgInput { organisation: org.clone(), ..o.clone() };
            sqlx::query(
                "INSERT INTO fed_runs (id, task, org, input, state, node, lease, lease_until_ms, attempts, reasons, \
                 result, receipt, created_ms, updated_ms) VALUES ($1, $2, $3, $4, 'pending', NULL, NULL, 0, 0, '[]', NULL, \
                 NULL, $5, $5)",
            )
            .bind(enclava_contracts::fed::run_id(&t.id, i))
            .bind(&t.id)
            .bind(org)
            .bind(serde_json::to_string(&input).map_err(|e| Error::internal(e.to_string()))?)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let detail = format!("{} runs, algorithm {}", orgs.len(), enclava_core::text::prefix(&t.algorithm, 16));
        tx.commit(&[AuditEntry::new(now, &p.id, "task", "", &collab, &t.id, &detail)]).await?;
        self.queued.notify_waiters();
        tracing::info!(task = %t.id, collab = %collab, runs = orgs.len(), "task created");
        self.task(p, &t.id).await
    }

    /// Whether node `p` may create subtask `t` (see [`Federation::create_task`]), and if so the
    /// parent's initiator and initiator organisation, which the subtask takes.
    async fn node_subtask_initiator(&self, p: &Principal, t: &NewTask) -> Result<(String, Option<String>), Error> {
        let Some(parent) = &t.parent else {
            return Err(forbidden("a node creates only subtasks of a run it holds (name the parent task)"));
        };
        let node = self.node(p).await?;
        let row = sqlx::query(
            "SELECT t.initiator, t.initiator_org, t.algorithm, t.kind FROM fed_tasks t JOIN fed_runs r ON r.task = t.id \
             WHERE t.id = $1 AND r.org = $2 AND r.state = 'active' AND r.node = $3",
        )
        .bind(parent)
        .bind(&node.organisation)
        .bind(&node.id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| {
            Error::new(
                ErrorCode::FailedPrecondition,
                "this node holds no active run of the parent task: subtasks come only from a running algorithm",
            )
        })?;
        if row.try_get::<String, _>(2)? != t.algorithm || row.try_get::<String, _>(3)? != t.kind {
            return Err(forbidden("a subtask runs its parent's algorithm, no other"));
        }
        // An algorithm's subtasks may make subtasks, but not without end.
        let mut above = parent.clone();
        for _ in 0..MAX_SUBTASK_DEPTH {
            let up: Option<Option<String>> = sqlx::query_scalar("SELECT parent FROM fed_tasks WHERE id = $1")
                .bind(&above)
                .fetch_optional(self.db.pool())
                .await?;
            match up.flatten() {
                Some(p) => above = p,
                None => return Ok((row.try_get(0)?, row.try_get(1)?)),
            }
        }
        Err(forbidden(&format!("subtasks nest at most {MAX_SUBTASK_DEPTH} deep")))
    }

    async fn status_of(&self, task: &str) -> Result<&'static str, Error> {
        let states: Vec<String> = strings(self.db.pool(), "SELECT state FROM fed_runs WHERE task = $1", task).await?;
        Ok(task_status(&states))
    }

    const TASK_COLUMNS: &'static str =
        "id, collab, name, initiator, initiator_org, parent, job, kind, algorithm, databases, created_ms";

    async fn task_view(&self, r: &AnyRow) -> Result<TaskView, Error> {
        let id: String = r.try_get(0)?;
        let status = self.status_of(&id).await?;
        Ok(TaskView {
            link: link("tasks", &id).link,
            runs: format!("{PREFIX}/runs?task={id}"),
            children: format!("{PREFIX}/tasks?parent={id}"),
            name: r.try_get(2)?,
            collaboration: link("collaborations", &r.try_get::<String, _>(1)?),
            initiator: r.try_get(3)?,
            initiator_organisation: r.try_get::<Option<String>, _>(4)?.map(|o| link("organisations", &o)),
            parent: r.try_get::<Option<String>, _>(5)?.map(|t| link("tasks", &t)),
            job: r.try_get(6)?,
            kind: r.try_get(7)?,
            algorithm: r.try_get(8)?,
            databases: serde_json::from_str(&r.try_get::<String, _>(9)?).unwrap_or_default(),
            status: status.to_owned(),
            created_ms: r.try_get(10)?,
            id,
        })
    }

    fn sees_task(p: &Principal, collab: &str) -> bool {
        p.is_admin()
            || (p.collaborations.iter().any(|c| c == collab)
                && (p.kind == PrincipalKind::Node
                    || p.may(Operation::View, "task", &Target { collaboration: Some(collab), ..Target::default() })))
    }

    pub async fn task(&self, p: &Principal, id: &str) -> Result<TaskView, Error> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {} FROM fed_tasks WHERE id = $1", Self::TASK_COLUMNS)))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
            .ok_or_else(|| no("task", id))?;
        if !Self::sees_task(p, &r.try_get::<String, _>(1)?) {
            return Err(no("task", id));
        }
        self.task_view(&r).await
    }

    /// Tasks `p` may see, newest first: of a collaboration, or children of a task; a page of
    /// `limit` after skipping `offset`.
    pub async fn tasks(
        &self,
        p: &Principal,
        collab: Option<&str>,
        parent: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<TaskView>, Error> {
        // Only the collaborations the caller reaches, in the query itself: a limit counts only
        // tasks it may see.
        let reach: Vec<&String> = p.collaborations.iter().take(200).collect();
        let within = if p.is_admin() {
            String::new()
        } else if reach.is_empty() {
            return Ok(Vec::new());
        } else {
            let marks: Vec<String> = (0..reach.len()).map(|i| format!("${}", i + 4)).collect();
            format!(" AND collab IN ({})", marks.join(", "))
        };
        let sql = format!(
            "SELECT {} FROM fed_tasks WHERE ($1 = '' OR collab = $1) AND ($2 = '' OR parent = $2){within} \
             ORDER BY created_ms DESC, id LIMIT $3 OFFSET {}",
            Self::TASK_COLUMNS,
            offset.min(1_000_000)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(collab.unwrap_or(""))
            .bind(parent.unwrap_or(""))
            .bind(i64::from(limit.clamp(1, 1000)));
        if !p.is_admin() {
            for c in reach {
                q = q.bind(c);
            }
        }
        let rows = q.fetch_all(self.db.pool()).await?;
        let mut out = Vec::new();
        for r in &rows {
            if Self::sees_task(p, &r.try_get::<String, _>(1)?) {
                out.push(self.task_view(r).await?);
            }
        }
        Ok(out)
    }

    /// A task's runs, each with its (sealed) result when it has one.
    pub async fn runs(&self, p: &Principal, task: &str) -> Result<Vec<RunView>, Error> {
        self.task(p, task).await?;
        let rows = sqlx::query(
            "SELECT id, task, org, state, reasons, node, attempts, updated_ms, result, receipt FROM fed_runs \
             WHERE task = $1 ORDER BY id",
        )
        .bind(task)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                let result: Option<String> = r.try_get(8)?;
                let receipt: Option<String> = r.try_get(9)?;
                Ok(RunView {
                    link: format!("{PREFIX}/runs?task={task}#{id}"),
                    task: link("tasks", &r.try_get::<String, _>(1)?),
                    organisation: link("organisations", &r.try_get::<String, _>(2)?),
                    status: r.try_get(3)?,
                    reasons: serde_json::from_str(&r.try_get::<String, _>(4)?).unwrap_or_default(),
                    node: r.try_get::<Option<String>, _>(5)?.map(|n| link("nodes", &n)),
                    attempts: r.try_get::<i64, _>(6)?.max(0) as u32,
                    updated_ms: r.try_get(7)?,
                    result: match result {
                        Some(b) => STANDARD.decode(b).map_err(|_| Error::internal("a stored result is damaged"))?,
                        None => Vec::new(),
                    },
                    receipt: receipt.and_then(|s| serde_json::from_str(&s).ok()),
                    id,
                })
            })
            .collect()
    }

    /// Kills a task and every subtask under it: their pending and active runs end as killed
    /// (a node running one learns it at its next renewal).
    pub async fn kill(&self, p: &Principal, id: &str) -> Result<TaskView, Error> {
        let view = self.task(p, id).await?;
        let t = Target {
            owner: Some(&view.initiator),
            organisation: view.initiator_organisation.as_ref().map(|l| l.id.as_str()),
            collaboration: Some(&view.collaboration.id),
        };
        if !(p.may(Operation::Delete, "task", &t) || view.initiator == p.id) {
            return Err(forbidden(
                "only the initiator, its organisation's researchers or an administrator kill a task",
            ));
        }
        let n = self.kill_tree(id, &format!("killed by {}", p.id)).await?;
        tracing::info!(task = %id, runs = n, by = %p.id, "task killed");
        self.task(p, id).await
    }

    /// Kills the open runs of `task` and of every task under it; returns how many.
    async fn kill_tree(&self, task: &str, reason: &str) -> Result<u64, Error> {
        let mut todo = vec![task.to_owned()];
        let mut all = Vec::new();
        while let Some(t) = todo.pop() {
            for r in
                sqlx::query("SELECT id FROM fed_tasks WHERE parent = $1").bind(&t).fetch_all(self.db.pool()).await?
            {
                todo.push(r.try_get(0)?);
            }
            all.push(t);
            if all.len() > 10_000 {
                break;
            }
        }
        let now = now_ms();
        let mut w = self.db.begin_write().await?;
        let mut n = 0;
        for t in &all {
            let open =
                sqlx::query("SELECT id, reasons FROM fed_runs WHERE task = $1 AND state IN ('pending', 'active')")
                    .bind(t)
                    .fetch_all(&mut *w)
                    .await?;
            for r in &open {
                let reasons = push_reason(&r.try_get::<String, _>(1)?, reason);
                n += sqlx::query(
                    "UPDATE fed_runs SET state = 'killed', reasons = $1, updated_ms = $2 WHERE id = $3 \
                     AND state IN ('pending', 'active')",
                )
                .bind(&reasons)
                .bind(now)
                .bind(&r.try_get::<String, _>(0)?)
                .execute(&mut *w)
                .await?
                .rows_affected();
            }
        }
        w.commit().await?;
        Ok(n)
    }

    // ---- the node's side ----

    /// The attestation policy of `collab`, when it requires one.
    async fn collab_policy(&self, collab: &str) -> Result<Option<enclava_attest::Policy>, Error> {
        let r = self.collab_row(collab).await?.ok_or_else(|| no("collaboration", collab))?;
        let text: Option<String> = r.try_get(3)?;
        text.map(|t| enclava_attest::Policy::parse(&t).map_err(|e| Error::internal(format!("a stored policy: {e}"))))
            .transpose()
    }

    /// A one-use nonce (valid 60 s) a node binds into the evidence it joins an attested
    /// collaboration with.
    pub async fn node_nonce(&self, node: &Node) -> Result<String, Error> {
        let now = now_ms();
        let mut w = self.db.begin_write().await?;
        sqlx::query("DELETE FROM fed_nonces WHERE expires_ms < $1").bind(now).execute(&mut *w).await?;
        let live: i64 = sqlx::query("SELECT COUNT(*) FROM fed_nonces WHERE node = $1")
            .bind(&node.id)
            .fetch_one(&mut *w)
            .await?
            .try_get(0)?;
        if live >= 16 {
            return Err(Error { retry_after: Some(5), ..Error::unavailable("too many nonces for this node at once") });
        }
        let nonce = random_hex(32);
        sqlx::query("INSERT INTO fed_nonces (nonce, node, expires_ms) VALUES ($1, $2, $3)")
            .bind(&nonce)
            .bind(&node.id)
            .bind(now + 60_000)
            .execute(&mut *w)
            .await?;
        w.commit().await?;
        Ok(nonce)
    }

    /// Admits `node` to its attested collaboration for [`FedConfig::attestation_valid`] when its
    /// evidence verifies, passes the collaboration's policy and binds its key to the nonce; drops
    /// it, with the reasons, when it does not. Returns the admission's end (ms).
    pub async fn attest(&self, node: &Node, a: &AttestRequest) -> Result<i64, Error> {
        let Some(policy) = self.collab_policy(&node.collaboration).await? else {
            return Err(Error::invalid("this node's collaboration does not require attestation"));
        };
        if a.public_key.len() != 32 {
            return Err(Error::invalid("a node key is 32 bytes (X25519)"));
        }
        let now = now_ms();
        let mut w = self.db.begin_write().await?;
        let used = sqlx::query("DELETE FROM fed_nonces WHERE nonce = $1 AND node = $2 AND expires_ms >= $3")
            .bind(&a.nonce)
            .bind(&node.id)
            .bind(now)
            .execute(&mut *w)
            .await?
            .rows_affected();
        w.commit().await?;
        if used != 1 {
            return Err(Error::new(ErrorCode::Stale, "the nonce is unknown, used or expired: ask for a new one"));
        }
        let secs = (now / 1000).max(0) as u64;
        let label = enclava_attest::binding::FED_NODE;
        let verdict =
            self.config.verifier.judge(&policy, &a.evidence, label, &a.public_key, a.nonce.as_bytes(), secs).await;
        let mut w = self.db.begin_write().await?;
        sqlx::query("DELETE FROM fed_node_attest WHERE node = $1").bind(&node.id).execute(&mut *w).await?;
        let insert = "INSERT INTO fed_node_attest (node, pubkey, evidence, nonce, platform, measurement, attested_ms, \
                      until_ms, failure) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        let out = match verdict {
            Ok(claims) => {
                let until = now + self.config.attestation_valid.as_millis() as i64;
                sqlx::query(insert)
                    .bind(&node.id)
                    .bind(STANDARD.encode(&a.public_key))
                    .bind(STANDARD.encode(&a.evidence))
                    .bind(&a.nonce)
                    .bind(claims.platform.as_str())
                    .bind(hex::encode(&claims.measurement))
                    .bind(now)
                    .bind(until)
                    .bind(None::<String>)
                    .execute(&mut *w)
                    .await?;
                tracing::info!(node = %node.id, platform = %claims.platform, "node admitted to its attested collaboration");
                Ok(until)
            }
            Err(reasons) => {
                let why = format!("its evidence failed the collaboration's policy: {}", reasons.join("; "));
                sqlx::query(insert)
                    .bind(&node.id)
                    .bind(STANDARD.encode(&a.public_key))
                    .bind("")
                    .bind(&a.nonce)
                    .bind("")
                    .bind("")
                    .bind(now)
                    .bind(0i64)
                    .bind(enclava_core::text::prefix(&why, 1000))
                    .execute(&mut *w)
                    .await?;
                tracing::warn!(node = %node.id, reason = %why, "node dropped from its attested collaboration");
                Err(Error::forbidden(why))
            }
        };
        w.commit().await?;
        out
    }

    /// Leases up to `max` pending runs of `node`'s organisation in its collaboration. A run whose
    /// parent task failed or was killed is killed here, with that reason, instead.
    pub async fn lease(&self, node: &Node, max: u32) -> Result<Vec<LeasedRun>, Error> {
        let now = now_ms();
        let attested = self.collab_policy(&node.collaboration).await?.is_some();
        if attested {
            let view = self.node_view(&node.id).await?;
            if view.attestation.is_none() {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "this collaboration requires attestation and this node is not admitted ({}): attest with fresh \
                         evidence (POST /fed/v1/node/attest)",
                        view.attestation_failure.as_deref().unwrap_or("it has not attested")
                    ),
                ));
            }
        }
        let mut w = self.db.begin_write().await?;
        sqlx::query("UPDATE fed_nodes SET last_seen_ms = $1 WHERE id = $2")
            .bind(now)
            .bind(&node.id)
            .execute(&mut *w)
            .await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT r.id, r.task, r.input, r.attempts, r.reasons, t.job, t.kind, t.algorithm, t.databases, t.result_key, \
             t.parent, c.encrypted, t.initiator, t.initiator_org FROM fed_runs r JOIN fed_tasks t ON t.id = r.task JOIN fed_collabs c ON c.id = t.collab \
             WHERE r.org = $1 AND r.state = 'pending' AND t.collab = $2 ORDER BY r.created_ms, r.id LIMIT $3{}",
            if self.db.backend() == enclava_store::Backend::Postgres { " FOR UPDATE OF r SKIP LOCKED" } else { "" }
        )))
        .bind(&node.organisation)
        .bind(&node.collaboration)
        .bind(i64::from(max.clamp(1, 64)))
        .fetch_all(&mut *w)
        .await?;
        let lease_ms = self.config.lease.as_millis() as i64;
        let mut out = Vec::new();
        for r in &rows {
            let id: String = r.try_get(0)?;
            let parent: Option<String> = r.try_get(10)?;
            if let Some(parent) = &parent {
                let states: Vec<String> =
                    strings(&mut *w, "SELECT state FROM fed_runs WHERE task = $1", parent).await?;
                let status = task_status(&states);
                if matches!(status, "failed" | "killed") {
                    let reasons = push_reason(
                        &r.try_get::<String, _>(4)?,
                        &format!("its parent task {parent} {status}: not run (vantage6 #1371)"),
                    );
                    sqlx::query(
                        "UPDATE fed_runs SET state = 'killed', reasons = $1, updated_ms = $2 WHERE id = $3 \
                         AND state = 'pending'",
                    )
                    .bind(&reasons)
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *w)
                    .await?;
                    continue;
                }
            }
            let input: OrgInput = serde_json::from_str(&r.try_get::<String, _>(2)?)
                .map_err(|_| Error::internal("a stored input is damaged"))?;
            let lease = random_hex(16);
            let attempts = r.try_get::<i64, _>(3)? + 1;
            let taken = sqlx::query(
                "UPDATE fed_runs SET state = 'active', node = $1, lease = $2, lease_until_ms = $3, attempts = $4, \
                 updated_ms = $5 WHERE id = $6 AND state = 'pending'",
            )
            .bind(&node.id)
            .bind(&lease)
            .bind(now + lease_ms)
            .bind(attempts)
            .bind(now)
            .bind(&id)
            .execute(&mut *w)
            .await?
            .rows_affected();
            if taken != 1 {
                // Killed or leased elsewhere since it was read.
                continue;
            }
            out.push(LeasedRun {
                run: id,
                task: r.try_get(1)?,
                job: r.try_get(5)?,
                organisation: node.organisation.clone(),
                collaboration: node.collaboration.clone(),
                initiator: r.try_get(12)?,
                initiator_organisation: r.try_get(13)?,
                kind: r.try_get(6)?,
                algorithm: r.try_get(7)?,
                databases: serde_json::from_str(&r.try_get::<String, _>(8)?).unwrap_or_default(),
                encrypted: r.try_get::<i64, _>(11)? != 0,
                attested,
                sealed: input.sealed,
                plain: input.plain,
                result_key: STANDARD
                    .decode(r.try_get::<String, _>(9)?)
                    .map_err(|_| Error::internal("a stored key is damaged"))?,
                lease,
                lease_ms: lease_ms as u64,
            });
        }
        w.commit().await?;
        Ok(out)
    }

    /// Extends a run's lease; fails when it was killed or re-queued (the node stops it).
    pub async fn renew(&self, node: &Node, run: &str, lease: &str) -> Result<u64, Error> {
        let now = now_ms();
        let lease_ms = self.config.lease.as_millis() as i64;
        let mut w = self.db.begin_write().await?;
        let n = sqlx::query(
            "UPDATE fed_runs SET lease_until_ms = $1 WHERE id = $2 AND node = $3 AND lease = $4 AND state = 'active'",
        )
        .bind(now + lease_ms)
        .bind(run)
        .bind(&node.id)
        .bind(lease)
        .execute(&mut *w)
        .await?
        .rows_affected();
        sqlx::query("UPDATE fed_nodes SET last_seen_ms = $1 WHERE id = $2")
            .bind(now)
            .bind(&node.id)
            .execute(&mut *w)
            .await?;
        w.commit().await?;
        if n == 1 {
            Ok(lease_ms as u64)
        } else {
            Err(Error::new(
                ErrorCode::FailedPrecondition,
                "this run's lease is no longer held (it was killed or placed again): stop it",
            ))
        }
    }

    /// Records a run's end under its current lease (the same report again is acknowledged
    /// again). A failed run kills its task's subtasks.
    pub async fn complete(&self, node: &Node, run: &str, d: &RunDone) -> Result<(), Error> {
        if !matches!(d.status.as_str(), "completed" | "failed" | "not allowed") {
            return Err(Error::invalid("a run ends completed, failed or not allowed"));
        }
        if d.result.len() > self.config.max_result_bytes {
            return Err(Error::new(ErrorCode::PayloadTooLarge, "the result is too large"));
        }
        if d.status != "completed" && d.reason.as_deref().unwrap_or("").trim().is_empty() {
            return Err(Error::invalid("a run that did not complete says why"));
        }
        let now = now_ms();
        let mut w = self.db.begin_write().await?;
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT state, node, lease, reasons, task FROM fed_runs WHERE id = $1{}",
            self.db.lock_clause()
        )))
        .bind(run)
        .fetch_optional(&mut *w)
        .await?
        .ok_or_else(|| no("run", run))?;
        let (state, holder, lease): (String, Option<String>, Option<String>) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        if holder.as_deref() != Some(node.id.as_str()) || lease.as_deref() != Some(d.lease.as_str()) {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                "this lease is no longer held: the report is not kept",
            ));
        }
        match state.as_str() {
            "active" => {}
            s if s == d.status => return Ok(()),
            other => return Err(Error::new(ErrorCode::FailedPrecondition, format!("the run is {other}"))),
        }
        let task: String = r.try_get(4)?;
        let mut reasons = r.try_get::<String, _>(3)?;
        if let Some(why) = &d.reason {
            reasons = push_reason(&reasons, &enclava_core::text::prefix(why, 2000));
        }
        let receipt =
            d.receipt.as_ref().map(serde_json::to_string).transpose().map_err(|e| Error::internal(e.to_string()))?;
        let kept = sqlx::query(
            "UPDATE fed_runs SET state = $1, reasons = $2, result = $3, receipt = $4, updated_ms = $5 WHERE id = $6 \
             AND state = 'active' AND node = $7 AND lease = $8",
        )
        .bind(&d.status)
        .bind(&reasons)
        .bind(STANDARD.encode(&d.result))
        .bind(receipt)
        .bind(now)
        .bind(run)
        .bind(&node.id)
        .bind(&d.lease)
        .execute(&mut *w)
        .await?
        .rows_affected();
        w.commit().await?;
        if kept != 1 {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                "this lease is no longer held: the report is not kept",
            ));
        }
        tracing::info!(run = %run, node = %node.id, status = %d.status, "run ended");
        if d.status != "completed" {
            self.kill_children(&task).await?;
        }
        Ok(())
    }

    /// Kills every subtask of `task` (its run failed).
    async fn kill_children(&self, task: &str) -> Result<(), Error> {
        let children: Vec<String> = strings(self.db.pool(), "SELECT id FROM fed_tasks WHERE parent = $1", task).await?;
        for c in children {
            self.kill_tree(&c, &format!("its parent task {task} failed")).await?;
        }
        Ok(())
    }

    /// Re-queues runs whose lease expired (their node died), or fails them after the last
    /// attempt; returns how many moved.
    pub async fn sweep(&self) -> Result<u64, Error> {
        let now = now_ms();
        if now - self.started_ms < self.config.lease.as_millis() as i64 {
            return Ok(0);
        }
        let mut w = self.db.begin_write().await?;
        let expired = sqlx::query(
            "SELECT id, node, attempts, reasons, lease, task FROM fed_runs WHERE state = 'active' AND lease_until_ms < $1 \
             LIMIT 256",
        )
        .bind(now)
        .fetch_all(&mut *w)
        .await?;
        let mut moved = 0;
        let mut failed_tasks = Vec::new();
        for r in &expired {
            let id: String = r.try_get(0)?;
            let attempts: i64 = r.try_get(2)?;
            let last = attempts >= i64::from(self.config.max_attempts);
            let reason = format!(
                "node {} stopped renewing its lease (attempt {attempts} of {}){}",
                r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                self.config.max_attempts,
                if last { ": no attempts left" } else { ": pending again" }
            );
            let reasons = push_reason(&r.try_get::<String, _>(3)?, &reason);
            moved += sqlx::query(
                "UPDATE fed_runs SET state = $1, node = NULL, lease = NULL, reasons = $2, updated_ms = $3 WHERE id = $4 \
                 AND state = 'active' AND lease = $5 AND lease_until_ms < $6",
            )
            .bind(if last { "failed" } else { "pending" })
            .bind(&reasons)
            .bind(now)
            .bind(&id)
            .bind(r.try_get::<Option<String>, _>(4)?)
            .bind(now)
            .execute(&mut *w)
            .await?
            .rows_affected();
            if last {
                failed_tasks.push(r.try_get::<String, _>(5)?);
            }
        }
        w.commit().await?;
        for task in failed_tasks {
            self.kill_children(&task).await?;
        }
        if moved > 0 {
            self.queued.notify_waiters();
        }
        Ok(moved)
    }

    /// Runs per state, for metrics.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, Error> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM fed_runs GROUP BY state").fetch_all(self.db.pool()).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::task_status;

    #[test]
    fn a_task_is_as_far_as_its_runs() {
        let s = |v: &[&str]| task_status(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["pending", "pending"]), "pending");
        assert_eq!(s(&["completed", "pending"]), "active");
        assert_eq!(s(&["completed", "completed"]), "completed");
        assert_eq!(s(&["completed", "failed"]), "failed");
        assert_eq!(s(&["killed", "failed"]), "killed");
        assert_eq!(s(&["not allowed", "completed"]), "failed");
    }
}
