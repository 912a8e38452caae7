//! Where verification collateral comes from. [`CollateralSource`] is a small trait with two
//! backends: [`FolderSource`] (offline files) and [`HttpSource`] (an Intel PCS/PCCS-style service
//! for DCAP collateral, an AMD KDS-style service for AMD chains and CRLs), whose answers are cached
//! until their own `nextUpdate`. The verifier (`enclava-attest`) never fetches anything itself.
//! [`EvidenceVerifier`] puts them together: it gathers what a piece of evidence needs from one
//! source and verifies it with one warm verifier, the same way in the key broker and the client.
//!
//! # Layout
//! - [`EvidenceVerifier`]: collateral for this evidence, then the (caching) verifier.
//! - [`open_source`]: a source from what a user writes (`--collateral DIR|FILE|http://…`).
//! - [`FolderSource`]: `collateral.json` or a `pcs/` folder; `{product}_cert_chain.pem` and
//!   `{product}_crl.pem` for AMD.
//! - [`HttpSource`]: PCS v4 paths (`/{sgx,tdx}/certification/v4/tcb`, `/qe/identity`,
//!   `/sgx/certification/v4/pckcrl`, `/rootcacrl`) and KDS paths (`/vcek/v1/{product}/cert_chain`,
//!   `/crl`), plain HTTP.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use dcap_qvl::QuoteCollateralV3;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use x509_cert::der::Decode;

/// What can go wrong getting collateral.
#[derive(Debug, thiserror::Error)]
pub enum CollateralError {
    #[error("{0}")]
    Unusable(String),
    #[error("collateral service {url}: {reason}")]
    Fetch { url: String, reason: String },
}

/// AMD certificates (DER: ASK or ASVK, ARK) and CRLs (DER) of one product.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmdCollateral {
    pub certs: Vec<Vec<u8>>,
    pub crls: Vec<Vec<u8>>,
}

/// A source of collateral. `now` (Unix seconds) decides what a cache may still serve.
#[async_trait]
pub trait CollateralSource: Send + Sync + std::fmt::Debug {
    /// Intel collateral for this quote (by its FMSPC and PCK CA).
    async fn dcap(&self, quote: &[u8], now: u64) -> Result<QuoteCollateralV3, CollateralError>;
    /// AMD chain and CRLs for a product (`Milan`, `Genoa`, `Turin`).
    async fn amd(&self, product: &str, now: u64) -> Result<AmdCollateral, CollateralError>;
}

/// A source from what a user writes: `http://host:port` (one service for both Intel's PCS paths
/// and AMD's KDS paths, e.g. a caching proxy), `intel=http://…,amd=http://…`, a `collateral.json`,
/// or a folder (Intel collateral as `collateral.json` or PCS responses, AMD chains and CRLs as
/// `{product}_cert_chain.pem` and `{product}_crl.pem`).
pub fn open_source(spec: &str) -> Result<std::sync::Arc<dyn CollateralSource>, CollateralError> {
    let spec = spec.trim();
    if spec.starts_with("intel=") || spec.starts_with("amd=") {
        let (mut intel, mut amd) = (None, None);
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("intel", u)) => intel = Some(u.to_owned()),
                Some(("amd", u)) => amd = Some(u.to_owned()),
                _ => {
                    return Err(CollateralError::Unusable(format!(
                        "collateral {}: use intel=URL,amd=URL, one URL, or a folder",
                        enclava_core::text::quote(spec)
                    )));
                }
            }
        }
        // One given: it serves both.
        let (intel, amd) = (intel.clone().or(amd.clone()), amd.or(intel));
        let (Some(intel), Some(amd)) = (intel, amd) else {
            return Err(CollateralError::Unusable("collateral: intel=URL or amd=URL names no URL".into()));
        };
        return Ok(std::sync::Arc::new(HttpSource::new(&intel, &amd)?));
    }
    if spec.contains("://") {
        return Ok(std::sync::Arc::new(HttpSource::new(spec, spec)?));
    }
    let path = PathBuf::from(spec);
    if path.is_file() {
        return Ok(std::sync::Arc::new(FolderSource { dcap: Some(path), amd: None }));
    }
    if path.is_dir() {
        let json = path.join("collateral.json");
        let dcap = if json.is_file() { json } else { path.clone() };
        return Ok(std::sync::Arc::new(FolderSource { dcap: Some(dcap), amd: Some(path) }));
    }
    Err(CollateralError::Unusable(format!(
        "collateral {} is neither a URL, a file nor a folder",
        enclava_core::text::quote(spec)
    )))
}

