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
                handed.extend(self.router.finish(&d.instance, &d.model, 0, now));
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

    fn end_lease(&mut self, id: u64, exec_ms: u64, now: u64) {
        if let Some(l) = self.leases.remove(&id) {
            let handed = self.router.finish(&l.instance, &l.model, exec_ms, now);
            self.handed(handed, now);
        }
    }

    /// A ticket's request left: out of the queue, or its dispatch given back.
    fn drop_ticket(&mut self, ticket: u64, now: u64) {
        self.tickets.remove(&ticket);
        if !self.router.cancel(ticket)
            && let Some(d) = self.dispatched.remove(&ticket)
        {
            let handed = self.router.finish(&d.instance, &d.model, 0, now);
            self.handed(handed, now);
        }
    }

    /// Takes an instance out of the router; its leases end without teaching the router anything.
    fn take_out(&mut self, id: &str, now: u64) {
        self.router.remove_instance(id);
        self.endpoints.remove(id);
        self.leases.retain(|_, l| l.instance != id);
        // Dispatches to it are re-queued as new routing decisions are not possible for a ticket
        // already handed out: give them back to their holders as a retry (they route again).
        let gone: Vec<u64> = self.dispatched.iter().filter(|(_, d)| d.instance == id).map(|(t, _)| *t).collect();
        for t in gone {
            self.dispatched.remove(&t);
            self.tickets.remove(&t);
        }
        let handed = self.router.poke(now);
        self.handed(handed, now);
    }

    /// Notes this replica alive; gives back what replicas silent too long held; pokes the router
    /// when a claim blocking the queue has lapsed.
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
                self.end_lease(id, 0, now);
            }
            let tickets: Vec<u64> = self.tickets.iter().filter(|(_, h)| **h == r).map(|(t, _)| *t).collect();
            for t in tickets {
                self.drop_ticket(t, now);
            }
        }
        self.down.retain(|_, until| *until > now);
        if self.router.next_lapse_ms(now) == Some(0) {
            let handed = self.router.poke(now);
            self.handed(handed, now);
        }
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

/// What a waiting request is given.
#[derive(Debug)]
struct Granted {
    lease: u64,
    instance: String,
    cold: bool,
    endpoint: String,
}

enum Routed {
    Run(Granted),
    Queued(u64),
    Full(u64),
    NotServed(Vec<String>),
}

