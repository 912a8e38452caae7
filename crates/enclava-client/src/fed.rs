//! A federation server's REST API ([`FedClient`]) and the initiator's side of end-to-end
//! encryption: each organisation's input sealed to that organisation's key and bound to
//! (task, run, organisation) ([`seal_input`]), results opened with the task's result key
//! ([`open_result`]); [`FedClient::run_task`] does the whole round trip.

use std::time::Duration;

use enclava_contracts::farm::SealedBlob;
use enclava_contracts::fed::{
    CollaborationView, CreatedNode, INPUT_INFO, LeasedRun, NewCollaboration, NewNode, NewTask, NodeView, OrgInput,
    OrganisationView, RESULT_INFO, RunBinding, RunDone, RunView, TaskView, run_id,
};
use enclava_core::{Error, ErrorCode};
use zeroize::Zeroizing;

/// The largest answer read.
const MAX_ANSWER: usize = 64 << 20;

/// A federation server's REST API, as a user or a node.
#[derive(Clone, Debug)]
pub struct FedClient {
    api: crate::rest::RestApi,
    /// Verifies nodes' evidence in attested collaborations before anything is sealed to them.
    verifier: std::sync::Arc<enclava_collateral::EvidenceVerifier>,
}

impl FedClient {
    /// A client of the server at `url` (`http://host:port`).
    pub fn new(url: &str, token: Option<Zeroizing<String>>) -> FedClient {
        FedClient { api: crate::rest::RestApi::new(url, "fed", token, MAX_ANSWER), verifier: Default::default() }
    }

    /// Verifies nodes' evidence with `verifier` (one with a collateral source, for hardware TEEs).
    pub fn with_verifier(mut self, verifier: std::sync::Arc<enclava_collateral::EvidenceVerifier>) -> FedClient {
        self.verifier = verifier;
        self
    }

    /// The credential it calls with.
    pub fn token(&self) -> Option<&str> {
        self.api.token()
    }

    pub async fn create_organisation(&self, name: &str) -> Result<OrganisationView, Error> {
        self.api.post("/organisations", &serde_json::json!({ "name": name })).await
    }

    pub async fn organisations(&self) -> Result<Vec<OrganisationView>, Error> {
        self.api.get("/organisations").await
    }

    pub async fn organisation(&self, id: &str) -> Result<OrganisationView, Error> {
        self.api.get(&format!("/organisations/{}", path_part(id)?)).await
    }

    /// Puts `user` in organisation `org` with `roles` (`researcher`, `viewer`, …).
    pub async fn add_member(&self, org: &str, user: &str, roles: &[&str]) -> Result<(), Error> {
        let _: serde_json::Value = self
            .api
            .post(
                &format!("/organisations/{}/members", path_part(org)?),
                &serde_json::json!({ "user": user, "roles": roles }),
            )
            .await?;
        Ok(())
    }

    pub async fn set_public_key(&self, org: &str, key: &[u8]) -> Result<OrganisationView, Error> {
        use base64::Engine;
        let body = serde_json::json!({ "public_key": base64::engine::general_purpose::STANDARD.encode(key) });
        self.api.put(&format!("/organisations/{}/public_key", path_part(org)?), &body).await
    }

    pub async fn create_collaboration(&self, c: &NewCollaboration) -> Result<CollaborationView, Error> {
        self.api.post("/collaborations", c).await
    }

    pub async fn collaborations(&self) -> Result<Vec<CollaborationView>, Error> {
        self.api.get("/collaborations").await
    }

    pub async fn collaboration(&self, id: &str) -> Result<CollaborationView, Error> {
        self.api.get(&format!("/collaborations/{}", path_part(id)?)).await
    }

    pub async fn create_node(&self, n: &NewNode) -> Result<CreatedNode, Error> {
        self.api.post("/nodes", n).await
    }

    pub async fn nodes(&self, collab: Option<&str>) -> Result<Vec<NodeView>, Error> {
        match collab {
            Some(c) => self.api.get(&format!("/nodes?collaboration={}", path_part(c)?)).await,
            None => self.api.get("/nodes").await,
        }
    }