/// Verifies evidence with the collateral it needs: Intel's for a DCAP quote (by its FMSPC), AMD's
/// chain and CRL for an SNP report (by its VEK's product line; certificates carried in the evidence
/// are used too), and the sim root a policy names. One source and one warm verifier, shared by
/// every call: the key broker and the client verify the same way.
#[derive(Debug, Default)]
pub struct EvidenceVerifier {
    source: Option<std::sync::Arc<dyn CollateralSource>>,
    warm: enclava_attest::warm::Verifier,
}

impl EvidenceVerifier {
    /// A verifier fetching from `source` (`None`: only evidence that needs no collateral, i.e.
    /// Nitro, sim, and SNP evidence that carries its whole chain, verifies).
    pub fn new(source: Option<std::sync::Arc<dyn CollateralSource>>) -> EvidenceVerifier {
        EvidenceVerifier { source, warm: enclava_attest::warm::Verifier::new() }
    }

    /// What `evidence` needs from the source, and `sim_root`. A source that cannot answer leaves
    /// the part out (logged); verification then says what is missing.
    pub async fn collateral(
        &self,
        evidence: &enclava_attest::Evidence,
        sim_root: Option<enclava_attest::sim::RootPublicKey>,
        now: u64,
    ) -> enclava_attest::Collateral {
        use enclava_attest::Evidence;
        let mut c = enclava_attest::Collateral { sim_root, ..Default::default() };
        let Some(src) = &self.source else { return c };
        match evidence {
            Evidence::Dcap(quote) => match src.dcap(quote, now).await {
                Ok(d) => c.dcap = Some(d),
                Err(e) => tracing::warn!(error = %e, "no Intel collateral for this quote"),
            },
            Evidence::SevSnp { vek, .. } => {
                let Some(product) = enclava_attest::snp::product_of(vek) else {
                    tracing::warn!("the VEK names no AMD product line: no AMD collateral fetched");
                    return c;
                };
                match src.amd(&product, now).await {
                    Ok(a) => {
                        c.amd_certs = a.certs;
                        c.amd_crls = a.crls;
                    }
                    Err(e) => tracing::warn!(error = %e, %product, "no AMD collateral"),
                }
            }
            Evidence::AzureVtpm(json) => {
                if let Some(product) =
                    enclava_attest::azure::vek(json).and_then(|v| enclava_attest::snp::product_of(&v))
                {
                    match src.amd(&product, now).await {
                        Ok(a) => {
                            c.amd_certs = a.certs;
                            c.amd_crls = a.crls;
                        }
                        Err(e) => tracing::warn!(error = %e, %product, "no AMD collateral"),
                    }
                }
            }
            Evidence::Nitro(_) | Evidence::Sim(_) => {}
        }
        c
    }

    /// Gathers the collateral `evidence` needs and verifies it at `now`.
    pub async fn verify(
        &self,
        evidence: &enclava_attest::Evidence,
        sim_root: Option<enclava_attest::sim::RootPublicKey>,
        now: u64,
    ) -> Result<enclava_attest::Claims, enclava_attest::VerifyError> {
        let collateral = self.collateral(evidence, sim_root, now).await;
        self.warm.verify(evidence, &collateral, now)
    }

