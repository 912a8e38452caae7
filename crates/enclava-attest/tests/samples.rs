//! Every real sample in `testdata/` gets exactly the verdict its README states, at the stated time;
//! past its collateral window it fails with "expired collateral"; debug enclaves are refused by a
//! no-debug policy; flipping a byte in a signed region, a certificate or signed collateral fails.

use std::path::{Path, PathBuf};

use enclava_attest::policy::{Policy, check};
use enclava_attest::time::parse_rfc3339;
use enclava_attest::{Claims, Collateral, Evidence, Platform, VerifyError, dcap, roots, verify};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(data(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn at(s: &str) -> u64 {
    parse_rfc3339(s).expect("time")
}

const JULY_2025: &str = "2025-07-01T00:00:00Z";

fn dcap_coll(dir: &str) -> Collateral {
    Collateral {
        dcap: Some(dcap::collateral_from_json(&read(&format!("{dir}/collateral.json"))).expect("collateral")),
        ..Default::default()
    }
}

fn amd_coll(chain: &str, crl: Option<&str>) -> Collateral {
    let text = String::from_utf8(read(&format!("sev-snp/amd/{chain}"))).expect("pem");
    let amd_crls = crl
        .map(|c| {
            let pem = read(&format!("sev-snp/amd/{c}"));
            vec![der::pem::decode_vec(&pem).expect("crl pem").1]
        })
        .unwrap_or_default();
    Collateral { amd_certs: roots::pem_certs(&text).expect("chain"), amd_crls, ..Default::default() }
}

fn no_debug_any() -> Policy {
    Policy::parse("[sgx]\nany_measurement = true\ntcb_statuses = [\"UpToDate\", \"ConfigurationAndSWHardeningNeeded\"]\nallowed_advisories = [\"INTEL-SA-00289\", \"INTEL-SA-00615\"]\n[tdx]\nany_measurement = true\n[sev-snp]\nany_measurement = true\n[nitro]\nany_measurement = true\n").expect("policy")
}

fn snp(dir: &str, report: &str, vek: &str, chain: &str, crl: Option<&str>) -> (Evidence, Collateral) {
    let ev = Evidence::SevSnp {
        report: read(&format!("sev-snp/{dir}/{report}")),
        vek: read(&format!("sev-snp/{dir}/{vek}")),
        chain: Vec::new(),
    };
    (ev, amd_coll(chain, crl))
}

// ---- Intel DCAP ----

#[test]
fn sgx_v3_verifies_with_its_status_and_advisories() {
    let c = verify(&Evidence::Dcap(read("sgx-dcap-v3/quote.dat")), &dcap_coll("sgx-dcap-v3"), at(JULY_2025))
        .expect("verifies");
    assert_eq!(c.platform, Platform::Sgx);
    assert_eq!(c.tcb_status.as_deref(), Some("ConfigurationAndSWHardeningNeeded"));
    let mut adv = c.advisories.clone();
    adv.sort();
    assert_eq!(adv, vec!["INTEL-SA-00289", "INTEL-SA-00615"]);
    assert_eq!(c.measurement.len(), 32);
    assert!(!c.debug);
    assert!(check(&no_debug_any(), &c, at(JULY_2025), None).accepted);
    // A strict policy (UpToDate only, no advisories) says exactly why it refuses.
    let strict = Policy::parse("[sgx]\nany_measurement = true\n").expect("policy");
    let v = check(&strict, &c, at(JULY_2025), None);
    assert!(v.failures.iter().any(|f| f.contains("TCB status ConfigurationAndSWHardeningNeeded")), "{v:?}");
    assert!(v.failures.iter().any(|f| f.contains("INTEL-SA-00289")), "{v:?}");
}

#[test]
fn tdx_v4_and_v5_verify_up_to_date() {
    let c = verify(&Evidence::Dcap(read("tdx-v4/quote.dat")), &dcap_coll("tdx-v4"), at(JULY_2025)).expect("v4");
    assert_eq!((c.platform, c.tcb_status.as_deref(), c.advisories.len()), (Platform::Tdx, Some("UpToDate"), 0));
    assert_eq!(c.measurement.len(), 48);
    let c =
        verify(&Evidence::Dcap(read("tdx-v5/quote_uptodate.dat")), &dcap_coll("tdx-v5"), at("2026-03-01T00:00:00Z"))
            .expect("v5");
    assert_eq!(c.tcb_status.as_deref(), Some("UpToDate"));
    assert!(check(&no_debug_any(), &c, 0, None).accepted);
}

#[test]
fn the_two_no_tcb_match_quotes_fail() {
    for (q, dir, t) in [
        ("tdx-v5/quote_no_tcb_match.dat", "tdx-v5", "2026-03-01T00:00:00Z"),
        ("tdx-v4-2023/quote_tcb_not_supported.dat", "tdx-v4-2023", "2023-07-01T01:00:00Z"),
    ] {
        let err = verify(&Evidence::Dcap(read(q)), &dcap_coll(dir), at(t)).expect_err(q);
        assert!(matches!(err, VerifyError::TcbNotSupported(_)), "{q}: {err}");
    }
}

#[test]
fn the_debug_td_verifies_and_a_no_debug_policy_refuses_it() {
    let c = verify(
        &Evidence::Dcap(read("tdx-v4-2023/quote_debug_td.dat")),
        &dcap_coll("tdx-v4-2023"),
        at("2023-07-01T01:00:00Z"),
    )
    .expect("crypto OK");
    assert!(c.debug);
    assert_eq!(c.tcb_status.as_deref(), Some("UpToDate"));
    let v = check(&no_debug_any(), &c, 0, None);
    assert!(!v.accepted && v.failures[0].contains("debug"), "{v:?}");
}

#[test]
fn dcap_past_the_window_is_expired_collateral() {
    for (q, dir, t) in [
        ("sgx-dcap-v3/quote.dat", "sgx-dcap-v3", "2025-07-20T00:00:00Z"),
        ("tdx-v4/quote.dat", "tdx-v4", "2025-07-20T00:00:00Z"),
        ("tdx-v5/quote_uptodate.dat", "tdx-v5", "2026-03-21T00:00:00Z"),
        ("sgx-dcap-v3/quote.dat", "sgx-dcap-v3", "2025-06-01T00:00:00Z"),
    ] {
        let err = verify(&Evidence::Dcap(read(q)), &dcap_coll(dir), at(t)).expect_err(q);
        assert!(matches!(err, VerifyError::ExpiredCollateral(_)), "{q} at {t}: {err}");
        assert!(err.to_string().starts_with("expired collateral"));
    }
}

#[test]
fn pcs_folders_give_the_same_collateral() {
    for dir in ["sgx-dcap-v3", "tdx-v4", "tdx-v5", "tdx-v4-2023"] {
        let from_pcs = dcap::collateral_from_pcs_dir(&data(&format!("{dir}/pcs"))).expect(dir);
        let from_json = dcap_coll(dir).dcap.expect("json");
        assert_eq!(from_pcs.tcb_info, from_json.tcb_info, "{dir}");
        assert_eq!(from_pcs.qe_identity_signature, from_json.qe_identity_signature, "{dir}");
    }
    let coll = Collateral {
        dcap: Some(dcap::collateral_from_pcs_dir(&data("tdx-v4/pcs")).expect("pcs")),
        ..Default::default()
    };
    verify(&Evidence::Dcap(read("tdx-v4/quote.dat")), &coll, at(JULY_2025)).expect("verifies from pcs/");
}

// ---- AMD SEV-SNP ----

fn snp_ok(dir: &str, report: &str, vek: &str, chain: &str, crl: Option<&str>) -> Claims {
    let (ev, coll) = snp(dir, report, vek, chain, crl);
    verify(&ev, &coll, at(JULY_2025)).unwrap_or_else(|e| panic!("{dir}: {e}"))
}

#[test]
fn snp_samples_verify() {
    let c = snp_ok("milan-virtee", "report.bin", "vcek.der", "milan_cert_chain.pem", Some("milan_crl.pem"));
    assert_eq!(
        c.measurement_hex(),
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    );
    assert_eq!(c.raw["crl_checked"], "true");
    assert!(!c.debug);
    assert!(check(&no_debug_any(), &c, 0, None).accepted);

    let c = snp_ok("milan-go-sev-guest", "report.bin", "vcek.der", "milan_cert_chain.pem", Some("milan_crl.pem"));
    assert!(c.debug, "policy 0xb0000 allows debug");
    assert!(!check(&no_debug_any(), &c, 0, None).accepted);

    let c = snp_ok("milan-idblock-trustee", "report.bin", "vcek.der", "milan_cert_chain.pem", Some("milan_crl.pem"));
    assert_eq!(c.raw["reported_tcb"], "bl 3 tee 0 snp 8 ucode 115", "compared against reported_tcb, not current_tcb");

    let c = snp_ok("milan-vlek-trustee", "report.bin", "vlek.der", "milan_vlek_cert_chain.pem", None);
    assert_eq!(c.raw["signing_key"], "vlek");

    let c = snp_ok("genoa-azure-openpcc", "report.bin", "vcek.pem", "genoa_cert_chain.pem", Some("genoa_crl.pem"));
    assert_eq!(c.raw["product"], "Genoa");
    let h = snp_ok("genoa-azure-openpcc", "hcl_report.bin", "vcek.pem", "genoa_cert_chain.pem", Some("genoa_crl.pem"));
    assert_eq!(h.measurement, c.measurement);
    assert!(h.raw["hcl_runtime_data"].contains("HCLAkPub"));
}

/// Genuine Turin reports (v5) with their VCEKs: the VCEK's hwID is 8 bytes and the report's CHIP_ID
/// holds them followed by zeros; the TCB layout puts FMC first. No public Turin CRL is shipped, so
/// revocation stays unchecked (`require_crl = false` to accept).
#[test]
fn turin_samples_verify() {
    let when = at("2026-07-01T00:00:00Z");
    for (dir, measurement, tcb, chip) in [
        ("turin-openanolis", "", "fmc 1 bl 3 tee 2 snp 5 ucode 97", "0910b4f884ff4ba9"),
        (
            "turin-oak",
            "f924dd18f168df60fbea937f0b086284d51b1b376de872bac43694f61134d57967c318018de7335503023dbb50dee624",
            "fmc 0 bl 1 tee 0 snp 2 ucode 71",
            "3b42092f69c656d3",
        ),
    ] {
        let (ev, coll) = snp(dir, "report.bin", "vcek.der", "turin_cert_chain.pem", None);
        let c = verify(&ev, &coll, when).unwrap_or_else(|e| panic!("{dir}: {e}"));
        assert_eq!(c.platform, Platform::SevSnp);
        assert_eq!(c.raw["product"], "Turin", "{dir}");
        assert_eq!(c.raw["reported_tcb"], tcb, "{dir}");
        assert_eq!(c.raw["chip_id"], format!("{chip}{}", "00".repeat(56)), "{dir}");
        if !measurement.is_empty() {
            assert_eq!(c.measurement_hex(), measurement);
        }
        let no_crl = Policy::parse("[sev-snp]\nany_measurement = true\nrequire_crl = false\n").expect("policy");
        assert!(check(&no_crl, &c, when, None).accepted, "{dir}: {:?}", check(&no_crl, &c, when, None));
        let v = check(&no_debug_any(), &c, when, None);
        assert!(v.failures.iter().any(|f| f.contains("no AMD CRL")), "{dir}: {v:?}");
        // The other sample's VCEK is another chip's.
        let other = if dir == "turin-oak" { "turin-openanolis" } else { "turin-oak" };
        let swapped = Evidence::SevSnp {
            report: read(&format!("sev-snp/{dir}/report.bin")),
            vek: read(&format!("sev-snp/{other}/vcek.der")),
            chain: Vec::new(),
        };
        assert!(matches!(verify(&swapped, &coll, when), Err(VerifyError::Invalid(_))), "{dir}");
        // A Turin report against the Milan chain does not chain.
        let (ev, milan) = snp(dir, "report.bin", "vcek.der", "milan_cert_chain.pem", None);
        assert!(verify(&ev, &milan, when).is_err());
    }
    // CHIP_ID must be the hwID followed by zeros: a report with a non-zero byte after the 8 (and a
    // valid signature) could not exist, so flip it and expect a failure either way.
    let mut report = read("sev-snp/turin-oak/report.bin");
    report[0x1A0 + 8] ^= 1;
    let ev = Evidence::SevSnp { report, vek: read("sev-snp/turin-oak/vcek.der"), chain: Vec::new() };
    assert!(verify(&ev, &amd_coll("turin_cert_chain.pem", None), when).is_err());
}

#[test]
fn snp_wrong_chain_tcb_or_time_fail() {
    // A Milan VCEK against the Genoa chain.
    let (ev, coll) = snp("milan-virtee", "report.bin", "vcek.der", "genoa_cert_chain.pem", None);
    assert!(matches!(verify(&ev, &coll, at(JULY_2025)), Err(VerifyError::Invalid(_))));
    // Another chip's VCEK.
    let (_, coll) = snp("milan-virtee", "report.bin", "vcek.der", "milan_cert_chain.pem", None);
    let ev = Evidence::SevSnp {
        report: read("sev-snp/milan-virtee/report.bin"),
        vek: read("sev-snp/milan-idblock-trustee/vcek.der"),
        chain: Vec::new(),
    };
    let err = verify(&ev, &coll, at(JULY_2025)).expect_err("other chip");
    assert!(matches!(err, VerifyError::Invalid(_)), "{err}");
    // Past the Milan CRL's nextUpdate, and past the VLEK's life.
    let (ev, coll) = snp("milan-virtee", "report.bin", "vcek.der", "milan_cert_chain.pem", Some("milan_crl.pem"));
    assert!(matches!(verify(&ev, &coll, at("2026-06-01T00:00:00Z")), Err(VerifyError::ExpiredCollateral(_))));
    let (ev, coll) = snp("milan-vlek-trustee", "report.bin", "vlek.der", "milan_vlek_cert_chain.pem", None);
    assert!(matches!(verify(&ev, &coll, at("2025-12-11T00:00:00Z")), Err(VerifyError::ExpiredCollateral(_))));
    // No intermediate at all.
    let ev = Evidence::SevSnp {
        report: read("sev-snp/milan-virtee/report.bin"),
        vek: read("sev-snp/milan-virtee/vcek.der"),
        chain: Vec::new(),
    };
    assert!(matches!(verify(&ev, &Collateral::default(), at(JULY_2025)), Err(VerifyError::MissingCollateral(_))));
}

// ---- AWS Nitro ----

#[test]
fn nitro_documents_verify_at_their_time() {
    let prod = read("aws-nitro/attestation_prod.cose");
    let c = verify(&Evidence::Nitro(prod.clone()), &Collateral::default(), at("2025-01-06T16:07:05Z")).expect("prod");
    assert_eq!(c.platform, Platform::Nitro);
    assert!(!c.debug);
    assert_eq!(c.measurement.len(), 48);
    assert!(check(&no_debug_any(), &c, 0, None).accepted);
    let err = verify(&Evidence::Nitro(prod), &Collateral::default(), at("2025-01-06T20:00:00Z")).expect_err("later");
    assert!(matches!(err, VerifyError::ExpiredCollateral(_)), "{err}");

    let debug = read("aws-nitro/attestation_debug.b64");
    let ev = Evidence::detect(debug).expect("detected as nitro");
    let c = verify(&ev, &Collateral::default(), at("2024-09-07T14:38:06Z")).expect("crypto OK");
    assert!(c.debug, "PCR0..2 are zero");
    assert!(!check(&no_debug_any(), &c, 0, None).accepted);
}

// ---- Mutation: every signed region, every certificate, signed collateral ----

/// Deterministic positions: all of `range` when small, else `n` spread by a fixed-seed xorshift.
fn positions(range: std::ops::Range<usize>, n: usize) -> Vec<usize> {
    if range.len() <= n {
        return range.collect();
    }
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ range.start as u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            range.start + (x % range.len() as u64) as usize
        })
        .collect()
}

