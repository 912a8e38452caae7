//! The HTTP collateral source against a local server that serves the testdata's `pcs/` files the
//! way Intel PCS v4 does (issuer chains URL-encoded in headers) and AMD files the way KDS does:
//! fetched collateral verifies the real samples, is cached until `nextUpdate`, and errors are clear.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use enclava_attest::time::parse_rfc3339;
use enclava_attest::{Collateral, Evidence, verify};
use enclava_collateral::{CollateralError, CollateralSource, HttpSource};

fn td(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../enclava-attest/testdata").join(rel)
}

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
    hits: Arc<AtomicU64>,
}

async fn serve(State(s): State<Served>, req: Request) -> Response {
    s.hits.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let (file, header): (&str, Option<(&str, &str)>) = if path.ends_with("/certification/v4/tcb") {
        ("tcb_info.json", Some(("TCB-Info-Issuer-Chain", "tcb_info_issuer_chain.pem")))
    } else if path.ends_with("/qe/identity") {
        ("qe_identity.json", Some(("SGX-Enclave-Identity-Issuer-Chain", "qe_identity_issuer_chain.pem")))
    } else if path.ends_with("/pckcrl") {
        ("pck_crl.der", Some(("SGX-PCK-CRL-Issuer-Chain", "pck_crl_issuer_chain.pem")))
    } else if path.ends_with("/rootcacrl") {
        ("root_ca_crl.der", None)
    } else if path == "/vcek/v1/Milan/cert_chain" {
        ("../../sev-snp/amd/milan_cert_chain.pem", None)
    } else if path == "/vcek/v1/Milan/crl" {
        ("../../sev-snp/amd/milan_crl.pem", None)
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Ok(body) = std::fs::read(s.pcs.join(file)) else { return StatusCode::NOT_FOUND.into_response() };
    let mut headers = HeaderMap::new();
    if let Some((name, chain)) = header {
        let pem = std::fs::read_to_string(s.pcs.join(chain)).unwrap_or_default();
        headers.insert(name, HeaderValue::from_str(&encode(&pem)).unwrap_or(HeaderValue::from_static("")));
    }
    (headers, body).into_response()
}

async fn server(dataset: &str) -> (String, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let state = Served { pcs: td(&format!("{dataset}/pcs")), hits: hits.clone() };
    let app = axum::Router::new().fallback(serve).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, hits)
}

#[tokio::test]
async fn fetched_dcap_collateral_verifies_and_is_cached_until_next_update() {
    for (dataset, quote, t, past) in [
        ("tdx-v4", "tdx-v4/quote.dat", "2025-07-01T00:00:00Z", "2025-07-25T00:00:00Z"),
        ("sgx-dcap-v3", "sgx-dcap-v3/quote.dat", "2025-07-01T00:00:00Z", "2025-07-25T00:00:00Z"),
    ] {
        let (url, hits) = server(dataset).await;
        let source = HttpSource::new(&url, &url).expect("source");
        let quote = std::fs::read(td(quote)).expect("quote");
        let now = parse_rfc3339(t).expect("time");
        let coll = source.dcap(&quote, now).await.expect("fetched");
        let c = Collateral { dcap: Some(coll), ..Default::default() };
        verify(&Evidence::Dcap(quote.clone()), &c, now).expect("fetched collateral verifies the quote");
        assert_eq!(hits.load(Ordering::Relaxed), 4, "{dataset}: TCB info, QE identity, PCK CRL, root CRL");
        source.dcap(&quote, now + 3600).await.expect("cached");
        assert_eq!(hits.load(Ordering::Relaxed), 4, "{dataset}: served from the cache before nextUpdate");
        source.dcap(&quote, parse_rfc3339(past).expect("time")).await.expect("refetched");
        assert!(hits.load(Ordering::Relaxed) > 4, "{dataset}: fetched again past nextUpdate");
    }
}

#[tokio::test]
async fn fetched_amd_collateral_verifies_an_snp_report() {
    let (url, hits) = server("tdx-v4").await;
    let source = HttpSource::new(&url, &url).expect("source");
    let now = parse_rfc3339("2025-07-01T00:00:00Z").expect("time");
    let amd = source.amd("Milan", now).await.expect("fetched");
    let c = Collateral { amd_certs: amd.certs, amd_crls: amd.crls, ..Default::default() };
    let ev = Evidence::SevSnp {
        report: std::fs::read(td("sev-snp/milan-virtee/report.bin")).expect("report"),
        vek: std::fs::read(td("sev-snp/milan-virtee/vcek.der")).expect("vcek"),
    };
    let claims = verify(&ev, &c, now).expect("verifies");
    assert_eq!(claims.raw["crl_checked"], "true");
    source.amd("Milan", now).await.expect("cached");
    assert_eq!(hits.load(Ordering::Relaxed), 2);
    let err = source.amd("Turin", now).await.expect_err("not served");
    assert!(matches!(err, CollateralError::Fetch { .. }) && err.to_string().contains("404"), "{err}");
}

#[tokio::test]
async fn unusable_sources_say_what_to_do() {
    let err = HttpSource::new("https://api.trustedservices.intel.com", "http://x").expect_err("https");
    assert!(err.to_string().contains("http://"), "{err}");
    let source = HttpSource::new("http://127.0.0.1:1", "http://127.0.0.1:1").expect("source");
    let quote = std::fs::read(td("tdx-v4/quote.dat")).expect("quote");
    assert!(matches!(source.dcap(&quote, 0).await, Err(CollateralError::Fetch { .. })));
    assert!(matches!(source.dcap(b"not a quote", 0).await, Err(CollateralError::Unusable(_))));
}