    /// Judges `evidence` (raw bytes) under `policy` at `now`: it parses, its platform is one the
    /// policy names, it verifies, it passes the policy, and its report data binds `key` and
    /// `nonce` under `label` (`enclava_attest::binding`). The claims, or every reason it fails.
    pub async fn judge(
        &self,
        policy: &enclava_attest::Policy,
        evidence: &[u8],
        label: &str,
        key: &[u8],
        nonce: &[u8],
        now: u64,
    ) -> Result<enclava_attest::Claims, Vec<String>> {
        let evidence = enclava_attest::Evidence::detect(evidence.to_vec()).map_err(|e| vec![e.to_string()])?;
        if policy.rules(evidence.platform()).is_none() {
            return Err(vec![format!("platform {} is not allowed by this policy", evidence.platform())]);
        }
        let sim_root = policy.sim_root().map_err(|e| vec![e])?;
        let claims = self.verify(&evidence, sim_root, now).await.map_err(|e| vec![e.to_string()])?;
        let bound = enclava_attest::binding::report_data(label, key, Some(nonce));
        let verdict = enclava_attest::policy::check(policy, &claims, now, Some(&bound));
        if !verdict.accepted {
            return Err(verdict.failures);
        }
        Ok(claims)
    }
}

/// Collateral from files.
#[derive(Debug, Clone)]
pub struct FolderSource {
    /// `collateral.json`, or a folder of PCS responses, for DCAP.
    pub dcap: Option<PathBuf>,
    /// A folder with `{product}_cert_chain.pem` and `{product}_crl.pem` (lowercase product).
    pub amd: Option<PathBuf>,
}

#[async_trait]
impl CollateralSource for FolderSource {
    async fn dcap(&self, _quote: &[u8], _now: u64) -> Result<QuoteCollateralV3, CollateralError> {
        let p = self
            .dcap
            .as_ref()
            .ok_or_else(|| CollateralError::Unusable("no DCAP collateral folder or file configured".into()))?;
        let c = if p.is_dir() {
            enclava_attest::dcap::collateral_from_pcs_dir(p)
        } else {
            std::fs::read(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))
                .and_then(|b| enclava_attest::dcap::collateral_from_json(&b))
        };
        c.map_err(CollateralError::Unusable)
    }

    async fn amd(&self, product: &str, _now: u64) -> Result<AmdCollateral, CollateralError> {
        let dir =
            self.amd.as_ref().ok_or_else(|| CollateralError::Unusable("no AMD collateral folder configured".into()))?;
        let lower = product.to_lowercase();
        let chain = std::fs::read_to_string(dir.join(format!("{lower}_cert_chain.pem")))
            .map_err(|e| CollateralError::Unusable(format!("{}: {e}", dir.display())))?;
        let certs = enclava_attest::roots::pem_certs(&chain).map_err(CollateralError::Unusable)?;
        let crls = match std::fs::read(dir.join(format!("{lower}_crl.pem"))) {
            Ok(pem) => vec![der::pem::decode_vec(&pem).map_err(|e| CollateralError::Unusable(format!("CRL: {e}")))?.1],
            Err(_) => Vec::new(),
        };
        Ok(AmdCollateral { certs, crls })
    }
}

/// The largest response accepted (collateral documents are tens of kilobytes).
const MAX_BODY: usize = 4 << 20;

