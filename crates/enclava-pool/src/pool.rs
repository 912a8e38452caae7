//! A pool's router behind async calls: [`Pool::acquire`] gives a request its instance at once or
//! waits in the router's queue until a slot frees or its deadline passes; the [`Lease`] it gets
//! gives the slot back when the request ends, also when it is dropped (a caller that went away).
//! A queued request is handed out exactly once: a dispatch whose caller already left is given
//! back at once, so no slot is lost and no request served twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::router::{Decision, Dispatch, PoolStatus, Router, RouterConfig};

/// Milliseconds on the pool's clock (injectable for tests).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Why a request got no instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: answer 429 with `Retry-After`.
    Full { retry_after_ms: u64 },
    /// Its deadline passed while it waited.
    Deadline,
}

struct State {
    router: Router,
    waiting: HashMap<u64, oneshot::Sender<Dispatch>>,
    /// When a poke is already scheduled (pool clock, ms).
    poke_at: Option<u64>,
}

/// One pool.
pub struct Pool {
    state: Mutex<State>,
    clock: Clock,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// A request's slot on an instance.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    pub instance: String,
    pub model: String,
    /// The model is loaded there first.
    pub cold: bool,
    started_ms: u64,
    ended: bool,
}

impl Lease {
    /// The request ended: its run time teaches the router how long this model runs.
    pub fn finish(mut self) {
        self.ended = true;
        let now = (self.pool.clock)();
        self.pool.release(&self.instance, &self.model, now.saturating_sub(self.started_ms), now);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.ended {
            let now = (self.pool.clock)();
            self.pool.release(&self.instance, &self.model, now.saturating_sub(self.started_ms), now);
        }
    }
}

impl Pool {
    pub fn new(config: RouterConfig, clock: Clock) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(State { router: Router::new(config), waiting: HashMap::new(), poke_at: None }),
            clock,
        })
    }

    /// A pool on the system clock.
    pub fn with_system_clock(config: RouterConfig) -> Arc<Pool> {
        let start = std::time::Instant::now();
        Pool::new(config, Arc::new(move || start.elapsed().as_millis() as u64))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_instance(self: &Arc<Self>, id: &str, hot: &[&str]) {
        let now = (self.clock)();
        let mut s = self.lock();
        let handed = s.router.add_instance(id, hot, now);
        self.settle(&mut s, handed, now);
    }

    /// Removes an instance; returns the models of the requests that were running there (their
    /// callers retry them once, elsewhere).
    pub fn remove_instance(self: &Arc<Self>, id: &str) -> Vec<String> {
        let now = (self.clock)();
        let mut s = self.lock();
        let lost = s.router.remove_instance(id);
        let handed = s.router.poke(now);
        self.settle(&mut s, handed, now);
        lost
    }

    pub fn status(&self) -> PoolStatus {
        self.lock().router.status()
    }

    /// An instance for a request for `model`, waiting at most `deadline` in the queue.
    pub async fn acquire(self: &Arc<Self>, model: &str, deadline: Duration) -> Result<Lease, Refused> {
        let now = (self.clock)();
        let rx = {
            let mut s = self.lock();
            match s.router.route(model, now) {
                Decision::Run { instance, cold } => return Ok(self.lease(instance, model, cold)),
                Decision::Full { retry_after_ms } => return Err(Refused::Full { retry_after_ms }),
                Decision::Queued { ticket, .. } => {
                    let (tx, rx) = oneshot::channel();
                    s.waiting.insert(ticket, tx);
                    (ticket, rx)
                }
            }
        };
        let (ticket, mut rx) = rx;
        let waited = tokio::time::timeout(deadline, &mut rx).await;
        match waited {
            Ok(Ok(d)) => Ok(self.lease(d.instance, model, d.cold)),
            Ok(Err(_)) => Err(Refused::Deadline),
            Err(_) => {
                let mut s = self.lock();
                if s.router.cancel(ticket) {
                    s.waiting.remove(&ticket);
                    return Err(Refused::Deadline);
                }
                drop(s);
                // Handed out just as the deadline passed: it is this request's, take it.
                match rx.try_recv() {
                    Ok(d) => Ok(self.lease(d.instance, model, d.cold)),
                    Err(_) => Err(Refused::Deadline),
                }
            }
        }
    }

    /// Hands out what can go now.
    fn poke(self: &Arc<Self>) {
        let now = (self.clock)();
        let mut s = self.lock();
        s.poke_at = None;
        let handed = s.router.poke(now);
        self.settle(&mut s, handed, now);
    }

    /// Delivers `handed`, and while requests still wait behind a claim that will lapse with time
    /// (no request ending may come to free them), schedules a poke for then.
    fn settle(self: &Arc<Self>, s: &mut State, handed: Vec<Dispatch>, now: u64) {
        deliver(s, handed, now);
        let Some(wait) = s.router.next_lapse_ms(now) else { return };
        let at = now + wait;
        if s.poke_at.is_some_and(|p| p <= at) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        s.poke_at = Some(at);
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
            if let Some(pool) = pool.upgrade() {
                pool.poke();
            }
        });
    }

    fn lease(self: &Arc<Self>, instance: String, model: &str, cold: bool) -> Lease {
        Lease { pool: self.clone(), instance, model: model.to_owned(), cold, started_ms: (self.clock)(), ended: false }
    }

    fn release(self: &Arc<Self>, instance: &str, model: &str, exec_ms: u64, now: u64) {
        let mut s = self.lock();
        let handed = s.router.finish(instance, model, exec_ms, now);
        self.settle(&mut s, handed, now);
    }
}

