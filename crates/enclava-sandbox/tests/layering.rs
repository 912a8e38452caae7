//! The dependency directions ARCHITECTURE.md promises, checked against `cargo metadata`: the core and
//! the contracts depend on no component, the control plane links neither tract nor wasmtime, the node
//! does not import the client, and test harnesses are never normal dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Package name → its normal (non-dev, non-build) dependencies, for every package in the build.
struct Graph {
    deps: BTreeMap<String, BTreeSet<String>>,
    members: BTreeSet<String>,
}

impl Graph {
    fn load() -> Graph {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let host = host_triple(&cargo);
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
        let out = Command::new(&cargo)
            .args(["metadata", "--format-version", "1", "--locked"])
            .args(["--filter-platform", &host, "--manifest-path", manifest])
            .output()
            .expect("run cargo metadata");
        assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
        let name_of: BTreeMap<String, String> = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| (text(&p["id"]).to_owned(), text(&p["name"]).to_owned()))
            .collect();
        let members = meta["workspace_members"]
            .as_array()
            .expect("workspace_members")
            .iter()
            .map(|id| name_of[text(id)].clone())
            .collect();
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
            let name = name_of[text(&node["id"])].clone();
            let normal = node["deps"]
                .as_array()
                .expect("deps")
                .iter()
                .filter(|d| d["dep_kinds"].as_array().is_some_and(|k| k.iter().any(|k| k["kind"].is_null())))
                .map(|d| name_of[text(&d["pkg"])].clone());
            deps.entry(name).or_default().extend(normal);
        }
        Graph { deps, members }
    }

    /// Everything `name` links, directly or through other packages.
    fn closure(&self, name: &str) -> BTreeSet<String> {
        assert!(self.deps.contains_key(name), "no package {name} in the build");
        let mut seen = BTreeSet::new();
        let mut todo = vec![name.to_owned()];
        while let Some(next) = todo.pop() {
            for dep in self.deps.get(&next).into_iter().flatten() {
                if seen.insert(dep.clone()) {
                    todo.push(dep.clone());
                }
            }
        }
        seen
    }

    /// The workspace crates `name` links.
    fn components(&self, name: &str) -> BTreeSet<String> {
        self.closure(name).into_iter().filter(|d| self.members.contains(d)).collect()
    }

    fn links(&self, name: &str, dep: &str) -> bool {
        self.closure(name).contains(dep)
    }
}

fn host_triple(cargo: &str) -> String {
    let rustc = std::env::var("RUSTC")
        .unwrap_or_else(|_| std::path::Path::new(cargo).with_file_name("rustc").to_string_lossy().into_owned());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .or_else(|_| Command::new("rustc").arg("-vV").output())
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

fn text(v: &serde_json::Value) -> &str {
    v.as_str().expect("a string in cargo metadata")
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn dependency_directions_hold() {
    let g = Graph::load();

    // The foundations depend on nothing above them.
    let within = |name: &str, allowed: &[&str]| {
        let extra: Vec<_> = g.components(name).difference(&set(allowed)).cloned().collect();
        assert!(extra.is_empty(), "{name} must not depend on {extra:?}");
    };
    within("enclava-core", &[]);
    within("enclava-seal", &["enclava-core"]);
    within("enclava-contracts", &["enclava-core", "enclava-seal"]);
    within("enclava-executor", &["enclava-core"]);
    within("enclava-store", &["enclava-core"]);
    within("enclava-identity", &["enclava-core", "enclava-store"]);
    within("enclava-wasm", &["enclava-core", "enclava-executor"]);
    within("enclava-process", &["enclava-core"]);
    within("enclava-vm", &["enclava-core"]);
    // The farm server knows hosts only by the contract; a host knows the farm only as a client.
    let server_role = [
        "enclava-core",
        "enclava-seal",
        "enclava-contracts",
        "enclava-store",
        "enclava-identity",
        "enclava-server",
        "enclava-telemetry",
    ];
    within("enclava-farm", &server_role);
    // So is the federation server (nodes are its clients); it verifies nodes' evidence for
    // attested collaborations itself.
    let fed: Vec<&str> = server_role.iter().copied().chain(["enclava-attest", "enclava-collateral"]).collect();
    within("enclava-fed", &fed);

    // The role framework knows no role.
    for role in
        ["enclava-keys", "enclava-manager", "enclava-registry", "enclava-node", "enclava-identity", "enclava-store"]
    {
        assert!(!g.links("enclava-server", role), "enclava-server must not depend on {role}");
    }

    // The control plane and the node build without an inference or Wasm engine.
    for component in [
        "enclava-core",
        "enclava-contracts",
        "enclava-server",
        "enclava-manager",
        "enclava-keys",
        "enclava-identity",
        "enclava-store",
        "enclava-registry",
        "enclava-client",
        "enclava-node",
        "enclava-executor",
        "enclava-farm",
        "enclava-fed",
    ] {
        for engine in ["tract-onnx", "wasmtime", "enclava-runtime"] {
            assert!(!g.links(component, engine), "{component} must not depend on {engine}");
        }
    }

    // The node serves a contract; it does not import the client or the key broker.
    for forbidden in ["enclava-client", "enclava-keys"] {
        assert!(!g.links("enclava-node", forbidden), "enclava-node must not depend on {forbidden}");
    }

    // tract is linked only where a model is actually run.
    let with_tract: BTreeSet<String> = g.members.iter().filter(|m| g.links(m, "tract-onnx")).cloned().collect();
    assert_eq!(
        with_tract,
        set(&["enclava", "enclava-bench", "enclava-runtime", "enclava-sandbox"]),
        "crates linking tract-onnx"
    );

    // wasmtime likewise, only where Wasm actually runs.
    let with_wasmtime: BTreeSet<String> = g.members.iter().filter(|m| g.links(m, "wasmtime")).cloned().collect();
    assert_eq!(
        with_wasmtime,
        set(&["enclava", "enclava-bench", "enclava-host", "enclava-sandbox", "enclava-wasm"]),
        "crates linking wasmtime"
    );

    // Test harnesses are dev-dependencies, except for the benchmark crate that is one.
    let with_testkit: BTreeSet<String> =
        g.members.iter().filter(|m| g.deps[*m].contains("enclava-testkit")).cloned().collect();
    assert_eq!(with_testkit, set(&["enclava-bench"]), "crates with enclava-testkit as a normal dependency");
}
