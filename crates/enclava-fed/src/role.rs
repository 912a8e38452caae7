//! The federation as a role of `enclava server`: REST under `/fed`, `enclava_fed_runs` (runs per
//! state), health (the database answers), and a sweeper that puts runs whose node stopped
//! renewing back in the queue.

use std::sync::Arc;
use std::time::Duration;

use enclava_server::{Health, Role, StopSignal};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::task::JoinHandle;

use crate::Fed;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// The federation role.
#[derive(Debug, Clone)]
pub struct FedRole {
    fed: Arc<Fed>,
    runs: Family<StateLabel, Gauge>,
}

impl FedRole {
    pub fn new(fed: Arc<Fed>) -> FedRole {
        FedRole { fed, runs: Family::default() }
    }

    pub fn fed(&self) -> &Arc<Fed> {
        &self.fed
    }
}

#[tonic::async_trait]
impl Role for FedRole {
    fn name(&self) -> &'static str {
        "federation"
    }

    fn prefix(&self) -> String {
        crate::rest::PREFIX.into()
    }

    fn rest(&self) -> Option<axum::Router> {
        Some(crate::rest::router(self.fed.clone()))
    }

    fn openapi(&self) -> Option<utoipa::openapi::OpenApi> {
        Some(crate::rest::openapi())
    }

    fn metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.sub_registry_with_prefix("enclava_fed").register("runs", "Runs in each state", self.runs.clone());
    }

    fn start(&self, mut stop: StopSignal) -> Vec<JoinHandle<()>> {
        let fed = self.fed.clone();
        let runs = self.runs.clone();
        let every = (fed.config().lease / 4).clamp(Duration::from_millis(50), Duration::from_secs(2));
        vec![tokio::spawn(async move {
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
                if let Err(e) = fed.sweep().await {
                    tracing::warn!(error = %e, "federation sweep failed; retrying");
                }
                if let Ok(counts) = fed.counts().await {
                    for (state, n) in counts {
                        runs.get_or_create(&StateLabel { state }).set(n);
                    }
                }
            }
        })]
    }

    async fn health(&self) -> Health {
        match self.fed.database().ping().await {
            Ok(()) => Health::ok(),
            Err(e) => Health::failing(format!("federation database unavailable: {e}")),
        }
    }
}
