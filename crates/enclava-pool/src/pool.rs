//! A pool's router behind async calls, its state shared by every replica of the `pools` role
//! through a [`Store`]: [`Pool::acquire`] gives a request its instance at once or waits in the
//! router's queue until a slot frees or its deadline passes; the [`Lease`] it gets gives the slot
//! back when the request ends (also when it is dropped: a caller that went away).
//!
//! # Shared state
//!
//! Everything another replica needs is one document per pool: the [`Router`] (instances, hot
//! models, claims, in-flight counts, the queue), the leases and queued tickets with the replica
//! that holds each, the dispatches waiting for their replica to take them, and each replica's last
//! sign of life. Every change is a transaction: read the document, apply the router's rules in
//! Rust, write it back only if nobody wrote it meanwhile (compare-and-set), else read again. So
//! replicas decide as one router would; within a replica, transactions run one at a time, so a
//! replica never conflicts with itself.
//!
//! A queued request is handed out exactly once: the router books the slot and records a dispatch
//! for the ticket; the replica holding the ticket turns it into a lease (at once when its own
//! transaction made it, else within [`POLL`]). A dispatch whose caller left is given back, which
//! may hand out another. A replica that stops writing for [`REPLICA_TTL_MS`] is presumed dead: the
//! next transaction of another replica gives back its leases and drops its tickets (its callers'
//! own retries cover the requests it held). An instance that failed a request is taken out and
//! kept out for [`DOWN_MS`]; its requests are retried once elsewhere by the caller.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use crate::router::{Decision, Dispatch, PoolStatus, Router, RouterConfig};
use crate::store::Store;

/// Milliseconds on the pool's clock (injectable for tests; replicas share the wall clock).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A replica silent this long is presumed dead.
pub const REPLICA_TTL_MS: u64 = 5_000;
/// An instance that failed a request is kept out this long.
pub const DOWN_MS: u64 = 10_000;
/// How often a replica with waiting requests looks for dispatches other replicas made.
pub const POLL: Duration = Duration::from_millis(5);
/// Compare-and-set attempts before a transaction gives up.
const TRIES: u32 = 200;

/// What a pool is: its models, which registry instances it takes, how it routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    pub name: String,
    pub models: Vec<String>,
    /// Only instances with this measurement (hex).
    pub measurement: Option<String>,
    /// Only instances on this platform.
    pub platform: Option<String>,
    pub config: RouterConfig,
    /// Instances the local backend keeps at least / at most.
    pub min: u32,
    pub max: u32,
    /// Who created it (a user id).
    pub owner: String,
}

/// Why a pool operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("no pool {0:?}")]
    Gone(String),
    #[error("a pool {0:?} already exists")]
    Exists(String),
    #[error("the pool store failed: {0}")]
    Store(String),
    #[error("the pool's stored state does not read: {0}")]
    Corrupt(String),
    #[error("the pool's state changed under every one of {TRIES} attempts; try again")]
    Contended,
    #[error(
        "this replica was presumed dead (silent for {REPLICA_TTL_MS} ms) and its waiting requests were dropped; try again"
    )]
    Dropped,
}

/// Why a request got no instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: answer 429 with `Retry-After`.
    Full { retry_after_ms: u64 },
    /// Its deadline passed while it waited.
    Deadline,
    /// The pool does not serve the model; these are the models it serves.
    NotServed(Vec<String>),
    /// The request is sealed for another measurement than the one the pool selects (this one).
    OtherMeasurement(String),
    /// The pool could not be read or written.
    Pool(PoolError),
}

impl From<PoolError> for Refused {
    fn from(e: PoolError) -> Refused {
        Refused::Pool(e)
    }
}

/// An instance the registry lists for a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    /// Where it is reached (`host:port`).
    pub endpoint: String,
    /// The pool's models it has loaded.
    pub hot: Vec<String>,
}

/// A pool as `pool list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub spec: PoolSpec,
    pub status: PoolStatus,
    /// Instance id → where it is reached.
    pub endpoints: BTreeMap<String, String>,
    /// Instances kept out after a failure.
    pub down: Vec<String>,
    /// Replicas of the `pools` role seen lately.
    pub replicas: usize,
}

/// What [`Pool::sync`] did.
#[derive(Debug, Clone)]
pub struct Synced {
    pub joined: Vec<String>,
    pub left: Vec<String>,
    /// The pool after it.
    pub view: PoolView,
}

