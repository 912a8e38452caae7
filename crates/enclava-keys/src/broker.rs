//! The key broker's operations: identities, model keys, grants, request keys, listing, the audit
//! log, and attested release (challenge, verify, bind, authorize, seal, audit). REST and gRPC are
//! thin adapters over this.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enclava_attest::policy::{PlatformRules, check};
use enclava_attest::{Claims, Evidence, Policy, binding};
use enclava_collateral::{CollateralSource, EvidenceVerifier};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::error::{ErrorCode, KeysError};
use crate::metrics::KeysMetrics;
use crate::store::{AuditEntry, ModelRow, Store, StoreOptions, entry, now_ms};
use enclava_contracts::keys::payload::{self, ReleasePayload, SecretKey};
use enclava_contracts::keys::rest::{AuditCheck, AuditRecord, Listing};
use enclava_identity::Identity;
use enclava_server::limit::RateLimiter;
use enclava_store::kek::KekSource;

/// How long a challenge nonce may be used.
pub const NONCE_TTL: Duration = Duration::from_secs(60);
/// Outstanding challenges one broker keeps at most (each is 40 bytes); beyond this new
/// challenges are refused as UNAVAILABLE until old ones are used or expire.
pub const MAX_OUTSTANDING_NONCES: usize = 1_000_000;
/// Largest evidence accepted in a release.
pub const MAX_EVIDENCE: usize = 256 * 1024;
/// Most users whose request keys one release may carry.
pub const MAX_USERS_PER_RELEASE: usize = 64;

pub use enclava_identity::Registration;

/// Which unauthenticated calls a rate limit is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    Register,
    /// Challenges and releases.
    Release,
}

/// How a broker is set up.
#[derive(Debug)]
pub struct BrokerConfig {
    /// `sqlite://FILE` or `postgres://…`.
    pub database: String,
    /// Holds the audit anchor.
    pub data_dir: PathBuf,
    /// The policy for models that have none; by default every confidential platform (any
    /// measurement: grants name them), no debug, TCB up to date, and never `sim`.
    pub default_policy: Option<Policy>,
    /// Intel/AMD collateral for real evidence.
    pub collateral: Option<Arc<dyn CollateralSource>>,
    pub nonce_ttl: Duration,
    /// Start on a database older than the audit anchor (recorded in the audit log).
    pub accept_rollback: bool,
    /// Extra PRAGMAs for every SQLite connection.
    pub sqlite_pragmas: Vec<String>,
    pub registration: Registration,
    /// Registrations per source address per minute (0: no limit).
    pub register_per_minute: u32,
    /// Challenges and releases per source address per second, each (0: no limit).
    pub release_per_second: u32,
}

impl BrokerConfig {
    pub fn new(database: impl Into<String>, data_dir: impl Into<PathBuf>) -> BrokerConfig {
        BrokerConfig {
            database: database.into(),
            data_dir: data_dir.into(),
            default_policy: None,
            collateral: None,
            nonce_ttl: NONCE_TTL,
            accept_rollback: false,
            sqlite_pragmas: Vec::new(),
            registration: Registration::Open,
            register_per_minute: 10,
            release_per_second: 100,
        }
    }
}

/// The built-in default release policy.
pub fn builtin_policy() -> Policy {
    let any = || Some(PlatformRules { any_measurement: true, ..Default::default() });
    Policy { sgx: any(), tdx: any(), sev_snp: any(), nitro: any(), ..Default::default() }
}

/// Why a release was refused. The node sees only [`Refusal::class`]; the audit log keeps the
/// reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown, used or expired nonce.
    Nonce(String),
    /// Evidence that does not verify, or does not bind this key and nonce.
    Evidence(String),
    /// Verified, but not authorized: policy, grant, model or request key.
    Denied(String),
}

