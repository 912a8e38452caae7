//! The farm's client side: [`FarmClient`] (the REST calls of submitters and hosts), the checks a
//! submitter makes before a host sees anything ([`verify_host`]: its evidence verifies, passes the
//! submitter's policy and binds the key and capacity it registered with the farm's nonce), and the
//! sealing of a confidential job ([`seal_job`]: every file under a fresh job key, the job key sealed
//! to each accepted host, the result sealed back to a key only the submitter holds).

use std::collections::BTreeMap;
use std::time::Duration;

use enclava_contracts::farm::{
    Completion, FILE_CONTEXT, FileRef, HostView, JOB_KEY_INFO, JobOutput, JobSpec, JobView, Leased, RESULT_INFO,
    RunResult, SealedBlob,
};
use enclava_core::{Error, ErrorCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

/// The largest answer read (a job file of 32 MiB in base64, with room).
const MAX_ANSWER: usize = 64 << 20;

/// A farm server's REST API, as a submitter (user credential) or a host (host token).
#[derive(Clone, Debug)]
pub struct FarmClient {
    api: crate::rest::RestApi,
}

impl FarmClient {
    /// A client of the server at `url` (`http://host:port`).
    pub fn new(url: &str, token: Option<Zeroizing<String>>) -> FarmClient {
        FarmClient { api: crate::rest::RestApi::new(url, "farm", token, MAX_ANSWER) }
    }

    /// The credential it calls with.
    pub fn token(&self) -> Option<&str> {
        self.api.token()
    }

    /// Uses `token` from now on (a host's after registration).
    pub fn set_token(&mut self, token: Zeroizing<String>) {
        self.api.set_token(token);
    }

    async fn call(&self, method: hyper::Method, path: &str, body: Option<(Vec<u8>, &str)>) -> Result<Vec<u8>, Error> {
        self.api.call(method, path, body).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.api.get(path).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Error> {
        self.api.post(path, body).await
    }

    /// Stores a job file (pinned: kept from collection until unpinned); returns its SHA-256 (hex).
    pub async fn add_file(&self, bytes: Vec<u8>, pin: bool) -> Result<String, Error> {
        let expected = enclava_contracts::farm::sha256_hex(&bytes);
        let path = if pin { "/files?pin=true" } else { "/files" };
        let body = self.call(hyper::Method::POST, path, Some((bytes, "application/octet-stream"))).await?;
        let stored: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Error::internal(format!("the farm's answer: {e}")))?;
        match stored.get("sha256").and_then(|s| s.as_str()) {
            Some(h) if h == expected => Ok(expected),
            _ => Err(Error::new(ErrorCode::Tampered, "the farm stored the file under another hash")),
        }
    }

    /// Measures the bandwidth from the farm server to here: downloads a probe of `bytes` and
    /// times it. Returns bytes per second and how it was measured, in words.
    pub async fn measure_bandwidth(&self, bytes: usize) -> Result<(u64, String), Error> {
        let started = std::time::Instant::now();
        let got = self.call(hyper::Method::GET, &format!("/hosts/probe?bytes={bytes}"), None).await?;
        let took = started.elapsed().max(Duration::from_micros(1));
        let rate = (got.len() as f64 / took.as_secs_f64()) as u64;
        Ok((rate, format!("{} KiB downloaded from the farm server in {} ms", got.len() >> 10, took.as_millis())))
    }

    /// Removes this user's pin on a job file.
    pub async fn unpin(&self, hash: &str) -> Result<(), Error> {
        file_hash(hash)?;
        let _: serde_json::Value = self.post(&format!("/files/{hash}/unpin"), &serde_json::json!({})).await?;
        Ok(())
    }

    /// A job file, checked against its hash.
    pub async fn file(&self, hash: &str) -> Result<Vec<u8>, Error> {
        file_hash(hash)?;
        let bytes = self.call(hyper::Method::GET, &format!("/files/{hash}"), None).await?;
        if enclava_contracts::farm::sha256_hex(&bytes) != hash {
            return Err(Error::new(ErrorCode::Tampered, "the farm sent a file whose hash is not the one asked for"));
        }
        Ok(bytes)
    }

    pub async fn hosts(&self) -> Result<Vec<HostView>, Error> {
        self.get("/hosts").await
    }

    pub async fn submit(&self, spec: &JobSpec) -> Result<JobView, Error> {
        self.post("/jobs", spec).await
    }

    pub async fn jobs(&self) -> Result<Vec<JobView>, Error> {
        self.get("/jobs").await
    }

    pub async fn job(&self, id: &str) -> Result<JobView, Error> {
        self.get(&format!("/jobs/{id}")).await
    }

    pub async fn output(&self, id: &str) -> Result<JobOutput, Error> {
        self.get(&format!("/jobs/{id}/output")).await
    }

    pub async fn cancel(&self, id: &str) -> Result<JobView, Error> {
        self.post(&format!("/jobs/{id}/cancel"), &serde_json::json!({})).await
    }

    /// Waits until job `id` finished (succeeded, failed or cancelled), polling, up to `timeout`.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<JobView, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            let job = self.job(id).await?;
            if !matches!(job.state.as_str(), "queued" | "running") {
                return Ok(job);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(format!("job {id} is still {} after {timeout:?}", job.state)));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    // Host calls.

    pub async fn nonce(&self) -> Result<String, Error> {
        let v: serde_json::Value = self.post("/hosts/nonce", &serde_json::json!({})).await?;
        v.get("nonce").and_then(|n| n.as_str()).map(str::to_owned).ok_or_else(|| Error::internal("no nonce"))
    }

    /// Registers (or re-binds) a host; returns its token and the farm's lease length.
    pub async fn register(
        &self,
        reg: &enclava_contracts::farm::HostRegistration,
    ) -> Result<(Zeroizing<String>, Duration), Error> {
        let v: serde_json::Value = self.post("/hosts/register", reg).await?;
        let token = v.get("token").and_then(|t| t.as_str()).ok_or_else(|| Error::internal("no token"))?;
        let lease = v.get("lease_ms").and_then(|t| t.as_u64()).unwrap_or(10_000).clamp(100, 3_600_000);
        Ok((Zeroizing::new(token.to_owned()), Duration::from_millis(lease)))
    }

    /// Up to `max` jobs placed on this host, waiting up to `wait` for one when none is queued;
    /// jobs whose files are all in `cached` first.
    pub async fn lease(&self, max: u32, wait: Duration, cached: &[String]) -> Result<Vec<Leased>, Error> {
        let body = serde_json::json!({ "max": max, "wait_ms": wait.as_millis() as u64, "cached": cached });
        self.post("/hosts/lease", &body).await
    }

    pub async fn renew(&self, id: &str, lease: &str) -> Result<(), Error> {
        let _: serde_json::Value =
            self.post(&format!("/jobs/{id}/renew"), &serde_json::json!({ "lease": lease })).await?;
        Ok(())
    }

    pub async fn complete(&self, id: &str, completion: &Completion) -> Result<(), Error> {
        let _: serde_json::Value = self.post(&format!("/jobs/{id}/complete"), completion).await?;
        Ok(())
    }
}

/// Checks a farm host before a confidential job is sealed to it: its evidence verifies, passes
/// `policy` at `now`, and binds the key and capacity it registered with the farm's nonce.
pub async fn verify_host(
    host: &HostView,
    policy: &enclava_attest::Policy,
    verifier: &enclava_collateral::EvidenceVerifier,
    now: u64,
) -> Result<enclava_attest::Claims, Vec<String>> {
    if host.evidence.is_empty() {
        return Err(vec![format!("it cannot attest (platform {}): {}", host.platform, host.status)]);
    }
    let key = enclava_contracts::farm::host_binding_key(&host.pubkey, &host.capacity);
    let label = enclava_attest::binding::FARM_HOST;
    let claims = verifier.judge(policy, &host.evidence, label, &key, host.nonce.as_bytes(), now).await?;
    if claims.platform.as_str() != host.platform {
        return Err(vec![format!("it says platform {} but its evidence is {}", host.platform, claims.platform)]);
    }
    Ok(claims)
}

/// A confidential job's files, sealed on the submitter's side, and what the submitter keeps.
pub struct SealedJob {
    /// The files to store (sealed under the job key), by their hash.
    pub files: Vec<(String, Vec<u8>)>,
    /// The seed of the key the result is sealed to ([`enclava_seal::KeyPair::from_seed`]): keep
    /// it to open the result.
    pub result_seed: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SealedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedJob").field("files", &self.files.len()).finish_non_exhaustive()
    }
}

