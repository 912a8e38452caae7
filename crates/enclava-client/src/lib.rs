//! The client library: talks to the enclave manager to find enclaves (seed's `FindEnclave`) and
//! list them, verifies a found enclave before anything is sent to it (seed note 3), and runs sealed
//! inference ([`infer::infer`]); talks to the key broker's REST API ([`keys::KeysClient`]) and
//! uploads models ([`model::upload`]).

pub mod farm;
pub mod fed;
pub mod infer;
pub mod keys;
pub mod model;
pub mod pools;
pub mod rest;

use std::time::Duration;

use enclava_contracts::discovery::v1 as pb;
use pb::enclave_manager_client::EnclaveManagerClient;
use tonic::transport::{Channel, Endpoint};

pub use pb::{FindEnclaveRequest, FindEnclaveResponse, ListEnclavesRequest, ListEnclavesResponse};

/// What can go wrong asking the manager.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the enclave manager at {url}: {reason}. Is `enclava server` running there? (--server, ENCLAVA_SERVER)"
    )]
    Connect { url: String, reason: String },
    /// A refusal, with the same code REST and the node would give.
    #[error("the enclave manager refused the request ({}): {}", .0.code, .0.message)]
    Refused(enclava_core::Error),
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Refused(s.into())
    }
}

/// A connection to an enclave manager.
#[derive(Debug, Clone)]
pub struct ManagerClient {
    inner: EnclaveManagerClient<Channel>,
}

impl ManagerClient {
    /// Connects to `url` (`http://host:port`).
    pub async fn connect(url: &str) -> Result<ManagerClient, ClientError> {
        Ok(ManagerClient { inner: EnclaveManagerClient::new(channel(url).await?) })
    }

    /// Asks for live enclaves.
    pub async fn find(&mut self, req: FindEnclaveRequest) -> Result<FindEnclaveResponse, ClientError> {
        Ok(self.inner.find_enclave(req).await?.into_inner())
    }

    /// Lists one page of enclaves.
    pub async fn list(&mut self, req: ListEnclavesRequest) -> Result<ListEnclavesResponse, ClientError> {
        Ok(self.inner.list_enclaves(req).await?.into_inner())
    }
}

/// A gRPC channel to `url` (`http://host:port`) with the client's timeouts.
pub(crate) async fn channel(url: &str) -> Result<Channel, ClientError> {
    let err = |reason: String| ClientError::Connect { url: url.to_owned(), reason };
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| err(format!("not a URL ({e})")))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    endpoint.connect().await.map_err(|e| err(source_chain(&e)))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What a submitter knows of the job a receipt must be for. A receipt carries no nonce, so a real
/// receipt for another job verifies on its own: name the job, and what ran on what, to refuse it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceiptExpectations<'a> {
    pub job: Option<&'a str>,
    pub program_sha256: Option<&'a str>,
    pub input_sha256: Option<&'a str>,
    /// The output received (its SHA-256 and length must be the receipt's).
    pub output: Option<&'a [u8]>,
}