/// One instance as the "which instance" answer ranks it (direct mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranked {
    pub id: String,
    pub endpoint: String,
    pub hot: bool,
    pub in_flight: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRec {
    replica: String,
    instance: String,
    model: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Doc {
    spec: PoolSpec,
    /// Random, fresh for each pool created under a name: a replica that kept a deleted pool's
    /// state (its leases, its waiting requests) finds it does not belong to the new pool.
    #[serde(default)]
    epoch: u64,
    /// Random, fresh for each write: a writer whose reply was lost learns its write landed.
    #[serde(default)]
    nonce: u64,
    router: Router,
    endpoints: BTreeMap<String, String>,
    down: BTreeMap<String, u64>,
    leases: BTreeMap<u64, LeaseRec>,
    /// Queued tickets → the replica holding each.
    tickets: BTreeMap<u64, String>,
    dispatched: BTreeMap<u64, Dispatch>,
    replicas: BTreeMap<String, u64>,
    next_lease: u64,
}

impl Doc {
    fn new(spec: PoolSpec) -> Doc {
        Doc {
            router: Router::new(spec.config),
            spec,
            epoch: rand::random(),
            nonce: 0,
            endpoints: BTreeMap::new(),
            down: BTreeMap::new(),
            leases: BTreeMap::new(),
            tickets: BTreeMap::new(),
            dispatched: BTreeMap::new(),
            replicas: BTreeMap::new(),
            next_lease: 1,
        }
    }

    /// Records dispatches for their tickets; one whose ticket nobody holds gives its slot back.
    fn handed(&mut self, mut handed: Vec<Dispatch>, now: u64) {
        while let Some(d) = handed.pop() {
            if self.tickets.contains_key(&d.ticket) {
                self.dispatched.insert(d.ticket, d);
            } else {
                handed.extend(self.router.release(&d.instance, &d.model, now));
            }
        }
    }

    fn new_lease(&mut self, replica: &str, instance: &str, model: &str) -> u64 {
        let id = self.next_lease;
        self.next_lease += 1;
        self.leases.insert(
            id,
            LeaseRec { replica: replica.to_owned(), instance: instance.to_owned(), model: model.to_owned() },
        );
        id
    }

    /// A lease ends: its request ran `exec_ms` (`None`: it did not run, or nobody knows how long).
    fn end_lease(&mut self, id: u64, exec_ms: Option<u64>, now: u64) {
        if let Some(l) = self.leases.remove(&id) {
            let handed = match exec_ms {
                Some(ms) => self.router.finish(&l.instance, &l.model, ms, now),
                None => self.router.release(&l.instance, &l.model, now),
            };
            self.handed(handed, now);
        }
    }

    /// A ticket's request left: out of the queue, or its dispatch given back.
    fn drop_ticket(&mut self, ticket: u64, now: u64) {
        self.tickets.remove(&ticket);
        if !self.router.cancel(ticket)
            && let Some(d) = self.dispatched.remove(&ticket)
        {
            let handed = self.router.release(&d.instance, &d.model, now);
            self.handed(handed, now);
        }
    }

    /// Takes an instance out of the router; its leases end without teaching the router anything.
    fn take_out(&mut self, id: &str, now: u64) {
        self.router.remove_instance(id);
        self.endpoints.remove(id);
        self.leases.retain(|_, l| l.instance != id);
        // Requests handed to it but not yet taken wait again, first in line, under their tickets.
        let gone: Vec<u64> = self.dispatched.iter().filter(|(_, d)| d.instance == id).map(|(t, _)| *t).collect();
        for t in gone {
            if let Some(d) = self.dispatched.remove(&t) {
                self.router.requeue(t, &d.model);
            }
        }
        let handed = self.router.poke(now);
        self.handed(handed, now);
    }

    /// Notes this replica alive; gives back what replicas silent too long held; hands out what
    /// can go now (claims lapse with time, not only with events).
    fn housekeep(&mut self, me: &str, now: u64) {
        self.replicas.insert(me.to_owned(), now);
        let dead: Vec<String> = self
            .replicas
            .iter()
            .filter(|(r, seen)| r.as_str() != me && now.saturating_sub(**seen) > REPLICA_TTL_MS)
            .map(|(r, _)| r.clone())
            .collect();
        for r in dead {
            self.replicas.remove(&r);
            let leases: Vec<u64> = self.leases.iter().filter(|(_, l)| l.replica == r).map(|(id, _)| *id).collect();
            for id in leases {
                self.end_lease(id, None, now);
            }
            let tickets: Vec<u64> = self.tickets.iter().filter(|(_, h)| **h == r).map(|(t, _)| *t).collect();
            for t in tickets {
                self.drop_ticket(t, now);
            }
        }
        self.down.retain(|_, until| *until > now);
        let handed = self.router.poke(now);
        self.handed(handed, now);
    }

    fn view(&self) -> PoolView {
        PoolView {
            spec: self.spec.clone(),
            status: self.router.status(),
            endpoints: self.endpoints.clone(),
            down: self.down.keys().cloned().collect(),
            replicas: self.replicas.len(),
        }
    }
}

/// What a request is given.
#[derive(Debug, Clone)]
struct Granted {
    lease: u64,
    instance: String,
    cold: bool,
    endpoint: String,
}

/// A slot on its way to its caller. Dropped unread (the caller went away between the send and
/// the read), it gives the slot back.
struct Grant {
    granted: Option<Granted>,
    pool: std::sync::Weak<Pool>,
}

impl Grant {
    /// The slot, for its caller.
    fn take(mut self) -> Option<Granted> {
        self.granted.take()
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let (Some(g), Some(pool)) = (self.granted.take(), self.pool.upgrade()) {
            pool.local().dropped.push(g.lease);
            pool.watch();
        }
    }
}

/// Where a request's outcome goes: its instance, or why it has none.
type Reply = oneshot::Sender<Result<Grant, Refused>>;

enum Routed {
    Run(Granted),
    Queued(u64),
    Full(u64),
    NotServed(Vec<String>),
    OtherMeasurement(String),
}

/// This replica's side of a pool: its waiting requests and what it has to give back.
#[derive(Default)]
struct Local {
    /// Queued tickets of this replica → their callers.
    waiters: HashMap<u64, Reply>,
    /// Leases dropped unfinished, to give back.
    dropped: Vec<u64>,
    /// A watcher task is running.
    watching: bool,
    /// The epoch of the pool this state belongs to.
    epoch: Option<u64>,
}

/// One pool, as one replica sees it.
pub struct Pool {
    store: Arc<dyn Store>,
    key: String,
    name: String,
    replica: String,
    clock: Clock,
    serial: tokio::sync::Mutex<()>,
    local: Mutex<Local>,
    wake: Notify,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("key", &self.key).field("replica", &self.replica).finish_non_exhaustive()
    }
}