    /// Stores an algorithm; returns its SHA-256.
    pub async fn add_algorithm(&self, bytes: Vec<u8>) -> Result<String, Error> {
        let expected = enclava_contracts::farm::sha256_hex(&bytes);
        let body = self.api.call(hyper::Method::POST, "/algorithms", Some((bytes, "application/octet-stream"))).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Error::internal(format!("the server's answer: {e}")))?;
        match v.get("sha256").and_then(|s| s.as_str()) {
            Some(h) if h == expected => Ok(expected),
            _ => Err(Error::new(ErrorCode::Tampered, "the server stored the algorithm under another hash")),
        }
    }

    /// An algorithm's bytes, checked against its hash.
    pub async fn algorithm(&self, hash: &str) -> Result<Vec<u8>, Error> {
        let bytes = self.api.call(hyper::Method::GET, &format!("/algorithms/{}", path_part(hash)?), None).await?;
        if enclava_contracts::farm::sha256_hex(&bytes) != hash {
            return Err(Error::new(
                ErrorCode::Tampered,
                "the server sent an algorithm whose hash is not the one asked for",
            ));
        }
        Ok(bytes)
    }

    pub async fn create_task(&self, t: &NewTask) -> Result<TaskView, Error> {
        self.api.post("/tasks", t).await
    }

    pub async fn task(&self, id: &str) -> Result<TaskView, Error> {
        self.api.get(&format!("/tasks/{}", path_part(id)?)).await
    }

    pub async fn tasks(&self, collab: &str) -> Result<Vec<TaskView>, Error> {
        self.tasks_page(collab, 100, 0).await
    }

    /// A page of a collaboration's tasks, newest first.
    pub async fn tasks_page(&self, collab: &str, limit: u32, offset: u32) -> Result<Vec<TaskView>, Error> {
        self.api.get(&format!("/tasks?collaboration={}&limit={limit}&offset={offset}", path_part(collab)?)).await
    }

    pub async fn runs(&self, task: &str) -> Result<Vec<RunView>, Error> {
        self.api.get(&format!("/runs?task={}", path_part(task)?)).await
    }

    pub async fn kill(&self, task: &str) -> Result<TaskView, Error> {
        self.api.post(&format!("/tasks/{}/kill", path_part(task)?), &serde_json::json!({})).await
    }

    /// Waits until task `id` ends (completed, failed or killed), up to `timeout`.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<TaskView, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            let t = self.task(id).await?;
            if matches!(t.status.as_str(), "completed" | "failed" | "killed") {
                return Ok(t);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(format!("task {id} is still {} after {timeout:?}", t.status)));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    // The node's calls.

    /// The node this credential belongs to.
    pub async fn me(&self) -> Result<NodeView, Error> {
        self.api.get("/node/me").await
    }

    /// A one-use nonce to bind into the evidence this node attests with.
    pub async fn node_nonce(&self) -> Result<String, Error> {
        let v: serde_json::Value = self.api.post("/node/nonce", &serde_json::json!({})).await?;
        v.get("nonce").and_then(|n| n.as_str()).map(str::to_owned).ok_or_else(|| Error::internal("no nonce"))
    }

    /// Joins (or stays in) an attested collaboration; returns when the admission ends (ms).
    pub async fn attest(&self, a: &enclava_contracts::fed::AttestRequest) -> Result<i64, Error> {
        let v: serde_json::Value = self.api.post("/node/attest", a).await?;
        v.get("until_ms").and_then(|n| n.as_i64()).ok_or_else(|| Error::internal("no admission time"))
    }

    pub async fn lease(&self, max: u32, wait: Duration) -> Result<Vec<LeasedRun>, Error> {
        self.api.post("/node/lease", &serde_json::json!({ "max": max, "wait_ms": wait.as_millis() as u64 })).await
    }

    pub async fn renew(&self, run: &str, lease: &str) -> Result<(), Error> {
        let _: serde_json::Value = self
            .api
            .post(&format!("/node/runs/{}/renew", path_part(run)?), &serde_json::json!({ "lease": lease }))
            .await?;
        Ok(())
    }

    pub async fn complete(&self, run: &str, done: &RunDone) -> Result<(), Error> {
        let _: serde_json::Value = self.api.post(&format!("/node/runs/{}/complete", path_part(run)?), done).await?;
        Ok(())
    }

    /// The whole round trip of an initiator: stores `algorithm`, seals each organisation's input
    /// (JSON, vantage6's `{method, args, kwargs}`) to its key (unless the collaboration is not
    /// encrypted), creates the task and returns it with the seed of its result key.
    ///
    /// In an attested collaboration each input is sealed instead to the key of that
    /// organisation's node, after its evidence verified here under the collaboration's policy and
    /// bound that key to the server's nonce: it opens only inside that node's TEE.
    pub async fn start_task(&self, t: &TaskRequest<'_>) -> Result<(TaskView, Zeroizing<[u8; 32]>), Error> {
        let collab = self.collaboration(t.collaboration).await?;
        // What the server says about the collaboration only ever makes this stricter: inputs are
        // sealed unless the caller chose readable ones, and an attested collaboration's nodes are
        // judged by the caller's policy, never by one the server sends.
        let attested = match (&collab.require_attestation, t.policy) {
            (Some(_), Some(policy)) => Some((policy, self.nodes(Some(&collab.id)).await?)),
            (Some(_), None) => {
                return Err(Error::invalid(
                    "this collaboration requires attestation: give the policy you trust its nodes' evidence to pass",
                ));
            }
            (None, Some(policy)) => Some((policy, self.nodes(Some(&collab.id)).await?)),
            (None, None) => None,
        };
        if t.readable && (collab.encrypted || attested.is_some()) {
            return Err(Error::invalid("this collaboration is encrypted: its inputs are sealed, not readable"));
        }
        // A subtask runs its parent's algorithm, already stored: a node (which may not store
        // algorithms) names it by digest.
        let algorithm = match t.parent {
            Some(_) => enclava_contracts::farm::sha256_hex(t.algorithm),
            None => self.add_algorithm(t.algorithm.to_vec()).await?,
        };
        let id = crate::farm::new_job_id();
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::fill(&mut seed[..]);
        let result_key = enclava_seal::KeyPair::from_seed(&seed).public().to_vec();
        let databases: Vec<String> = t.databases.iter().map(|d| d.to_string()).collect();
        let mut organisations = Vec::new();
        // One listing for every organisation the task names, not one call each.
        let known = self.organisations().await?;
        for (i, (org, input)) in t.inputs.iter().enumerate() {
            let view = known.iter().find(|o| o.id == *org || o.name == *org).cloned().ok_or_else(|| {
                Error::not_found(format!("no organisation {} that you may see", enclava_core::text::quote(org)))
            })?;
            let bytes = Zeroizing::new(serde_json::to_vec(input).map_err(|e| Error::internal(e.to_string()))?);
            let run = run_id(&id, i);
            let binding = RunBinding {
                task: &id,
                run: &run,
                organisation: &view.id,
                collaboration: &collab.id,
                kind: t.kind,
                algorithm: &algorithm,
                databases: &databases,
                result_key: &result_key,
            };
            let sealed = if let Some((policy, nodes)) = &attested {
                Some(seal_input(&self.attested_key(policy, nodes, &view).await?, &binding, &bytes)?)
            } else if t.readable {
                None
            } else {
                if view.public_key.len() != 32 {
                    return Err(Error::new(
                        ErrorCode::FailedPrecondition,
                        format!("organisation {} has no public key yet: start its node first", view.name),
                    ));
                }
                Some(seal_input(&view.public_key, &binding, &bytes)?)
            };
            let plain = sealed.is_none().then(|| String::from_utf8_lossy(&bytes).into_owned());
            organisations.push(OrgInput { organisation: view.id, sealed, plain });
        }
        let task = NewTask {
            id,
            collaboration: collab.id,
            name: t.name.to_owned(),
            kind: t.kind.to_owned(),
            algorithm,
            organisations,
            result_key,
            databases,
            parent: t.parent.map(str::to_owned),
        };
        Ok((self.create_task(&task).await?, seed))
    }

    /// The key of `org`'s node in an attested collaboration, once its evidence passes `policy`
    /// here and binds that key to the server's nonce.
    async fn attested_key(
        &self,
        policy: &enclava_attest::Policy,
        nodes: &[NodeView],
        org: &OrganisationView,
    ) -> Result<Vec<u8>, Error> {
        let node = nodes.iter().find(|n| n.organisation.id == org.id).ok_or_else(|| {
            Error::new(
                ErrorCode::FailedPrecondition,
                format!("organisation {} has no node in this collaboration", org.name),
            )
        })?;
        let Some(a) = &node.attestation else {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "{}'s node is not admitted to this attested collaboration: {}",
                    org.name,
                    node.attestation_failure.as_deref().unwrap_or("it has not attested")
                ),
            ));
        };
        let label = enclava_attest::binding::FED_NODE;
        self.verifier.judge(policy, &a.evidence, label, &a.public_key, a.nonce.as_bytes(), unix_now()).await.map_err(
            |r| {
                Error::new(
                    ErrorCode::FailedPrecondition,
                    format!("{}'s node failed your check of its evidence: {}", org.name, r.join("; ")),
                )
            },
        )?;
        Ok(a.public_key.clone())
    }

    /// Each run's result opened with the task's result seed (`readable`: the task was created with
    /// readable inputs, and its results are readable too), as (organisation id, status, result or
    /// the reasons it has none). A sealed task's result that comes back unsealed is refused. With
    /// `policy` (an attested collaboration), every result must carry its node's receipt, and the
    /// receipt must verify under it for this run, this algorithm and this stored result.
    pub async fn results(
        &self,
        task: &str,
        seed: &[u8; 32],
        readable: bool,
        policy: Option<&enclava_attest::Policy>,
    ) -> Result<Vec<RunOutcome>, Error> {
        let view = self.task(task).await?;
        let runs = self.runs(task).await?;
        let pair = enclava_seal::KeyPair::from_seed(seed);
        let result_key = pair.public().to_vec();
        let key = (!readable).then_some(&pair);
        let mut out = Vec::new();
        for r in runs {
            let result = if r.status == "completed" {
                let binding = RunBinding {
                    task,
                    run: &r.id,
                    organisation: &r.organisation.id,
                    collaboration: &view.collaboration.id,
                    kind: &view.kind,
                    algorithm: &view.algorithm,
                    databases: &view.databases,
                    result_key: &result_key,
                };
                Some(open_result(key, &binding, &r.result)?)
            } else {
                None
            };
            let receipt = match (policy, &r.receipt, r.status == "completed") {
                (Some(policy), Some(signed), true) => {
                    let expect = crate::ReceiptExpectations {
                        job: Some(&r.id),
                        program_sha256: Some(&view.algorithm),
                        input_sha256: None,
                        output: Some(&r.result),
                    };
                    let (receipt, _) = crate::verify_receipt(signed, policy, &self.verifier, unix_now(), &expect)
                        .await
                        .map_err(|why| {
                            Error::new(
                                ErrorCode::Tampered,
                                format!("run {}'s receipt does not verify: {}", r.id, why.join("; ")),
                            )
                        })?;
                    Some(receipt)
                }
                (Some(_), None, true) => {
                    return Err(Error::new(
                        ErrorCode::Tampered,
                        format!("run {} came back without its node's receipt: nothing vouches for it", r.id),
                    ));
                }
                _ => None,
            };
            out.push(RunOutcome {
                run: r.id,
                organisation: r.organisation.id,
                status: r.status,
                result,
                reasons: r.reasons,
                receipt,
            });
        }
        Ok(out)
    }
}

