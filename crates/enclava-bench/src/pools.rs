//! `enclava bench pools`, first stage: the routing decisions alone, simulated in virtual time (no
//! nodes, no network); the live stage over sim nodes is [`crate::pools_live`]. Six models on four instances whose memory holds two models each, request
//! popularity Zipf(1.0), 8 and 64 closed-loop clients; Enclava's pool router against round-robin,
//! random and FnPacker's own algorithm. A hot request takes `EXEC_MS`, a model load `LOAD_MS`
//! more; the floor is a hot request that never waits. It reports model loads, refusals (429 or
//! FnPacker's "All Busy", retried by the client after 10 ms) and latency percentiles.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::process::ExitCode;

use enclava_pool::fnpacker::FnPacker;
use enclava_pool::router::{Decision, Router, RouterConfig};

/// `enclava bench pools`
#[derive(Debug, clap::Args)]
pub struct PoolsArgs {
    /// Requests per scenario
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Random seed
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Requests per row of the live stage over sim nodes (0: skip it)
    #[arg(long, default_value_t = 1000)]
    live_requests: usize,
    /// Live stage with the tiny classifier instead of MobileNetV2
    #[arg(long)]
    small: bool,
}

pub(crate) const MODELS: usize = 6;
const INSTANCES: usize = 4;
const SLOTS: usize = 2;
const CONCURRENCY: u32 = 8;
const EXEC_MS: u64 = 10;
const LOAD_MS: u64 = 150;
const RETRY_MS: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Pool,
    RoundRobin,
    Random,
    FnPacker,
}

/// A small deterministic generator (xorshift64*), so every policy sees the same requests.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Model `i` with probability ∝ 1 / (i + 1).
pub(crate) fn zipf(rng: &mut Rng) -> usize {
    let total: f64 = (1..=MODELS).map(|k| 1.0 / k as f64).sum();
    let mut x = rng.next() * total;
    for k in 0..MODELS {
        x -= 1.0 / (k + 1) as f64;
        if x <= 0.0 {
            return k;
        }
    }
    MODELS - 1
}

/// One instance for the policies that keep their own state.
#[derive(Default, Clone)]
struct Inst {
    in_flight: u32,
    hot: Vec<usize>,
    waiting: VecDeque<(usize, u64, usize)>,
}

impl Inst {
    /// Whether running `model` here loads it (evicting the least recently used).
    fn touch(&mut self, model: usize) -> bool {
        match self.hot.iter().position(|&m| m == model) {
            Some(at) => {
                self.hot.remove(at);
                self.hot.push(model);
                false
            }
            None => {
                if self.hot.len() >= SLOTS {
                    self.hot.remove(0);
                }
                self.hot.push(model);
                true
            }
        }
    }
}

/// (time, kind, client, model, instance, when the request was first sent).
type Event = (u64, u8, usize, usize, usize, u64);

#[derive(Default, Debug)]
struct Outcome {
    latencies: Vec<u64>,
    loads: u64,
    refusals: u64,
}

