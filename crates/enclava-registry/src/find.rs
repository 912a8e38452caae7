//! FindEnclave's algorithm (seed steps 1–3) over any [`Registry`]: sample the candidate index,
//! drop denied ids, prefer hot ones (including instances recently seen hot, from [`HotHints`]) in
//! random order, check presence and fetch info in pipelined probes, prune the dead it met (a
//! bounded number), and filter on the info.
//!
//! One call's work depends on `limit` and on the dead candidates it meets, never on the size of
//! the index: candidates come from `HRANDFIELD … WITHVALUES` (every entry when the index is small,
//! a random sample otherwise), at most [`ROUNDS`] samples are drawn, and at most [`MAX_PRUNE`]
//! dead instances are removed per call. The sweeper removes the rest.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use enclava_core::text::quote;
use rand::seq::{IndexedRandom, SliceRandom};

use crate::schema::{DataIndexEntry, EnclaveInfoJson, Index, check_measurement, check_name};
use crate::{Registry, RegistryError, Result};

/// The most enclaves one call may ask for.
pub const MAX_LIMIT: usize = 1000;
/// The longest deny list one call may send.
pub const MAX_DENY: usize = 1000;
/// The first sample is at least this large: an index this small is read whole, so its hot
/// candidates always come first.
pub const SMALL_INDEX: usize = 16;
/// Samples drawn per call at most (each larger than the one before).
pub const ROUNDS: usize = 2;
/// The largest sample one call draws.
pub const MAX_SAMPLE: usize = 4096;
/// Dead instances one call removes from the indexes at most (or hands to a [`Pruner`]); the sweeper
/// removes the rest.
pub const MAX_PRUNE: usize = 64;
/// Round trips one call makes at most: per round a sample and two probes, then one prune.
pub const MAX_ROUND_TRIPS: u64 = 3 * ROUNDS as u64 + 1;

/// A validated FindEnclave request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FindQuery {
    pub data: Option<String>,
    pub measurement: Option<String>,
    pub platform: Option<String>,
    pub limit: usize,
    /// Sorted, so equal requests compare equal.
    pub deny: BTreeSet<String>,
}

impl FindQuery {
    /// Checks a request as it arrives; empty strings mean "not set" and `limit` 0 means 1.
    pub fn new(
        data: &str,
        measurement: &str,
        platform: &str,
        limit: i64,
        deny: &[String],
    ) -> std::result::Result<FindQuery, String> {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let q = FindQuery {
            data: opt(data),
            measurement: opt(measurement),
            platform: opt(platform),
            limit: match limit {
                0 => 1,
                l if l < 0 => {
                    return Err(format!("limit is {l}: send a limit from 1 to {MAX_LIMIT}, or 0 for 1"));
                }
                l if l as u64 > MAX_LIMIT as u64 => {
                    return Err(format!("limit is {l}: at most {MAX_LIMIT} enclaves per call"));
                }
                l => l as usize,
            },
            deny: deny.iter().cloned().collect(),
        };
        if deny.len() > MAX_DENY {
            return Err(format!("the deny list has {} ids: at most {MAX_DENY}", deny.len()));
        }
        if q.data.is_none() && q.measurement.is_none() {
            return Err("say what to find: send a data id (dataaccess) or a measurement (policy.mrenclave)".into());
        }
        for id in &q.deny {
            check_name("a deny-list id", id)?;
        }
        if let Some(d) = &q.data {
            check_name("data id", d)?;
        }
        if let Some(m) = &q.measurement {
            check_measurement(m)?;
        }
        if let Some(p) = &q.platform {
            p.parse::<enclava_core::Platform>()?;
        }
        Ok(q)
    }
}

/// A live enclave that matches.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub info: EnclaveInfoJson,
    /// Whether the requested data id is in memory (false when no data id was asked for).
    pub hot: bool,
    /// Time left on its presence key when it was checked.
    pub presence_ttl: Duration,
}

/// What one run of the algorithm found.
#[derive(Debug, Clone, Default)]
pub struct FindOutcome {
    /// Every live, matching enclave that was checked, hot ones first; at least `limit` of them when
    /// the index is small enough to be read whole and that many exist (a large index is sampled).
    /// Callers return the first `limit`.
    pub live: Vec<Found>,
    /// Absent instances removed from the indexes.
    pub pruned: usize,
    /// Candidates skipped for missing or malformed info.
    pub skipped: usize,
}

