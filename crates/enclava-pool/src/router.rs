//! The pool's routing decision for serverless requests: which instance serves a request for a
//! model, or that it waits. Every call takes the time (`now_ms`) from its caller, so the rules are
//! tested exactly and replicas sharing state decide alike.
//!
//! For a request for model `m`, an instance is usable when it is alive, has a free slot
//! (`concurrency`) and is not claimed by another model whose claim still holds. Among usable
//! instances the router takes, in order:
//!
//! 1. the instance that served `m` last, if `m` is still hot there (sequential traffic keeps its
//!    instance: FnPacker's lowest-free-index rule loses this);
//! 2. another instance where `m` is hot, least loaded first;
//! 3. an instance where `m` is cold (a load), preferring one with a free model slot over one that
//!    must evict, then the least loaded; a model is evicted only when nothing runs it there.
//!
//! A model with `claim_at` (2) requests in flight claims the instance it runs on: no other model
//! loads there (which could evict it) until it has been idle for `takeover_factor` (2) × its last
//! execution time, after which any model may take the instance over (FnPacker's rule). Unlike
//! FnPacker's, a claim does not keep out a model already hot on the instance: instances here hold
//! several models, and shutting out a co-resident one only makes it load elsewhere and evict
//! (the simulation in `enclava bench pools` showed the thrashing). When nothing is usable the
//! request waits in a bounded FIFO queue; only a full queue refuses, with a retry hint. Requests
//! leave the queue as slots free, each the first that can be placed, so a cold model waiting for
//! room does not hold back a hot one behind it; a newcomer runs at once when it can after every
//! waiting request that can go has gone.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// How a pool routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouterConfig {
    /// Requests one instance serves at once.
    pub concurrency: u32,
    /// Models an instance's memory holds at once.
    pub models_per_instance: usize,
    /// Requests that may wait; past it a request is refused.
    pub queue: usize,
    /// In-flight requests at which a model claims its instance.
    pub claim_at: u32,
    /// A claim lapses after its model is idle for this many times its last execution time.
    pub takeover_factor: u64,
}

impl Default for RouterConfig {
    fn default() -> RouterConfig {
        RouterConfig { concurrency: 8, models_per_instance: 2, queue: 256, claim_at: 2, takeover_factor: 2 }
    }
}

/// What happens to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send it to `instance` now; `cold`: the model is loaded there first.
    Run { instance: String, cold: bool },
    /// It waits; [`Router::finish`] and friends hand it out later under this ticket.
    Queued { ticket: u64, position: usize },
    /// The queue is full: try again after `retry_after_ms` (HTTP 429 with `Retry-After`).
    Full { retry_after_ms: u64 },
}

/// A queued request that now has an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    pub ticket: u64,
    pub model: String,
    pub instance: String,
    pub cold: bool,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Instance {
    in_flight: u32,
    /// Requests running per model.
    running: HashMap<String, u32>,
    /// Loaded models, least recently used first.
    hot: Vec<String>,
    claim: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Model {
    in_flight: u32,
    last_instance: Option<String>,
    last_exec_ms: u64,
    last_end_ms: u64,
    /// Times it was loaded.
    #[serde(default)]
    loads: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Waiting {
    ticket: u64,
    model: String,
}

/// One instance as [`Router::status`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub in_flight: u32,
    /// Loaded models, least recently used first.
    pub hot: Vec<String>,
    pub claimed_by: Option<String>,
}

/// One model as [`Router::status`] shows it: its part of the scaling signal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStatus {
    pub in_flight: u32,
    pub queued: usize,
    /// Instances where it is loaded.
    pub hot_on: usize,
    /// Times it was loaded.
    pub cold_loads: u64,
}

/// The pool at a glance: the scaling signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub instances: Vec<InstanceStatus>,
    pub queued: usize,
    /// Per model that ran or waits.
    pub models: BTreeMap<String, ModelStatus>,
    /// Model loads so far.
    pub cold_loads: u64,
}

/// The routing state of one pool (serializable: replicas share it through a store).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Router {
    config: RouterConfig,
    instances: BTreeMap<String, Instance>,
    models: HashMap<String, Model>,
    queue: VecDeque<Waiting>,
    next_ticket: u64,
    cold_loads: u64,
    /// Waiting requests handed out by `route`, for the caller to collect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    handed: Vec<Dispatch>,
}