/// Seals confidential job `spec` (its id, kind, security and limits already set) for `hosts`
/// (id → the public key their evidence binds): a fresh job key seals the program, the arguments,
/// the standard input and every input; the spec gets their hashes and a fresh result key; then
/// the job key is sealed to each host under [`JobSpec::key_aad`], so it opens for this exact spec
/// only.
pub fn seal_job(
    spec: &mut JobSpec,
    program: &[u8],
    args: &[String],
    stdin: Option<&[u8]>,
    inputs: &[(&str, &[u8])],
    hosts: &[(&str, &[u8])],
) -> Result<SealedJob, Error> {
    let seal_err = |e: enclava_seal::SealError| Error::internal(format!("cannot seal the job: {e}"));
    let mut key = Zeroizing::new([0u8; 32]);
    rand::fill(&mut key[..]);
    let mut files = Vec::new();
    let mut store = |bytes: &[u8]| -> Result<String, Error> {
        let sealed = enclava_seal::symmetric::seal_shared(&key, FILE_CONTEXT, b"", bytes).map_err(seal_err)?;
        let hash = enclava_contracts::farm::sha256_hex(&sealed);
        files.push((hash.clone(), sealed));
        Ok(hash)
    };
    spec.program = store(program)?;
    spec.args = Vec::new();
    spec.args_file = if args.is_empty() {
        None
    } else {
        let list = Zeroizing::new(serde_json::to_vec(args).map_err(|e| Error::internal(e.to_string()))?);
        Some(store(&list)?)
    };
    spec.stdin = stdin.map(&mut store).transpose()?;
    let mut named = Vec::new();
    for (name, bytes) in inputs {
        named.push(FileRef { name: name.to_string(), sha256: store(bytes)? });
    }
    spec.inputs = named;
    let mut result_seed = Zeroizing::new([0u8; 32]);
    rand::fill(&mut result_seed[..]);
    spec.result_key = enclava_seal::KeyPair::from_seed(&result_seed).public().to_vec();
    spec.key_wraps = BTreeMap::new();
    let aad = spec.key_aad();
    let mut wraps = BTreeMap::new();
    for (host, public) in hosts {
        let s = enclava_seal::seal(public, JOB_KEY_INFO, &aad, &key[..]).map_err(seal_err)?;
        wraps.insert(host.to_string(), SealedBlob { enc: s.enc, ciphertext: s.ciphertext });
    }
    spec.key_wraps = wraps;
    Ok(SealedJob { files, result_seed })
}

