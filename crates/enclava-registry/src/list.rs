//! Paged listing of enclaves for operators and the dashboard: every instance an index names, in
//! instance-id order, with its presence and info, filtered by platform, measurement and data.

use std::collections::BTreeSet;

use crate::schema::{EnclaveInfoJson, Index};
use crate::{Registry, Result};

/// The largest page.
pub const MAX_PAGE: usize = 1000;

/// A listing request.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub platform: Option<String>,
    pub measurement: Option<String>,
    pub data: Option<String>,
    pub page_size: usize,
    /// List ids after this one (the previous page's last id).
    pub after: Option<String>,
}

/// One listed instance.
#[derive(Debug, Clone)]
pub struct Listed {
    pub instance_id: String,
    pub present: bool,
    /// Time left on its presence (a heartbeat renews it to the full TTL).
    pub presence_ttl: Option<std::time::Duration>,
    /// `None` when the info has expired, is malformed, or names another instance.
    pub info: Option<EnclaveInfoJson>,
}

/// One page, and the id to continue after when there is more.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub items: Vec<Listed>,
    /// How many instances each index the page was read from names (every platform index, when
    /// the query names no platform, measurement or data).
    pub sizes: Vec<(Index, usize)>,
    pub next_after: Option<String>,
}

/// Lists one page.
pub async fn list(reg: &dyn Registry, q: &ListQuery) -> Result<ListPage> {
    let sources: Vec<Index> = if let Some(d) = &q.data {
        vec![Index::Data(d.clone())]
    } else if let Some(m) = &q.measurement {
        vec![Index::Measurement(m.clone())]
    } else if let Some(p) = &q.platform {
        vec![Index::Platform(p.clone())]
    } else {
        reg.indexes().await?.into_iter().filter(|i| matches!(i, Index::Platform(_))).collect()
    };
    let mut ids = BTreeSet::new();
    let mut sizes = Vec::with_capacity(sources.len());
    for src in sources {
        let entries = reg.index(&src).await?;
        sizes.push((src, entries.len()));
        ids.extend(entries.into_iter().map(|(id, _)| id));
    }
    let page_size = q.page_size.clamp(1, MAX_PAGE);
    let page: Vec<String> =
        ids.into_iter().filter(|id| q.after.as_ref().is_none_or(|a| id > a)).take(page_size + 1).collect();
    let more = page.len() > page_size;
    let page = &page[..page.len().min(page_size)];
    let probes = reg.probe(page, true).await?;
    let mut items = Vec::with_capacity(page.len());
    for (id, probe) in page.iter().zip(probes) {
        // Info is shown under the key it was read from: one that claims another instance is not
        // this instance's info.
        let info = probe
            .info
            .as_deref()
            .and_then(|raw| EnclaveInfoJson::parse(raw).ok())
            .filter(|info| info.instance_id == *id);
        if let Some(info) = &info {
            let mismatch = q.platform.as_ref().is_some_and(|p| *p != info.platform)
                || q.measurement.as_ref().is_some_and(|m| *m != info.policy.mrenclave)
                || q.data.as_ref().is_some_and(|d| !info.data_access.contains_key(d));
            if mismatch {
                continue;
            }
        }
        items.push(Listed {
            instance_id: id.clone(),
            present: probe.presence_ttl.is_some(),
            presence_ttl: probe.presence_ttl,
            info,
        });
    }
    Ok(ListPage { items, sizes, next_after: more.then(|| page.last().cloned()).flatten() })
}