/// Instances recently seen hot, per data id: a hint that keeps hot enclaves findable first in an
/// index too large to read whole. Fed by every call and by the sweeper; each hint is checked by a
/// probe before it is believed, so a stale one costs a probe, never a wrong answer. Only a cache.
#[derive(Debug, Default)]
pub struct HotHints {
    map: Mutex<HashMap<String, Vec<String>>>,
}

impl HotHints {
    /// Hinted ids kept per data id.
    pub const PER_DATA: usize = 256;
    /// Data ids kept; past that the hints start over.
    pub const MAX_DATA: usize = 10_000;

    pub fn new() -> HotHints {
        HotHints::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records whether `id` holds `data` hot.
    pub fn note(&self, data: &str, id: &str, hot: bool) {
        let mut map = self.map();
        if hot {
            if map.len() >= Self::MAX_DATA && !map.contains_key(data) {
                map.clear();
            }
            let ids = map.entry(data.to_owned()).or_default();
            if !ids.iter().any(|x| x == id) && ids.len() < Self::PER_DATA {
                ids.push(id.to_owned());
            }
        } else if let Some(ids) = map.get_mut(data) {
            ids.retain(|x| x != id);
            if ids.is_empty() {
                map.remove(data);
            }
        }
    }

    /// Forgets `id` everywhere (it is gone).
    pub fn forget(&self, data: &str, id: &str) {
        self.note(data, id, false);
    }

    /// Up to `n` hinted ids for `data`, in random order.
    pub fn pick(&self, data: &str, n: usize) -> Vec<String> {
        let map = self.map();
        map.get(data).map(|ids| ids.choose_multiple(&mut rand::rng(), n).cloned().collect()).unwrap_or_default()
    }
}

struct Candidate {
    id: String,
    /// What the index (or a hint) says; the info decides.
    hot: bool,
    /// The index value, read again only if the candidate turns out dead (to prune it); `None`
    /// for a hinted candidate.
    raw: Option<String>,
}

/// Reads a `bydataaccess` value. The canonical form Enclava writes, `{"hot":B,"mrenclave":"M"}`,
/// is read without a JSON parser; anything else goes through serde.
pub fn parse_data_entry(raw: &str) -> Result<(bool, std::borrow::Cow<'_, str>), String> {
    let fast = || {
        let rest = raw.strip_prefix(r#"{"hot":"#)?;
        let (hot, rest) = match rest.strip_prefix("true") {
            Some(r) => (true, r),
            None => (false, rest.strip_prefix("false")?),
        };
        let m = rest.strip_prefix(r#","mrenclave":""#)?.strip_suffix(r#""}"#)?;
        (!m.contains(['"', '\\'])).then_some((hot, std::borrow::Cow::Borrowed(m)))
    };
    match fast() {
        Some(v) => Ok(v),
        None => serde_json::from_str::<DataIndexEntry>(raw)
            .map(|e| (e.hot, std::borrow::Cow::Owned(e.mrenclave)))
            .map_err(|e| e.to_string()),
    }
}

/// One call's state: what it has seen, found and will prune.
struct Search<'a> {
    reg: &'a dyn Registry,
    q: &'a FindQuery,
    index: Index,
    hints: Option<&'a HotHints>,
    seen: HashSet<String>,
    out: FindOutcome,
    prune: BTreeSet<(Index, String)>,
    dead: usize,
}

impl Search<'_> {
    /// Turns index entries into candidates: not denied, not seen, of the asked measurement.
    fn candidates(&mut self, entries: Vec<(String, String)>) -> Vec<Candidate> {
        let mut out = Vec::with_capacity(entries.len());
        for (id, raw) in entries {
            if self.q.deny.contains(&id) || self.seen.contains(&id) {
                continue;
            }
            let hot = match &self.index {
                Index::Data(_) => match parse_data_entry(&raw) {
                    Ok((_, m)) if self.q.measurement.as_deref().is_some_and(|want| want != m) => continue,
                    Ok((hot, _)) => hot,
                    Err(e) => {
                        tracing::warn!(instance = %quote(&id), index = %quote(&self.reg.keys().index(&self.index)), error = %e, "malformed index entry");
                        false
                    }
                },
                _ => false,
            };
            self.seen.insert(id.clone());
            out.push(Candidate { id, hot, raw: Some(raw) });
        }
        out
    }

    /// Probes presence and info of `batch`, keeps the live matches, marks the dead for pruning.
    async fn probe(&mut self, batch: &[Candidate]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = batch.iter().map(|c| c.id.clone()).collect();
        let probes = self.reg.probe(&ids, true).await?;
        for (cand, probe) in batch.iter().zip(probes) {
            let info = probe.info.as_deref().map(EnclaveInfoJson::parse);
            let Some(ttl) = probe.presence_ttl else {
                self.dead(cand, info.and_then(|i| i.ok()));
                continue;
            };
            let info = match info {
                Some(Ok(info)) if info.instance_id == cand.id => info,
                Some(Ok(info)) => {
                    tracing::warn!(instance = %quote(&cand.id), claimed = %quote(&info.instance_id), "info names another instance, skipped");
                    self.out.skipped += 1;
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(instance = %quote(&cand.id), error = %e, "malformed enclave info, skipped");
                    self.out.skipped += 1;
                    continue;
                }
                None => {
                    tracing::warn!(instance = %quote(&cand.id), "present but no enclave info, skipped");
                    self.out.skipped += 1;
                    continue;
                }
            };
            let q = self.q;
            let access = q.data.as_ref().map(|d| info.data_access.get(d));
            if let (Some(d), Some(hints)) = (&q.data, self.hints) {
                hints.note(d, &cand.id, access.flatten().is_some_and(|a| a.hot));
            }
            if q.platform.as_ref().is_some_and(|p| *p != info.platform)
                || q.measurement.as_ref().is_some_and(|m| *m != info.policy.mrenclave)
                // The index (or a hint) is older than the info: the enclave dropped this data.
                || access.is_some_and(|a| a.is_none())
            {
                continue;
            }
            let hot = access.flatten().is_some_and(|a| a.hot);
            self.out.live.push(Found { info, hot, presence_ttl: ttl });
        }
        Ok(())
    }

    /// An absent instance: remove it from every index that still names it (up to [`MAX_PRUNE`]).
    fn dead(&mut self, cand: &Candidate, info: Option<EnclaveInfoJson>) {
        if let (Some(d), Some(hints)) = (&self.q.data, self.hints) {
            hints.forget(d, &cand.id);
        }
        if self.dead >= MAX_PRUNE {
            return;
        }
        self.dead += 1;
        if let Some(raw) = &cand.raw {
            self.prune.insert((self.index.clone(), cand.id.clone()));
            let measurement = match &self.index {
                Index::Data(_) => parse_data_entry(raw).ok().map(|(_, m)| m.into_owned()),
                _ => self.q.measurement.clone(),
            };
            if let Some(m) = measurement {
                self.prune.insert((Index::Measurement(m), cand.id.clone()));
            }
        }
        if let Some(info) = info.filter(|i| i.instance_id == cand.id) {
            for (idx, _) in info.index_entries() {
                self.prune.insert((idx, cand.id.clone()));
            }
        }
    }

    fn enough(&self) -> bool {
        self.out.live.len() >= self.q.limit
    }
}

/// Removes dead instances' index entries in the background, in batches: a FindEnclave call hands
/// the dead it met over instead of waiting for their removal, so the answer does not wait for it,
/// and concurrent calls that met the same dead instance remove it once. A full queue drops the
/// excess (the sweeper removes whatever is left).
#[derive(Debug, Clone)]
pub struct Pruner {
    tx: tokio::sync::mpsc::Sender<Vec<(Index, String)>>,
}

impl Pruner {
    /// Batches handed over before the queue is full.
    pub const QUEUE: usize = 1024;
    /// Entries removed in one round trip at most.
    pub const BATCH: usize = 4096;