/// A request's slot on an instance.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    id: u64,
    pub instance: String,
    /// Where the instance is reached (`host:port`).
    pub endpoint: String,
    pub model: String,
    /// The model is loaded there first.
    pub cold: bool,
    started_ms: u64,
    ended: bool,
}

impl Lease {
    /// The request ended: its run time teaches the router how long this model runs.
    pub async fn finish(mut self) -> Result<(), PoolError> {
        self.ended = true;
        let (id, started) = (self.id, self.started_ms);
        self.pool.end(id, move |doc, now| doc.end_lease(id, Some(now.saturating_sub(started)), now)).await
    }

    /// The instance failed this request (it did not answer): it is taken out of the pool for
    /// [`DOWN_MS`]; the caller retries elsewhere.
    pub async fn failed(mut self) -> Result<(), PoolError> {
        self.ended = true;
        let (id, instance) = (self.id, self.instance.clone());
        self.pool
            .end(id, move |doc, now| {
                doc.leases.remove(&id);
                doc.take_out(&instance, now);
                doc.down.insert(instance.clone(), now + DOWN_MS);
            })
            .await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.ended {
            self.pool.local().dropped.push(self.id);
            self.pool.clone().watch();
        }
    }
}

/// The store key of pool `name` under `prefix`.
pub fn pool_key(prefix: &str, name: &str) -> String {
    format!("{prefix}pool:{name}")
}

/// The store key of the list of pools under `prefix`.
pub fn catalog_key(prefix: &str) -> String {
    format!("{prefix}pools")
}

fn corrupt(e: impl std::fmt::Display) -> PoolError {
    PoolError::Corrupt(e.to_string())
}

/// Updates the list of pool names with compare-and-set.
async fn edit_catalog(store: &dyn Store, prefix: &str, f: impl Fn(&mut Vec<String>)) -> Result<(), PoolError> {
    let key = catalog_key(prefix);
    for _ in 0..TRIES {
        let (version, mut names) = match store.get(&key).await.map_err(PoolError::Store)? {
            Some((v, raw)) => (v, serde_json::from_slice::<Vec<String>>(&raw).map_err(corrupt)?),
            None => (0, Vec::new()),
        };
        f(&mut names);
        let raw = serde_json::to_vec(&names).map_err(corrupt)?;
        if store.put(&key, version, raw).await.map_err(PoolError::Store)? {
            return Ok(());
        }
    }
    Err(PoolError::Contended)
}

/// Creates pool `spec.name`; fails if it exists.
pub async fn create(store: &dyn Store, prefix: &str, spec: PoolSpec) -> Result<(), PoolError> {
    let name = spec.name.clone();
    let raw = serde_json::to_vec(&Doc::new(spec)).map_err(corrupt)?;
    if !store.put(&pool_key(prefix, &name), 0, raw).await.map_err(PoolError::Store)? {
        return Err(PoolError::Exists(name));
    }
    edit_catalog(store, prefix, |names| {
        if !names.contains(&name) {
            names.push(name.clone());
            names.sort();
        }
    })
    .await
}

/// Deletes pool `name`; fails if there is none. Requests waiting in it are refused.
pub async fn delete(store: &dyn Store, prefix: &str, name: &str) -> Result<(), PoolError> {
    let existed = store.delete(&pool_key(prefix, name)).await.map_err(PoolError::Store)?;
    edit_catalog(store, prefix, |names| names.retain(|n| n != name)).await?;
    if existed { Ok(()) } else { Err(PoolError::Gone(name.to_owned())) }
}

/// The outcome of a transaction run in a task of its own.
async fn joined<R>(task: tokio::task::JoinHandle<Result<R, PoolError>>) -> Result<R, PoolError> {
    task.await.unwrap_or_else(|e| Err(PoolError::Store(format!("a pool transaction stopped: {e}"))))
}

/// A pool's document and its version.
async fn read_doc(store: &dyn Store, key: &str, name: &str) -> Result<(u64, Doc), PoolError> {
    let (version, raw) =
        store.get(key).await.map_err(PoolError::Store)?.ok_or_else(|| PoolError::Gone(name.to_owned()))?;
    Ok((version, serde_json::from_slice(&raw).map_err(corrupt)?))
}

