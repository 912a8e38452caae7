//! The pools role over gRPC (`enclava.pools.v1.Pools`): the REST API's operations with the same
//! checks, through the same code ([`crate::role`]); `Invoke` takes and answers the sealed binary
//! encoding. Calls other than `Invoke` and `Instances` need `authorization: Bearer <token>`.

use std::sync::Arc;

use axum::body::Bytes;
use enclava_contracts::pools::v1 as pb;
use enclava_core::{Error, ErrorBody, ErrorCode};
use tonic::{Request, Response, Status};

use crate::pool::PoolView;
use crate::role::{CreateBody, Inner};

pub(crate) struct PoolsService {
    pub(crate) inner: Arc<Inner>,
}

fn some<T: PartialEq + Default>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

fn pool(v: &PoolView) -> pb::Pool {
    let s = &v.status;
    pb::Pool {
        name: v.spec.name.clone(),
        models: v.spec.models.clone(),
        measurement: v.spec.measurement.clone().unwrap_or_default(),
        platform: v.spec.platform.clone().unwrap_or_default(),
        concurrency: v.spec.config.concurrency,
        queue: v.spec.config.queue as u64,
        min: v.spec.min,
        max: v.spec.max,
        owner: v.spec.owner.clone(),
        instances: s
            .instances
            .iter()
            .map(|i| pb::Instance {
                id: i.id.clone(),
                endpoint: v.endpoints.get(&i.id).cloned().unwrap_or_default(),
                hot: i.hot.clone(),
                in_flight: i.in_flight,
                claimed_by: i.claimed_by.clone().unwrap_or_default(),
            })
            .collect(),
        queued: s.queued as u64,
        cold_loads: s.cold_loads,
        models_signal: v
            .spec
            .models
            .iter()
            .map(|m| {
                let x = s.models.get(m).cloned().unwrap_or_default();
                pb::ModelSignal {
                    model: m.clone(),
                    in_flight: x.in_flight,
                    queued: x.queued as u64,
                    hot_on: x.hot_on as u64,
                    cold_loads: x.cold_loads,
                }
            })
            .collect(),
        down: v.down.clone(),
    }
}

#[tonic::async_trait]
impl pb::pools_server::Pools for PoolsService {
    async fn create(&self, req: Request<pb::CreateRequest>) -> Result<Response<pb::Pool>, Status> {
        let caller = self.inner.identity.caller(&req).await?;
        let r = req.into_inner();
        let body = CreateBody {
            name: r.name,
            models: r.models,
            measurement: some(r.measurement),
            platform: some(r.platform),
            concurrency: some(r.concurrency),
            queue: some(r.queue).map(|q| q as usize),
            models_per_instance: some(r.models_per_instance).map(|m| m as usize),
            min: Some(r.min),
            max: Some(r.max),
        };
        Ok(Response::new(pool(&self.inner.create_pool(&caller, body).await?)))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let caller = self.inner.identity.caller(&req).await?;
        let pools = self.inner.list_pools(&caller).await?;
        Ok(Response::new(pb::ListResponse { pools: pools.iter().map(pool).collect() }))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let caller = self.inner.identity.caller(&req).await?;
        self.inner.delete_pool(&caller, &req.get_ref().name).await?;
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn invoke(&self, req: Request<pb::InvokeRequest>) -> Result<Response<pb::InvokeResponse>, Status> {
        let r = req.into_inner();
        let wait = self.inner.queue_wait(Some(r.queue_ms));
        let answer = self.inner.invoke(&r.name, true, Bytes::from(r.request), wait).await?;
        if !answer.status.is_success() {
            // The instance refused it: its error, with its code.
            let mut e = match serde_json::from_slice::<ErrorBody>(&answer.body) {
                Ok(b) => Error::from(b),
                Err(_) => Error::new(ErrorCode::from_http(answer.status.as_u16()), "the instance refused the request"),
            };
            e.retry_after = answer.retry_after.and_then(|v| v.to_str().ok()?.parse().ok());
            return Err(e.into());
        }
        Ok(Response::new(pb::InvokeResponse { response: answer.body.to_vec(), instance: answer.instance }))
    }

    async fn instances(&self, req: Request<pb::InstancesRequest>) -> Result<Response<pb::InstancesResponse>, Status> {
        let r = req.into_inner();
        let ranked = self.inner.rank(&r.name, &r.model).await?;
        Ok(Response::new(pb::InstancesResponse {
            instances: ranked
                .into_iter()
                .map(|x| pb::RankedInstance { id: x.id, endpoint: x.endpoint, hot: x.hot, in_flight: x.in_flight })
                .collect(),
        }))
    }
}
