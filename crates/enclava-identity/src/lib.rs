//! Identity and access, for every component that has callers: users (registered openly, by invite,
//! or not at all), organisations, service identities (nodes, and short-lived per-run tokens), each
//! with a bearer credential the database keeps only as a SHA-256; roles made of rules
//! ([`rules`]); one axum extractor ([`http::Caller`]) and one tonic interceptor
//! ([`grpc::interceptor`]). Every change is written with its audit record, through the shared
//! audit log ([`enclava_store::audit`]).
//!
//! The key broker uses it for its users now; federation (organisations, node and run tokens) and
//! the farm (submitters, hosts) use it next.

pub mod grpc;
pub mod http;
pub mod rules;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use enclava_core::{Error, ErrorCode};
use enclava_store::audit::{AuditEntry, AuditLog};
use enclava_store::{Migrations, now_ms};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use sqlx::Row;

pub use rules::{Operation, Principal, PrincipalKind, Rule, Scope, Target};

/// The identity tables. Version 1 is what the key broker kept before identity was its own
/// component (`CREATE … IF NOT EXISTS`, so an older database passes through unchanged).
pub const MIGRATIONS: Migrations = &[
    &[
        "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, created_at BIGINT NOT NULL, \
         admin BIGINT NOT NULL DEFAULT 0)",
        "CREATE TABLE IF NOT EXISTS invites (token_hash TEXT PRIMARY KEY, created_by TEXT NOT NULL, admin BIGINT NOT NULL, \
         created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, used_by TEXT, used_at BIGINT)",
    ],
    &[
        "CREATE TABLE IF NOT EXISTS organisations (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_by TEXT NOT NULL, \
         created_at BIGINT NOT NULL)",
        "ALTER TABLE users ADD COLUMN organisation TEXT",
        "CREATE TABLE IF NOT EXISTS services (id TEXT PRIMARY KEY, kind TEXT NOT NULL, organisation TEXT, \
         token_hash TEXT NOT NULL UNIQUE, created_by TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT)",
        "CREATE TABLE IF NOT EXISTS role_assignments (principal TEXT NOT NULL, role TEXT NOT NULL, \
         PRIMARY KEY (principal, role))",
    ],
];

/// How long an invite can be used.
pub const INVITE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest credential or invite accepted (ours are 48 characters).
const MAX_TOKEN: usize = 256;

/// Who may register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Registration {
    /// Anyone.
    #[default]
    Open,
    /// Only with a one-time invite an administrator made; with no administrator yet, a one-time
    /// administrator invite is written for the operator at start.
    Invite,
    /// Nobody.
    Closed,
}

impl std::str::FromStr for Registration {
    type Err = String;
    fn from_str(s: &str) -> Result<Registration, String> {
        match s {
            "open" => Ok(Registration::Open),
            "invite" => Ok(Registration::Invite),
            "closed" => Ok(Registration::Closed),
            other => Err(format!(
                "unknown registration mode {}: use open, invite or closed",
                enclava_core::text::quote(other)
            )),
        }
    }
}

/// No credential, or one nobody holds.
pub fn unauthenticated() -> Error {
    Error::new(
        ErrorCode::Unauthenticated,
        "missing or unknown credential: run `enclava keys register` (or check --config-dir)",
    )
}

/// The SHA-256 (hex) a credential is stored as.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Users, organisations and service identities of one database.
#[derive(Debug, Clone)]
pub struct Identity {
    audit: AuditLog,
    registration: Registration,
    rng: SystemRandom,
}

impl Identity {
    /// Creates the tables when new and opens the component on `audit`'s database. With no
    /// administrator yet (and registration not closed), writes a one-time administrator invite to
    /// `admin_invite` (mode 0600) and says so.
    pub async fn open(
        audit: AuditLog,
        registration: Registration,
        admin_invite: Option<&Path>,
    ) -> Result<Identity, Error> {
        audit.database().migrate("identity", MIGRATIONS, None).await?;
        let identity = Identity { audit, registration, rng: SystemRandom::new() };
        if let Some(path) = admin_invite
            && registration != Registration::Closed
            && !identity.has_admin().await?
        {
            identity.bootstrap_admin_invite(path).await?;
        }
        Ok(identity)
    }

    pub fn registration(&self) -> Registration {
        self.registration
    }