/// vantage6's `v6 test feature-test`, as a sandboxed process algorithm every node runs: its
/// environment, its input, its temporary folder, the databases it was given, and that it cannot
/// reach the network — neither the internet nor the federation server, which its node reaches
/// (`kwargs.probe`). Its result is a JSON object of checks, each true or false.
pub const DIAGNOSTIC: &str = r#"env_ok=false; [ -n "$INPUT_FILE" ] && [ -n "$OUTPUT_FILE" ] && [ -n "$TEMPORARY_FOLDER" ] && env_ok=true
input_ok=false; [ -r "$INPUT_FILE" ] && input_ok=true
tmp_ok=false; ( : > "$TEMPORARY_FOLDER/.probe" ) 2>/dev/null && tmp_ok=true
db_ok=true
for label in $(echo "$DB_LABELS" | tr ',' ' '); do
  var=$(echo "$label" | tr 'a-z-' 'A-Z_')_DATABASE_URI
  uri=$(env | grep "^$var=" | cut -d= -f2-)
  [ -r "$uri" ] || db_ok=false
done
probe=$(sed -n 's/.*"probe": *"\([^"]*\)".*/\1/p' "$INPUT_FILE")
net_isolated=true
for url in "$probe" http://1.1.1.1/; do
  [ -n "$url" ] && wget -q -T 2 -O /dev/null "$url" 2>/dev/null && net_isolated=false