/// Pool `name` now, read without joining it as a replica (dashboards, tools).
pub async fn view(store: &dyn Store, prefix: &str, name: &str) -> Result<PoolView, PoolError> {
    Ok(read_doc(store, &pool_key(prefix, name), name).await?.1.view())
}

/// The names of every pool.
pub async fn names(store: &dyn Store, prefix: &str) -> Result<Vec<String>, PoolError> {
    match store.get(&catalog_key(prefix)).await.map_err(PoolError::Store)? {
        Some((_, raw)) => serde_json::from_slice(&raw).map_err(corrupt),
        None => Ok(Vec::new()),
    }
}

/// What one transaction did to this replica's side, applied once its write landed.
struct Effects {
    nonce: u64,
    dropped: Vec<u64>,
    left: Vec<u64>,
    granted: Vec<(u64, Granted)>,
    lost: Vec<u64>,
}

impl Pool {
    /// Pool `name` under `prefix`, as replica `replica` (unique per process) sees it.
    pub fn open(store: Arc<dyn Store>, prefix: &str, name: &str, replica: &str, clock: Clock) -> Arc<Pool> {
        Arc::new(Pool {
            store,
            key: pool_key(prefix, name),
            name: name.to_owned(),
            replica: replica.to_owned(),
            clock,
            serial: tokio::sync::Mutex::new(()),
            local: Mutex::new(Local::default()),
            wake: Notify::new(),
        })
    }

