//! The farm's contracts. A [`Receipt`] is what a host says it ran and what that used; a
//! [`SignedReceipt`] carries it with evidence from the host's TEE whose report data binds the
//! receipt's exact bytes (label `enclava/receipt`), so a submitter checks it with the same verifier
//! and policy as any enclave, and a receipt or output changed by one byte is refused.

use serde::{Deserialize, Serialize};

/// What a host ran for a job, and what it used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Format version (1).
    pub version: u32,
    pub job: String,
    /// The host's instance id and platform.
    pub host: String,
    pub platform: String,
    /// The executor (`wasm`, `process`) and the isolation it gives, in words.
    pub executor: String,
    pub isolation: String,
    /// SHA-256 (hex) of what ran, of its input and of its output.
    pub program_sha256: String,
    pub input_sha256: String,
    pub output_sha256: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Deterministic work units (Wasm fuel; 0 where there are none).
    pub fuel: u64,
    pub wall_ms: u64,
    pub peak_memory_bytes: u64,
    /// How it ended, in words (`exited with status 0`).
    pub outcome: String,
    /// When it was issued (Unix seconds).
    pub issued_at: u64,
}

/// A receipt as signed: its JSON exactly as bound into the evidence, and the evidence (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    pub receipt: String,
    #[serde(with = "crate::base64_bytes")]
    pub evidence: Vec<u8>,
}

/// SHA-256 (hex) as receipts name content.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// What a submitter asks of a job's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Only on a host whose evidence passed the submitter's policy; inputs sealed to its key.
    Confidential,
    /// On any host, which can see everything.
    Plaintext,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Confidential => "confidential",
            Security::Plaintext => "plaintext",
        }
    }
}

/// A platform's security status in words (GPUX's labels), as every listing shows it.
pub fn security_status(platform: &str) -> &'static str {
    match platform {
        "sgx" | "tdx" | "sev-snp" | "nitro" | "azure-sev-snp" | "azure-tdx" => "Confidential",
        "sim" => "Simulated TEE: testing only",
        "plaintext" => "Not confidential: the host can see everything",
        _ => "Unknown platform: treat it as not confidential",
    }
}

/// A job file by name and content hash (SHA-256, hex, of the bytes as stored: ciphertext for a
/// confidential job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    pub name: String,
    pub sha256: String,
}

/// HPKE output as JSON: the encapsulated key and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedBlob {
    #[serde(with = "crate::base64_bytes")]
    pub enc: Vec<u8>,
    #[serde(with = "crate::base64_bytes")]
    pub ciphertext: Vec<u8>,
}

/// HPKE `info` for a job key sealed to a host (the AAD is [`JobSpec::key_aad`]).
pub const JOB_KEY_INFO: &[u8] = b"enclava/farm/job-key/v1";
/// The context job files are sealed under with the job key.
pub const FILE_CONTEXT: &[u8] = b"enclava/farm/file/v1";
/// HPKE `info` for a result sealed to the submitter (the job id is the AAD).
pub const RESULT_INFO: &[u8] = b"enclava/farm/result/v1";

/// A job as submitted. Its id is the submitter's (so a retried submit is the same job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// 32 lowercase hex digits.
    pub id: String,
    /// The executor: `wasm`, `process` (a sandboxed process) or `vm` (a VM: plain, or for a
    /// confidential job SEV-SNP/TDX).
    pub kind: String,
    pub security: Security,
    /// The program file: a Wasm module, or for `process` and `vm` the shell command run by
    /// `/bin/sh -c`.
    pub program: String,
    /// For `process`: the root filesystem (one the host offers by name).
    #[serde(default)]
    pub rootfs: Option<String>,
    /// Plaintext jobs' arguments (a confidential job's are sealed, in `args_file`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Confidential jobs: the arguments, a JSON list of strings in a job file sealed like the
    /// others, so the server never sees them.
    #[serde(default)]
    pub args_file: Option<String>,
    /// The file given as standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Files put read-only in the job's `/in` folder.
    #[serde(default)]
    pub inputs: Vec<FileRef>,
    /// Cores and bytes of memory the job is placed with.
    pub cpu: f64,
    pub memory_bytes: u64,
    pub timeout_ms: u64,
    /// Confidential jobs: the job key, sealed to each host the submitter's policy accepted (host
    /// id → sealed key). The job is placed only on one of these.
    #[serde(default)]
    pub key_wraps: std::collections::BTreeMap<String, SealedBlob>,
    /// Confidential jobs: the submitter's public key the result is sealed to.
    #[serde(default, with = "crate::base64_bytes")]
    pub result_key: Vec<u8>,
}