impl Refusal {
    pub fn class(&self) -> &'static str {
        match self {
            Refusal::Nonce(_) => "nonce",
            Refusal::Evidence(_) => "evidence",
            Refusal::Denied(_) => "denied",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Refusal::Nonce(r) | Refusal::Evidence(r) | Refusal::Denied(r) => r,
        }
    }

    /// What the node is told: the class and what to do, nothing about the policy.
    pub fn to_error(&self) -> KeysError {
        match self {
            Refusal::Nonce(_) => KeysError::new(
                ErrorCode::FailedPrecondition,
                "release refused (nonce): the challenge is unknown, already used or expired; ask for a new one",
            ),
            Refusal::Evidence(_) => KeysError::forbidden(
                "release refused (evidence): the evidence does not verify or does not bind this key and nonce",
            ),
            Refusal::Denied(_) => KeysError::new(
                ErrorCode::NotGranted,
                "release refused (denied): this enclave is not authorized for this model (ask the model owner to grant its measurement)",
            ),
        }
    }
}

/// Why a release stopped: a refusal (the node's doing, audited) or an error (the broker's or its
/// operator's, logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Refused(Refusal),
    Error(KeysError),
}

impl Stop {
    /// The refusal's reason, or the error's message.
    pub fn reason(&self) -> &str {
        match self {
            Stop::Refused(r) => r.reason(),
            Stop::Error(e) => &e.message,
        }
    }

    pub fn to_error(&self) -> KeysError {
        match self {
            Stop::Refused(r) => r.to_error(),
            Stop::Error(e) => e.clone(),
        }
    }
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Stop {
        Stop::Refused(r)
    }
}

impl From<KeysError> for Stop {
    fn from(e: KeysError) -> Stop {
        Stop::Error(e)
    }
}

/// A release request, as both transports deliver it.
#[derive(Debug, Clone)]
pub struct ReleaseRequest {
    pub nonce: Vec<u8>,
    pub evidence: Vec<u8>,
    pub public_key: Vec<u8>,
    pub model: String,
    /// 0 for the current version.
    pub version: u64,
    pub users: Vec<String>,
}

/// A sealed answer.
#[derive(Debug, Clone)]
pub struct Release {
    pub model: String,
    pub version: u64,
    pub sealed: enclava_seal::Sealed,
}

/// One model's release material at one generation. Keys are unwrapped here, in memory only.
#[derive(Debug)]
struct ModelState {
    row: ModelRow,
    policy: Arc<Policy>,
    grants: HashSet<(String, String)>,
    measurements: HashSet<String>,
    keys: HashMap<u64, SecretKey>,
    request_keys: HashMap<(String, String), SecretKey>,
}

/// The key broker.
#[derive(Debug)]
pub struct Broker {
    store: Store,
    nonces: Mutex<HashMap<[u8; 32], u64>>,
    nonce_ttl: Duration,
    /// Collateral for real evidence, and the warm verifier.
    verifier: EvidenceVerifier,
    default_policy: Arc<Policy>,
    policies: Mutex<HashMap<String, Arc<Policy>>>,
    /// Release material per model, valid while the model's generation is unchanged (one cheap
    /// query per release checks it, so a revocation on any replica takes effect at once).
    models: Mutex<HashMap<String, Arc<ModelState>>>,
    audit: mpsc::Sender<(AuditEntry, oneshot::Sender<Result<(), KeysError>>)>,
    metrics: Arc<KeysMetrics>,
    rng: SystemRandom,
    identity: Arc<Identity>,
    register_limit: Option<RateLimiter>,
    release_limit: Option<RateLimiter>,
}