    /// The wall clock in milliseconds, which replicas on several machines share.
    pub fn system_clock() -> Clock {
        Arc::new(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn read(&self) -> Result<(u64, Doc), PoolError> {
        read_doc(self.store.as_ref(), &self.key, &self.name).await
    }

    /// The pool now: its spec, instances, hot models, in flight and queued.
    pub async fn view(&self) -> Result<PoolView, PoolError> {
        Ok(self.read().await?.1.view())
    }

    /// Runs [`Pool::txn_now`] in a task of its own, so a caller that goes away mid-write cannot
    /// leave it half done (a write that landed always has its effects on this replica).
    async fn txn<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnMut(&mut Doc, u64) -> R + Send + 'static,
        after: impl FnOnce(&R, &mut Local) + Send + 'static,
    ) -> Result<R, PoolError> {
        let pool = self.clone();
        joined(tokio::spawn(async move { pool.txn_now(f, after).await })).await
    }

    /// Applies `f` to the pool's state and writes it back if nobody wrote it meanwhile (else
    /// again, on what they wrote); once the write landed, `after` updates this replica's side.
    /// Along the way: this replica is noted alive, what dead replicas held is given back, leases
    /// this replica dropped are given back, tickets whose caller left are dropped, and dispatches
    /// for this replica's waiting requests become their leases.
    async fn txn_now<R>(
        self: &Arc<Self>,
        mut f: impl FnMut(&mut Doc, u64) -> R,
        after: impl FnOnce(&R, &mut Local),
    ) -> Result<R, PoolError> {
        let _serial = self.serial.lock().await;
        let mut pending: Option<(R, Effects)> = None;
        for attempt in 0..TRIES {
            let (version, mut doc) = self.read().await?;
            // A write whose answer was lost may have landed after all.
            if let Some((r, fx)) = pending.take()
                && doc.nonce == fx.nonce
            {
                return Ok(self.settle(r, fx, after));
            }
            let now = (self.clock)();
            let (dropped, left, waiting) = {
                let mut local = self.local();
                if local.epoch.is_some_and(|e| e != doc.epoch) {
                    // The pool was deleted and made again: nothing here belongs to the new one.
                    for (_, tx) in local.waiters.drain() {
                        let _ = tx.send(Err(Refused::Pool(PoolError::Gone(self.name.clone()))));
                    }
                    local.dropped.clear();
                }
                local.epoch = Some(doc.epoch);
                let left: Vec<u64> = local.waiters.iter().filter(|(_, tx)| tx.is_closed()).map(|(t, _)| *t).collect();
                let waiting: Vec<u64> = local.waiters.keys().filter(|t| !left.contains(t)).copied().collect();
                (local.dropped.clone(), left, waiting)
            };
            doc.housekeep(&self.replica, now);
            for id in &dropped {
                doc.end_lease(*id, None, now);
            }
            for t in &left {
                doc.drop_ticket(*t, now);
            }
            let r = f(&mut doc, now);
            let handed = doc.router.take_handed();
            doc.handed(handed, now);
            let mut granted = Vec::new();
            let mut lost = Vec::new();
            for t in &waiting {
                if let Some(d) = doc.dispatched.remove(t) {
                    doc.tickets.remove(t);
                    let lease = doc.new_lease(&self.replica, &d.instance, &d.model);
                    let endpoint = doc.endpoints.get(&d.instance).cloned().unwrap_or_default();
                    granted.push((*t, Granted { lease, instance: d.instance, cold: d.cold, endpoint }));
                } else if !doc.tickets.contains_key(t) {
                    // Dropped while this replica was presumed dead.
                    lost.push(*t);
                }
            }
            doc.nonce = rand::random();
            let fx = Effects { nonce: doc.nonce, dropped, left, granted, lost };
            let raw = serde_json::to_vec(&doc).map_err(corrupt)?;
            match self.store.put(&self.key, version, raw).await {
                Ok(true) => return Ok(self.settle(r, fx, after)),
                Ok(false) => pending = Some((r, fx)),
                Err(e) => {
                    tracing::debug!(pool = %self.name, error = %e, "pool write failed; reading again");
                    pending = Some((r, fx));
                }
            }
            // Someone else wrote (or the answer was lost): back off a little, more each time.
            let pause = 50 + u64::from(attempt) * 50 + (now % 97);
            tokio::time::sleep(Duration::from_micros(pause.min(5_000))).await;
        }
        Err(PoolError::Contended)
    }

    /// A transaction's write landed: this replica's side follows.
    fn settle<R>(self: &Arc<Self>, r: R, fx: Effects, after: impl FnOnce(&R, &mut Local)) -> R {
        let mut local = self.local();
        local.dropped.retain(|id| !fx.dropped.contains(id));
        for t in &fx.left {
            local.waiters.remove(t);
        }
        for (t, g) in fx.granted {
            let lease = g.lease;
            let grant = Grant { granted: Some(g), pool: Arc::downgrade(self) };
            match local.waiters.remove(&t) {
                Some(tx) => {
                    // Not delivered: taken back here (the lock is held: no Drop may take it).
                    if let Err(Ok(grant)) = tx.send(Ok(grant)) {
                        grant.take();
                        local.dropped.push(lease);
                    }
                }
                None => {
                    grant.take();
                    local.dropped.push(lease);
                }
            }
        }
        for t in fx.lost {
            if let Some(tx) = local.waiters.remove(&t) {
                let _ = tx.send(Err(Refused::Pool(PoolError::Dropped)));
            }
        }
        after(&r, &mut local);
        let busy = !local.dropped.is_empty();
        drop(local);
        // Slots to give back (a grant whose caller had gone): the watcher does it, now, rather
        // than whenever this replica next writes.
        if busy {
            self.clone().watch();
        }
        r
    }

    /// Ends lease `id` by `f` in a task of its own; if that fails, the lease is given back later.
    async fn end(self: &Arc<Self>, id: u64, f: impl FnMut(&mut Doc, u64) + Send + 'static) -> Result<(), PoolError> {
        let pool = self.clone();
        joined(tokio::spawn(async move {
            let r = pool.txn_now(f, |_, _| {}).await;
            if r.is_err() {
                pool.local().dropped.push(id);
                pool.clone().watch();
            }
            r
        }))
        .await
    }

    /// Brings the pool's instances in line with what the registry lists: new ones join (with the
    /// models they have loaded), missing ones leave; instances kept out after a failure stay out
    /// until their time is up. Also this replica's sign of life. Returns who joined and left, and
    /// the pool as this write left it.
    pub async fn sync(self: &Arc<Self>, found: &[Found]) -> Result<Synced, PoolError> {
        let found = found.to_vec();
        self.txn(
            move |doc, now| {
                let present: Vec<String> = doc.router.instance_ids().map(str::to_owned).collect();
                let mut left = Vec::new();
                for id in &present {
                    if !found.iter().any(|f| &f.id == id) {
                        doc.take_out(id, now);
                        left.push(id.clone());
                    }
                }
                let mut joined = Vec::new();
                for f in &found {
                    if doc.down.contains_key(&f.id) {
                        continue;
                    }
                    doc.endpoints.insert(f.id.clone(), f.endpoint.clone());
                    if !present.contains(&f.id) {
                        let hot: Vec<&str> =
                            f.hot.iter().filter(|m| doc.spec.models.contains(m)).map(String::as_str).collect();
                        let handed = doc.router.add_instance(&f.id, &hot, now);
                        doc.handed(handed, now);
                        joined.push(f.id.clone());
                    }
                }
                Synced { joined, left, view: doc.view() }
            },
            |_, _| {},
        )
        .await
    }

    /// Takes an instance out now (it is being stopped); requests handed to it wait again.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<(), PoolError> {
        let id = id.to_owned();
        self.txn(move |doc, now| doc.take_out(&id, now), |_, _| {}).await
    }

    /// The pool's instances for a direct-mode request for `model`, best first: hot before cold,
    /// then least loaded (the client verifies whichever it picks before sending anything).
    pub async fn rank(&self, model: &str) -> Result<Vec<Ranked>, PoolError> {
        let (_, doc) = self.read().await?;
        let mut out: Vec<Ranked> = doc
            .router
            .status()
            .instances
            .into_iter()
            .map(|i| Ranked {
                endpoint: doc.endpoints.get(&i.id).cloned().unwrap_or_default(),
                hot: i.hot.iter().any(|h| h == model),
                in_flight: i.in_flight,
                id: i.id,
            })
            .collect();
        out.sort_by_key(|r| (!r.hot, r.in_flight));
        Ok(out)
    }