/// Sends each dispatch to its waiting caller; one whose caller left gives its slot back, which
/// may hand out another.
fn deliver(s: &mut State, mut handed: Vec<Dispatch>, now: u64) {
    while let Some(d) = handed.pop() {
        let Some(tx) = s.waiting.remove(&d.ticket) else {
            handed.extend(s.router.finish(&d.instance, &d.model, 0, now));
            continue;
        };
        if let Err(d) = tx.send(d) {
            handed.extend(s.router.finish(&d.instance, &d.model, 0, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(instances: &[&str], config: RouterConfig) -> Arc<Pool> {
        let p = Pool::with_system_clock(config);
        for i in instances {
            p.add_instance(i, &[]);
        }
        p
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_overload_every_request_waits_its_turn_and_completes_once() {
        let config = RouterConfig { concurrency: 2, queue: 64, ..RouterConfig::default() };
        let p = pool(&["i0", "i1"], config);
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for n in 0..60 {
            let (p, served) = (p.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let model = ["a", "b", "c"][n % 3];
                let lease = p.acquire(model, Duration::from_secs(30)).await.expect("an instance");
                tokio::time::sleep(Duration::from_millis(2)).await;
                served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                lease.finish();
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 60);
        let status = p.status();
        assert_eq!(status.queued, 0);
        assert!(status.instances.iter().all(|i| i.in_flight == 0), "{status:?}");
    }

    #[tokio::test]
    async fn past_the_queue_bound_a_request_is_refused_with_a_retry_hint() {
        let config = RouterConfig { concurrency: 1, queue: 1, ..RouterConfig::default() };
        let p = pool(&["i0"], config);
        let held = p.acquire("a", Duration::from_secs(1)).await.expect("runs");
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.acquire("a", Duration::from_secs(5)).await.map(|l| l.instance.clone()) })
        };
        while p.status().queued == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        match p.acquire("a", Duration::from_secs(1)).await {
            Err(Refused::Full { retry_after_ms }) => assert!(retry_after_ms >= 100),
            other => panic!("expected 429: {other:?}"),
        }
        held.finish();
        assert_eq!(waiter.await.expect("task").expect("served"), "i0");
    }

    #[tokio::test]
    async fn a_deadline_takes_a_request_out_of_the_queue_and_a_dropped_lease_frees_its_slot() {
        let config = RouterConfig { concurrency: 1, queue: 4, ..RouterConfig::default() };
        let p = pool(&["i0"], config);
        let held = p.acquire("a", Duration::from_secs(1)).await.expect("runs");
        assert_eq!(p.acquire("a", Duration::from_millis(20)).await.err(), Some(Refused::Deadline));
        assert_eq!(p.status().queued, 0);
        drop(held);
        let again = p.acquire("a", Duration::from_millis(20)).await.expect("the slot came back");
        assert!(!again.cold);
    }
}