#[derive(Default)]
struct Local {
    /// Queued tickets of this replica → their callers.
    waiters: HashMap<u64, oneshot::Sender<Granted>>,
    /// Leases dropped unfinished, to give back.
    dropped: Vec<u64>,
    /// A watcher task is running.
    watching: bool,
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
        self.pool.txn(|doc, now| doc.end_lease(id, now.saturating_sub(started), now)).await
    }

    /// The instance failed this request (it did not answer, or answered that it cannot serve):
    /// it is taken out of the pool for [`DOWN_MS`]; the caller retries elsewhere.
    pub async fn failed(mut self) -> Result<(), PoolError> {
        self.ended = true;
        let (id, instance) = (self.id, self.instance.clone());
        self.pool
            .txn(|doc, now| {
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

/// The names of every pool.
pub async fn names(store: &dyn Store, prefix: &str) -> Result<Vec<String>, PoolError> {
    match store.get(&catalog_key(prefix)).await.map_err(PoolError::Store)? {
        Some((_, raw)) => serde_json::from_slice(&raw).map_err(corrupt),
        None => Ok(Vec::new()),
    }
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
        let (version, raw) = self
            .store
            .get(&self.key)
            .await
            .map_err(PoolError::Store)?
            .ok_or_else(|| PoolError::Gone(self.name.clone()))?;
        Ok((version, serde_json::from_slice(&raw).map_err(corrupt)?))
    }

    /// The pool now: its spec, instances, hot models, in flight and queued.
    pub async fn view(&self) -> Result<PoolView, PoolError> {
        Ok(self.read().await?.1.view())
    }

    /// Applies `f` to the pool's state and writes it back if nobody wrote it meanwhile (else
    /// again, on what they wrote). Along the way: this replica is noted alive, what dead replicas
    /// held is given back, leases this replica dropped are given back, tickets whose caller left
    /// are dropped, and dispatches for this replica's waiting requests become their leases.
    async fn txn<R>(&self, mut f: impl FnMut(&mut Doc, u64) -> R) -> Result<R, PoolError> {
        let _serial = self.serial.lock().await;
        for attempt in 0..TRIES {
            let (version, mut doc) = self.read().await?;
            let now = (self.clock)();
            doc.housekeep(&self.replica, now);
            let (dropped, left, waiting): (Vec<u64>, Vec<u64>, Vec<u64>) = {
                let local = self.local();
                let left = local.waiters.iter().filter(|(_, tx)| tx.is_closed()).map(|(t, _)| *t).collect();
                (local.dropped.clone(), left, local.waiters.keys().copied().collect())
            };
            for id in &dropped {
                doc.end_lease(*id, 0, now);
            }
            for t in &left {
                doc.drop_ticket(*t, now);
            }
            let r = f(&mut doc, now);
            let mut granted = Vec::new();
            for t in waiting.iter().filter(|t| !left.contains(t)) {
                if let Some(d) = doc.dispatched.remove(t) {
                    doc.tickets.remove(t);
                    let lease = doc.new_lease(&self.replica, &d.instance, &d.model);
                    let endpoint = doc.endpoints.get(&d.instance).cloned().unwrap_or_default();
                    granted.push((*t, Granted { lease, instance: d.instance, cold: d.cold, endpoint }));
                }
            }
            let raw = serde_json::to_vec(&doc).map_err(corrupt)?;
            if self.store.put(&self.key, version, raw).await.map_err(PoolError::Store)? {
                let mut local = self.local();
                local.dropped.retain(|id| !dropped.contains(id));
                for t in &left {
                    local.waiters.remove(t);
                }
                for (t, g) in granted {
                    let lease = g.lease;
                    match local.waiters.remove(&t) {
                        Some(tx) => {
                            if tx.send(g).is_err() {
                                local.dropped.push(lease);
                            }
                        }
                        None => local.dropped.push(lease),
                    }
                }
                return Ok(r);
            }
            // Someone else wrote: back off a little, more each time, and read again.
            let pause = 50 + u64::from(attempt) * 50 + (now % 97);
            tokio::time::sleep(Duration::from_micros(pause.min(5_000))).await;
        }
        Err(PoolError::Contended)
    }

    /// Brings the pool's instances in line with what the registry lists: new ones join (with the
    /// models they have loaded), missing ones leave; instances kept out after a failure stay out
    /// until their time is up. Also this replica's sign of life. Returns (joined, left).
    pub async fn sync(&self, found: &[Found]) -> Result<(Vec<String>, Vec<String>), PoolError> {
        self.txn(|doc, now| {
            let present: Vec<String> = doc.router.instance_ids().map(str::to_owned).collect();
            let mut left = Vec::new();
            for id in &present {
                if !found.iter().any(|f| &f.id == id) {
                    doc.take_out(id, now);
                    left.push(id.clone());
                }
            }
            let mut joined = Vec::new();
            for f in found {
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
            (joined, left)
        })
        .await
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

    /// An instance for a request for `model`, waiting at most `deadline` in the queue.
    pub async fn acquire(self: &Arc<Self>, model: &str, deadline: Duration) -> Result<Lease, Refused> {
        let start = (self.clock)();
        let me = self.replica.clone();
        let routed = self
            .txn(|doc, now| {
                if !doc.spec.models.iter().any(|m| m == model) {
                    return Routed::NotServed(doc.spec.models.clone());
                }
                match doc.router.route(model, now) {
                    Decision::Run { instance, cold } => {
                        let lease = doc.new_lease(&me, &instance, model);
                        let endpoint = doc.endpoints.get(&instance).cloned().unwrap_or_default();
                        Routed::Run(Granted { lease, instance, cold, endpoint })
                    }
                    Decision::Queued { ticket, .. } => {
                        doc.tickets.insert(ticket, me.clone());
                        Routed::Queued(ticket)
                    }
                    Decision::Full { retry_after_ms } => Routed::Full(retry_after_ms),
                }
            })
            .await?;
        let ticket = match routed {
            Routed::Run(g) => return Ok(self.lease(g, model, start)),
            Routed::Full(retry_after_ms) => return Err(Refused::Full { retry_after_ms }),
            Routed::Queued(t) => t,
            Routed::NotServed(models) => return Err(Refused::NotServed(models)),
        };
        let (tx, mut rx) = oneshot::channel();
        self.local().waiters.insert(ticket, tx);
        self.clone().watch();
        match tokio::time::timeout(deadline, &mut rx).await {
            Ok(Ok(g)) => Ok(self.lease(g, model, (self.clock)())),
            Ok(Err(_)) => Err(Refused::Deadline),
            Err(_) => {
                // Out of the queue, unless it was handed out just now: then it is this request's.
                if self.local().waiters.remove(&ticket).is_none() {
                    return match rx.try_recv() {
                        Ok(g) => Ok(self.lease(g, model, (self.clock)())),
                        Err(_) => Err(Refused::Deadline),
                    };
                }
                let me = self.replica.clone();
                let taken = self
                    .txn(|doc, now| {
                        if doc.dispatched.contains_key(&ticket) {
                            let d = doc.dispatched.remove(&ticket)?;
                            doc.tickets.remove(&ticket);
                            let lease = doc.new_lease(&me, &d.instance, &d.model);
                            let endpoint = doc.endpoints.get(&d.instance).cloned().unwrap_or_default();
                            return Some(Granted { lease, instance: d.instance, cold: d.cold, endpoint });
                        }
                        doc.drop_ticket(ticket, now);
                        None
                    })
                    .await?;
                match taken {
                    Some(g) => Ok(self.lease(g, model, (self.clock)())),
                    None => Err(Refused::Deadline),
                }
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
                        let local = self.local();
                        !local.dropped.is_empty()
                            || local.waiters.iter().any(|(t, tx)| tx.is_closed() || doc.dispatched.contains_key(t))
                            || doc.router.next_lapse_ms(now) == Some(0)
                            || doc.replicas.values().any(|seen| now.saturating_sub(*seen) > REPLICA_TTL_MS)
                    }
                    Err(PoolError::Gone(_)) => {
                        // Deleted: its waiting requests are refused.
                        let mut local = self.local();
                        local.waiters.clear();
                        local.dropped.clear();
                        local.watching = false;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(pool = %self.name, error = %e, "pool watcher cannot read the pool; retrying");
                        false
                    }
                };
                if due && let Err(e) = self.txn(|_, _| ()).await {
                    tracing::warn!(pool = %self.name, error = %e, "pool watcher cannot write the pool; retrying");
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

    #[tokio::test]
    async fn a_deadline_takes_a_request_out_of_the_queue_and_a_dropped_lease_frees_its_slot() {
        let config = RouterConfig { concurrency: 1, queue: 4, ..RouterConfig::default() };
        let p = pool(&["i0"], config).await;
        let held = p.acquire("a", Duration::from_secs(1)).await.expect("runs");
        assert_eq!(p.acquire("a", Duration::from_millis(20)).await.err(), Some(Refused::Deadline));
        assert_eq!(p.view().await.expect("view").status.queued, 0);
        drop(held);
        let again = p.acquire("a", Duration::from_millis(500)).await.expect("the slot came back");
        assert!(!again.cold);
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