fn assert_all_fail(
    what: &str,
    base: &[u8],
    places: Vec<usize>,
    mut run: impl FnMut(Vec<u8>) -> Result<Claims, VerifyError>,
) {
    for i in places {
        let mut m = base.to_vec();
        m[i] ^= 0x01;
        assert!(run(m).is_err(), "{what}: flipping byte {i} went unnoticed");
    }
}

/// The signed bytes of a quote after its body: the binary signature data up to the embedded PEM
/// chain, then each certificate's base64 body (signed by its issuer, or pinned for the root).
/// PEM markers, line breaks and the padding after the chain are covered by no signature.
fn signed_tail(q: &[u8], body_end: usize) -> Vec<usize> {
    let find = |from: usize, pat: &[u8]| q[from..].windows(pat.len()).position(|w| w == pat).map(|p| p + from);
    let begin: &[u8] = b"-----BEGIN CERTIFICATE-----";
    let first = find(0, begin).expect("embedded chain");
    let mut out: Vec<usize> = (body_end..first).collect();
    let mut from = first;
    while let Some(b) = find(from, begin) {
        let start = b + begin.len();
        let end = find(start, b"-----END").expect("end marker");
        out.extend((start..end).filter(|&i| !q[i].is_ascii_whitespace()));
        from = end;
    }
    out
}

