//! FindEnclave's algorithm (seed steps 1–3) over any [`Registry`]: pick the candidate index, drop
//! denied ids, prefer hot ones in random order, check presence and fetch info in at most two
//! probes, prune the dead from every index that names them, and filter on the info.
//!
//! Round trips per call: one index read, one or two probes, at most one prune — a constant,
//! whatever the number of candidates.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use rand::seq::SliceRandom;

use crate::schema::{DataIndexEntry, EnclaveInfoJson, Index, check_measurement, check_name, is_known_platform};
use crate::{Registry, RegistryError, Result};

/// The most enclaves one call may ask for.
pub const MAX_LIMIT: usize = 1000;
/// The longest deny list one call may send.
pub const MAX_DENY: usize = 1000;

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
        if let Some(p) = &q.platform
            && !is_known_platform(p)
        {
            return Err(format!("unknown platform {p:?}: use one of {}", crate::schema::PLATFORMS.join(", ")));
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
    /// Every live, matching enclave that was checked, preferred first; at least `limit` of them
    /// when that many exist. Callers return the first `limit`.
    pub live: Vec<Found>,
    /// Absent instances removed from the indexes.
    pub pruned: usize,
    /// Candidates skipped for missing or malformed info.
    pub skipped: usize,
}

struct Candidate {
    id: String,
    hot: bool,
    /// The index value, read again only if the candidate turns out dead (to prune it).
    raw: String,
}

/// Reads a `bydataaccess` value. The canonical form Enclava writes, `{"hot":B,"mrenclave":"M"}`,
/// is read without a JSON parser (FindEnclave reads every entry of an index); anything else goes
/// through serde.
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

/// Runs FindEnclave's steps 1–3.
pub async fn find(reg: &dyn Registry, q: &FindQuery) -> Result<FindOutcome> {
    // Step 1: the candidates, in the seed's order.
    let index = match (&q.data, &q.measurement) {
        (Some(d), _) => Index::Data(d.clone()),
        (None, Some(m)) => Index::Measurement(m.clone()),
        (None, None) => {
            return Err(RegistryError::Invalid("send a data id or a measurement".into()));
        }
    };
    let mut candidates: Vec<Candidate> = Vec::new();
    for (id, raw) in reg.index(&index).await? {
        if q.deny.contains(&id) {
            continue;
        }
        let hot = match &index {
            Index::Data(_) => match parse_data_entry(&raw) {
                Ok((_, m)) if q.measurement.as_deref().is_some_and(|want| want != m) => continue,
                Ok((hot, _)) => hot,
                Err(e) => {
                    tracing::warn!(instance = %id, index = %reg.keys().index(&index), error = %e, "malformed index entry");
                    false
                }
            },
            _ => false,
        };
        candidates.push(Candidate { id, hot, raw });
    }
    // Spread load over equal candidates, then prefer hot ones (a stable sort keeps the shuffle).
    candidates.shuffle(&mut rand::rng());
    candidates.sort_by_key(|c| !c.hot);

    // Steps 2 and 3: presence and info of a first batch, then of the rest if that was not enough.
    let mut out = FindOutcome::default();
    let mut prune: BTreeSet<(Index, String)> = BTreeSet::new();
    let first = (q.limit * 2 + 2).min(candidates.len());
    let (head, tail) = candidates.split_at(first);
    for batch in [head, tail] {
        if batch.is_empty() || out.live.len() >= q.limit {
            break;
        }
        let ids: Vec<String> = batch.iter().map(|c| c.id.clone()).collect();
        let probes = reg.probe(&ids, true).await?;
        for (cand, probe) in batch.iter().zip(probes) {
            let info = probe.info.as_deref().map(EnclaveInfoJson::parse);
            let Some(ttl) = probe.presence_ttl else {
                // Absent: remove it from every index that still names it.
                prune.insert((index.clone(), cand.id.clone()));
                let measurement = match &index {
                    Index::Data(_) => parse_data_entry(&cand.raw).ok().map(|(_, m)| m.into_owned()),
                    _ => q.measurement.clone(),
                };
                if let Some(m) = measurement {
                    prune.insert((Index::Measurement(m), cand.id.clone()));
                }
                if let Some(Ok(info)) = &info {
                    for (idx, _) in info.index_entries() {
                        prune.insert((idx, cand.id.clone()));
                    }
                }
                continue;
            };
            let info = match info {
                Some(Ok(info)) if info.instance_id == cand.id => info,
                Some(Ok(info)) => {
                    tracing::warn!(instance = %cand.id, claimed = %info.instance_id, "info names another instance, skipped");
                    out.skipped += 1;
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(instance = %cand.id, error = %e, "malformed enclave info, skipped");
                    out.skipped += 1;
                    continue;
                }
                None => {
                    tracing::warn!(instance = %cand.id, "present but no enclave info, skipped");
                    out.skipped += 1;
                    continue;
                }
            };
            if q.platform.as_ref().is_some_and(|p| *p != info.platform)
                || q.measurement.as_ref().is_some_and(|m| *m != info.policy.mrenclave)
            {
                continue;
            }
            let hot = q.data.as_ref().and_then(|d| info.data_access.get(d)).is_some_and(|a| a.hot);
            if q.data.as_ref().is_some_and(|d| !info.data_access.contains_key(d)) {
                // The index is older than the info: the enclave dropped this data.
                continue;
            }
            out.live.push(Found { info, hot, presence_ttl: ttl });
        }
    }
    if !prune.is_empty() {
        let dead: HashSet<&str> = prune.iter().map(|(_, id)| id.as_str()).collect();
        out.pruned = dead.len();
        let entries: Vec<(Index, String)> = prune.into_iter().collect();
        reg.remove(&entries).await?;
        tracing::debug!(pruned = out.pruned, "removed absent instances from the indexes");
    }
    Ok(out)
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