/// Opens a stored result: a confidential job's with the submitter's result key.
pub fn open_result(id: &str, stored: &[u8], result_key: Option<&enclava_seal::KeyPair>) -> Result<RunResult, Error> {
    let bad = |what: String| Error::new(ErrorCode::Tampered, what);
    let plain: Zeroizing<Vec<u8>> = match result_key {
        None => Zeroizing::new(stored.to_vec()),
        Some(k) => {
            let blob: SealedBlob =
                serde_json::from_slice(stored).map_err(|e| bad(format!("the sealed result is not one: {e}")))?;
            let sealed = enclava_seal::Sealed { enc: blob.enc, ciphertext: blob.ciphertext };
            k.open(RESULT_INFO, id.as_bytes(), &sealed).map_err(|_| {
                bad("the result does not open with this job's key: it was changed or is another job's".into())
            })?
        }
    };
    serde_json::from_slice(&plain).map_err(|e| bad(format!("the result is not a result: {e}")))
}

/// Refuses what is not a file hash before it goes into a URL.
fn file_hash(hash: &str) -> Result<(), Error> {
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(Error::invalid(format!("{} is not a file hash (64 lowercase hex digits)", enclava_core::text::quote(hash))))
    }
}

/// A job ready to submit: its spec (sealed for a confidential job), the files it names, and
/// what its submitter keeps (keep the result seed before submitting: without it a confidential
/// result never opens).
pub struct Prepared {
    pub spec: JobSpec,
    pub files: Vec<(String, Vec<u8>)>,
    pub program_sha256: String,
    pub input_sha256: String,
    pub result_seed: Option<Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("id", &self.spec.id).field("files", &self.files.len()).finish_non_exhaustive()
    }
}