done
printf '{"environment": %s, "input_readable": %s, "temporary_folder_writable": %s, "databases_readable": %s, "network_isolated": %s, "output_writable": true}'   "$env_ok" "$input_ok" "$tmp_ok" "$db_ok" "$net_isolated" > "$OUTPUT_FILE""#;

impl FedClient {
    /// Runs [`DIAGNOSTIC`] at every organisation of `collab` whose node is online (with the
    /// databases `databases`); returns each organisation's checks, or why its run did not end.
    pub async fn test_features(
        &self,
        collab: &str,
        databases: &[&str],
        policy: Option<&enclava_attest::Policy>,
    ) -> Result<Vec<(String, Result<serde_json::Value, String>)>, Error> {
        let nodes = self.nodes(Some(collab)).await?;
        let online: Vec<String> = nodes.iter().filter(|n| n.online).map(|n| n.organisation.id.clone()).collect();
        if online.is_empty() {
            return Err(Error::new(ErrorCode::FailedPrecondition, "no node of this collaboration is online"));
        }
        let probe = format!("{}/health", self.api.root());
        let inputs: Vec<(&str, serde_json::Value)> = online
            .iter()
            .map(|o| (o.as_str(), serde_json::json!({ "method": "base_features", "kwargs": { "probe": probe } })))
            .collect();
        let request = TaskRequest {
            collaboration: collab,
            name: "features",
            kind: "process",
            algorithm: DIAGNOSTIC.as_bytes(),
            inputs: &inputs,
            databases,
            readable: false,
            policy,
            parent: None,
        };
        let (task, seed) = self.start_task(&request).await?;
        self.wait(&task.id, Duration::from_secs(120)).await?;
        let outcomes = self.results(&task.id, &seed, false, policy).await?;
        Ok(outcomes
            .into_iter()
            .map(|o| {
                let checks = match o.result {
                    Some(r) => serde_json::from_slice(&r).map_err(|e| format!("not the diagnostic's output: {e}")),
                    None => Err(format!("{}: {}", o.status, o.reasons.join("; "))),
                };
                (o.organisation, checks)
            })
            .collect())
    }
}

