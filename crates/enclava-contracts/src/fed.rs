//! Federation (vantage6's model) on the wire: organisations with public keys, collaborations,
//! nodes, tasks with an initiator and a job id shared by a task and its subtasks, runs per
//! organisation with a status, and results. Every object names what it refers to as
//! [`Link`] (`{id, link}`), as vantage6's HATEOAS API does. Inputs are sealed to each
//! organisation's key and results to the initiator's, both bound to [`run_aad`].

use serde::{Deserialize, Serialize};

use crate::farm::SealedBlob;

/// HPKE `info` for a run's input, sealed to its organisation's key.
pub const INPUT_INFO: &[u8] = b"enclava/fed/input/v1";
/// HPKE `info` for a run's result, sealed to the task's result key.
pub const RESULT_INFO: &[u8] = b"enclava/fed/result/v1";

/// What a run's input and result are bound to (their AAD): the task, the run, the organisation,
/// and what the initiator asked for — collaboration, algorithm, kind, databases, result key. A
/// sealed input opens only for the run it was sealed for and only as the initiator created it:
/// a server that swaps the algorithm or the result key gets a run no node can open.
#[derive(Debug, Clone, Copy)]
pub struct RunBinding<'a> {
    pub task: &'a str,
    pub run: &'a str,
    pub organisation: &'a str,
    pub collaboration: &'a str,
    pub kind: &'a str,
    pub algorithm: &'a str,
    pub databases: &'a [String],
    pub result_key: &'a [u8],
}

impl RunBinding<'_> {
    pub fn aad(&self) -> Vec<u8> {
        let asked = serde_json::json!({
            "collaboration": self.collaboration,
            "kind": self.kind,
            "algorithm": self.algorithm,
            "databases": self.databases,
            "result_key": hex::encode(self.result_key),
        });
        let digest = crate::farm::sha256_hex(asked.to_string().as_bytes());
        format!("task={};run={};org={};asked={digest}", self.task, self.run, self.organisation).into_bytes()
    }
}

/// The id of the run of `task` for its `index`-th organisation (known to the initiator before it
/// submits, so it can seal to it).
pub fn run_id(task: &str, index: usize) -> String {
    format!("{task}-{index}")
}

/// A reference to another object: its id and where to read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Link {
    pub id: String,
    pub link: String,
}

/// An organisation: its public key (X25519, empty until its node uploads one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrganisationView {
    pub id: String,
    pub link: String,
    pub name: String,
    #[serde(with = "crate::base64_bytes")]
    #[schema(value_type = String, format = Byte)]
    pub public_key: Vec<u8>,
}

/// `POST /fed/v1/collaborations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCollaboration {
    pub name: String,
    /// Organisation ids or names.
    pub organisations: Vec<String>,
    /// Inputs and results must be sealed (readable input is refused).
    #[serde(default = "yes")]
    pub encrypted: bool,
    /// An attestation policy (TOML) every node must pass to join.
    #[serde(default)]
    pub require_attestation: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CollaborationView {
    pub id: String,
    pub link: String,
    pub name: String,
    pub organisations: Vec<Link>,
    pub encrypted: bool,
    pub require_attestation: Option<String>,
    /// `/fed/v1/tasks?collaboration=ID`, `/fed/v1/nodes?collaboration=ID`.
    pub tasks: String,
    pub nodes: String,
}

/// `POST /fed/v1/nodes`: a node for an organisation in a collaboration (one per pair).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    pub collaboration: String,
    /// Defaults to the caller's organisation.
    #[serde(default)]
    pub organisation: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub id: String,
    pub link: String,
    pub name: String,
    pub organisation: Link,
    pub collaboration: Link,
    pub online: bool,
    pub last_seen_ms: i64,
    /// In an attested collaboration: the node's last evidence that passed the collaboration's
    /// policy, while it holds (initiators verify it again themselves and seal inputs to its key).
    #[serde(default)]
    pub attestation: Option<NodeAttestation>,
    /// Why the node is not (or no longer) admitted, when it is not.
    #[serde(default)]
    pub attestation_failure: Option<String>,
}

