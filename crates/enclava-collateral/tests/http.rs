//! The HTTP collateral source against a local server that serves the testdata's `pcs/` files the
//! way Intel PCS v4 does (issuer chains URL-encoded in headers) and AMD files the way KDS does:
//! fetched collateral verifies the real samples, is cached until `nextUpdate`, and errors are clear.

use enclava_attest::time::parse_rfc3339;
use enclava_attest::{Collateral, Evidence, verify};
use enclava_collateral::{CollateralError, CollateralSource, HttpSource};
use enclava_testkit::collateral::CollateralServer;
use std::path::PathBuf;

fn td(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../enclava-attest/testdata").join(rel)
}

async fn server(dataset: &str) -> (String, CollateralServer) {
    let s = CollateralServer::start(td(&format!("{dataset}/pcs")), td("sev-snp/amd")).await.expect("collateral server");
    (s.url.clone(), s)
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
        assert_eq!(hits.hits(), 4, "{dataset}: TCB info, QE identity, PCK CRL, root CRL");
        source.dcap(&quote, now + 3600).await.expect("cached");
        assert_eq!(hits.hits(), 4, "{dataset}: served from the cache before nextUpdate");
        source.dcap(&quote, parse_rfc3339(past).expect("time")).await.expect("refetched");
        assert!(hits.hits() > 4, "{dataset}: fetched again past nextUpdate");
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
        chain: Vec::new(),
    };
    let claims = verify(&ev, &c, now).expect("verifies");
    assert_eq!(claims.raw["crl_checked"], "true");
    source.amd("Milan", now).await.expect("cached");
    assert_eq!(hits.hits(), 2);
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