impl JobSpec {
    /// The executor a host must offer for it: a confidential `vm` job needs `confidential-vm`.
    pub fn executor(&self) -> &str {
        if self.kind == "vm" && self.security == Security::Confidential { "confidential-vm" } else { &self.kind }
    }

    /// Every file the job names, program first.
    pub fn files(&self) -> Vec<&str> {
        let mut out = vec![self.program.as_str()];
        out.extend(self.args_file.as_deref());
        out.extend(self.stdin.as_deref());
        out.extend(self.inputs.iter().map(|f| f.sha256.as_str()));
        out
    }

    /// Checks what a server can check without opening anything.
    pub fn validate(&self) -> Result<(), String> {
        let hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if !hex(&self.id, 32) {
            return Err("a job id is 32 lowercase hex digits".into());
        }
        if !matches!(self.kind.as_str(), "wasm" | "process" | "vm") {
            return Err(format!("unknown job kind {}: use wasm, process or vm", enclava_core::text::quote(&self.kind)));
        }
        if self.kind == "process" && self.security == Security::Confidential {
            return Err(
                "a sandboxed process is never confidential (the host sees everything): submit it as plaintext".into()
            );
        }
        for f in self.files() {
            if !hex(f, 64) {
                return Err(format!("{} is not a file hash (64 lowercase hex digits)", enclava_core::text::quote(f)));
            }
        }
        for f in &self.inputs {
            let ok = !f.name.is_empty()
                && f.name.len() <= 128
                && f.name != "."
                && f.name != ".."
                && f.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(format!(
                    "input name {} must be 1-128 letters, digits, '.', '_' or '-'",
                    enclava_core::text::quote(&f.name)
                ));
            }
        }
        check_args(&self.args)?;
        if !(self.cpu > 0.0 && self.cpu <= 1024.0) {
            return Err("cpu must be more than 0 cores".into());
        }
        if self.memory_bytes < (1 << 20) || self.timeout_ms == 0 || self.timeout_ms > 24 * 3600 * 1000 {
            return Err("memory must be at least 1 MiB and the timeout between 1 ms and 24 h".into());
        }
        match self.security {
            Security::Confidential => {
                if self.key_wraps.is_empty() {
                    return Err("a confidential job names no host its policy accepted: nothing can run it".into());
                }
                if self.result_key.len() != 32 {
                    return Err("a confidential job needs the 32-byte key its result is sealed to".into());
                }
                if !self.args.is_empty() {
                    return Err(
                        "a confidential job's arguments are sealed in its args_file, never sent readable".into()
                    );
                }
            }
            Security::Plaintext => {
                if !self.key_wraps.is_empty() || !self.result_key.is_empty() || self.args_file.is_some() {
                    return Err("a plaintext job carries no keys and no sealed arguments".into());
                }
            }
        }
        Ok(())
    }

    /// The AAD its job key is sealed under: the job id and the SHA-256 of the whole spec without
    /// the key wraps, so a host opens the key only for the exact job its submitter sealed (the
    /// server cannot swap the result key, a file, the limits or anything else).
    pub fn key_aad(&self) -> Vec<u8> {
        let unwrapped = JobSpec { key_wraps: Default::default(), ..self.clone() };
        let json = serde_json::to_vec(&unwrapped).unwrap_or_default();
        let mut aad = self.id.as_bytes().to_vec();
        aad.push(b':');
        aad.extend_from_slice(sha256_hex(&json).as_bytes());
        aad
    }
}

/// At most 256 arguments of 4096 bytes each (a sealed list is held to the same).
pub fn check_args(args: &[String]) -> Result<(), String> {
    if args.len() > 256 || args.iter().any(|a| a.len() > 4096) {
        return Err("at most 256 arguments of 4096 bytes each".into());
    }
    Ok(())
}

