//! MOSS's FnPacker routing (fnpack/controller.go, as the research notes read it), re-implemented
//! as the baseline `enclava bench pools` measures the pool against. A model's first request (or
//! its first after going idle) takes the lowest-indexed instance that is not busy and is
//! unclaimed, claimed by it, or claimed by a model idle for 2 × its last execution time; its
//! second request in flight claims its instance; later ones pile onto that instance. With no
//! instance free it answers "All Busy": there is no queue.

use std::collections::HashMap;

/// FnPacker's answer when no instance is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllBusy;

#[derive(Debug, Default, Clone)]
struct Stats {
    last_exec_ms: u64,
    last_end_ms: u64,
}

/// FnPacker's routing state for one pool of `n` instances.
#[derive(Debug, Clone)]
pub struct FnPacker {
    /// The model that claimed each instance.
    funcs: Vec<Option<String>>,
    busy: Vec<bool>,
    /// Each model's last instance.
    mapping: HashMap<String, usize>,
    in_use: HashMap<String, u32>,
    stats: HashMap<String, Stats>,
}

impl FnPacker {
    pub fn new(n: usize) -> FnPacker {
        FnPacker {
            funcs: vec![None; n],
            busy: vec![false; n],
            mapping: HashMap::new(),
            in_use: HashMap::new(),
            stats: HashMap::new(),
        }
    }

    /// The instance for a request for `model`.
    pub fn pick(&mut self, model: &str, now_ms: u64) -> Result<usize, AllBusy> {
        let in_use = *self.in_use.get(model).unwrap_or(&0) + 1;
        let picked = if in_use == 1 {
            self.steal(model, now_ms)?
        } else {
            let i = *self.mapping.get(model).ok_or(AllBusy)?;
            if in_use == 2 {
                self.funcs[i] = Some(model.to_owned());
            }
            i
        };
        self.in_use.insert(model.to_owned(), in_use);
        self.mapping.insert(model.to_owned(), picked);
        Ok(picked)
    }

    fn steal(&mut self, model: &str, now_ms: u64) -> Result<usize, AllBusy> {
        for i in 0..self.funcs.len() {
            if self.busy[i] {
                continue;
            }
            let free = match &self.funcs[i] {
                None => true,
                Some(owner) if owner == model => true,
                Some(owner) => {
                    self.stats.get(owner).is_none_or(|s| now_ms.saturating_sub(s.last_end_ms) >= 2 * s.last_exec_ms)
                }
            };
            if free {
                self.funcs[i] = None;
                self.busy[i] = true;
                return Ok(i);
            }
        }
        Err(AllBusy)
    }

    /// A request for `model` on `instance` finished after `exec_ms`.
    pub fn release(&mut self, instance: usize, model: &str, exec_ms: u64, now_ms: u64) {
        let n = self.in_use.entry(model.to_owned()).or_default();
        *n = n.saturating_sub(1);
        if *n == 0
            && let Some(b) = self.busy.get_mut(instance)
        {
            *b = false;
        }
        self.stats.insert(model.to_owned(), Stats { last_exec_ms: exec_ms, last_end_ms: now_ms });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_traffic_takes_the_lowest_free_index_and_a_full_pool_is_all_busy() {
        let mut f = FnPacker::new(2);
        let i = f.pick("a", 0).expect("free");
        f.release(i, "a", 10, 10);
        // b comes first and takes instance 0, so a's next request lands on 1: affinity is lost.
        assert_eq!(f.pick("b", 20), Ok(0));
        assert_eq!(f.pick("a", 21), Ok(1));
        assert_eq!(f.pick("c", 22), Err(AllBusy));
        // a's second request piles onto its instance and claims it.
        assert_eq!(f.pick("a", 23), Ok(1));
    }
}