/// Runs `requests` over `clients` closed-loop clients under `policy`.
fn simulate(policy: Policy, clients: usize, requests: usize, seed: u64) -> Outcome {
    let mut rng = Rng(seed | 1);
    let mut out = Outcome::default();
    // Events (time, kind, client, model, instance, first sent): kind 0 a client sends, 1 a request
    // ends on an instance, 2 the pool's queue is poked at a claim's lapse, 3 a refused request is
    // sent again.
    let mut events: BinaryHeap<Reverse<Event>> = BinaryHeap::new();
    let mut router = Router::new(RouterConfig {
        concurrency: CONCURRENCY,
        models_per_instance: SLOTS,
        queue: 256,
        ..RouterConfig::default()
    });
    for i in 0..INSTANCES {
        router.add_instance(&format!("i{i}"), &[], 0);
    }
    let mut packer = FnPacker::new(INSTANCES);
    let mut insts = vec![Inst::default(); INSTANCES];
    let mut queued: std::collections::HashMap<u64, (usize, usize, u64)> = std::collections::HashMap::new();
    let mut next_rr = 0usize;
    let mut sent = 0usize;
    for c in 0..clients {
        events.push(Reverse((0, 0, c, 0, 0, 0)));
    }
    let index = |id: &str| id[1..].parse::<usize>().unwrap_or(0);
    while let Some(Reverse((now, kind, client, model, inst, started))) = events.pop() {
        match kind {
            0 | 3 => {
                // A retry (3) always goes again; a new request (0) only while there are requests
                // to send.
                if kind == 0 && sent >= requests {
                    continue;
                }
                let model = if kind == 0 {
                    sent += 1;
                    zipf(&mut rng)
                } else {
                    model
                };
                let first = if kind == 0 { now } else { started };
                let target = match policy {
                    Policy::Pool => {
                        let decision = router.route(&format!("m{model}"), now);
                        for d in router.take_handed() {
                            if let Some((c, m, first)) = queued.remove(&d.ticket) {
                                start(&mut events, &mut out, now, (c, m, index(&d.instance), first), d.cold);
                            }
                        }
                        match decision {
                            Decision::Run { instance, cold } => {
                                start(&mut events, &mut out, now, (client, model, index(&instance), first), cold);
                                continue;
                            }
                            Decision::Queued { ticket, .. } => {
                                queued.insert(ticket, (client, model, first));
                                continue;
                            }
                            Decision::Full { .. } => None,
                        }
                    }
                    Policy::FnPacker => packer.pick(&format!("m{model}"), now).ok(),
                    Policy::RoundRobin => {
                        next_rr = (next_rr + 1) % INSTANCES;
                        Some(next_rr)
                    }
                    Policy::Random => Some(((rng.next() * INSTANCES as f64) as usize).min(INSTANCES - 1)),
                };
                match target {
                    // Refused (429, or FnPacker's "All Busy"): the client tries again shortly.
                    None => {
                        out.refusals += 1;
                        events.push(Reverse((now + RETRY_MS, 3, client, model, 0, first)));
                    }
                    Some(i) if insts[i].in_flight < CONCURRENCY => {
                        insts[i].in_flight += 1;
                        let cold = insts[i].touch(model);
                        start(&mut events, &mut out, now, (client, model, i, first), cold);
                    }
                    Some(i) => insts[i].waiting.push_back((client, first, model)),
                }
            }
            2 => {
                for d in router.poke(now) {
                    if let Some((c, m, first)) = queued.remove(&d.ticket) {
                        start(&mut events, &mut out, now, (c, m, index(&d.instance), first), d.cold);
                    }
                }
            }
            _ => {
                out.latencies.push(now - started);
                events.push(Reverse((now, 0, client, 0, 0, 0)));
                match policy {
                    Policy::Pool => {
                        for d in router.finish(&format!("i{inst}"), &format!("m{model}"), EXEC_MS, now) {
                            if let Some((c, m, first)) = queued.remove(&d.ticket) {
                                start(&mut events, &mut out, now, (c, m, index(&d.instance), first), d.cold);
                            }
                        }
                        if let Some(wait) = router.next_lapse_ms(now) {
                            // Nothing else may wake the queue: poke when the claim lapses.
                            events.push(Reverse((now + wait.max(1), 2, 0, 0, 0, 0)));
                        }
                    }
                    _ => {
                        if policy == Policy::FnPacker {
                            packer.release(inst, &format!("m{model}"), EXEC_MS, now);
                        }
                        let i = &mut insts[inst];
                        i.in_flight -= 1;
                        if let Some((c, first, m)) = i.waiting.pop_front() {
                            i.in_flight += 1;
                            let cold = i.touch(m);
                            start(&mut events, &mut out, now, (c, m, inst, first), cold);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Starts request (client, model, instance, first sent) at `now`: it ends after a run, and a load
/// first when the model is cold there.
fn start(
    events: &mut BinaryHeap<Reverse<Event>>,
    out: &mut Outcome,
    now: u64,
    r: (usize, usize, usize, u64),
    cold: bool,
) {
    let (client, model, instance, first) = r;
    if cold {
        out.loads += 1;
    }
    let end = now + EXEC_MS + if cold { LOAD_MS } else { 0 };
    events.push(Reverse((end, 1, client, model, instance, first)));
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub async fn pools(args: PoolsArgs) -> anyhow::Result<ExitCode> {
    println!(
        "routing simulation (virtual time, no nodes): {MODELS} models, {INSTANCES} instances × {CONCURRENCY} slots, \
         memory for {SLOTS} models each, Zipf(1.0); hot run {EXEC_MS} ms, load {LOAD_MS} ms; floor: a hot run that \
         never waits ({EXEC_MS} ms)"
    );
    for clients in [8, 64] {
        println!("\n{clients} clients, {} requests", args.requests);
        println!(
            "{:<14} {:>8} {:>10} {:>8} {:>8} {:>10}",
            "router", "loads", "refusals", "p50 ms", "p99 ms", "p50/floor"
        );
        let mut results = Vec::new();
        for policy in [Policy::Pool, Policy::RoundRobin, Policy::Random, Policy::FnPacker] {
            let mut o = simulate(policy, clients, args.requests, args.seed);
            o.latencies.sort_unstable();
            let (p50, p99) = (percentile(&o.latencies, 0.5), percentile(&o.latencies, 0.99));
            println!(
                "{:<14} {:>8} {:>10} {:>8} {:>8} {:>10.2}",
                format!("{policy:?}"),
                o.loads,
                o.refusals,
                p50,
                p99,
                p50 as f64 / EXEC_MS as f64
            );
            results.push((policy, o.loads, o.refusals, p99, o.latencies.len()));
        }
        let get = |p: Policy| results.iter().find(|r| r.0 == p).copied().expect("ran");
        let (pool, rr, fnp) = (get(Policy::Pool), get(Policy::RoundRobin), get(Policy::FnPacker));
        println!(
            "pool: loads {:.3}× round-robin's (goal ≤ 0.5), p99 {:.2}× FnPacker's (goal ≤ 0.8), {} refusals below the \
             queue bound (FnPacker: {}), {} of {} requests answered",
            pool.1 as f64 / rr.1.max(1) as f64,
            pool.3 as f64 / fnp.3.max(1) as f64,
            pool.2,
            fnp.2,
            pool.4,
            args.requests
        );
    }
    if args.live_requests > 0 {
        crate::pools_live::live(args.live_requests, args.seed, args.small).await?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_answers_every_request() {
        for policy in [Policy::Pool, Policy::RoundRobin, Policy::Random, Policy::FnPacker] {
            for clients in [8, 64] {
                let o = simulate(policy, clients, 2_000, 3);
                assert_eq!(o.latencies.len(), 2_000, "{policy:?} with {clients} clients");
                assert!(o.latencies.iter().all(|&l| l >= EXEC_MS));
            }
        }
    }
}
