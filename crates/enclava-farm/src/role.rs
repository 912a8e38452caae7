//! The farm as a role of `enclava server`: REST under `/farm`, `enclava_farm_*` metrics (jobs per
//! state), health (the database answers), and a sweeper that re-queues jobs whose lease expired
//! and, every ten minutes, collects unused unpinned job files.

use std::sync::Arc;
use std::time::Duration;

use enclava_server::{Health, Role, StopSignal};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::task::JoinHandle;

use crate::Farm;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// The farm role.
#[derive(Debug, Clone)]
pub struct FarmRole {
    farm: Arc<Farm>,
    jobs: Family<StateLabel, Gauge>,
}

impl FarmRole {
    pub fn new(farm: Arc<Farm>) -> FarmRole {
        FarmRole { farm, jobs: Family::default() }
    }

    pub fn farm(&self) -> &Arc<Farm> {
        &self.farm
    }
}

#[tonic::async_trait]
impl Role for FarmRole {
    fn name(&self) -> &'static str {
        "farm"
    }

    fn prefix(&self) -> String {
        crate::rest::PREFIX.into()
    }

    fn rest(&self) -> Option<axum::Router> {
        Some(crate::rest::router(self.farm.clone()))
    }

    fn metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.sub_registry_with_prefix("enclava_farm").register("jobs", "Jobs in each state", self.jobs.clone());
    }

    fn start(&self, mut stop: StopSignal) -> Vec<JoinHandle<()>> {
        let farm = self.farm.clone();
        let jobs = self.jobs.clone();
        let every = (farm.config().lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(2));
        vec![tokio::spawn(async move {
            let mut collect_at = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                tokio::select! {
                    _ = stop.stopped() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                // While draining, hosts and nodes cannot reach this server to renew: their
                // silence says nothing, so nothing expires.
                if stop.is_draining() {
                    continue;
                }
                if let Err(e) = farm.sweep().await {
                    tracing::warn!(error = %e, "farm sweep failed; retrying");
                }
                if tokio::time::Instant::now() >= collect_at {
                    collect_at = tokio::time::Instant::now() + Duration::from_secs(600);
                    if let Err(e) = farm.collect_files().await {
                        tracing::warn!(error = %e, "collecting unused job files failed; retrying later");
                    }
                }
                if let Ok(counts) = farm.counts().await {
                    for (state, n) in counts {
                        jobs.get_or_create(&StateLabel { state }).set(n);
                    }
                }
            }
        })]
    }

    async fn health(&self) -> Health {
        match self.farm.database().ping().await {
            Ok(()) => Health::ok(),
            Err(e) => Health::failing(format!("farm database unavailable: {e}")),
        }
    }
}