impl Broker {
    /// Opens the store (checking it against the audit anchor, and the KEK against it) and starts
    /// the audit writer.
    pub async fn open(config: BrokerConfig, kek: KekSource, metrics: Arc<KeysMetrics>) -> Result<Broker, KeysError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            KeysError::internal(format!("cannot create the data folder {}: {e}", config.data_dir.display()))
        })?;
        let options = StoreOptions {
            anchor: Some(config.data_dir.join("audit.anchor")),
            accept_rollback: config.accept_rollback,
            sqlite_pragmas: config.sqlite_pragmas.clone(),
        };
        let store = Store::open(&config.database, &kek, options).await?;
        let default_policy = config.default_policy.unwrap_or_else(builtin_policy);
        default_policy.validate().map_err(|e| KeysError::invalid(format!("the default release policy: {e}")))?;
        let admin_invite = Identity::admin_invite_path(&config.data_dir);
        let identity = Arc::new(Identity::open(store.audit().clone(), config.registration, Some(&admin_invite)).await?);
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(audit_writer(store.clone(), rx, metrics.clone()));
        Ok(Broker {
            store,
            nonces: Mutex::default(),
            nonce_ttl: config.nonce_ttl,
            verifier: EvidenceVerifier::new(config.collateral),
            default_policy: Arc::new(default_policy),
            policies: Mutex::default(),
            models: Mutex::default(),
            audit: tx,
            metrics,
            rng: SystemRandom::new(),
            identity,
            register_limit: RateLimiter::new(config.register_per_minute, Duration::from_secs(60)),
            release_limit: RateLimiter::new(config.release_per_second, Duration::from_secs(1)),
        })
    }

    /// Stops cleanly: the store's anchor brought up to date, its WAL checkpointed, its pool closed.
    pub async fn shutdown(&self) {
        self.store.close().await;
    }

    /// Takes one unauthenticated call of `what` from `source`, or says when to retry.
    pub fn rate(&self, what: RateKind, source: Option<std::net::IpAddr>) -> Result<(), KeysError> {
        let (limiter, name) = match what {
            RateKind::Register => (&self.register_limit, "registrations"),
            RateKind::Release => (&self.release_limit, "challenges and releases"),
        };
        match limiter.as_ref().map(|l| l.check(source)) {
            Some(Err(secs)) => {
                self.metrics.rate_limited.inc();
                Err(KeysError::rate_limited(name, secs))
            }
            _ => Ok(()),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &KeysMetrics {
        &self.metrics
    }

    fn random<const N: usize>(&self) -> Result<[u8; N], KeysError> {
        let mut b = [0u8; N];
        self.rng.fill(&mut b).map_err(|_| KeysError::internal("no system randomness"))?;
        Ok(b)
    }

    /// The identity component the broker's callers are known to.
    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// A new identity: its id and the credential (shown once). `invite` is a one-time invite
    /// token: needed with invite-only registration, and an administrator invite makes an
    /// administrator in any mode.
    pub async fn register(&self, invite: Option<&str>) -> Result<(String, String), KeysError> {
        self.identity.register(invite).await
    }

    /// A one-time invite (shown once) that registers a user, or an administrator with `admin`;
    /// administrators only.
    pub async fn invite(&self, user: &str, admin: bool) -> Result<(String, u64), KeysError> {
        let by = self.identity.user(user).await?;
        self.identity.invite(&by, admin).await
    }

    /// Records a refused change to a model the caller does not own, then returns the refusal.
    async fn audit_refusal(
        &self,
        user: &str,
        action: &str,
        model: &str,
        m: &str,
        subject: &str,
        e: KeysError,
    ) -> KeysError {
        if e.code == ErrorCode::PermissionDenied {
            let detail = format!("{action} refused: the model belongs to another user");
            if let Err(err) =
                self.store.append_audit(&[entry(now_ms(), user, "deny", model, m, subject, &detail)]).await
            {
                tracing::error!(error = %err, "cannot audit a refused change");
            }
        }
        e
    }

    /// The user a credential belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<String, KeysError> {
        Ok(self.identity.authenticate(token).await?.id)
    }

    /// Stores a new version of `model`'s key; only its owner may (the first uploader owns it).
    pub async fn put_model_key(
        &self,
        user: &str,
        model: &str,
        key: &[u8],
        policy: Option<&str>,
        rotate: bool,
    ) -> Result<u64, KeysError> {
        check_model_id(model)?;
        if key.len() != payload::KEY_LEN {
            return Err(KeysError::invalid(format!("a model key is {} bytes, not {}", payload::KEY_LEN, key.len())));
        }
        if let Some(p) = policy {
            if p.len() > 64 * 1024 {
                return Err(KeysError::invalid("the policy is larger than 64 KiB"));
            }
            Policy::parse(p).map_err(|e| KeysError::invalid(format!("the policy does not parse: {e}")))?;
        }
        let action = if rotate { "rotate" } else { "model-key" };
        let version = match self.store.add_model_key(user, model, key, policy, rotate).await {
            Ok(v) => v,
            Err(e) => return Err(self.audit_refusal(user, action, model, "", "", e).await),
        };
        tracing::info!(%user, %model, version, "model key stored");
        Ok(version)
    }

    pub async fn grant(&self, owner: &str, model: &str, measurement: &str, grantee: &str) -> Result<(), KeysError> {
        check_model_id(model)?;
        let m = normalize_measurement(measurement)?;
        check_user_id(grantee)?;
        if let Err(e) = self.store.grant(owner, model, &m, grantee).await {
            return Err(self.audit_refusal(owner, "grant", model, &m, grantee, e).await);
        }
        tracing::info!(%owner, %model, measurement = %m, %grantee, "grant added");
        Ok(())
    }

    pub async fn revoke(
        &self,
        owner: &str,
        model: &str,
        measurement: Option<&str>,
        grantee: Option<&str>,
    ) -> Result<u64, KeysError> {
        check_model_id(model)?;
        let m = measurement.map(normalize_measurement).transpose()?;
        if let Some(g) = grantee {
            check_user_id(g)?;
        }
        let n = match self.store.revoke(owner, model, m.as_deref(), grantee).await {
            Ok(n) => n,
            Err(e) => {
                let (m, g) = (m.as_deref().unwrap_or("*"), grantee.unwrap_or("*"));
                return Err(self.audit_refusal(owner, "revoke", model, m, g, e).await);
            }
        };
        tracing::info!(%owner, %model, revoked = n, "grants revoked");
        Ok(n)
    }

    pub async fn put_request_key(
        &self,
        user: &str,
        model: &str,
        measurement: &str,
        key: &[u8],
    ) -> Result<(), KeysError> {
        check_model_id(model)?;
        let m = normalize_measurement(measurement)?;
        if key.len() != payload::KEY_LEN {
            return Err(KeysError::invalid(format!("a request key is {} bytes, not {}", payload::KEY_LEN, key.len())));
        }
        self.store.put_request_key(user, model, &m, key).await?;
        tracing::info!(%user, %model, measurement = %m, "request key stored");
        Ok(())
    }

    pub async fn list(&self, user: &str, model: Option<&str>) -> Result<Listing, KeysError> {
        if let Some(m) = model {
            check_model_id(m)?;
        }
        Ok(Listing {
            models: self.store.list_models(user, model).await?,
            request_keys: self.store.list_request_keys(user, model).await?,
        })
    }

    pub async fn audit(&self, user: &str, limit: i64) -> Result<Vec<AuditRecord>, KeysError> {
        self.store.audit_for(user, limit.clamp(1, 10_000)).await
    }

    pub async fn verify_audit(&self) -> Result<AuditCheck, KeysError> {
        self.store.verify_audit().await
    }

    /// A fresh single-use nonce and when it expires (Unix ms).
    pub fn challenge(&self) -> Result<([u8; 32], u64), KeysError> {
        let nonce = self.random::<32>()?;
        let now = now_ms() as u64;
        let expires = now + self.nonce_ttl.as_millis() as u64;
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        if nonces.len() >= MAX_OUTSTANDING_NONCES {
            nonces.retain(|_, e| *e > now);
            if nonces.len() >= MAX_OUTSTANDING_NONCES {
                return Err(KeysError::new(
                    ErrorCode::Unavailable,
                    "too many outstanding challenges; try again shortly",
                ));
            }
        }
        nonces.insert(nonce, expires);
        self.metrics.challenges.inc();
        Ok((nonce, expires))
    }

    /// Takes a nonce: it is gone afterwards, whatever the outcome of the release.
    fn take_nonce(&self, nonce: &[u8], now: u64) -> Result<(), Refusal> {
        let key: [u8; 32] = nonce.try_into().map_err(|_| Refusal::Nonce("not a 32-byte nonce".into()))?;
        let expires = self.nonces.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        match expires {
            None => Err(Refusal::Nonce("unknown or already used nonce".into())),
            Some(e) if e <= now => Err(Refusal::Nonce("expired nonce".into())),
            Some(_) => Ok(()),
        }
    }

    fn policy_of(&self, row: &ModelRow) -> Result<Arc<Policy>, Refusal> {
        let Some(text) = &row.policy else { return Ok(self.default_policy.clone()) };
        let mut cache = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(text) {
            return Ok(p.clone());
        }
        let p =
            Arc::new(Policy::parse(text).map_err(|e| Refusal::Denied(format!("the model's policy is invalid: {e}")))?);
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(text.clone(), p.clone());
        Ok(p)
    }

    /// The model's release material, from the cache while its generation is unchanged. A store
    /// that fails, or a stored key that does not open, is an error (503), never a refusal: the
    /// node did nothing wrong, and the operator has to act.
    async fn state(&self, model: &str) -> Result<Arc<ModelState>, Stop> {
        let generation =
            self.store.generation(model).await?.ok_or_else(|| Refusal::Denied(format!("no model {model:?}")))?;
        if let Some(s) = self.models.lock().unwrap_or_else(|p| p.into_inner()).get(model)
            && s.row.generation == generation
        {
            return Ok(s.clone());
        }
        let snap = self.store.snapshot(model).await?.ok_or_else(|| Refusal::Denied(format!("no model {model:?}")))?;
        let policy = self.policy_of(&snap.row)?;
        let state = Arc::new(ModelState {
            measurements: snap.grants.iter().map(|(m, _)| m.clone()).collect(),
            grants: snap.grants.into_iter().collect(),
            keys: snap.keys.iter().filter_map(|(v, k)| Some((*v, SecretKey::from_slice(k)?))).collect(),
            request_keys: snap
                .request_keys
                .iter()
                .filter_map(|(u, m, k)| Some(((u.clone(), m.clone()), SecretKey::from_slice(k)?)))
                .collect(),
            policy,
            row: snap.row,
        });
        let mut cache = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        let newer = cache.get(model).is_some_and(|s| s.row.generation > state.row.generation);
        if !newer {
            cache.insert(model.to_owned(), state.clone());
        }
        Ok(state)
    }

    /// Decides whether verified `claims` may have `model`'s keys (and `users`' request keys):
    /// the model's policy accepts the platform, TCB and debug state at `now`, and active grants
    /// name the measurement (for each user). Public so real evidence, whose report data cannot
    /// bind a fresh nonce here, can be judged by grants in tests.
    pub async fn authorize(&self, model: &str, claims: &Claims, users: &[String], now: u64) -> Result<ModelRow, Stop> {
        let state = self.state(model).await?;
        judge(model, &state, claims, users, now)?;
        Ok(state.row.clone())
    }

    /// Attested release: every step, in order. A refusal after a valid challenge is audited with
    /// its reason; one without (an unknown, used or expired nonce, which anyone can send) is only
    /// counted, so anonymous calls cannot fill the audit log.
    pub async fn release(&self, req: ReleaseRequest) -> Result<Release, KeysError> {
        let started = std::time::Instant::now();
        let result = self.release_inner(&req).await;
        let outcome = match &result {
            Ok(_) => "released",
            Err(Stop::Refused(r)) => r.class(),
            Err(Stop::Error(_)) => "error",
        };
        self.metrics.count(outcome);
        self.metrics.release_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(r) => Ok(r),
            Err(Stop::Refused(refusal)) => {
                tracing::info!(model = %enclava_core::text::quote(&req.model), class = refusal.class(), reason = %refusal.reason(), "release refused");
                Err(refusal.to_error())
            }
            Err(Stop::Error(e)) => {
                if e.code == ErrorCode::Unavailable {
                    tracing::error!(model = %enclava_core::text::quote(&req.model), error = %e, "release failed: the broker cannot serve it");
                }
                Err(e)
            }
        }
    }

    async fn release_inner(&self, req: &ReleaseRequest) -> Result<Release, Stop> {
        check_model_id(&req.model)?;
        if req.evidence.len() > MAX_EVIDENCE {
            return Err(KeysError::invalid(format!("evidence is larger than {MAX_EVIDENCE} bytes")).into());
        }
        if req.public_key.len() != enclava_seal::KEY_LEN {
            return Err(KeysError::invalid("public_key must be a 32-byte X25519 key").into());
        }
        if req.users.len() > MAX_USERS_PER_RELEASE {
            return Err(KeysError::invalid(format!("at most {MAX_USERS_PER_RELEASE} users per release")).into());
        }
        for u in &req.users {
            check_user_id(u)?;
        }
        let now_ms = now_ms() as u64;
        let now = now_ms / 1000;
        // 1. The nonce goes first, so a replay fails whatever else it carries. Without a valid
        // challenge nothing is audited: only counted.
        self.take_nonce(&req.nonce, now_ms)?;
        let mut actor = "enclave:unverified".to_owned();
        let mut measurement = String::new();
        let outcome = async {
            let evidence = Evidence::detect(req.evidence.clone()).map_err(|e| Refusal::Evidence(e.to_string()))?;
            let state = self.state(&req.model).await?;
            if state.policy.rules(evidence.platform()).is_none() {
                return Err(Refusal::Denied(format!(
                    "the model's policy does not allow platform {}",
                    evidence.platform()
                ))
                .into());
            }
            // 2. The evidence verifies …
            let sim_root = state.policy.sim_root().ok().flatten();
            let claims =
                self.verifier.verify(&evidence, sim_root, now).await.map_err(|e| Refusal::Evidence(e.to_string()))?;
            actor = format!("enclave:{}:{}", claims.platform, claims.measurement_hex());
            measurement = claims.measurement_hex();
            // 3. … and binds this key and this nonce.
            if !binding::check(&claims.report_data, binding::KEY_RELEASE, &req.public_key, Some(&req.nonce)) {
                return Err(Refusal::Evidence("the report data does not bind this key and nonce".into()).into());
            }
            // 4. Policy and grants; 5. the keys, sealed to the bound key.
            judge(&req.model, &state, &claims, &req.users, now)?;
            let plain = material(&req.model, &state, req.version, &measurement, &req.users)?;
            Ok::<_, Stop>((state, plain))
        }
        .await;
        let (version, plain) = match outcome {
            Ok((state, plain)) => (if req.version == 0 { state.row.current_version } else { req.version }, plain),
            Err(Stop::Refused(refusal)) => {
                let e = entry(
                    now_ms as i64,
                    &actor,
                    "deny",
                    &req.model,
                    &measurement,
                    &req.users.join(","),
                    &format!("{}: {}", refusal.class(), refusal.reason()),
                );
                self.record(e).await?;
                return Err(refusal.into());
            }
            Err(e) => return Err(e),
        };
        Ok(self
            .seal_and_audit(
                &req.model,
                version,
                &plain,
                &actor,
                &measurement,
                &req.users,
                &req.public_key,
                &req.nonce,
                now_ms,
            )
            .await?)
    }

    /// Releases to claims that already passed verification and binding checks (real evidence
    /// whose report data the caller checked, and benchmarks): policy and grants, then keys
    /// sealed to `public_key` for `nonce`, audited before they leave.
    #[allow(clippy::too_many_arguments)]
    pub async fn release_claims(
        &self,
        model: &str,
        version: u64,
        claims: &Claims,
        users: &[String],
        public_key: &[u8],
        nonce: &[u8],
        now: u64,
    ) -> Result<Release, KeysError> {
        let state = self.state(model).await.map_err(|r| r.to_error())?;
        judge(model, &state, claims, users, now).map_err(|r| r.to_error())?;
        let m = claims.measurement_hex();
        let plain = material(model, &state, version, &m, users).map_err(|r| r.to_error())?;
        let version = if version == 0 { state.row.current_version } else { version };
        let actor = format!("enclave:{}:{m}", claims.platform);
        self.seal_and_audit(model, version, &plain, &actor, &m, users, public_key, nonce, now * 1000).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn seal_and_audit(
        &self,
        model: &str,
        version: u64,
        plain: &[u8],
        actor: &str,
        measurement: &str,
        users: &[String],
        public_key: &[u8],
        nonce: &[u8],
        now_ms: u64,
    ) -> Result<Release, KeysError> {
        let sealed = enclava_seal::seal(public_key, payload::INFO, &payload::aad(nonce, model), plain)
            .map_err(|e| KeysError::invalid(e.to_string()))?;
        // Recorded before the keys leave: no release goes unaudited.
        let e =
            entry(now_ms as i64, actor, "release", model, measurement, &users.join(","), &format!("version {version}"));
        self.record(e).await?;
        tracing::info!(%model, version, %measurement, users = users.len(), "keys released");
        Ok(Release { model: model.to_owned(), version, sealed })
    }

    /// Appends to the audit log through the group-commit writer and waits until it is durable.
    async fn record(&self, e: AuditEntry) -> Result<(), KeysError> {
        let (tx, rx) = oneshot::channel();
        self.audit
            .send((e, tx))
            .await
            .map_err(|_| KeysError::internal("the audit writer stopped; the server log has the details"))?;
        rx.await.map_err(|_| KeysError::internal("the audit writer stopped; the server log has the details"))?
    }
}