#[test]
fn flipping_any_signed_byte_of_a_dcap_quote_fails() {
    for (q, dir, t) in [
        ("sgx-dcap-v3/quote.dat", "sgx-dcap-v3", JULY_2025),
        ("tdx-v4/quote.dat", "tdx-v4", JULY_2025),
        ("tdx-v5/quote_uptodate.dat", "tdx-v5", "2026-03-01T00:00:00Z"),
        ("tdx-v4-2023/quote_debug_td.dat", "tdx-v4-2023", "2023-07-01T01:00:00Z"),
    ] {
        let quote = read(q);
        let coll = dcap_coll(dir);
        let now = at(t);
        // Header and body: every byte. The rest (signature, QE report, certificates): a sample.
        let body_end = if quote[0] == 5 {
            54 + u32::from_le_bytes(quote[50..54].try_into().expect("size")) as usize
        } else if quote[4] == 0x81 {
            632
        } else {
            432
        };
        let mut places = positions(0..body_end, 120);
        let tail = signed_tail(&quote, body_end);
        places.extend(positions(0..tail.len(), 250).into_iter().map(|i| tail[i]));
        assert_all_fail(q, &quote, places, |m| verify(&Evidence::Dcap(m), &coll, now));
        // Signed collateral: TCB info and QE identity bodies, and their signatures.
        let base = coll.dcap.clone().expect("collateral");
        for i in positions(0..base.tcb_info.len(), 25) {
            let mut c = base.clone();
            let mut b = c.tcb_info.into_bytes();
            b[i] = if b[i] == b'1' { b'2' } else { b'1' };
            c.tcb_info = String::from_utf8_lossy(&b).into_owned();
            let coll = Collateral { dcap: Some(c), ..Default::default() };
            assert!(verify(&Evidence::Dcap(quote.clone()), &coll, now).is_err(), "{q}: tcb_info byte {i}");
        }
        for i in positions(0..base.qe_identity_signature.len(), 8) {
            let mut c = base.clone();
            c.qe_identity_signature[i] ^= 1;
            let coll = Collateral { dcap: Some(c), ..Default::default() };
            assert!(verify(&Evidence::Dcap(quote.clone()), &coll, now).is_err(), "{q}: qe identity signature byte {i}");
        }
    }
}