/// The digest a receipt's `input_sha256` carries: over the standard input's and each input's
/// plaintext, with their names, so a submitter computes it from what it sent.
pub fn inputs_digest(stdin: &[u8], inputs: &[(&str, &[u8])]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"enclava/farm/inputs/v1\0");
    for (name, bytes) in std::iter::once(("", stdin)).chain(inputs.iter().copied()) {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update(sha2::Sha256::digest(bytes));
    }
    hex::encode(h.finalize())
}

/// One job's answer in a batch submission (`POST /farm/v1/jobs/batch`), in the order submitted:
/// the job, or why it was not accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    #[serde(default)]
    pub view: Option<JobView>,
    #[serde(default)]
    pub error: Option<enclava_core::ErrorBody>,
}

/// What a run produced: the result a host stores (sealed to the submitter for a confidential job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunResult {
    pub success: bool,
    /// How it ended, in words.
    pub outcome: String,
    #[serde(with = "crate::base64_bytes")]
    pub stdout: Vec<u8>,
    #[serde(with = "crate::base64_bytes")]
    pub stderr: Vec<u8>,
}

/// What a host measured and offers, as it binds it into its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostCapacity {
    /// What it offers (placement never exceeds it).
    pub offer_cores: f64,
    pub offer_memory_bytes: u64,
    /// What it measured, and how.
    pub cores: f64,
    pub cores_how: String,
    pub memory_bytes: u64,
    pub memory_how: String,
    pub disk_bytes: u64,
    pub gpus: Vec<String>,
    pub gpus_how: String,
    /// Bytes per second from the farm server to the host, measured by downloading a probe at
    /// start (0: not measured), and how.
    pub bandwidth_bytes_per_s: u64,
    #[serde(default)]
    pub bandwidth_how: String,
    /// Executors it runs, and the root filesystems it offers to `process` jobs.
    pub kinds: Vec<String>,
    pub rootfs: Vec<String>,
}

/// A host registering (and re-binding its capacity): its evidence binds its key, its capacity's
/// exact JSON and the server's nonce ([`host_binding_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRegistration {
    pub id: String,
    pub platform: String,
    pub measurement: String,
    #[serde(with = "crate::base64_bytes")]
    pub pubkey: Vec<u8>,
    /// [`HostCapacity`] as JSON, exactly as bound.
    pub capacity: String,
    pub nonce: String,
    /// Empty on a platform that cannot attest.
    #[serde(with = "crate::base64_bytes")]
    pub evidence: Vec<u8>,
}

/// The "key" a host's evidence binds (label `enclava/farm-host`, with the server's nonce): the
/// SHA-256 of its public key and its capacity JSON, each length-prefixed.
pub fn host_binding_key(pubkey: &[u8], capacity_json: &str) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [pubkey, capacity_json.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// A host as the farm lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    pub id: String,
    pub platform: String,
    /// [`security_status`] of its platform.
    pub status: String,
    pub measurement: String,
    #[serde(with = "crate::base64_bytes")]
    pub pubkey: Vec<u8>,
    pub capacity: String,
    pub nonce: String,
    #[serde(with = "crate::base64_bytes")]
    pub evidence: Vec<u8>,
    /// Seen within the last few seconds.
    pub online: bool,
    pub last_seen_ms: i64,
    pub bound_at_ms: i64,
    /// Jobs running there, and the cores and memory they hold.
    pub running: u64,
    pub cpu_used: f64,
    pub memory_used: u64,
}

/// A job as the farm reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub id: String,
    pub owner: String,
    pub kind: String,
    pub security: Security,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    pub host: Option<String>,
    pub host_platform: Option<String>,
    pub attempts: u32,
    /// Why it is where it is (retries, failures, cancellation), newest last.
    pub reasons: Vec<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A host's answer for one leased job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    pub lease: String,
    pub success: bool,
    /// The stored result: a [`RunResult`] as JSON, or for a confidential job a [`SealedBlob`]
    /// holding it.
    #[serde(with = "crate::base64_bytes")]
    pub result: Vec<u8>,
    pub receipt: SignedReceipt,
}

/// A leased job: the spec, the lease that must accompany renewals and the completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leased {
    pub job: JobSpec,
    pub lease: String,
    pub attempt: u32,
    pub lease_ms: u64,
}

/// A finished job's result and receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutput {
    pub success: bool,
    #[serde(with = "crate::base64_bytes")]
    pub result: Vec<u8>,
    pub receipt: SignedReceipt,
}
