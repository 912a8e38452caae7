//! The `EnclaveManager` gRPC service: validates requests, serves FindEnclave from the cache or the
//! registry ([`enclava_registry::find`]), lists enclaves, and maps registry errors to gRPC codes
//! with messages that say what to do.

use std::sync::Arc;
use std::time::Duration;

use enclava_contracts::discovery::v1 as pb;
use enclava_core::Error;
use enclava_registry::find::{FindQuery, Found, HotHints, Pruner, find};
use enclava_registry::list::{ListQuery, MAX_PAGE, list};
use enclava_registry::schema::{EnclaveInfoJson, check_measurement, check_name, is_known_platform};
use enclava_registry::{Registry, RegistryError};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::cache::FindCache;
use crate::metrics::ServerMetrics;

/// The `EnclaveManager` gRPC service.
#[derive(Debug, Clone)]
pub struct Manager {
    registry: Arc<dyn Registry>,
    cache: Arc<FindCache>,
    hints: Arc<HotHints>,
    pruner: Pruner,
    metrics: Arc<ServerMetrics>,
}

impl Manager {
    /// A manager over `registry`; `hints` is shared with the sweeper, which feeds it, and `pruner`
    /// removes the dead FindEnclave meets after it has answered.
    pub fn new(
        registry: Arc<dyn Registry>,
        cache_ttl: Duration,
        hints: Arc<HotHints>,
        pruner: Pruner,
        metrics: Arc<ServerMetrics>,
    ) -> Manager {
        Manager { registry, cache: Arc::new(FindCache::new(cache_ttl)), hints, pruner, metrics }
    }

    async fn find_enclave(&self, req: pb::FindEnclaveRequest) -> Result<pb::FindEnclaveResponse, Status> {
        let measurement = req.policy.as_ref().map(|p| p.mrenclave.as_str()).unwrap_or("");
        let q =
            FindQuery::new(&req.dataaccess, measurement, &req.platform, i64::from(req.limit), &req.enclave_deny_list)
                .map_err(|e| {
                self.metrics.count("invalid");
                Status::from(Error::invalid(e))
            })?;
        self.cache.evict(&q.deny);
        let found = match self.cache.get(&q) {
            Some(hit) => {
                self.metrics.cache_hits.inc();
                hit
            }
            None => {
                self.metrics.cache_misses.inc();
                let started = Instant::now();
                let outcome =
                    find(self.registry.as_ref(), &q, Some(&self.hints), Some(&self.pruner)).await.map_err(|e| {
                        self.metrics.count(if matches!(e, RegistryError::Unavailable { .. }) {
                            "unavailable"
                        } else {
                            "error"
                        });
                        registry_status(e)
                    })?;
                self.metrics.pruned.inc_by(outcome.pruned as u64);
                self.cache.put(&q, &outcome.live, started);
                outcome.live.into_iter().take(q.limit).collect()
            }
        };
        self.metrics.count(if found.is_empty() { "empty" } else { "found" });
        Ok(pb::FindEnclaveResponse { found: found.into_iter().map(to_proto).collect() })
    }

    async fn list_enclaves(&self, req: pb::ListEnclavesRequest) -> Result<pb::ListEnclavesResponse, Status> {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let q = ListQuery {
            platform: opt(&req.platform),
            measurement: opt(&req.mrenclave),
            data: opt(&req.dataaccess),
            page_size: match req.page_size {
                0 => 100,
                n if n < 0 || n as usize > MAX_PAGE => {
                    return Err(Error::invalid(format!("page_size is {n}: send 1 to {MAX_PAGE}, or 0 for 100")).into());
                }
                n => n as usize,
            },
            after: opt(&req.page_token),
        };
        if let Some(p) = &q.platform
            && !is_known_platform(p)
        {
            return Err(Error::invalid(format!("unknown platform {}", enclava_core::text::quote(p))).into());
        }
        if let Some(m) = &q.measurement {
            check_measurement(m).map_err(invalid)?;
        }
        for (what, v) in [("data id", &q.data), ("page_token", &q.after)] {
            if let Some(v) = v {
                check_name(what, v).map_err(invalid)?;
            }
        }
        let page = list(self.registry.as_ref(), &q).await.map_err(registry_status)?;
        let enclaves = page
            .items
            .into_iter()
            .map(|l| {
                let data_access = l
                    .info
                    .as_ref()
                    .map(|i| {
                        i.data_access.iter().map(|(id, a)| pb::DataAccess { id: id.clone(), hot: a.hot }).collect()
                    })
                    .unwrap_or_default();
                let info = match l.info {
                    Some(info) => info_to_proto(info, false),
                    None => pb::EnclaveInfo { instance_id: l.instance_id, ..Default::default() },
                };
                pb::ListedEnclave { info: Some(info), present: l.present, data_access }
            })
            .collect();
        Ok(pb::ListEnclavesResponse { enclaves, next_page_token: page.next_after.unwrap_or_default() })
    }
}

/// A request refused as invalid, with the core's code (carried in the status's metadata).
fn invalid(message: String) -> Status {
    Error::invalid(message).into()
}

fn registry_status(e: RegistryError) -> Status {
    match e {
        RegistryError::Unavailable { .. } => {
            Error::unavailable(format!("{e}; the enclave manager reconnects by itself: retry shortly"))
        }
        RegistryError::Invalid(m) => Error::invalid(m),
        RegistryError::Backend { .. } => Error::internal(e.to_string()),
    }
    .into()
}

fn info_to_proto(info: EnclaveInfoJson, hot: bool) -> pb::EnclaveInfo {
    pb::EnclaveInfo {
        instance_id: info.instance_id,
        service_name: info.service_name,
        platform: info.platform,
        service_version: info.service_version,
        policy: Some(pb::EnclavePolicy { mrenclave: info.policy.mrenclave }),
        attestation: info.attestation,
        pubkey: info.pubkey,
        connection_string: info.connection_string,
        hot,
    }
}

fn to_proto(f: Found) -> pb::EnclaveInfo {
    info_to_proto(f.info, f.hot)
}

#[tonic::async_trait]
impl pb::enclave_manager_server::EnclaveManager for Manager {
    async fn find_enclave(
        &self,
        request: Request<pb::FindEnclaveRequest>,
    ) -> Result<Response<pb::FindEnclaveResponse>, Status> {
        let started = std::time::Instant::now();
        let result = Manager::find_enclave(self, request.into_inner()).await;
        self.metrics.find_seconds.observe(started.elapsed().as_secs_f64());
        result.map(Response::new)
    }

    async fn list_enclaves(
        &self,
        request: Request<pb::ListEnclavesRequest>,
    ) -> Result<Response<pb::ListEnclavesResponse>, Status> {
        Manager::list_enclaves(self, request.into_inner()).await.map(Response::new)
    }
}