/// What [`FedClient::start_task`] takes.
#[derive(Clone, Copy)]
pub struct TaskRequest<'a> {
    pub collaboration: &'a str,
    pub name: &'a str,
    /// `wasm` or `process`.
    pub kind: &'a str,
    pub algorithm: &'a [u8],
    /// (organisation id or name, its input).
    pub inputs: &'a [(&'a str, serde_json::Value)],
    pub databases: &'a [&'a str],
    /// Send the inputs readable (only in a collaboration that is not encrypted).
    pub readable: bool,
    /// The policy each node's evidence must pass before its input is sealed to it: required in
    /// an attested collaboration (the server's copy of its policy is not trusted).
    pub policy: Option<&'a enclava_attest::Policy>,
    /// The task this one is a subtask of (made by a node for an algorithm it runs).
    pub parent: Option<&'a str>,
}

/// One organisation's run, as its initiator reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// The run's id (`{task}-{i}`).
    pub run: String,
    pub organisation: String,
    pub status: String,
    pub result: Option<Vec<u8>>,
    pub reasons: Vec<String>,
    /// The node's receipt, verified under the initiator's policy (attested collaborations).
    pub receipt: Option<enclava_contracts::farm::Receipt>,
}

impl std::fmt::Debug for TaskRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRequest")
            .field("collaboration", &self.collaboration)
            .field("kind", &self.kind)
            .field("organisations", &self.inputs.len())
            .finish_non_exhaustive()
    }
}