/// A fetched response: status, selected headers, body.
#[derive(Debug, Clone)]
struct Fetched {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

#[derive(Debug, Clone)]
struct CacheEntry {
    fetched: Fetched,
    /// Serve until this time (Unix seconds): the document's `nextUpdate`, capped by `max_age`.
    until: u64,
}

/// Collateral from an Intel PCS/PCCS-style and AMD KDS-style service over HTTP, cached until each
/// document's `nextUpdate`.
#[derive(Debug)]
pub struct HttpSource {
    intel_base: String,
    amd_base: String,
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    cache: Mutex<HashMap<String, CacheEntry>>,
    /// Longest time anything is cached, whatever its `nextUpdate` says.
    pub max_age: u64,
    fetches: std::sync::atomic::AtomicU64,
}

/// Percent-decodes a header value (PCS sends PEM chains URL-encoded).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `nextUpdate` of a signed PCS JSON document (`{"tcbInfo": {..., "nextUpdate": "…"}, …}`).
fn json_next_update(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let inner = v.get("tcbInfo").or_else(|| v.get("enclaveIdentity"))?;
    enclava_attest::time::parse_rfc3339(inner.get("nextUpdate")?.as_str()?).ok()
}

/// `nextUpdate` of a CRL (DER, or PEM).
fn crl_der(body: &[u8]) -> Vec<u8> {
    if body.starts_with(b"-----BEGIN") {
        der::pem::decode_vec(body).map(|(_, d)| d).unwrap_or_default()
    } else if body.iter().all(u8::is_ascii_hexdigit) {
        hex::decode(body).unwrap_or_default()
    } else {
        body.to_vec()
    }
}

fn crl_next_update(der: &[u8]) -> Option<u64> {
    let crl = x509_cert::crl::CertificateList::from_der(der).ok()?;
    Some(crl.tbs_cert_list.next_update?.to_unix_duration().as_secs())
}

impl HttpSource {
    /// A source for `intel_base` (e.g. `http://pccs:8081`) and `amd_base` (a KDS-style service).
    pub fn new(intel_base: &str, amd_base: &str) -> Result<HttpSource, CollateralError> {
        for b in [intel_base, amd_base] {
            if !b.starts_with("http://") {
                return Err(CollateralError::Unusable(format!(
                    "{b}: only http:// collateral services are supported here; put a caching proxy (a PCCS) in front of an https:// service, or use a folder"
                )));
            }
        }
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Ok(HttpSource {
            intel_base: intel_base.trim_end_matches('/').to_owned(),
            amd_base: amd_base.trim_end_matches('/').to_owned(),
            client,
            cache: Mutex::default(),
            max_age: 24 * 3600,
            fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// HTTP requests made so far (cache misses).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// GETs `url`, or serves it from the cache while `now` is before its `nextUpdate`.
    async fn get(
        &self,
        url: &str,
        now: u64,
        next_update: fn(&[u8]) -> Option<u64>,
    ) -> Result<Fetched, CollateralError> {
        if let Some(e) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(url)
            && now < e.until
        {
            return Ok(e.fetched.clone());
        }
        let err = |reason: String| CollateralError::Fetch { url: url.to_owned(), reason };
        let uri: hyper::Uri = url.parse().map_err(|e| err(format!("bad URL: {e}")))?;
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.get(uri))
            .await
            .map_err(|_| err("timed out".into()))?
            .map_err(|e| err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(err(format!("HTTP {}", resp.status())));
        }
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_lowercase(), percent_decode(v.to_str().ok()?))))
            .collect();
        let body = tokio::time::timeout(
            Duration::from_secs(30),
            http_body_util::Limited::new(resp.into_body(), MAX_BODY).collect(),
        )
        .await
        .map_err(|_| err("timed out reading the body".into()))?
        .map_err(|e| err(e.to_string()))?
        .to_bytes()
        .to_vec();
        let fetched = Fetched { headers, body };
        let until = next_update(&fetched.body).unwrap_or(0).min(now.saturating_add(self.max_age));
        if until > now {
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(url.to_owned(), CacheEntry { fetched: fetched.clone(), until });
        }
        Ok(fetched)
    }
}

fn header(f: &Fetched, names: &[&str], url: &str) -> Result<String, CollateralError> {
    names
        .iter()
        .find_map(|n| f.headers.get(*n).cloned())
        .ok_or_else(|| CollateralError::Fetch { url: url.to_owned(), reason: format!("no {} header", names[0]) })
}