    /// An instance for a request for `model`, waiting at most `deadline` in the queue. A caller
    /// that goes away leaves nothing behind: its place in the queue, or the slot it was given, is
    /// given back.
    pub async fn acquire(self: &Arc<Self>, model: &str, deadline: Duration) -> Result<Lease, Refused> {
        self.acquire_sealed(model, None, deadline).await
    }

    /// [`Pool::acquire`] for a request sealed for `measurement`: refused at once when the pool
    /// selects another (no instance of it could open the request).
    pub async fn acquire_sealed(
        self: &Arc<Self>,
        model: &str,
        measurement: Option<&str>,
        deadline: Duration,
    ) -> Result<Lease, Refused> {
        let sealed_for = measurement.map(str::to_ascii_lowercase);
        let until = tokio::time::Instant::now() + deadline;
        let start = (self.clock)();
        let (tx, mut rx) = oneshot::channel::<Result<Grant, Refused>>();
        let (me, wanted) = (self.replica.clone(), model.to_owned());
        let weak = Arc::downgrade(self);
        let routing = self.txn(
            move |doc, now| {
                if !doc.spec.models.contains(&wanted) {
                    return Routed::NotServed(doc.spec.models.clone());
                }
                if let (Some(asked), Some(m)) = (&sealed_for, &doc.spec.measurement)
                    && asked != m
                {
                    return Routed::OtherMeasurement(m.clone());
                }
                match doc.router.route(&wanted, now) {
                    Decision::Run { instance, cold } => {
                        let lease = doc.new_lease(&me, &instance, &wanted);
                        let endpoint = doc.endpoints.get(&instance).cloned().unwrap_or_default();
                        Routed::Run(Granted { lease, instance, cold, endpoint })
                    }
                    Decision::Queued { ticket, .. } => {
                        doc.tickets.insert(ticket, me.clone());
                        Routed::Queued(ticket)
                    }
                    Decision::Full { retry_after_ms } => Routed::Full(retry_after_ms),
                }
            },
            move |routed, local| match routed {
                Routed::Run(g) => {
                    let grant = Grant { granted: Some(g.clone()), pool: weak };
                    if let Err(Ok(grant)) = tx.send(Ok(grant)) {
                        grant.take();
                        local.dropped.push(g.lease);
                    }
                }
                Routed::Queued(t) => {
                    local.waiters.insert(*t, tx);
                }
                Routed::Full(ms) => {
                    let _ = tx.send(Err(Refused::Full { retry_after_ms: *ms }));
                }
                Routed::NotServed(models) => {
                    let _ = tx.send(Err(Refused::NotServed(models.clone())));
                }
                Routed::OtherMeasurement(m) => {
                    let _ = tx.send(Err(Refused::OtherMeasurement(m.clone())));
                }
            },
        );
        let routed = match tokio::time::timeout_at(until, routing).await {
            Ok(Ok(routed)) => routed,
            Ok(Err(e)) => return Err(Refused::Pool(e)),
            Err(_) => {
                // The write goes on in its task; what it gets is given back (the receiver is gone).
                drop(rx);
                self.clone().watch();
                return Err(Refused::Deadline);
            }
        };
        if matches!(routed, Routed::Queued(_)) {
            self.clone().watch();
        }
        match tokio::time::timeout_at(until, &mut rx).await {
            Ok(Ok(Ok(grant))) => match grant.take() {
                Some(g) => {
                    Ok(self.lease(g, model, if matches!(routed, Routed::Run(_)) { start } else { (self.clock)() }))
                }
                None => Err(Refused::Deadline),
            },
            Ok(Ok(Err(refused))) => Err(refused),
            Ok(Err(_)) => Err(Refused::Deadline),
            Err(_) => {
                // Out of the queue: the watcher sees the caller left and drops the ticket (or
                // gives back the slot it was handed just now).
                drop(rx);
                self.clone().watch();
                Err(Refused::Deadline)
            }
        }
    }

    fn lease(self: &Arc<Self>, g: Granted, model: &str, started_ms: u64) -> Lease {
        Lease {
            pool: self.clone(),
            id: g.lease,
            instance: g.instance,
            endpoint: g.endpoint,
            model: model.to_owned(),
            cold: g.cold,
            started_ms,
            ended: false,
        }
    }

