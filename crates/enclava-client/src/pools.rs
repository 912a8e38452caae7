//! The pools' client side: [`PoolClient`], the REST calls of `enclava pool` (create, list, show,
//! delete) and the addresses a request goes to (a pool's invoke URL for serverless mode, its
//! ranked instances for direct mode).

use enclava_core::Error;
use zeroize::Zeroizing;

/// The largest answer read (a pool listing).
const MAX_ANSWER: usize = 16 << 20;

/// A server's pools API, as a signed-in user.
#[derive(Clone, Debug)]
pub struct PoolClient {
    api: crate::rest::RestApi,
}

impl PoolClient {
    /// A client of the server at `url` (`http://host:port`).
    pub fn new(url: &str, token: Option<Zeroizing<String>>) -> PoolClient {
        PoolClient { api: crate::rest::RestApi::new(url, "pools", token, MAX_ANSWER) }
    }

    /// Creates a pool: `{name, models, measurement?, platform?, concurrency?, queue?,
    /// modelsPerInstance?, min?, max?}`; answers the pool as the server shows it.
    pub async fn create(&self, spec: &serde_json::Value) -> Result<serde_json::Value, Error> {
        self.api.post("/create", spec).await
    }

    /// The caller's pools (every pool, for an admin).
    pub async fn list(&self) -> Result<Vec<serde_json::Value>, Error> {
        let v: serde_json::Value = self.api.get("/list").await?;
        Ok(v.get("pools").and_then(|p| p.as_array()).cloned().unwrap_or_default())
    }

    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        self.api.call(hyper::Method::DELETE, &format!("/{name}"), None).await.map(drop)
    }
}

/// Where serverless requests for pool `name` on the server at `url` go.
pub fn invoke_url(url: &str, name: &str) -> String {
    format!("{}/pools/v1/{name}/invoke", url.trim_end_matches('/'))
}