/// A node's admission to an attested collaboration: evidence binding its key to the server's
/// nonce (the `FED_NODE` label of `enclava_attest::binding`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeAttestation {
    #[serde(with = "crate::base64_bytes")]
    #[schema(value_type = String, format = Byte)]
    pub public_key: Vec<u8>,
    #[serde(with = "crate::base64_bytes")]
    #[schema(value_type = String, format = Byte)]
    pub evidence: Vec<u8>,
    pub nonce: String,
    pub platform: String,
    pub measurement: String,
    pub attested_ms: i64,
    /// It must attest again before this (at most 10 minutes after the last time).
    pub until_ms: i64,
}

/// `POST /fed/v1/node/attest`: fresh evidence binding the node's key to a nonce from
/// `POST /fed/v1/node/nonce`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttestRequest {
    pub nonce: String,
    #[serde(with = "crate::base64_bytes")]
    #[schema(value_type = String, format = Byte)]
    pub public_key: Vec<u8>,
    #[serde(with = "crate::base64_bytes")]
    #[schema(value_type = String, format = Byte)]
    pub evidence: Vec<u8>,
}

/// A new node and its API key (shown once).
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedNode {
    pub node: NodeView,
    pub api_key: String,
}

impl std::fmt::Debug for CreatedNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedNode").field("node", &self.node).finish_non_exhaustive()
    }
}

/// One organisation's input to a task: sealed to its key ([`INPUT_INFO`], [`run_aad`]), or,
/// in a collaboration that is not encrypted, readable JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgInput {
    pub organisation: String,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub sealed: Option<SealedBlob>,
    #[serde(default)]
    pub plain: Option<String>,
}

/// `POST /fed/v1/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// 32 lowercase hex digits, chosen by the initiator (a retried create is the same task).
    pub id: String,
    pub collaboration: String,
    pub name: String,
    /// `wasm` (a module) or `process` (a command run by `/bin/sh -c` in a sandbox).
    pub kind: String,
    /// SHA-256 of the algorithm, stored first with `POST /fed/v1/algorithms`.
    pub algorithm: String,
    /// In input order: run `i` is [`run_id`]`(id, i)`.
    pub organisations: Vec<OrgInput>,
    /// The key results are sealed to (X25519, 32 bytes).
    #[serde(with = "crate::base64_bytes")]
    #[schema(value_type = String, format = Byte)]
    pub result_key: Vec<u8>,
    /// Data labels the algorithm may read at each node.
    #[serde(default)]
    pub databases: Vec<String>,
    /// The task that created this one (a subtask shares its job id).
    #[serde(default)]
    pub parent: Option<String>,
}

impl NewTask {
    /// What a server checks without opening anything.
    pub fn validate(&self) -> Result<(), String> {
        let hex =
            |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        if !hex(&self.id, 32) {
            return Err("a task id is 32 lowercase hex digits".into());
        }
        if !hex(&self.algorithm, 64) {
            return Err("the algorithm is named by its SHA-256 (64 lowercase hex digits)".into());
        }
        if !matches!(self.kind.as_str(), "wasm" | "process" | "image") {
            return Err("an algorithm is a wasm module, a process command or an image".into());
        }
        if self.organisations.is_empty() || self.organisations.len() > 1000 {
            return Err("a task runs at 1 to 1000 organisations".into());
        }
        if self.result_key.len() != 32 {
            return Err("a task needs the 32-byte key its results are sealed to".into());
        }
        if self.name.len() > 200 || self.databases.len() > 32 || self.databases.iter().any(|d| !label_ok(d)) {
            return Err(
                "a task name is at most 200 bytes; at most 32 database labels (letters, digits, '_', '-')".into()
            );
        }
        for o in &self.organisations {
            if o.sealed.is_some() == o.plain.is_some() {
                return Err("each organisation's input is either sealed or plain, not both or neither".into());
            }
            if o.plain.as_ref().is_some_and(|p| p.len() > 1 << 20) {
                return Err("an input is at most 1 MiB".into());
            }
        }
        Ok(())
    }
}