#[test]
fn flipping_any_signed_byte_of_an_snp_report_or_its_certificates_fails() {
    for (dir, report, vek, chain, crl) in [
        ("milan-virtee", "report.bin", "vcek.der", "milan_cert_chain.pem", Some("milan_crl.pem")),
        ("milan-vlek-trustee", "report.bin", "vlek.der", "milan_vlek_cert_chain.pem", None),
        ("genoa-azure-openpcc", "report.bin", "vcek.pem", "genoa_cert_chain.pem", Some("genoa_crl.pem")),
    ] {
        let (Evidence::SevSnp { report: r, vek: v, .. }, coll) = snp(dir, report, vek, chain, crl) else {
            unreachable!()
        };
        let now = at(JULY_2025);
        // The signed region (0..0x2A0), every byte; the signature, a sample.
        let mut places: Vec<usize> = (0..0x2A0).collect();
        places.extend(positions(0x2A0..0x330, 40));
        assert_all_fail(dir, &r, places, |m| {
            verify(&Evidence::SevSnp { report: m, vek: v.clone(), chain: Vec::new() }, &coll, now)
        });
        // The VEK certificate (DER).
        let vek_der = roots::der_or_pem(&v).expect("der");
        assert_all_fail(&format!("{dir} VEK"), &vek_der, positions(4..vek_der.len(), 60), |m| {
            verify(&Evidence::SevSnp { report: r.clone(), vek: m, chain: Vec::new() }, &coll, now)
        });
        // The intermediate certificate.
        let inter = coll.amd_certs[0].clone();
        assert_all_fail(&format!("{dir} ASK"), &inter, positions(4..inter.len(), 40), |m| {
            let mut c = coll.clone();
            c.amd_certs[0] = m;
            verify(&Evidence::SevSnp { report: r.clone(), vek: v.clone(), chain: Vec::new() }, &c, now)
        });
    }
}