    fn random<const N: usize>(&self) -> Result<[u8; N], Error> {
        let mut b = [0u8; N];
        self.rng.fill(&mut b).map_err(|_| Error::internal("no system randomness"))?;
        Ok(b)
    }

    fn token(&self, prefix: &str) -> Result<String, Error> {
        Ok(format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(self.random::<32>()?)))
    }

    async fn bootstrap_admin_invite(&self, path: &Path) -> Result<(), Error> {
        let token = self.token("eki")?;
        let _ = std::fs::remove_file(path);
        enclava_store::kek::write_secret(path, format!("{token}\n").as_bytes())
            .map_err(|e| Error::internal(format!("cannot write {}: {e}", path.display())))?;
        self.store_invite("operator", &token_hash(&token), true).await?;
        tracing::warn!(
            path = %path.display(),
            "no administrator yet: register one with `enclava keys register --invite $(cat {})`",
            path.display()
        );
        Ok(())
    }

    /// A new user: its id and credential (shown once). An invite is needed with invite-only
    /// registration, and an administrator invite makes an administrator in any mode.
    pub async fn register(&self, invite: Option<&str>) -> Result<(String, String), Error> {
        let invite = invite.map(str::trim).filter(|i| !i.is_empty());
        match (self.registration, invite) {
            (Registration::Closed, _) => {
                return Err(Error::forbidden("registration is closed on this server: ask its operator"));
            }
            (Registration::Invite, None) => {
                return Err(Error::forbidden(
                    "this server registers users by invite only: ask an administrator for one (`enclava keys invite`), then `enclava keys register --invite TOKEN`",
                ));
            }
            _ => {}
        }
        if invite.is_some_and(|i| i.len() > MAX_TOKEN) {
            return Err(used_invite());
        }
        let id = format!("u_{}", hex::encode(self.random::<10>()?));
        let token = self.token("ekt")?;
        let admin = self.create_user(&id, &token_hash(&token), invite.map(token_hash).as_deref()).await?;
        tracing::info!(user = %id, admin, "user registered");
        Ok((id, token))
    }

    async fn create_user(&self, id: &str, token_hash: &str, invite: Option<&str>) -> Result<bool, Error> {
        let now = now_ms();
        let mut tx = self.audit.begin().await?;
        let mut admin = false;
        if let Some(invite) = invite {
            let row =
                sqlx::query("SELECT admin FROM invites WHERE token_hash = $1 AND used_by IS NULL AND expires_at > $2")
                    .bind(invite)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(row) = row else { return Err(used_invite()) };
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
        tx.commit(&[AuditEntry::new(now, id, "register", "", "", id, detail)]).await?;
        Ok(admin)
    }

    /// A one-time invite (shown once) and when it expires (ms), made by `by`; an `admin` invite
    /// makes an administrator. Needs a rule allowing `Create` on `invite` globally.
    pub async fn invite(&self, by: &Principal, admin: bool) -> Result<(String, u64), Error> {
        if !by.may(Operation::Create, "invite", &Target::global()) {
            return Err(Error::forbidden("only an administrator can make invites"));
        }
        let token = self.token("eki")?;
        let expires = self.store_invite(&by.id, &token_hash(&token), admin).await?;
        tracing::info!(user = %by.id, admin, "invite made");
        Ok((token, expires as u64))
    }

    async fn store_invite(&self, by: &str, token_hash: &str, admin: bool) -> Result<i64, Error> {
        let now = now_ms();
        let expires = now + INVITE_TTL.as_millis() as i64;
        let mut tx = self.audit.begin().await?;
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
        .bind(expires)
        .execute(&mut *tx)
        .await?;
        let detail = if admin { "administrator invite" } else { "invite" };
        tx.commit(&[AuditEntry::new(now, by, "invite", "", "", "", detail)]).await?;
        Ok(expires)
    }

    /// Whether any administrator exists.
    pub async fn has_admin(&self) -> Result<bool, Error> {
        let pool = self.audit.database().pool();
        let users: i64 =
            sqlx::query("SELECT COUNT(*) FROM users WHERE admin <> 0").fetch_one(pool).await?.try_get(0)?;
        let assigned: i64 = sqlx::query("SELECT COUNT(*) FROM role_assignments WHERE role = 'administrator'")
            .fetch_one(pool)
            .await?
            .try_get(0)?;
        Ok(users + assigned > 0)
    }

    /// Whether a user with this id exists.
    pub async fn user_exists(&self, id: &str) -> Result<bool, Error> {
        let row = sqlx::query("SELECT id FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(self.audit.database().pool())
            .await?;
        Ok(row.is_some())
    }

    /// Who holds `token`: a user, or a service identity that has not expired.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Error> {
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN {
            return Err(unauthenticated());
        }
        let hash = token_hash(token);
        let pool = self.audit.database().pool();
        if token.starts_with("eks_") {
            let row = sqlx::query("SELECT id, kind, organisation, expires_at FROM services WHERE token_hash = $1")
                .bind(&hash)
                .fetch_optional(pool)
                .await?
                .ok_or_else(unauthenticated)?;
            let expires: Option<i64> = row.try_get(3)?;
            if expires.is_some_and(|e| e <= now_ms()) {
                return Err(Error::new(
                    ErrorCode::Unauthenticated,
                    "this service credential has expired: ask for a new one",
                ));
            }
            let kind: String = row.try_get(1)?;
            let kind = PrincipalKind::parse(&kind).unwrap_or(PrincipalKind::Run);
            return self.principal_with(row.try_get(0)?, kind, row.try_get(2)?, false).await;
        }
        let row = sqlx::query("SELECT id, organisation, admin FROM users WHERE token_hash = $1")
            .bind(&hash)
            .fetch_optional(pool)
            .await?
            .ok_or_else(unauthenticated)?;
        let admin = row.try_get::<i64, _>(2)? != 0;
        self.principal_with(row.try_get(0)?, PrincipalKind::User, row.try_get(1)?, admin).await
    }

    /// The user `id` as a principal (for calls made on a user's behalf by id).
    pub async fn user(&self, id: &str) -> Result<Principal, Error> {
        let row = sqlx::query("SELECT id, organisation, admin FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(self.audit.database().pool())
            .await?
            .ok_or_else(|| Error::not_found(format!("no user {}", enclava_core::text::quote(id))))?;
        let admin = row.try_get::<i64, _>(2)? != 0;
        self.principal_with(row.try_get(0)?, PrincipalKind::User, row.try_get(1)?, admin).await
    }

    async fn principal_with(
        &self,
        id: String,
        kind: PrincipalKind,
        organisation: Option<String>,
        admin: bool,
    ) -> Result<Principal, Error> {
        let mut roles = vec![kind.as_str().to_owned()];
        if admin {
            roles.push("administrator".into());
        }
        for r in sqlx::query("SELECT role FROM role_assignments WHERE principal = $1")
            .bind(&id)
            .fetch_all(self.audit.database().pool())
            .await?
        {
            let role: String = r.try_get(0)?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        Ok(Principal { id, kind, organisation, roles, collaborations: Vec::new() })
    }

    /// A new organisation named `name` (administrators only); returns its id.
    pub async fn create_organisation(&self, by: &Principal, name: &str) -> Result<String, Error> {
        if !by.may(Operation::Create, "organisation", &Target::global()) {
            return Err(Error::forbidden("only an administrator can create organisations"));
        }
        let ok = (1..=64).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(Error::invalid(format!(
                "invalid organisation name {}: 1 to 64 letters, digits, '.', '_' or '-'",
                enclava_core::text::quote(name)
            )));
        }
        let id = format!("o_{}", hex::encode(self.random::<8>()?));
        let now = now_ms();
        let mut tx = self.audit.begin().await?;
        let taken =
            sqlx::query("SELECT id FROM organisations WHERE name = $1").bind(name).fetch_optional(&mut *tx).await?;
        if taken.is_some() {
            return Err(Error::new(ErrorCode::AlreadyExists, format!("an organisation named {name} exists already")));
        }
        sqlx::query("INSERT INTO organisations (id, name, created_by, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&id)
            .bind(name)
            .bind(&by.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit(&[AuditEntry::new(now, &by.id, "organisation", "", "", &id, name)]).await?;
        Ok(id)
    }

    /// Puts `user` in `organisation` (administrators, or that organisation's administrators for
    /// users without one).
    pub async fn join(&self, by: &Principal, user: &str, organisation: &str) -> Result<(), Error> {
        let target = Target { owner: Some(user), organisation: Some(organisation), collaboration: None };
        if !by.may(Operation::Edit, "user", &target) {
            return Err(Error::forbidden("only an administrator of that organisation can add users to it"));
        }
        let now = now_ms();
        let mut tx = self.audit.begin().await?;
        let known = sqlx::query("SELECT id FROM organisations WHERE id = $1")
            .bind(organisation)
            .fetch_optional(&mut *tx)
            .await?;
        if known.is_none() {
            return Err(Error::not_found(format!("no organisation {}", enclava_core::text::quote(organisation))));
        }
        let n = sqlx::query("UPDATE users SET organisation = $1 WHERE id = $2")
            .bind(organisation)
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found(format!("no user {}", enclava_core::text::quote(user))));
        }
        tx.commit(&[AuditEntry::new(now, &by.id, "join", "", "", user, organisation)]).await
    }

    /// Gives `principal` the role `role` (administrators only).
    pub async fn assign(&self, by: &Principal, principal: &str, role: &str) -> Result<(), Error> {
        if !by.may(Operation::Edit, "role", &Target::global()) {
            return Err(Error::forbidden("only an administrator can assign roles"));
        }
        if rules::role(role).is_none() {
            let names: Vec<&str> = rules::ROLES.iter().map(|r| r.name).collect();
            return Err(Error::invalid(format!(
                "unknown role {}: use one of {}",
                enclava_core::text::quote(role),
                names.join(", ")
            )));
        }
        let now = now_ms();
        let mut tx = self.audit.begin().await?;
        sqlx::query(
            "INSERT INTO role_assignments (principal, role) VALUES ($1, $2) ON CONFLICT (principal, role) DO NOTHING",
        )
        .bind(principal)
        .bind(role)
        .execute(&mut *tx)
        .await?;
        tx.commit(&[AuditEntry::new(now, &by.id, "assign", "", "", principal, role)]).await
    }

    /// A service identity of `kind` (a node, or one run) in `by`'s organisation, valid for `ttl`
    /// (`None`: until removed). Returns its id and credential (shown once).
    pub async fn issue_service(
        &self,
        by: &Principal,
        kind: PrincipalKind,
        ttl: Option<Duration>,
    ) -> Result<(String, String), Error> {
        let organisation = by.organisation.clone();
        self.issue_service_in(by, kind, organisation.as_deref(), None, ttl).await
    }

    /// As [`Identity::issue_service`], for `organisation` (in `collaboration`, when the service
    /// serves one): the call of an administrator, of that organisation's administrator, or of an
    /// administrator of that collaboration.
    pub async fn issue_service_in(
        &self,
        by: &Principal,
        kind: PrincipalKind,
        organisation: Option<&str>,
        collaboration: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<(String, String), Error> {
        if kind == PrincipalKind::User {
            return Err(Error::invalid("users register; service identities are nodes or runs"));
        }
        let target = Target { owner: None, organisation, collaboration };
        if organisation.is_none() && !by.is_admin() || !by.may(Operation::Create, "service", &target) {
            return Err(Error::forbidden("only an administrator of an organisation can issue its service identities"));
        }
        let id = format!("s_{}", hex::encode(self.random::<10>()?));
        let token = self.token("eks")?;
        let now = now_ms();
        let expires = ttl.map(|t| now.saturating_add(t.as_millis().min(i64::MAX as u128) as i64));
        let mut tx = self.audit.begin().await?;
        sqlx::query(
            "INSERT INTO services (id, kind, organisation, token_hash, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(kind.as_str())
        .bind(organisation)
        .bind(token_hash(&token))
        .bind(&by.id)
        .bind(now)
        .bind(expires)
        .execute(&mut *tx)
        .await?;
        let detail = match ttl {
            Some(t) => format!("{} for {} s", kind.as_str(), t.as_secs()),
            None => kind.as_str().to_owned(),
        };
        tx.commit(&[AuditEntry::new(now, &by.id, "service", "", "", &id, &detail)]).await?;
        Ok((id, token))
    }

    /// The admin-invite file's conventional place in a data folder.
    pub fn admin_invite_path(data_dir: &Path) -> PathBuf {
        data_dir.join("admin-invite")
    }
}

fn used_invite() -> Error {
    Error::forbidden("this invite is unknown, used or expired: ask an administrator for a new one")
}

#[cfg(test)]
mod tests {
    use super::*;
    use enclava_store::audit::AuditOptions;
    use enclava_store::kek::LocalKek;
    use enclava_store::{Database, DbOptions};
    use std::sync::Arc;

    pub(crate) async fn identity(dir: &Path, registration: Registration) -> Identity {
        let url = format!("sqlite://{}", dir.join("id.db").display());
        let db = Database::open(&url, DbOptions::default()).await.expect("db");
        let options = AuditOptions::default();
        let check = AuditLog::check(&db, &options).await.expect("check");
        let audit =
            AuditLog::open(db, Arc::new(LocalKek::from_bytes(&[1; 32], "t")), &options, check).await.expect("log");
        Identity::open(audit, registration, Some(&dir.join("admin-invite"))).await.expect("identity")
    }

    #[tokio::test]
    async fn users_invites_organisations_services_and_roles() {
        let dir = tempfile::tempdir().expect("tmp");
        let id = identity(dir.path(), Registration::Invite).await;
        assert_eq!(id.register(None).await.expect_err("invite only").code, ErrorCode::PermissionDenied);
        let bootstrap = std::fs::read_to_string(dir.path().join("admin-invite")).expect("admin invite");
        let (admin_id, admin_token) = id.register(Some(&bootstrap)).await.expect("admin");
        assert!(id.register(Some(&bootstrap)).await.is_err(), "an invite works once");
        let admin = id.authenticate(&admin_token).await.expect("auth");
        assert_eq!((admin.id.as_str(), admin.is_admin()), (admin_id.as_str(), true));
        let (invite, _) = id.invite(&admin, false).await.expect("invite");
        let (alice_id, alice_token) = id.register(Some(&invite)).await.expect("alice");
        let alice = id.authenticate(&alice_token).await.expect("auth");
        assert_eq!(alice.roles, ["user"]);
        assert_eq!(id.invite(&alice, false).await.expect_err("not admin").code, ErrorCode::PermissionDenied);
        assert_eq!(id.authenticate("ekt_nope").await.expect_err("unknown").code, ErrorCode::Unauthenticated);
        assert_eq!(id.authenticate("").await.expect_err("empty").code, ErrorCode::Unauthenticated);

        let acme = id.create_organisation(&admin, "acme").await.expect("org");
        assert_eq!(id.create_organisation(&admin, "acme").await.expect_err("dup").code, ErrorCode::AlreadyExists);
        assert!(id.create_organisation(&alice, "evil").await.is_err());
        id.join(&admin, &alice_id, &acme).await.expect("join");
        assert!(id.issue_service(&alice, PrincipalKind::Node, None).await.is_err(), "plain users issue none");
        id.assign(&admin, &alice_id, "organisation-admin").await.expect("assign");
        assert!(id.assign(&admin, &alice_id, "wizard").await.is_err());
        let alice = id.authenticate(&alice_token).await.expect("auth");
        assert_eq!(alice.organisation.as_deref(), Some(acme.as_str()));
        let (_, node_token) = id.issue_service(&alice, PrincipalKind::Node, None).await.expect("node");
        let node = id.authenticate(&node_token).await.expect("node auth");
        assert_eq!(
            (node.kind, node.organisation.as_deref(), node.roles.as_slice()),
            (PrincipalKind::Node, Some(acme.as_str()), &["node".to_owned()][..])
        );
        let (_, run_token) =
            id.issue_service(&alice, PrincipalKind::Run, Some(Duration::from_millis(1))).await.expect("run");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let e = id.authenticate(&run_token).await.expect_err("expired");
        assert!(e.code == ErrorCode::Unauthenticated && e.message.contains("expired"), "{e}");

        // Every change is in the audit log, and the credentials only as hashes.
        let actions: Vec<String> = sqlx::query("SELECT action FROM audit ORDER BY seq")
            .fetch_all(id.audit.database().pool())
            .await
            .expect("audit")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            actions,
            ["invite", "register", "invite", "register", "organisation", "join", "assign", "service", "service"]
        );
        let raw = std::fs::read(dir.path().join("id.db")).expect("db file");
        let wal = std::fs::read(dir.path().join("id.db-wal")).unwrap_or_default();
        for t in [&alice_token, &admin_token, &node_token] {
            let needle = t.as_bytes();
            assert!(!raw.windows(needle.len()).any(|w| w == needle) && !wal.windows(needle.len()).any(|w| w == needle));
        }
    }
}