impl Router {
    pub fn new(config: RouterConfig) -> Router {
        Router {
            config,
            instances: BTreeMap::new(),
            models: HashMap::new(),
            queue: VecDeque::new(),
            next_ticket: 1,
            cold_loads: 0,
            handed: Vec::new(),
        }
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Adds an instance (with the models it already holds, least recently used first) and hands
    /// it any waiting requests it can take.
    pub fn add_instance(&mut self, id: &str, hot: &[&str], now_ms: u64) -> Vec<Dispatch> {
        let mut hot: Vec<String> = hot.iter().map(|m| m.to_string()).collect();
        let keep = hot.len().saturating_sub(self.config.models_per_instance);
        hot.drain(..keep);
        self.instances.entry(id.to_owned()).or_insert(Instance { hot, ..Instance::default() });
        self.drain(now_ms)
    }

    /// The ids of its instances.
    pub fn instance_ids(&self) -> impl Iterator<Item = &str> {
        self.instances.keys().map(String::as_str)
    }

    /// Removes an instance (it failed or left). Returns the models of the requests that were
    /// running there, one entry per request: the caller retries each once elsewhere, through
    /// [`Router::route`].
    pub fn remove_instance(&mut self, id: &str) -> Vec<String> {
        let Some(gone) = self.instances.remove(id) else { return Vec::new() };
        let mut lost = Vec::new();
        for (model, n) in gone.running {
            if let Some(m) = self.models.get_mut(&model) {
                m.in_flight = m.in_flight.saturating_sub(n);
                if m.last_instance.as_deref() == Some(id) {
                    m.last_instance = None;
                }
            }
            lost.extend(std::iter::repeat_n(model, n as usize));
        }
        lost
    }

    /// Routes a request for `model`. Waiting requests that can go now go first (collect them with
    /// [`Router::take_handed`]); then the newcomer runs if it can, else waits at the back.
    pub fn route(&mut self, model: &str, now_ms: u64) -> Decision {
        if !self.queue.is_empty() {
            let handed = self.drain(now_ms);
            self.handed.extend(handed);
        }
        if let Some((instance, cold)) = self.place(model, now_ms) {
            return Decision::Run { instance, cold };
        }
        if self.queue.len() >= self.config.queue {
            return Decision::Full { retry_after_ms: self.retry_after_ms() };
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.queue.push_back(Waiting { ticket, model: model.to_owned() });
        Decision::Queued { ticket, position: self.queue.len() }
    }

    /// Waiting requests [`Router::route`] handed out on its way.
    pub fn take_handed(&mut self) -> Vec<Dispatch> {
        std::mem::take(&mut self.handed)
    }

    /// Gives back a slot whose request never ran (its caller left, or its holder died): like
    /// [`Router::finish`], without teaching the router a run time.
    pub fn release(&mut self, instance: &str, model: &str, now_ms: u64) -> Vec<Dispatch> {
        self.unbook(instance, model);
        self.drain(now_ms)
    }

    /// A request that ran on `instance` finished after `exec_ms`. Returns the waiting requests
    /// that now have an instance.
    pub fn finish(&mut self, instance: &str, model: &str, exec_ms: u64, now_ms: u64) -> Vec<Dispatch> {
        self.unbook(instance, model);
        let m = self.models.entry(model.to_owned()).or_default();
        m.last_exec_ms = exec_ms;
        m.last_end_ms = now_ms;
        self.drain(now_ms)
    }

    /// Takes one request for `model` off `instance`'s books.
    fn unbook(&mut self, instance: &str, model: &str) {
        if let Some(i) = self.instances.get_mut(instance)
            && let Some(n) = i.running.get_mut(model)
        {
            *n -= 1;
            if *n == 0 {
                i.running.remove(model);
            }
            i.in_flight = i.in_flight.saturating_sub(1);
        }
        if let Some(m) = self.models.get_mut(model) {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
    }

    /// Puts a request handed out to an instance that has since gone back at the head of the queue,
    /// under its ticket (its slot there went with the instance); the caller then pokes.
    pub fn requeue(&mut self, ticket: u64, model: &str) {
        self.queue.push_front(Waiting { ticket, model: model.to_owned() });
    }

    /// Takes a waiting request out of the queue (its deadline passed or its caller left).
    /// `false`: it is not waiting (already dispatched, or never queued).
    pub fn cancel(&mut self, ticket: u64) -> bool {
        match self.queue.iter().position(|w| w.ticket == ticket) {
            Some(at) => {
                self.queue.remove(at);
                true
            }
            None => false,
        }
    }

    /// While requests wait, how long until a claim that may be blocking them lapses (claims that
    /// lapsed already block nothing): the caller calls [`Router::poke`] then, since no request
    /// ending may come to hand them out.
    pub fn next_lapse_ms(&self, now_ms: u64) -> Option<u64> {
        if self.queue.is_empty() {
            return None;
        }
        self.instances
            .values()
            .filter_map(|i| i.claim.as_ref())
            .filter_map(|owner| self.models.get(owner))
            .filter(|m| m.in_flight == 0)
            .map(|m| m.last_end_ms + self.config.takeover_factor * m.last_exec_ms.max(1))
            .filter(|at| *at > now_ms)
            .map(|at| at - now_ms)
            .min()
    }

    /// Hands out waiting requests that can go now (claims lapse with time, not only with events).
    pub fn poke(&mut self, now_ms: u64) -> Vec<Dispatch> {
        self.drain(now_ms)
    }

    pub fn status(&self) -> PoolStatus {
        let mut models: BTreeMap<String, ModelStatus> = BTreeMap::new();
        for (name, m) in &self.models {
            let s = models.entry(name.clone()).or_default();
            s.in_flight = m.in_flight;
            s.cold_loads = m.loads;
        }
        for w in &self.queue {
            models.entry(w.model.clone()).or_default().queued += 1;
        }
        for inst in self.instances.values() {
            for h in &inst.hot {
                models.entry(h.clone()).or_default().hot_on += 1;
            }
        }
        PoolStatus {
            instances: self
                .instances
                .iter()
                .map(|(id, i)| InstanceStatus {
                    id: id.clone(),
                    in_flight: i.in_flight,
                    hot: i.hot.clone(),
                    claimed_by: i.claim.clone(),
                })
                .collect(),
            queued: self.queue.len(),
            models,
            cold_loads: self.cold_loads,
        }
    }

    /// Hands out waiting requests, in order, each to the first instance it can be placed on.
    fn drain(&mut self, now_ms: u64) -> Vec<Dispatch> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            if !self.instances.values().any(|inst| inst.in_flight < self.config.concurrency) {
                break;
            }
            let model = self.queue[i].model.clone();
            match self.place(&model, now_ms) {
                Some((instance, cold)) => {
                    let w = self.queue.remove(i).expect("index in range");
                    out.push(Dispatch { ticket: w.ticket, model, instance, cold });
                }
                None => i += 1,
            }
        }
        out
    }

    /// Whether `model` may use instance `inst` now: not someone else's live claim. A claim keeps
    /// other models from loading there (which could evict the claimant), not a model already
    /// hot there from its share of the slots.
    fn claim_allows(&self, inst: &Instance, model: &str, now_ms: u64) -> bool {
        match &inst.claim {
            None => true,
            Some(owner) if owner == model => true,
            Some(_) if inst.hot.iter().any(|h| h == model) => true,
            Some(owner) => self.claim_lapsed(owner, now_ms),
        }
    }

    fn claim_lapsed(&self, owner: &str, now_ms: u64) -> bool {
        match self.models.get(owner) {
            None => true,
            Some(m) => {
                m.in_flight == 0
                    && now_ms.saturating_sub(m.last_end_ms) >= self.config.takeover_factor * m.last_exec_ms.max(1)
            }
        }
    }

    /// Picks an instance for `model` and books the request there.
    fn place(&mut self, model: &str, now_ms: u64) -> Option<(String, bool)> {
        let cap = self.config.concurrency;
        let usable = |inst: &Instance| inst.in_flight < cap && self.claim_allows(inst, model, now_ms);
        let last = self.models.get(model).and_then(|m| m.last_instance.clone());
        let hot_here = |inst: &Instance| inst.hot.iter().any(|h| h == model);
        // 1. Where it ran last, still hot.
        let mut choice = last
            .filter(|id| self.instances.get(id).is_some_and(|inst| usable(inst) && hot_here(inst)))
            .map(|id| (id, false));
        // 2. Another instance where it is hot, least loaded.
        if choice.is_none() {
            choice = self
                .instances
                .iter()
                .filter(|(_, inst)| usable(inst) && hot_here(inst))
                .min_by_key(|(_, inst)| inst.in_flight)
                .map(|(id, _)| (id.clone(), false));
        }
        // 3. A load: a free model slot first, then an instance with a model it may evict.
        if choice.is_none() {
            let slots = self.config.models_per_instance;
            choice = self
                .instances
                .iter()
                .filter(|(_, inst)| usable(inst))
                .filter(|(_, inst)| inst.hot.len() < slots || inst.hot.iter().any(|h| !inst.running.contains_key(h)))
                .min_by_key(|(_, inst)| (inst.hot.len() >= slots, inst.in_flight, inst.hot.len()))
                .map(|(id, _)| (id.clone(), true));
        }
        let (id, cold) = choice?;
        // Taken over when another model's claim there has lapsed (a live one stays: a model
        // hot there may share the instance without ending its claimant's claim).
        let taken_over =
            self.instances.get(&id)?.claim.as_ref().is_some_and(|c| c != model && self.claim_lapsed(c, now_ms));
        let claim_at = self.config.claim_at;
        let slots = self.config.models_per_instance;
        let m = self.models.entry(model.to_owned()).or_default();
        m.in_flight += 1;
        m.loads += u64::from(cold);
        m.last_instance = Some(id.clone());
        let claims = m.in_flight >= claim_at;
        let inst = self.instances.get_mut(&id)?;
        if taken_over {
            inst.claim = None;
        }
        if claims {
            inst.claim = Some(model.to_owned());
        }
        inst.in_flight += 1;
        *inst.running.entry(model.to_owned()).or_default() += 1;
        if cold {
            if inst.hot.len() >= slots
                && let Some(at) = inst.hot.iter().position(|h| !inst.running.contains_key(h))
            {
                inst.hot.remove(at);
            }
            inst.hot.push(model.to_owned());
            self.cold_loads += 1;
        } else if let Some(at) = inst.hot.iter().position(|h| h == model) {
            let h = inst.hot.remove(at);
            inst.hot.push(h);
        }
        Some((id, cold))
    }

    /// A hint for a refused request: roughly how long until the queue has moved by its length.
    fn retry_after_ms(&self) -> u64 {
        let capacity = (self.instances.len() as u64 * u64::from(self.config.concurrency)).max(1);
        let busy: Vec<u64> = self.models.values().map(|m| m.last_exec_ms).filter(|&e| e > 0).collect();
        let exec = if busy.is_empty() { 100 } else { busy.iter().sum::<u64>() / busy.len() as u64 };
        (exec * (self.queue.len() as u64 / capacity + 1)).clamp(100, 60_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(instances: &[&str], config: RouterConfig) -> Router {
        let mut r = Router::new(config);
        for i in instances {
            r.add_instance(i, &[], 0);
        }
        r
    }

    fn run(d: Decision) -> (String, bool) {
        match d {
            Decision::Run { instance, cold } => (instance, cold),
            other => panic!("expected to run, got {other:?}"),
        }
    }

    #[test]
    fn sequential_requests_keep_the_instance_where_their_model_is_hot() {
        let mut r = pool(&["i0", "i1", "i2"], RouterConfig::default());
        let (b_at, _) = run(r.route("b", 0));
        r.finish(&b_at, "b", 10, 10);
        let (a_at, cold) = run(r.route("a", 20));
        assert!(cold);
        r.finish(&a_at, "a", 10, 30);
        for t in 0..20 {
            let (at, cold) = run(r.route("a", 40 + t * 20));
            assert_eq!(at, a_at, "a stays where it is hot");
            assert!(!cold);
            r.finish(&at, "a", 10, 50 + t * 20);
        }
        assert_eq!(r.status().cold_loads, 2, "one load per model");
    }

    #[test]
    fn two_requests_in_flight_claim_the_instance_until_its_model_is_idle_twice_its_run_time() {
        let mut r = pool(&["i0", "i1"], RouterConfig::default());
        let (a0, _) = run(r.route("a", 0));
        let (a1, _) = run(r.route("a", 1));
        assert_eq!(a0, a1);
        assert_eq!(
            r.status().instances.iter().find(|i| i.id == a0).and_then(|i| i.claimed_by.clone()),
            Some("a".into())
        );
        // b may not share a's claimed instance although it has room.
        let (b, _) = run(r.route("b", 2));
        assert_ne!(b, a0);
        r.finish(&b, "b", 5, 7);
        // Fill the other instance with c so only the claimed one has room.
        let other = b.clone();
        let mut c_slots = Vec::new();
        for t in 0..8 {
            let (at, _) = run(r.route("c", 10 + t));
            assert_eq!(at, other);
            c_slots.push(at);
        }
        r.finish(&a0, "a", 100, 100);
        r.finish(&a0, "a", 100, 100);
        // a ran 100 ms and has been idle since 100: its claim holds until 300.
        assert!(matches!(r.route("d", 299), Decision::Queued { .. }), "a's claim still holds at 299");
        let handed = r.finish(&other, "c", 5, 300);
        assert_eq!(handed.len(), 1, "d leaves the queue at 300");
        assert_eq!(handed[0].model, "d");
        assert_eq!(handed[0].instance, a0, "taken over once a was idle 2 × 100 ms");
        assert_eq!(r.status().instances.iter().find(|i| i.id == a0).and_then(|i| i.claimed_by.clone()), None);
    }

    #[test]
    fn a_claim_keeps_other_models_from_loading_there_not_a_model_already_hot_there() {
        let mut r = Router::new(RouterConfig::default());
        r.add_instance("i0", &["b", "a"], 0);
        r.add_instance("i1", &[], 0);
        run(r.route("a", 0));
        run(r.route("a", 0));
        assert_eq!(r.status().instances[0].claimed_by.as_deref(), Some("a"));
        assert_eq!(run(r.route("b", 1)), ("i0".to_string(), false), "b is hot on i0: it shares it");
        assert_eq!(r.status().instances[0].claimed_by.as_deref(), Some("a"), "sharing leaves a's claim");
        assert_eq!(run(r.route("c", 1)), ("i1".to_string(), true), "c would load on i0: it goes elsewhere");
    }

    #[test]
    fn a_request_waiting_only_on_a_claim_is_handed_out_when_the_claim_lapses() {
        let config = RouterConfig { concurrency: 2, ..RouterConfig::default() };
        let mut r = pool(&["i0"], config);
        let (i0, _) = run(r.route("a", 0));
        run(r.route("a", 0));
        r.finish(&i0, "a", 10, 10);
        r.finish(&i0, "a", 10, 10);
        // a claimed i0 and ran 10 ms: b waits until 30, and nothing else will end to free it.
        assert!(matches!(r.route("b", 11), Decision::Queued { .. }));
        assert_eq!(r.next_lapse_ms(11), Some(19));
        assert!(r.poke(29).is_empty());
        assert_eq!(r.poke(30).len(), 1);
        assert_eq!(r.next_lapse_ms(30), None, "nothing waits");
    }

    #[test]
    fn a_full_pool_queues_in_order_then_refuses_past_the_bound_and_loses_nothing() {
        let config = RouterConfig { concurrency: 2, queue: 3, ..RouterConfig::default() };
        let mut r = pool(&["i0", "i1"], config);
        let mut running = Vec::new();
        for t in 0..4 {
            running.push(run(r.route("a", t)).0);
        }
        let mut tickets = Vec::new();
        for t in 0..3 {
            match r.route("a", 10 + t) {
                Decision::Queued { ticket, position } => {
                    assert_eq!(position, t as usize + 1);
                    tickets.push(ticket);
                }
                other => panic!("{other:?}"),
            }
        }
        match r.route("a", 20) {
            Decision::Full { retry_after_ms } => assert!(retry_after_ms >= 100),
            other => panic!("past the bound: {other:?}"),
        }
        // Each finish hands out exactly the oldest waiting request; none twice.
        let mut handed = Vec::new();
        let mut at = 30;
        while let Some(instance) = running.pop() {
            for d in r.finish(&instance, "a", 5, at) {
                running.push(d.instance.clone());
                handed.push(d.ticket);
            }
            at += 5;
        }
        assert_eq!(handed, tickets, "in order, each once");
        assert_eq!(r.status().queued, 0);
        assert!(r.status().instances.iter().all(|i| i.in_flight == 0));
    }

    #[test]
    fn a_cancelled_request_leaves_the_queue() {
        let config = RouterConfig { concurrency: 1, queue: 4, ..RouterConfig::default() };
        let mut r = pool(&["i0"], config);
        let (i0, _) = run(r.route("a", 0));
        let Decision::Queued { ticket, .. } = r.route("a", 1) else { panic!("queued") };
        let Decision::Queued { ticket: second, .. } = r.route("a", 2) else { panic!("queued") };
        assert!(r.cancel(ticket));
        assert!(!r.cancel(ticket), "once");
        let handed = r.finish(&i0, "a", 1, 3);
        assert_eq!(handed.iter().map(|d| d.ticket).collect::<Vec<_>>(), vec![second]);
    }

    #[test]
    fn a_waiting_hot_request_is_not_held_back_by_a_cold_one_ahead_of_it() {
        let config = RouterConfig { concurrency: 1, models_per_instance: 1, queue: 8, ..RouterConfig::default() };
        let mut r = pool(&["i0", "i1"], config);
        let (a, _) = run(r.route("a", 0));
        let (b, _) = run(r.route("b", 0));
        // Both instances busy; c (cold everywhere) then a queue.
        assert!(matches!(r.route("c", 1), Decision::Queued { .. }));
        assert!(matches!(r.route("a", 2), Decision::Queued { .. }));
        // b's instance frees: c goes there (it may load, evicting b which is idle).
        let handed = r.finish(&b, "b", 5, 10);
        assert_eq!(handed.len(), 1);
        assert_eq!((handed[0].model.as_str(), handed[0].instance.as_str(), handed[0].cold), ("c", b.as_str(), true));
        // a's instance frees: a runs there hot.
        let handed = r.finish(&a, "a", 5, 11);
        assert_eq!((handed[0].model.as_str(), handed[0].instance.as_str(), handed[0].cold), ("a", a.as_str(), false));
    }

    #[test]
    fn a_model_is_evicted_only_when_nothing_runs_it_and_the_memory_budget_holds() {
        let config = RouterConfig { concurrency: 4, models_per_instance: 2, ..RouterConfig::default() };
        let mut r = pool(&["i0"], config);
        run(r.route("a", 0));
        let (i, _) = run(r.route("b", 1));
        r.finish(&i, "b", 1, 2);
        // a runs, b is idle: c evicts b, never a.
        let (_, cold) = run(r.route("c", 3));
        assert!(cold);
        assert_eq!(r.status().instances[0].hot, vec!["a".to_string(), "c".to_string()]);
        // a and c both running: d cannot load anywhere and waits.
        assert!(matches!(r.route("d", 4), Decision::Queued { .. }));
    }

    #[test]
    fn a_removed_instance_gives_back_its_requests_for_one_retry_elsewhere() {
        let mut r = pool(&["i0", "i1"], RouterConfig::default());
        let (first, _) = run(r.route("a", 0));
        run(r.route("a", 1));
        let lost = r.remove_instance(&first);
        assert_eq!(lost, vec!["a".to_string(), "a".to_string()]);
        let (retry, cold) = run(r.route("a", 2));
        assert_ne!(retry, first);
        assert!(cold, "the model loads on the instance that is left");
        let a = r.status().models.get("a").cloned().unwrap_or_default();
        assert_eq!((a.in_flight, a.queued), (1, 0));
    }

    #[test]
    fn a_newcomer_that_can_run_is_not_held_behind_a_request_that_cannot() {
        let config = RouterConfig { concurrency: 4, models_per_instance: 1, ..RouterConfig::default() };
        let mut r = pool(&["i0"], config);
        run(r.route("a", 0));
        run(r.route("a", 1)); // a claims i0: b may not load there
        assert!(matches!(r.route("b", 2), Decision::Queued { .. }));
        let (at, cold) = run(r.route("a", 3));
        assert_eq!((at.as_str(), cold), ("i0", false), "a is hot with free slots: it runs now");
        assert!(r.take_handed().is_empty());
        assert_eq!(r.status().queued, 1, "b still waits for the claim to end");
    }

    #[test]
    fn an_instance_added_later_takes_waiting_requests() {
        let config = RouterConfig { concurrency: 1, ..RouterConfig::default() };
        let mut r = pool(&["i0"], config);
        run(r.route("a", 0));
        assert!(matches!(r.route("b", 1), Decision::Queued { .. }));
        let handed = r.add_instance("i1", &["b"], 2);
        assert_eq!(handed, vec![Dispatch { ticket: 1, model: "b".into(), instance: "i1".into(), cold: false }]);
    }
}