#[derive(serde::Deserialize)]
struct SignedBody<'a> {
    #[serde(borrow, alias = "tcbInfo", alias = "enclaveIdentity")]
    body: &'a serde_json::value::RawValue,
    signature: String,
}

fn split_signed(f: &Fetched, url: &str) -> Result<(String, Vec<u8>), CollateralError> {
    let bad = |reason: String| CollateralError::Fetch { url: url.to_owned(), reason };
    let s: SignedBody = serde_json::from_slice(&f.body).map_err(|e| bad(format!("not a signed PCS document: {e}")))?;
    Ok((s.body.get().to_owned(), hex::decode(&s.signature).map_err(|e| bad(format!("signature is not hex: {e}")))?))
}

#[async_trait]
impl CollateralSource for HttpSource {
    async fn dcap(&self, quote: &[u8], now: u64) -> Result<QuoteCollateralV3, CollateralError> {
        let parsed = dcap_qvl::quote::Quote::parse(quote)
            .map_err(|e| CollateralError::Unusable(format!("not a DCAP quote: {e}")))?;
        let fmspc = hex::encode_upper(
            dcap_qvl::intel::quote_fmspc(&parsed).map_err(|e| CollateralError::Unusable(format!("{e:#}")))?,
        );
        let ca = match dcap_qvl::intel::quote_ca(&parsed).map_err(|e| CollateralError::Unusable(format!("{e:#}")))? {
            dcap_qvl::config::PckCa::Platform => "platform",
            dcap_qvl::config::PckCa::Processor => "processor",
        };
        let tee = if parsed.header.is_sgx() { "sgx" } else { "tdx" };
        let base = &self.intel_base;
        let tcb_url = format!("{base}/{tee}/certification/v4/tcb?fmspc={fmspc}");
        let tcb = self.get(&tcb_url, now, json_next_update).await?;
        let qe_url = format!("{base}/{tee}/certification/v4/qe/identity");
        let qe = self.get(&qe_url, now, json_next_update).await?;
        let crl_url = format!("{base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der");
        let pck_crl = self.get(&crl_url, now, |b| crl_next_update(&crl_der(b))).await?;
        let root_url = format!("{base}/sgx/certification/v4/rootcacrl");
        let root_crl = self.get(&root_url, now, |b| crl_next_update(&crl_der(b))).await?;
        let (tcb_info, tcb_info_signature) = split_signed(&tcb, &tcb_url)?;
        let (qe_identity, qe_identity_signature) = split_signed(&qe, &qe_url)?;
        Ok(QuoteCollateralV3 {
            pck_crl_issuer_chain: header(&pck_crl, &["sgx-pck-crl-issuer-chain"], &crl_url)?,
            root_ca_crl: crl_der(&root_crl.body),
            pck_crl: crl_der(&pck_crl.body),
            tcb_info_issuer_chain: header(&tcb, &["tcb-info-issuer-chain", "sgx-tcb-info-issuer-chain"], &tcb_url)?,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain: header(&qe, &["sgx-enclave-identity-issuer-chain"], &qe_url)?,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        })
    }

    async fn amd(&self, product: &str, now: u64) -> Result<AmdCollateral, CollateralError> {
        let base = &self.amd_base;
        let chain_url = format!("{base}/vcek/v1/{product}/cert_chain");
        let chain = self.get(&chain_url, now, |_| Some(u64::MAX)).await?;
        let text = String::from_utf8(chain.body)
            .map_err(|_| CollateralError::Fetch { url: chain_url.clone(), reason: "not PEM".into() })?;
        let certs = enclava_attest::roots::pem_certs(&text)
            .map_err(|reason| CollateralError::Fetch { url: chain_url, reason })?;
        let crl_url = format!("{base}/vcek/v1/{product}/crl");
        let crl = self.get(&crl_url, now, |b| crl_next_update(&crl_der(b))).await?;
        Ok(AmdCollateral { certs, crls: vec![crl_der(&crl.body)] })
    }
}
