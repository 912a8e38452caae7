//! The sweeper: removes index entries whose instance's presence has expired, so indexes do not grow
//! forever even for data nobody asks for. Safe to run from every server replica at once.

use std::collections::BTreeMap;

use crate::schema::Index;
use crate::{Registry, Result};

/// Ids probed per round trip.
const PROBE_CHUNK: usize = 1000;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub indexes: usize,
    pub instances: usize,
    pub removed: usize,
}

/// One pass over every index of the registry's namespace and service.
pub async fn sweep(reg: &dyn Registry) -> Result<SweepReport> {
    let indexes = reg.indexes().await?;
    let mut by_id: BTreeMap<String, Vec<Index>> = BTreeMap::new();
    for index in &indexes {
        for (id, _) in reg.index(index).await? {
            by_id.entry(id).or_default().push(index.clone());
        }
    }
    let ids: Vec<String> = by_id.keys().cloned().collect();
    let mut report = SweepReport { indexes: indexes.len(), instances: ids.len(), removed: 0 };
    for chunk in ids.chunks(PROBE_CHUNK) {
        let probes = reg.probe(chunk, false).await?;
        let dead: Vec<(Index, String)> = chunk
            .iter()
            .zip(probes)
            .filter(|(_, p)| p.presence_ttl.is_none())
            .flat_map(|(id, _)| by_id[id].iter().map(move |ix| (ix.clone(), id.clone())))
            .collect();
        report.removed += dead.len();
        reg.remove(&dead).await?;
    }
    Ok(report)
}