    /// A pruner over `reg`, and its task (runs until every `Pruner` clone is dropped).
    pub fn start(reg: std::sync::Arc<dyn Registry>) -> (Pruner, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(Index, String)>>(Self::QUEUE);
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch: BTreeSet<(Index, String)> = first.into_iter().collect();
                while batch.len() < Self::BATCH {
                    match rx.try_recv() {
                        Ok(more) => batch.extend(more),
                        Err(_) => break,
                    }
                }
                let entries: Vec<(Index, String)> = batch.into_iter().collect();
                if let Err(e) = reg.remove(&entries).await {
                    tracing::debug!(error = %e, entries = entries.len(), "deferred prune failed; the sweeper will retry");
                }
            }
        });
        (Pruner { tx }, task)
    }

    /// Hands `entries` over; `false` when the queue is full (they are left to the sweeper).
    pub fn defer(&self, entries: Vec<(Index, String)>) -> bool {
        self.tx.try_send(entries).is_ok()
    }
}

/// Runs FindEnclave's steps 1–3. `hints`, when given, is consulted and kept up to date. The dead
/// it meets are removed before it returns, or, with a `pruner`, handed to it.
pub async fn find(
    reg: &dyn Registry,
    q: &FindQuery,
    hints: Option<&HotHints>,
    pruner: Option<&Pruner>,
) -> Result<FindOutcome> {
    // Step 1: the candidate index, in the seed's order.
    let index = match (&q.data, &q.measurement) {
        (Some(d), _) => Index::Data(d.clone()),
        (None, Some(m)) => Index::Measurement(m.clone()),
        (None, None) => {
            return Err(RegistryError::Invalid("send a data id or a measurement".into()));
        }
    };
    let mut s = Search {
        reg,
        q,
        index,
        hints,
        seen: HashSet::new(),
        out: FindOutcome::default(),
        prune: BTreeSet::new(),
        dead: 0,
    };
    let first = q.limit * 2 + 2;
    let mut size = first.clamp(SMALL_INDEX, MAX_SAMPLE);
    for round in 0..ROUNDS {
        let entries = reg.sample(&s.index, size).await?;
        let exhausted = entries.len() < size;
        let mut candidates = s.candidates(entries);
        // Instances seen hot lately come first (also when the sample drew them too), checked like
        // any other candidate.
        if let (0, Some(d), Some(h)) = (round, &q.data, hints) {
            for id in h.pick(d, first) {
                if q.deny.contains(&id) {
                    continue;
                }
                if s.seen.insert(id.clone()) {
                    candidates.push(Candidate { id, hot: true, raw: None });
                } else if let Some(c) = candidates.iter_mut().find(|c| c.id == id) {
                    c.hot = true;
                }
            }
        }
        // Spread load over equal candidates, then prefer hot ones (a stable sort keeps the shuffle).
        candidates.shuffle(&mut rand::rng());
        candidates.sort_by_key(|c| !c.hot);
        // Steps 2 and 3: presence and info of a first batch, then of the rest if that was not enough.
        let (head, tail) = candidates.split_at(first.min(candidates.len()));
        s.probe(head).await?;
        if !s.enough() {
            s.probe(tail).await?;
        }
        if s.enough() || exhausted {
            break;
        }
        size = (size * 4).min(MAX_SAMPLE);
    }
    // Hot ones first (stable: probe order is already random among equals).
    s.out.live.sort_by_key(|f| !f.hot);
    if !s.prune.is_empty() {
        s.out.pruned = s.dead;
        let entries: Vec<(Index, String)> = std::mem::take(&mut s.prune).into_iter().collect();
        match pruner {
            Some(p) => {
                p.defer(entries);
            }
            None => {
                reg.remove(&entries).await?;
                tracing::debug!(pruned = s.out.pruned, "removed absent instances from the indexes");
            }
        }
    }
    Ok(s.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_entries_parse_fast_and_slow() {
        assert_eq!(parse_data_entry(r#"{"hot":true,"mrenclave":"ab"}"#), Ok((true, "ab".into())));
        assert_eq!(parse_data_entry(r#"{"hot":false,"mrenclave":"ab"}"#), Ok((false, "ab".into())));
        assert_eq!(parse_data_entry(r#"{ "mrenclave": "ab", "hot": true }"#), Ok((true, "ab".into())));
        assert_eq!(parse_data_entry(r#"{"hot":true,"mrenclave":"a\u0062"}"#), Ok((true, "ab".into())));
        for bad in ["", "{}", "garbage", r#"{"hot":1,"mrenclave":"ab"}"#, r#"{"hot":true,"mrenclave":"ab"#] {
            assert!(parse_data_entry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let ok = FindQuery::new("acme/gpt2", "", "", 0, &[]).expect("valid");
        assert_eq!(ok.limit, 1);
        let cases: &[(&str, &str, &str, i64, usize, &str)] = &[
            ("", "", "", 1, 0, "send a data id"),
            ("d", "", "", -1, 0, "limit is -1"),
            ("d", "", "", 1_000_000, 0, "at most"),
            ("d", "", "quantum", 1, 0, "unknown platform"),
            ("d", "XYZ", "", 1, 0, "not lowercase hex"),
            ("d", "", "", 1, MAX_DENY + 1, "deny list"),
            ("a b", "", "", 1, 0, "whitespace"),
        ];
        let err = FindQuery::new("d", "", "", 1, &["has space".into()]).expect_err("bad deny id");
        assert!(err.contains("deny-list id"), "{err}");
        for (d, m, p, l, n, want) in cases {
            let deny: Vec<String> = (0..*n).map(|i| i.to_string()).collect();
            let err = FindQuery::new(d, m, p, *l, &deny).expect_err("must be refused");
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }
}