/// A data label: 1-64 letters, digits, `_` or `-`.
pub fn label_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskView {
    pub id: String,
    pub link: String,
    pub name: String,
    pub collaboration: Link,
    pub initiator: String,
    pub initiator_organisation: Option<Link>,
    pub parent: Option<Link>,
    /// Shared by a task and all its subtasks (vantage6's job/run id).
    pub job: String,
    pub kind: String,
    pub algorithm: String,
    pub databases: Vec<String>,
    /// pending, active, completed, failed or killed: from its runs.
    pub status: String,
    pub created_ms: i64,
    /// `/fed/v1/runs?task=ID`, `/fed/v1/tasks?parent=ID`.
    pub runs: String,
    pub children: String,
}

/// One organisation's run of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunView {
    pub id: String,
    pub link: String,
    pub task: Link,
    pub organisation: Link,
    /// pending, active, completed, failed, killed or not allowed.
    pub status: String,
    /// Why it failed or was killed, in words (never "check the node logs").
    pub reasons: Vec<String>,
    pub node: Option<Link>,
    pub attempts: u32,
    pub updated_ms: i64,
    /// The result, sealed to the task's result key (or readable in a collaboration that is not
    /// encrypted), when it has one.
    #[serde(default, with = "crate::base64_bytes")]
    #[schema(value_type = String, format = Byte)]
    pub result: Vec<u8>,
    /// The node's receipt for the work, when it has one.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub receipt: Option<crate::farm::SignedReceipt>,
}

/// A run leased to a node, with what it needs to run it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct LeasedRun {
    pub run: String,
    pub task: String,
    pub job: String,
    pub organisation: String,
    pub collaboration: String,
    /// Who created the task, and their organisation (a node's policy may refuse them).
    #[serde(default)]
    pub initiator: String,
    #[serde(default)]
    pub initiator_organisation: Option<String>,
    pub kind: String,
    pub algorithm: String,
    pub databases: Vec<String>,
    pub encrypted: bool,
    /// The input was sealed to this node's attested key (an attested collaboration), not to the
    /// organisation's.
    #[serde(default)]
    pub attested: bool,
    #[serde(default)]
    pub sealed: Option<SealedBlob>,
    #[serde(default)]
    pub plain: Option<String>,
    #[serde(with = "crate::base64_bytes")]
    pub result_key: Vec<u8>,
    pub lease: String,
    pub lease_ms: u64,
}

/// A node's report of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunDone {
    pub lease: String,
    /// completed, failed or not allowed.
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default, with = "crate::base64_bytes")]
    #[schema(value_type = String, format = Byte)]
    pub result: Vec<u8>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub receipt: Option<crate::farm::SignedReceipt>,
}

/// A task input as vantage6 algorithms take it: `{"method", "args", "kwargs"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlgorithmInput {
    pub method: String,
    #[serde(default)]
    pub args: Vec<serde_json::Value>,
    #[serde(default)]
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

impl LeasedRun {
    /// What its input and result are bound to.
    pub fn binding(&self) -> RunBinding<'_> {
        RunBinding {
            task: &self.task,
            run: &self.run,
            organisation: &self.organisation,
            collaboration: &self.collaboration,
            kind: &self.kind,
            algorithm: &self.algorithm,
            databases: &self.databases,
            result_key: &self.result_key,
        }
    }

    /// A run id as the server makes them (`<task>-<index>`): safe as a folder name.
    pub fn run_id_ok(&self) -> bool {
        let Some((task, index)) = self.run.split_once('-') else { return false };
        task == self.task
            && task.len() == 32
            && task.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && !index.is_empty()
            && index.len() <= 4
            && index.bytes().all(|b| b.is_ascii_digit())
    }
}

impl std::fmt::Debug for LeasedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedRun")
            .field("run", &self.run)
            .field("organisation", &self.organisation)
            .field("kind", &self.kind)
            .field("attested", &self.attested)
            .finish_non_exhaustive()
    }
}