impl Prepared {
    fn submitted(self, view: JobView) -> Submitted {
        Submitted {
            view,
            program_sha256: self.program_sha256,
            input_sha256: self.input_sha256,
            result_seed: self.result_seed,
        }
    }
}

/// Prepares a job under a fresh id: for a confidential one, every file sealed under a fresh job
/// key sealed to each of `hosts` (those that passed the submitter's policy); for a plaintext one,
/// the files as they are.
pub fn prepare(s: &Submission<'_>, hosts: &[HostView]) -> Result<Prepared, Error> {
    use enclava_contracts::farm::Security;
    let program_sha256 = enclava_contracts::farm::sha256_hex(s.program);
    let input_sha256 = enclava_contracts::farm::inputs_digest(s.stdin.unwrap_or_default(), s.inputs);
    let mut spec = JobSpec {
        id: new_job_id(),
        kind: s.kind.to_owned(),
        security: s.security,
        program: String::new(),
        rootfs: s.rootfs.map(str::to_owned),
        args: Vec::new(),
        args_file: None,
        stdin: None,
        inputs: Vec::new(),
        cpu: s.cpu,
        memory_bytes: s.memory_bytes,
        timeout_ms: s.timeout.as_millis().max(1) as u64,
        key_wraps: BTreeMap::new(),
        result_key: Vec::new(),
    };
    let (files, result_seed) = match s.security {
        Security::Confidential => {
            if hosts.is_empty() {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    "no host passed the policy: nothing could run it",
                ));
            }
            let keys: Vec<(&str, &[u8])> = hosts.iter().map(|h| (h.id.as_str(), h.pubkey.as_slice())).collect();
            let sealed = seal_job(&mut spec, s.program, s.args, s.stdin, s.inputs, &keys)?;
            (sealed.files, Some(sealed.result_seed))
        }
        Security::Plaintext => {
            // Stored as they are: each file's hash is its plaintext's.
            let mut files = vec![(program_sha256.clone(), s.program.to_vec())];
            let mut keep = |b: &[u8]| {
                let hash = enclava_contracts::farm::sha256_hex(b);
                files.push((hash.clone(), b.to_vec()));
                hash
            };
            spec.program = program_sha256.clone();
            spec.args = s.args.to_vec();
            spec.stdin = s.stdin.map(&mut keep);
            spec.inputs =
                s.inputs.iter().map(|(name, b)| FileRef { name: name.to_string(), sha256: keep(b) }).collect();
            (files, None)
        }
    };
    spec.validate().map_err(Error::invalid)?;
    Ok(Prepared { spec, files, program_sha256, input_sha256, result_seed })
}

/// A new job id (32 hex digits).
pub fn new_job_id() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    hex::encode(b)
}

/// A job to submit, before any sealing.
#[derive(Clone, Copy)]
pub struct Submission<'a> {
    /// `wasm` or `process`.
    pub kind: &'a str,
    pub security: enclava_contracts::farm::Security,
    /// The Wasm module, or the command run by `/bin/sh -c`.
    pub program: &'a [u8],
    pub stdin: Option<&'a [u8]>,
    pub inputs: &'a [(&'a str, &'a [u8])],
    pub args: &'a [String],
    pub rootfs: Option<&'a str>,
    pub cpu: f64,
    pub memory_bytes: u64,
    pub timeout: Duration,
}

