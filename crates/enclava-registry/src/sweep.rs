//! The sweeper: removes index entries whose instance's presence has expired, so indexes do not grow
//! forever even for data nobody asks for, and FindEnclave (which prunes only a bounded number of
//! the dead it meets) stays fast. It walks each index with `HSCAN` in steps, so its memory does not
//! grow with the index, and records instances it finds hot in the [`HotHints`]. Safe to run from
//! every server replica at once.

use crate::find::HotHints;
use crate::find::parse_data_entry;
use crate::schema::Index;
use crate::{Registry, Result};

/// Entries visited per step (one `HSCAN`, one presence probe, at most one removal).
const STEP: usize = 1000;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub indexes: usize,
    /// Index entries visited.
    pub entries: usize,
    pub removed: usize,
}

/// One pass over every index of the registry's namespace and service.
pub async fn sweep(reg: &dyn Registry, hints: Option<&HotHints>) -> Result<SweepReport> {
    let indexes = reg.indexes().await?;
    let mut report = SweepReport { indexes: indexes.len(), ..Default::default() };
    for index in &indexes {
        let mut cursor = 0;
        loop {
            let (next, entries) = reg.scan_index(index, cursor, STEP).await?;
            report.entries += entries.len();
            if !entries.is_empty() {
                let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
                let probes = reg.probe(&ids, false).await?;
                let mut dead = Vec::new();
                for ((id, value), p) in entries.iter().zip(probes) {
                    let live = p.presence_ttl.is_some();
                    if !live {
                        dead.push((index.clone(), id.clone()));
                    }
                    if let (Index::Data(d), Some(h)) = (index, hints) {
                        let hot = parse_data_entry(value).is_ok_and(|(hot, _)| hot);
                        h.note(d, id, live && hot);
                    }
                }
                report.removed += dead.len();
                reg.remove(&dead).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(report)
}
