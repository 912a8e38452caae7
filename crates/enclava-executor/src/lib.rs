//! The node's workload interface. An [`Executor`] turns a decrypted workload (an ONNX model, next a
//! Wasm module) into a [`Loaded`] workload held in memory; the node invokes it with a request's
//! opened input and seals what it returns. The node owns everything around it: attested key
//! release, decryption, the memory budget and eviction (dropping a [`Loaded`] is its eviction),
//! replay protection, sealing, HTTP and OpenWhisk, and the usage totals it reports. An executor
//! never sees a key, a sealed byte or the network.
//!
//! Adding an executor is a crate implementing [`Executor`] and one line where a node's executors
//! are listed ([`Executors::with`]). The node itself links no executor, so neither tract nor
//! wasmtime is in the node's (or the server's) dependencies.
//!
//! A served workload is named `KIND:ID` (`onnx:acme/mobilenet`), or just `ID` for the first
//! executor listed ([`WorkloadRef::parse`]); `ID` is what the registry publishes.

use std::sync::Arc;
use std::time::Duration;

use enclava_core::Error;
use zeroize::Zeroizing;

/// What an executor allows one invocation, which the node enforces around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest input accepted, in bytes.
    pub max_input_bytes: usize,
    /// How long one invocation may take before the node gives up on it (the executor stops it
    /// where it can: fuel or epochs for Wasm; tract cannot be interrupted and finishes unseen).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_input_bytes: 64 << 20, timeout: Duration::from_secs(60) }
    }
}

/// What one invocation used, as the executor measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Time spent running (on the executor's thread).
    pub busy: Duration,
    /// Executor-specific work units (Wasm fuel; 0 where there are none).
    pub units: u64,
}

/// One invocation's result: the output (zeroized on drop) and what it used.
#[derive(Debug)]
pub struct Output {
    pub bytes: Zeroizing<Vec<u8>>,
    pub usage: Usage,
}

/// A workload in memory, shared by every request for it. Invocations run on blocking threads,
/// several at once.
pub trait Loaded: Send + Sync + std::fmt::Debug {
    /// Bytes of memory it holds, for the node's budget.
    fn memory_bytes(&self) -> u64;
    /// Runs one input. A bad input is [`ErrorCode::BadInput`](enclava_core::ErrorCode) with a
    /// message that quotes none of it; anything else is `internal`.
    fn invoke(&self, input: &[u8]) -> Result<Output, Error>;
}

/// Loads one kind of workload.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// The kind it runs (`onnx`, `wasm`): the `KIND` of `KIND:ID`.
    fn kind(&self) -> &'static str;
    /// Loads a decrypted workload from memory (called on a blocking thread). The bytes are
    /// zeroized when dropped.
    fn load(&self, id: &str, bytes: Zeroizing<Vec<u8>>) -> Result<Arc<dyn Loaded>, Error>;
    /// Its limits for one invocation.
    fn limits(&self) -> Limits {
        Limits::default()
    }
}

/// The executors a node runs, the first one being the default kind.
#[derive(Debug, Clone, Default)]
pub struct Executors {
    list: Vec<Arc<dyn Executor>>,
}

impl Executors {
    pub fn new() -> Executors {
        Executors::default()
    }

    /// Adds an executor (replacing one of the same kind).
    pub fn with(mut self, executor: Arc<dyn Executor>) -> Executors {
        self.list.retain(|e| e.kind() != executor.kind());
        self.list.push(executor);
        self
    }

    /// The executor for `kind`.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Executor>> {
        self.list.iter().find(|e| e.kind() == kind)
    }

    /// The kinds, in order (the first is the default).
    pub fn kinds(&self) -> Vec<&'static str> {
        self.list.iter().map(|e| e.kind()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// A served workload: its executor's kind and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef {
    pub kind: String,
    pub id: String,
}

impl WorkloadRef {
    /// `KIND:ID`, or `ID` for `executors`' default kind. The kind must be one of `executors`.
    pub fn parse(s: &str, executors: &Executors) -> Result<WorkloadRef, String> {
        let (kind, id) = match s.split_once(':') {
            Some((k, id)) => (k.to_owned(), id.to_owned()),
            None => match executors.kinds().first() {
                Some(k) => ((*k).to_owned(), s.to_owned()),
                None => return Err("this node has no executor to serve workloads with".into()),
            },
        };
        if executors.get(&kind).is_none() {
            return Err(format!(
                "no executor for {} (in {}): this node runs {}",
                enclava_core::text::quote(&kind),
                enclava_core::text::quote(s),
                executors.kinds().join(", ")
            ));
        }
        enclava_core::id::check_model_id(&id).map_err(|e| e.message)?;
        Ok(WorkloadRef { kind, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Named(&'static str);
    impl Executor for Named {
        fn kind(&self) -> &'static str {
            self.0
        }
        fn load(&self, _: &str, _: Zeroizing<Vec<u8>>) -> Result<Arc<dyn Loaded>, Error> {
            Err(Error::internal("not in this test"))
        }
    }

    #[test]
    fn workloads_name_their_executor_or_take_the_first() {
        let ex = Executors::new().with(Arc::new(Named("onnx"))).with(Arc::new(Named("wasm")));
        assert_eq!(ex.kinds(), ["onnx", "wasm"]);
        let w = WorkloadRef::parse("acme/m", &ex).expect("default kind");
        assert_eq!((w.kind.as_str(), w.id.as_str()), ("onnx", "acme/m"));
        assert_eq!(WorkloadRef::parse("wasm:acme/f", &ex).expect("named").kind, "wasm");
        assert!(WorkloadRef::parse("gpu:acme/f", &ex).expect_err("unknown kind").contains("onnx, wasm"));
        assert!(WorkloadRef::parse("wasm:../x", &ex).is_err());
        assert!(WorkloadRef::parse("acme/m", &Executors::new()).is_err());
    }
}