impl std::fmt::Debug for Submission<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission").field("kind", &self.kind).field("security", &self.security).finish_non_exhaustive()
    }
}

/// A submitted job and what its submitter keeps to check and open its result.
pub struct Submitted {
    pub view: JobView,
    /// The digests its receipt must carry.
    pub program_sha256: String,
    pub input_sha256: String,
    /// For a confidential job: the seed of the key its result is sealed to.
    pub result_seed: Option<Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for Submitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitted").field("view", &self.view).finish_non_exhaustive()
    }
}

/// The online hosts that pass `policy` (for a confidential job) and could hold a job for executor
/// `kind` (`wasm`, `confidential-vm`, …) with `cpu` cores and `memory` bytes; and every other
/// host with why it was refused.
pub async fn accepted_hosts(
    hosts: &[HostView],
    policy: &enclava_attest::Policy,
    verifier: &enclava_collateral::EvidenceVerifier,
    now: u64,
    kind: &str,
    cpu: f64,
    memory: u64,
) -> (Vec<HostView>, Vec<(String, Vec<String>)>) {
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for h in hosts {
        let capacity: Option<enclava_contracts::farm::HostCapacity> = serde_json::from_str(&h.capacity).ok();
        let fits = capacity.as_ref().is_some_and(|c| {
            c.kinds.iter().any(|k| k == kind) && c.offer_cores + 1e-9 >= cpu && c.offer_memory_bytes >= memory
        });
        if !h.online {
            refused.push((h.id.clone(), vec!["it is offline".into()]));
        } else if !fits {
            refused
                .push((h.id.clone(), vec![format!("it offers no {kind} job of {cpu} cores and {} MiB", memory >> 20)]));
        } else {
            match verify_host(h, policy, verifier, now).await {
                Ok(_) => ok.push(h.clone()),
                Err(reasons) => refused.push((h.id.clone(), reasons)),
            }
        }
    }
    (ok, refused)
}

impl FarmClient {
    /// Uploads a job's files (sealed under a fresh job key for a confidential job, the key sealed
    /// to each of `hosts`) and submits it.
    pub async fn submit_job(&self, s: &Submission<'_>, hosts: &[HostView]) -> Result<Submitted, Error> {
        let p = prepare(s, hosts)?;
        self.upload(&p.files).await?;
        let view = self.submit(&p.spec).await?;
        Ok(p.submitted(view))
    }

    /// Stores files (each once), unpinned.
    pub async fn upload(&self, files: &[(String, Vec<u8>)]) -> Result<(), Error> {
        let mut seen = std::collections::BTreeSet::new();
        for (hash, bytes) in files {
            if seen.insert(hash.as_str()) {
                self.add_file(bytes.clone(), false).await?;
            }
        }
        Ok(())
    }

    /// Submits prepared jobs in batches of up to 256: their files uploaded once each, then each
    /// batch in one request. Answers in order, each job's own.
    pub async fn submit_prepared(&self, jobs: Vec<Prepared>) -> Result<Vec<Result<Submitted, Error>>, Error> {
        let files: Vec<(String, Vec<u8>)> = jobs.iter().flat_map(|p| p.files.iter().cloned()).collect();
        self.upload(&files).await?;
        let mut out = Vec::with_capacity(jobs.len());
        let mut jobs = jobs.into_iter().peekable();
        while jobs.peek().is_some() {
            let chunk: Vec<Prepared> = jobs.by_ref().take(256).collect();
            let specs: Vec<&JobSpec> = chunk.iter().map(|p| &p.spec).collect();
            let answers: Vec<enclava_contracts::farm::BatchItem> = self.post("/jobs/batch", &specs).await?;
            if answers.len() != chunk.len() {
                return Err(Error::internal("the farm answered a batch with another number of jobs"));
            }
            for (p, a) in chunk.into_iter().zip(answers) {
                out.push(match (a.view, a.error) {
                    (Some(view), _) => Ok(p.submitted(view)),
                    (None, Some(e)) => Err(Error::from(e)),
                    (None, None) => Err(Error::internal("the farm answered a job with neither a job nor an error")),
                });
            }
        }
        Ok(out)
    }

