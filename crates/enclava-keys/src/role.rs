//! The key broker as a role of `enclava server`: gRPC `KeyBroker`, REST under `/keys`, its OpenAPI
//! part, `enclava_keys_*` metrics, health (the store answers), and a clean stop (the audit anchor
//! brought up to date, SQLite's WAL checkpointed).

use std::sync::Arc;

use enclava_server::{Health, Role};

use crate::Broker;

/// The key broker role.
#[derive(Debug, Clone)]
pub struct KeysRole {
    broker: Arc<Broker>,
}

impl KeysRole {
    pub fn new(broker: Arc<Broker>) -> KeysRole {
        KeysRole { broker }
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }
}

#[tonic::async_trait]
impl Role for KeysRole {
    fn name(&self) -> &'static str {
        "keys"
    }

    fn prefix(&self) -> String {
        enclava_contracts::keys::rest::PREFIX.into()
    }

    fn grpc(&self, routes: &mut tonic::service::RoutesBuilder) {
        routes.add_service(crate::grpc::KeyBrokerService::new(self.broker.clone()).into_server());
    }

    fn rest(&self) -> Option<axum::Router> {
        Some(crate::rest::router(self.broker.clone()))
    }

    fn openapi(&self) -> Option<utoipa::openapi::OpenApi> {
        Some(crate::rest::openapi())
    }

    fn metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.broker.metrics().register(registry.sub_registry_with_prefix("enclava_keys"));
    }

    async fn health(&self) -> Health {
        match self.broker.store().ping().await {
            Ok(()) => Health::ok(),
            Err(e) => Health::failing(format!("key store unavailable: {e}")),
        }
    }

    async fn stop(&self) {
        self.broker.shutdown().await;
    }
}
