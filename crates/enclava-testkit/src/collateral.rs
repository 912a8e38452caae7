//! A local collateral service for tests: serves a folder of Intel PCS responses at the PCS v4 paths
//! (issuer chains URL-encoded in headers, as Intel sends them) and AMD chains and CRLs at the KDS
//! paths, so collateral fetched over HTTP can be checked against the real samples offline.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Percent-encodes a header value the way PCS does.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Clone)]
struct Served {
    pcs: PathBuf,
    amd: PathBuf,
    hits: Arc<AtomicU64>,
}

async fn serve(State(s): State<Served>, req: Request) -> Response {
    s.hits.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let (file, header): (PathBuf, Option<(&str, &str)>) = if path.ends_with("/certification/v4/tcb") {
        (s.pcs.join("tcb_info.json"), Some(("TCB-Info-Issuer-Chain", "tcb_info_issuer_chain.pem")))
    } else if path.ends_with("/qe/identity") {
        (s.pcs.join("qe_identity.json"), Some(("SGX-Enclave-Identity-Issuer-Chain", "qe_identity_issuer_chain.pem")))
    } else if path.ends_with("/pckcrl") {
        (s.pcs.join("pck_crl.der"), Some(("SGX-PCK-CRL-Issuer-Chain", "pck_crl_issuer_chain.pem")))
    } else if path.ends_with("/rootcacrl") {
        (s.pcs.join("root_ca_crl.der"), None)
    } else if let Some(rest) = path.strip_prefix("/vcek/v1/") {
        match rest.split_once('/') {
            Some((product, "cert_chain")) => (s.amd.join(format!("{}_cert_chain.pem", product.to_lowercase())), None),
            Some((product, "crl")) => (s.amd.join(format!("{}_crl.pem", product.to_lowercase())), None),
            _ => return StatusCode::NOT_FOUND.into_response(),
        }
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(body) = std::fs::read(&file) else { return StatusCode::NOT_FOUND.into_response() };
    let mut headers = HeaderMap::new();
    if let Some((name, chain)) = header {
        let pem = std::fs::read_to_string(s.pcs.join(chain)).unwrap_or_default();
        headers.insert(name, HeaderValue::from_str(&encode(&pem)).unwrap_or(HeaderValue::from_static("")));
    }
    (headers, body).into_response()
}

/// A running collateral service on a free loopback port; stops when dropped.
#[derive(Debug)]
pub struct CollateralServer {
    pub url: String,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CollateralServer {
    /// Serves `pcs` (PCS responses: `tcb_info.json`, `qe_identity.json`, `pck_crl.der`,
    /// `root_ca_crl.der` and their `*_issuer_chain.pem`) and `amd` (`{product}_cert_chain.pem`,
    /// `{product}_crl.pem`).
    pub async fn start(pcs: PathBuf, amd: PathBuf) -> std::io::Result<CollateralServer> {
        let hits = Arc::new(AtomicU64::new(0));
        let app = axum::Router::new().fallback(serve).with_state(Served { pcs, amd, hits: hits.clone() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(CollateralServer { url, hits, task })
    }

    /// Requests answered so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for CollateralServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