    /// A finished job's stored output, and its result opened (with the result key's seed for a
    /// confidential job). Refuses an output whose digest is not the receipt's.
    pub async fn result(&self, id: &str, seed: Option<&[u8; 32]>) -> Result<(JobOutput, RunResult), Error> {
        let out = self.output(id).await?;
        let receipt: enclava_contracts::farm::Receipt = serde_json::from_str(&out.receipt.receipt)
            .map_err(|e| Error::new(ErrorCode::Tampered, format!("the receipt is not a receipt: {e}")))?;
        if receipt.output_sha256 != enclava_contracts::farm::sha256_hex(&out.result) {
            return Err(Error::new(ErrorCode::Tampered, "the stored output is not the one the host's receipt names"));
        }
        let key = seed.map(enclava_seal::KeyPair::from_seed);
        let result = open_result(id, &out.result, key.as_ref())?;
        Ok((out, result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enclava_contracts::farm::Security;

    fn spec() -> JobSpec {
        JobSpec {
            id: new_job_id(),
            kind: "wasm".into(),
            security: Security::Confidential,
            program: String::new(),
            rootfs: None,
            args: Vec::new(),
            args_file: None,
            stdin: None,
            inputs: Vec::new(),
            cpu: 1.0,
            memory_bytes: 64 << 20,
            timeout_ms: 1000,
            key_wraps: BTreeMap::new(),
            result_key: Vec::new(),
        }
    }

    fn opens(spec: &JobSpec, host: &enclava_seal::KeyPair) -> bool {
        let wrap = &spec.key_wraps["h1"];
        let sealed = enclava_seal::Sealed { enc: wrap.enc.clone(), ciphertext: wrap.ciphertext.clone() };
        host.open(JOB_KEY_INFO, &spec.key_aad(), &sealed).is_ok()
    }

    #[test]
    fn the_job_key_opens_only_for_the_spec_it_was_sealed_with() {
        let host = enclava_seal::KeyPair::generate();
        let mut s = spec();
        let args = vec!["--secret".to_owned(), "hunter2".into()];
        seal_job(&mut s, b"\0asm", &args, Some(b"in"), &[("a.csv", b"1,2")], &[("h1", host.public())]).expect("seal");
        s.validate().expect("a sealed job is valid");
        assert!(s.args.is_empty(), "arguments are never sent readable");
        assert!(s.args_file.is_some());
        assert!(opens(&s, &host));
        // Whatever the server changes, the key no longer opens.
        let mut swapped = s.clone();
        swapped.result_key = enclava_seal::KeyPair::generate().public().to_vec();
        assert!(!opens(&swapped, &host), "a swapped result key");
        let mut other = s.clone();
        other.inputs[0].sha256 = s.program.clone();
        assert!(!opens(&other, &host), "a swapped input");
        let mut bigger = s.clone();
        bigger.timeout_ms += 1;
        assert!(!opens(&bigger, &host), "changed limits");
        // More hosts added to the wraps do not change what the key is bound to.
        let mut more = s.clone();
        more.key_wraps.insert("h2".into(), more.key_wraps["h1"].clone());
        assert!(opens(&more, &host));
    }

    #[test]
    fn confidential_arguments_in_the_clear_are_refused() {
        let host = enclava_seal::KeyPair::generate();
        let mut s = spec();
        seal_job(&mut s, b"\0asm", &[], None, &[], &[("h1", host.public())]).expect("seal");
        s.args = vec!["visible".into()];
        assert!(s.validate().expect_err("refused").contains("sealed"));
    }
}