/// Seals one organisation's input to `public` (its key, or its node's attested key), for this
/// run as the initiator asked for it only.
pub fn seal_input(public: &[u8], binding: &RunBinding<'_>, input: &[u8]) -> Result<SealedBlob, Error> {
    let s = enclava_seal::seal(public, INPUT_INFO, &binding.aad(), input)
        .map_err(|e| Error::invalid(format!("cannot seal the input: {e}")))?;
    Ok(SealedBlob { enc: s.enc, ciphertext: s.ciphertext })
}

/// Opens a run's input with its organisation's key. It opens only for the run as its initiator
/// created it (see [`RunBinding`]).
pub fn open_input(key: &enclava_seal::KeyPair, run: &LeasedRun) -> Result<Zeroizing<Vec<u8>>, Error> {
    match (&run.sealed, &run.plain) {
        (Some(b), _) => {
            let sealed = enclava_seal::Sealed { enc: b.enc.clone(), ciphertext: b.ciphertext.clone() };
            key.open(INPUT_INFO, &run.binding().aad(), &sealed).map_err(|_| {
                Error::new(
                    ErrorCode::Tampered,
                    "the input does not open with this organisation's key: sealed to another key or run, or the run was changed after its initiator sealed it",
                )
            })
        }
        (None, Some(p)) if !run.encrypted => Ok(Zeroizing::new(p.as_bytes().to_vec())),
        _ => Err(Error::new(ErrorCode::Tampered, "an encrypted collaboration's input came readable: refused")),
    }
}

/// Seals a run's result to the task's result key; readable only when its input came readable.
pub fn seal_result(run: &LeasedRun, result: &[u8]) -> Result<Vec<u8>, Error> {
    if run.sealed.is_none() && !run.encrypted {
        return Ok(result.to_vec());
    }
    let s = enclava_seal::seal(&run.result_key, RESULT_INFO, &run.binding().aad(), result)
        .map_err(|e| Error::internal(format!("cannot seal the result: {e}")))?;
    serde_json::to_vec(&SealedBlob { enc: s.enc, ciphertext: s.ciphertext }).map_err(|e| Error::internal(e.to_string()))
}