    /// Starts the watcher unless it runs: while this replica has waiting requests or leases to
    /// give back, it looks for their dispatches (made by other replicas, or by time as claims
    /// lapse) every [`POLL`], writing only when there is something to do.
    fn watch(self: Arc<Self>) {
        {
            let mut local = self.local();
            if local.watching {
                drop(local);
                self.wake.notify_one();
                return;
            }
            local.watching = true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.local().watching = false;
            return;
        };
        runtime.spawn(async move {
            let mut poke_at: Option<u64> = None;
            loop {
                let busy = {
                    let mut local = self.local();
                    let busy = !local.waiters.is_empty() || !local.dropped.is_empty();
                    if !busy {
                        local.watching = false;
                    }
                    busy
                };
                if !busy {
                    return;
                }
                let due = match self.read().await {
                    Ok((_, doc)) => {
                        let now = (self.clock)();
                        if let Some(ms) = doc.router.next_lapse_ms(now) {
                            poke_at = Some(poke_at.map_or(now + ms, |p| p.min(now + ms)));
                        }
                        let stale = doc
                            .replicas
                            .get(&self.replica)
                            .is_none_or(|seen| now.saturating_sub(*seen) > REPLICA_TTL_MS / 2);
                        let local = self.local();
                        !local.dropped.is_empty()
                            || local.epoch != Some(doc.epoch)
                            || local.waiters.iter().any(|(t, tx)| {
                                tx.is_closed() || doc.dispatched.contains_key(t) || !doc.tickets.contains_key(t)
                            })
                            || poke_at.is_some_and(|at| at <= now)
                            || stale
                    }
                    Err(PoolError::Gone(_)) => {
                        // Deleted: its waiting requests are refused.
                        let mut local = self.local();
                        for (_, tx) in local.waiters.drain() {
                            let _ = tx.send(Err(Refused::Pool(PoolError::Gone(self.name.clone()))));
                        }
                        local.dropped.clear();
                        local.watching = false;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(pool = %self.name, error = %e, "pool watcher cannot read the pool; retrying");
                        false
                    }
                };
                if due {
                    poke_at = None;
                    if let Err(e) = self.txn_now(|_, _| (), |_, _| {}).await {
                        tracing::warn!(pool = %self.name, error = %e, "pool watcher cannot write the pool; retrying");
                    }
                }
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    fn spec(name: &str, config: RouterConfig) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            models: vec!["a".into(), "b".into(), "c".into()],
            measurement: None,
            platform: None,
            config,
            min: 0,
            max: 0,
            owner: "u".into(),
        }
    }

    fn found(ids: &[&str]) -> Vec<Found> {
        ids.iter().map(|i| Found { id: i.to_string(), endpoint: format!("{i}:1"), hot: Vec::new() }).collect()
    }

    async fn pool(instances: &[&str], config: RouterConfig) -> Arc<Pool> {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        create(store.as_ref(), "t:", spec("p", config)).await.expect("create");
        let p = Pool::open(store, "t:", "p", "r1", Pool::system_clock());
        p.sync(&found(instances)).await.expect("sync");
        p
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_overload_every_request_waits_its_turn_and_completes_once() {
        let config = RouterConfig { concurrency: 2, queue: 64, ..RouterConfig::default() };
        let p = pool(&["i0", "i1"], config).await;
        let served = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for n in 0..60 {
            let (p, served) = (p.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let model = ["a", "b", "c"][n % 3];
                let lease = p.acquire(model, Duration::from_secs(30)).await.expect("an instance");
                assert_eq!(lease.endpoint, format!("{}:1", lease.instance));
                tokio::time::sleep(Duration::from_millis(2)).await;
                served.fetch_add(1, Ordering::SeqCst);
                lease.finish().await.expect("finish");
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(served.load(Ordering::SeqCst), 60);
        let status = p.view().await.expect("view").status;
        assert_eq!(status.queued, 0);
        assert!(status.instances.iter().all(|i| i.in_flight == 0), "{status:?}");
    }

    #[tokio::test]
    async fn past_the_queue_bound_a_request_is_refused_with_a_retry_hint() {
        let config = RouterConfig { concurrency: 1, queue: 1, ..RouterConfig::default() };
        let p = pool(&["i0"], config).await;
        let held = p.acquire("a", Duration::from_secs(1)).await.expect("runs");
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.acquire("a", Duration::from_secs(5)).await.map(|l| l.instance.clone()) })
        };
        while p.view().await.expect("view").status.queued == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        match p.acquire("a", Duration::from_secs(1)).await {
            Err(Refused::Full { retry_after_ms }) => assert!(retry_after_ms >= 100),
            other => panic!("expected 429: {other:?}"),
        }
        held.finish().await.expect("finish");
        assert_eq!(waiter.await.expect("task").expect("served"), "i0");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadline_takes_a_request_out_of_the_queue_and_a_dropped_lease_frees_its_slot() {
        let config = RouterConfig { concurrency: 1, queue: 4, ..RouterConfig::default() };
        let p = pool(&["i0"], config).await;
        let held = p.acquire("a", Duration::from_secs(1)).await.expect("runs");
        assert_eq!(p.acquire("a", Duration::from_millis(20)).await.err(), Some(Refused::Deadline));
        // The watcher takes it out of the queue within a poll or two.
        let mut polls = 0;
        while p.view().await.expect("view").status.queued > 0 {
            polls += 1;
            assert!(polls < 200, "the abandoned request stays queued");
            tokio::time::sleep(POLL).await;
        }
        drop(held);
        let again = p.acquire("a", Duration::from_millis(500)).await.expect("the slot came back");
        assert!(!again.cold);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_that_go_away_mid_call_leave_no_slot_or_place_behind() {
        let config = RouterConfig { concurrency: 1, queue: 8, ..RouterConfig::default() };
        let p = pool(&["i0"], config).await;
        let held = p.acquire("a", Duration::from_secs(1)).await.expect("runs");
        // Callers cancelled at every point: while routing, while waiting, while finishing.
        for n in 0..20u64 {
            let q = p.clone();
            let task =
                tokio::spawn(async move { q.acquire("a", Duration::from_secs(5)).await.map(|l| l.instance.clone()) });
            tokio::time::sleep(Duration::from_micros(50 * n)).await;
            task.abort();
        }
        let finishing = {
            let p = p.clone();
            tokio::spawn(async move { p.acquire("b", Duration::from_secs(5)).await.expect("b runs").finish().await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        held.finish().await.expect("finish");
        finishing.abort();
        let mut polls = 0;
        loop {
            let s = p.view().await.expect("view").status;
            if s.queued == 0 && s.instances[0].in_flight == 0 {
                break;
            }
            polls += 1;
            assert!(polls < 400, "left behind: {s:?}");
            tokio::time::sleep(POLL).await;
        }
        let again = p.acquire("a", Duration::from_millis(500)).await.expect("every slot came back");
        again.finish().await.expect("finish");
    }

    #[tokio::test]
    async fn a_replica_that_stops_gives_back_its_slots_after_its_ttl() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let config = RouterConfig { concurrency: 1, queue: 4, ..RouterConfig::default() };
        create(store.as_ref(), "t:", spec("p", config)).await.expect("create");
        let now = Arc::new(AtomicU64::new(1_000));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || now.load(Ordering::SeqCst))
        };
        let dead = Pool::open(store.clone(), "t:", "p", "dead", clock.clone());
        dead.sync(&found(&["i0"])).await.expect("sync");
        let held = dead.acquire("a", Duration::from_secs(1)).await.expect("runs");
        std::mem::forget(held); // the replica dies holding it
        let live = Pool::open(store.clone(), "t:", "p", "live", clock);
        assert_eq!(live.acquire("a", Duration::from_millis(10)).await.err(), Some(Refused::Deadline));
        now.fetch_add(REPLICA_TTL_MS + 1, Ordering::SeqCst);
        let lease = live.acquire("a", Duration::from_millis(200)).await.expect("the dead replica's slot came back");
        assert_eq!(lease.instance, "i0");
        assert_eq!(live.view().await.expect("view").replicas, 1);
    }

    #[tokio::test]
    async fn a_failed_instance_is_kept_out_and_requests_go_elsewhere() {
        let p = pool(&["i0", "i1"], RouterConfig::default()).await;
        let lease = p.acquire("a", Duration::from_secs(1)).await.expect("runs");
        let bad = lease.instance.clone();
        lease.failed().await.expect("taken out");
        p.sync(&found(&["i0", "i1"])).await.expect("sync");
        let again = p.acquire("a", Duration::from_secs(1)).await.expect("runs");
        assert_ne!(again.instance, bad);
        let view = p.view().await.expect("view");
        assert_eq!(view.down, vec![bad]);
        assert_eq!(view.status.instances.len(), 1);
    }

    #[test]
    fn a_request_handed_to_an_instance_that_goes_before_it_was_taken_waits_again_first_in_line() {
        let config = RouterConfig { concurrency: 1, queue: 8, ..RouterConfig::default() };
        let mut doc = Doc::new(spec("p", config));
        doc.router.add_instance("i0", &[], 0);
        doc.router.add_instance("i1", &[], 0);
        let Decision::Run { instance: busy, .. } = doc.router.route("a", 1) else { panic!("runs") };
        let first = doc.new_lease("r1", &busy, "a");
        let Decision::Run { instance: other, .. } = doc.router.route("b", 2) else { panic!("runs") };
        let second = doc.new_lease("r1", &other, "b");
        let Decision::Queued { ticket, .. } = doc.router.route("a", 3) else { panic!("waits") };
        doc.tickets.insert(ticket, "r2".into());
        doc.end_lease(second, Some(5), 10);
        assert_eq!(doc.dispatched.get(&ticket).map(|d| d.instance.clone()), Some(other.clone()));
        // Its instance goes before r2 took it: the request waits again, and takes the next slot.
        doc.take_out(&other, 11);
        assert!(doc.dispatched.is_empty());
        assert_eq!(doc.router.status().queued, 1);
        doc.end_lease(first, Some(5), 12);
        assert_eq!(doc.dispatched.get(&ticket).map(|d| d.instance.clone()), Some(busy));
    }

    #[tokio::test]
    async fn pools_are_created_once_listed_and_deleted() {
        let store = MemoryStore::default();
        create(&store, "t:", spec("p", RouterConfig::default())).await.expect("create");
        assert_eq!(create(&store, "t:", spec("p", RouterConfig::default())).await, Err(PoolError::Exists("p".into())));
        create(&store, "t:", spec("o", RouterConfig::default())).await.expect("create");
        assert_eq!(names(&store, "t:").await.expect("names"), vec!["o".to_string(), "p".to_string()]);
        delete(&store, "t:", "p").await.expect("delete");
        assert_eq!(delete(&store, "t:", "p").await, Err(PoolError::Gone("p".into())));
        assert_eq!(names(&store, "t:").await.expect("names"), vec!["o".to_string()]);
    }
}