#[test]
fn flipping_any_signed_byte_of_a_nitro_document_fails() {
    let doc = read("aws-nitro/attestation_prod.cose");
    let now = at("2025-01-06T16:07:05Z");
    assert_all_fail("nitro", &doc, positions(1..doc.len(), 400), |m| {
        verify(&Evidence::Nitro(m), &Collateral::default(), now)
    });
}

// ---- The warm verifier: same answers, every signature still checked ----

#[test]
fn warm_equals_cold_and_still_checks_every_piece_of_evidence() {
    use enclava_attest::warm::Verifier;
    /// Name, evidence, collateral, time, the signed region to flip, a time past the window.
    type Case = (String, Evidence, Collateral, u64, std::ops::Range<usize>, &'static str);
    let mut cases: Vec<Case> = Vec::new();
    for (q, dir, t, expired) in [
        ("sgx-dcap-v3/quote.dat", "sgx-dcap-v3", JULY_2025, "2025-07-20T00:00:00Z"),
        ("tdx-v4/quote.dat", "tdx-v4", JULY_2025, "2025-07-20T00:00:00Z"),
        ("tdx-v5/quote_uptodate.dat", "tdx-v5", "2026-03-01T00:00:00Z", "2026-03-21T00:00:00Z"),
    ] {
        let quote = read(q);
        let len = quote.len();
        cases.push((q.into(), Evidence::Dcap(quote), dcap_coll(dir), at(t), 0..len.min(700), expired));
    }
    for (dir, report, vek, chain, crl) in [
        ("milan-virtee", "report.bin", "vcek.der", "milan_cert_chain.pem", Some("milan_crl.pem")),
        ("genoa-azure-openpcc", "hcl_report.bin", "vcek.pem", "genoa_cert_chain.pem", Some("genoa_crl.pem")),
    ] {
        let (ev, coll) = snp(dir, report, vek, chain, crl);
        cases.push((dir.into(), ev, coll, at(JULY_2025), 0..0x2A0, "2026-06-01T00:00:00Z"));
    }
    let doc = read("aws-nitro/attestation_prod.cose");
    let len = doc.len();
    cases.push((
        "nitro".into(),
        Evidence::Nitro(doc),
        Collateral::default(),
        at("2025-01-06T16:07:05Z"),
        1..len,
        "2025-01-06T20:00:00Z",
    ));

    for (name, ev, coll, now, region, expired) in cases {
        let v = Verifier::new();
        let cold = verify(&ev, &coll, now).expect(&name);
        assert_eq!(v.verify(&ev, &coll, now).expect(&name), cold, "{name}: first (filling)");
        assert_eq!(v.verify(&ev, &coll, now).expect(&name), cold, "{name}: warm");
        let bytes = match &ev {
            Evidence::Dcap(b) | Evidence::Nitro(b) | Evidence::AzureVtpm(b) => b.clone(),
            Evidence::SevSnp { report, .. } => report.clone(),
            Evidence::Sim(b) => b.clone(),
        };
        let offset =
            if matches!(&ev, Evidence::SevSnp { report, .. } if report.starts_with(b"HCLA")) { 0x20 } else { 0 };
        for i in positions(region.start + offset..region.end + offset, 150) {
            let mut m = bytes.clone();
            m[i] ^= 1;
            let mutated = match &ev {
                Evidence::Dcap(_) => Evidence::Dcap(m),
                Evidence::Nitro(_) => Evidence::Nitro(m),
                Evidence::AzureVtpm(_) => Evidence::AzureVtpm(m),
                Evidence::SevSnp { vek, .. } => Evidence::SevSnp { report: m, vek: vek.clone(), chain: Vec::new() },
                Evidence::Sim(_) => Evidence::Sim(m),
            };
            assert!(v.verify(&mutated, &coll, now).is_err(), "{name}: warm path missed flipped byte {i}");
        }
        let err = v.verify(&ev, &coll, at(expired)).expect_err("outside the window");
        assert!(matches!(err, VerifyError::ExpiredCollateral(_)), "{name}: {err}");
    }
}

#[test]
fn azure_vtpm_evidence_verifies_with_its_nonce_and_pcrs() {
    let json = read("azure-snp-vtpm/evidence-genoa.json");
    let ev = Evidence::detect(json.clone()).expect("detected");
    assert!(matches!(ev, Evidence::AzureVtpm(_)));
    let coll = amd_coll("genoa_cert_chain.pem", Some("genoa_crl.pem"));
    let c = verify(&ev, &coll, at(JULY_2025)).expect("verifies");
    assert_eq!(c.platform, Platform::SevSnp);
    assert_eq!(
        c.measurement_hex(),
        "f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3706faf814c9e61065768a6ff917c89ae"
    );
    assert_eq!(
        c.raw["tpm_nonce"],
        "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f"
    );
    assert_eq!(c.raw["tpm_pcr0"], "afd689d0bb1c5f36f023fbaf574135f555a28a10c1f6b938d2a25e70c7783338");
    // Tampering with the TPM quote, its signature or a PCR value fails.
    let mut v: serde_json::Value = serde_json::from_slice(&json).expect("json");
    for (field, i) in [("message", 40), ("signature", 100), ("pcrs", 0)] {
        let mut m = v.clone();
        let target = if field == "pcrs" { &mut m["quote"]["pcrs"][0][i] } else { &mut m["quote"][field][i] };
        *target = serde_json::json!((target.as_u64().unwrap_or(0) ^ 1) as u8);
        let bytes = serde_json::to_vec(&m).expect("json");
        assert!(verify(&Evidence::AzureVtpm(bytes), &coll, at(JULY_2025)).is_err(), "{field} tampering went unnoticed");
    }
    v["report"][0x20 + 0x90] = serde_json::json!(0);
    assert!(verify(&Evidence::AzureVtpm(serde_json::to_vec(&v).expect("json")), &coll, at(JULY_2025)).is_err());
}

#[test]
fn warm_cache_keys_keep_certificates_and_crls_apart() {
    use enclava_attest::warm::Verifier;
    let (ev, with_crl) = snp("milan-virtee", "report.bin", "vcek.der", "milan_cert_chain.pem", Some("milan_crl.pem"));
    // The same bytes, but the CRL passed as a certificate: no revocation check happens.
    let mut crl_as_cert = with_crl.clone();
    crl_as_cert.amd_certs.append(&mut crl_as_cert.amd_crls);
    let v = Verifier::new();
    let now = at(JULY_2025);
    assert_eq!(v.verify(&ev, &crl_as_cert, now).expect("verifies").raw["crl_checked"], "false");
    assert_eq!(
        v.verify(&ev, &with_crl, now).expect("verifies").raw["crl_checked"],
        "true",
        "not served from the other entry"
    );
}