/// Opens a run's stored result with the task's result key; `None` for a task sent readable,
/// whose results are readable as they are.
pub fn open_result(
    key: Option<&enclava_seal::KeyPair>,
    binding: &RunBinding<'_>,
    stored: &[u8],
) -> Result<Vec<u8>, Error> {
    let Some(key) = key else { return Ok(stored.to_vec()) };
    let blob: SealedBlob = serde_json::from_slice(stored)
        .map_err(|_| Error::new(ErrorCode::Tampered, "a sealed task's result came unsealed: refused"))?;
    let sealed = enclava_seal::Sealed { enc: blob.enc, ciphertext: blob.ciphertext };
    key.open(RESULT_INFO, &binding.aad(), &sealed).map(|p| p.to_vec()).map_err(|_| {
        Error::new(
            ErrorCode::Tampered,
            "a result does not open with this task's key: it was changed or is another run's",
        )
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Refuses what cannot go into a URL path or query as it is.
fn path_part(s: &str) -> Result<&str, Error> {
    if !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Ok(s)
    } else {
        Err(Error::invalid(format!("{} is not an id or a name", enclava_core::text::quote(s))))
    }
}

/// The name of an image's manifest (`{"cmd": …}`) inside its archive; the root filesystem is
/// under `rootfs/`.
pub const IMAGE_MANIFEST: &str = "enclava-image.json";

/// An `image` algorithm (vantage6's algorithm image): root filesystem folder `rootfs` and the
/// command a node runs in it (`/bin/sh -c CMD`), packed into one tar archive. The same folder
/// always packs to the same bytes (entries sorted, times, owners and modes normalised), so its
/// SHA-256 names it as an image digest does.
pub fn pack_image(rootfs: &std::path::Path, cmd: &str) -> Result<Vec<u8>, Error> {
    let bad = |e: std::io::Error| Error::invalid(format!("cannot pack the image {}: {e}", rootfs.display()));
    if !rootfs.is_dir() {
        return Err(Error::invalid(format!("the image {} is not a folder", rootfs.display())));
    }
    let mut archive = tar::Builder::new(Vec::new());
    archive.mode(tar::HeaderMode::Deterministic);
    archive.follow_symlinks(false);
    let manifest =
        serde_json::to_vec(&serde_json::json!({ "cmd": cmd })).map_err(|e| Error::internal(e.to_string()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    archive.append_data(&mut header, IMAGE_MANIFEST, manifest.as_slice()).map_err(bad)?;
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(rootfs.join(&rel))
            .map_err(bad)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(bad)?;
        entries.sort();
        // Folders are visited in name order: pushed in reverse.
        let mut folders = Vec::new();
        for name in entries {
            let rel = rel.join(&name);
            let path = rootfs.join(&rel);
            let meta = std::fs::symlink_metadata(&path).map_err(bad)?;
            archive.append_path_with_name(&path, std::path::Path::new("rootfs").join(&rel)).map_err(bad)?;
            if meta.is_dir() {
                folders.push(rel);
            }
        }
        stack.extend(folders.into_iter().rev());
    }
    archive.into_inner().map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(sealed: Option<SealedBlob>, result_key: &[u8]) -> LeasedRun {
        LeasedRun {
            run: "0123456789abcdef0123456789abcdef-0".into(),
            task: "0123456789abcdef0123456789abcdef".into(),
            job: "0123456789abcdef0123456789abcdef".into(),
            organisation: "o_1".into(),
            collaboration: "c_1".into(),
            initiator: "u".into(),
            initiator_organisation: None,
            kind: "wasm".into(),
            algorithm: "a".repeat(64),
            databases: vec!["trial".into()],
            encrypted: true,
            attested: false,
            sealed,
            plain: None,
            result_key: result_key.to_vec(),
            lease: "l".into(),
            lease_ms: 1000,
        }
    }

    #[test]
    fn an_input_opens_only_for_the_run_as_its_initiator_asked_for_it() {
        let org = enclava_seal::KeyPair::generate();
        let initiator = enclava_seal::KeyPair::generate();
        let template = run(None, initiator.public());
        let sealed = seal_input(org.public(), &template.binding(), b"{\"method\":\"mean\"}").expect("seal");
        let good = run(Some(sealed), initiator.public());
        assert_eq!(open_input(&org, &good).expect("opens").as_slice(), b"{\"method\":\"mean\"}");
        assert!(good.run_id_ok());
        // The server swaps the result key, the algorithm or the databases: nothing opens.
        let swapped_key = LeasedRun { result_key: enclava_seal::KeyPair::generate().public().to_vec(), ..good.clone() };
        assert!(open_input(&org, &swapped_key).is_err());
        let swapped_algorithm = LeasedRun { algorithm: "b".repeat(64), ..good.clone() };
        assert!(open_input(&org, &swapped_algorithm).is_err());
        let more_data = LeasedRun { databases: vec!["trial".into(), "secrets".into()], ..good.clone() };
        assert!(open_input(&org, &more_data).is_err());
        // A server that says "not encrypted" still gets a sealed result for a sealed input.
        let downgraded = LeasedRun { encrypted: false, ..good.clone() };
        let stored = seal_result(&downgraded, b"42").expect("seal");
        assert_ne!(stored, b"42");
        assert_eq!(open_result(Some(&initiator), &good.binding(), &stored).expect("opens"), b"42");
        // An unsealed result for a sealed task is refused.
        assert!(open_result(Some(&initiator), &good.binding(), b"42").is_err());
        // A run id the server did not make is not a folder name.
        for bad in ["../../etc", "0123456789abcdef0123456789abcdef-0/..", "/tmp/x", "x-1"] {
            assert!(!LeasedRun { run: bad.into(), ..good.clone() }.run_id_ok(), "{bad}");
        }
    }
}