/// Checks a host's signed receipt before it is believed: the evidence verifies (with the same
/// verifier as enclaves), passes `policy`, and binds exactly these receipt bytes; the receipt names
/// the platform the evidence proves; and it is for the job, program, input and output `expect`
/// names. A receipt or output changed by one byte is refused, with every reason.
pub async fn verify_receipt(
    signed: &enclava_contracts::farm::SignedReceipt,
    policy: &enclava_attest::Policy,
    verifier: &enclava_collateral::EvidenceVerifier,
    now: u64,
    expect: &ReceiptExpectations<'_>,
) -> Result<(enclava_contracts::farm::Receipt, enclava_attest::Claims), Vec<String>> {
    use enclava_attest::{Evidence, binding, policy::check};
    let receipt: enclava_contracts::farm::Receipt =
        serde_json::from_str(&signed.receipt).map_err(|e| vec![format!("the receipt is not a receipt: {e}")])?;
    if signed.evidence.is_empty() {
        return Err(vec![format!(
            "the host cannot attest (platform {}): this receipt is its word only, nothing vouches for it",
            receipt.platform
        )]);
    }
    let evidence = Evidence::detect(signed.evidence.clone()).map_err(|e| vec![e.to_string()])?;
    if policy.rules(evidence.platform()).is_none() {
        return Err(vec![format!("platform {} is not allowed by this policy", evidence.platform())]);
    }
    let sim_root = policy.sim_root().map_err(|e| vec![e])?;
    let claims = verifier.verify(&evidence, sim_root, now).await.map_err(|e| vec![e.to_string()])?;
    let bound = binding::receipt(signed.receipt.as_bytes());
    let verdict = check(policy, &claims, now, Some(&bound));
    let mut failures = verdict.failures;
    if claims.platform.as_str() != receipt.platform {
        failures
            .push(format!("the receipt says platform {} but its evidence is {}", receipt.platform, claims.platform));
    }
    if receipt.version != 1 {
        failures.push(format!("receipt version {} is not one this client reads (1)", receipt.version));
    }
    for (what, expected, actual) in [
        ("job", expect.job, &receipt.job),
        ("program", expect.program_sha256, &receipt.program_sha256),
        ("input", expect.input_sha256, &receipt.input_sha256),
    ] {
        if let Some(e) = expected
            && e != actual
        {
            failures.push(format!(
                "the receipt is for {what} {} but {} was expected",
                enclava_core::text::quote(actual),
                enclava_core::text::quote(e)
            ));
        }
    }
    if let Some(out) = expect.output {
        let actual = enclava_contracts::farm::sha256_hex(out);
        if out.len() as u64 != receipt.bytes_out {
            failures.push(format!("the output is {} bytes but the receipt says {}", out.len(), receipt.bytes_out));
        }
        if actual != receipt.output_sha256 {
            failures.push(format!(
                "the output's SHA-256 is {}… but the receipt says {}…",
                &actual[..16],
                enclava_core::text::quote(&receipt.output_sha256)
            ));
        }
    }
    if failures.is_empty() { Ok((receipt, claims)) } else { Err(failures) }
}

/// Checks a found enclave before anything is sent to it (seed note 3): its published evidence must
/// verify (with the collateral `verifier` gathers for it: Intel's or AMD's for real platforms, over
/// HTTP or from a folder; the sim root from the policy), bind its published key, and satisfy
/// `policy` at `now`. Returns the claims, or every reason it is refused.
pub async fn verify_enclave(
    info: &pb::EnclaveInfo,
    policy: &enclava_attest::Policy,
    verifier: &enclava_collateral::EvidenceVerifier,
    now: u64,
) -> Result<enclava_attest::Claims, Vec<String>> {
    use enclava_attest::{Evidence, binding, policy::check};
    if info.attestation.is_empty() {
        return Err(vec!["it publishes no evidence".into()]);
    }
    let evidence = Evidence::detect(info.attestation.clone()).map_err(|e| vec![e.to_string()])?;
    if policy.rules(evidence.platform()).is_none() {
        let allowed: Vec<&str> = policy.platforms().into_iter().map(enclava_attest::Platform::as_str).collect();
        return Err(vec![format!(
            "platform {} is not allowed by this policy (it allows {})",
            evidence.platform(),
            allowed.join(", ")
        )]);
    }
    let sim_root = policy.sim_root().map_err(|e| vec![e])?;
    let claims = verifier.verify(&evidence, sim_root, now).await.map_err(|e| vec![e.to_string()])?;
    let bound = binding::report_data(binding::NODE_KEY, &info.pubkey, None);
    let verdict = check(policy, &claims, now, Some(&bound));
    if !verdict.accepted {
        return Err(verdict.failures);
    }
    if claims.measurement_hex() != info.policy.as_ref().map(|p| p.mrenclave.as_str()).unwrap_or_default() {
        return Err(vec!["its evidence's measurement differs from the one it registered".into()]);
    }
    Ok(claims)
}