/// The model's policy accepts the claims at `now`, and active grants name the measurement (for
/// every user in `users`).
fn judge(model: &str, state: &ModelState, claims: &Claims, users: &[String], now: u64) -> Result<(), Refusal> {
    let verdict = check(&state.policy, claims, now, None);
    if !verdict.accepted {
        return Err(Refusal::Denied(format!("policy: {}", verdict.failures.join("; "))));
    }
    let m = claims.measurement_hex();
    if !state.measurements.contains(&m) {
        return Err(Refusal::Denied(format!("measurement {m} is not granted for {model}")));
    }
    for u in users {
        if !state.grants.contains(&(m.clone(), u.clone())) {
            return Err(Refusal::Denied(format!("measurement {m} is not granted for {model} and user {u}")));
        }
    }
    Ok(())
}

/// The release payload: the model key at `version` (0: current) and each user's request key.
fn material(
    model: &str,
    state: &ModelState,
    version: u64,
    measurement: &str,
    users: &[String],
) -> Result<Zeroizing<Vec<u8>>, Refusal> {
    let version = if version == 0 { state.row.current_version } else { version };
    let model_key =
        state.keys.get(&version).cloned().ok_or_else(|| Refusal::Denied(format!("no version {version} of {model}")))?;
    let mut request_keys = Vec::with_capacity(users.len());
    for u in users {
        let k = state
            .request_keys
            .get(&(u.clone(), measurement.to_owned()))
            .cloned()
            .ok_or_else(|| Refusal::Denied(format!("user {u} has no request key for {model} on {measurement}")))?;
        request_keys.push((u.clone(), k));
    }
    Ok(ReleasePayload { version, model_key, request_keys }.encode())
}

/// Commits queued audit entries in batches: every entry that arrives while one commit is under
/// way goes into the next, so many releases share one fsync.
async fn audit_writer(
    store: Store,
    mut rx: mpsc::Receiver<(AuditEntry, oneshot::Sender<Result<(), KeysError>>)>,
    metrics: Arc<KeysMetrics>,
) {
    let mut entries = Vec::with_capacity(256);
    let mut acks = Vec::with_capacity(256);
    while let Some((e, ack)) = rx.recv().await {
        entries.push(e);
        acks.push(ack);
        while entries.len() < 256 {
            match rx.try_recv() {
                Ok((e, ack)) => {
                    entries.push(e);
                    acks.push(ack);
                }
                Err(_) => break,
            }
        }
        let result = store.append_audit(&entries).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, entries = entries.len(), "audit append failed; the releases waiting on it are refused");
        }
        metrics.audit_batches.inc();
        for ack in acks.drain(..) {
            let _ = ack.send(result.clone());
        }
        entries.clear();
    }
}

pub use enclava_core::id::{check_model_id, check_user_id, normalize_measurement};
