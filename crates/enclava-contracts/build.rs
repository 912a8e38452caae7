//! Compiles the protobuf contracts with `protox` (pure Rust, no `protoc`) and generates tonic code.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/enclava/discovery/v1/discovery.proto",
        "proto/enclava/keys/v1/keys.proto",
        "proto/enclava/pools/v1/pools.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // camelCase JSON for `enclava find --json`, the seed's field names.
        .type_attribute(".enclava.discovery", "#[derive(serde::Serialize)]")
        .type_attribute(".enclava.discovery", "#[serde(rename_all = \"camelCase\")]")
        // Binary fields as base64 strings, like the registry's info JSON.
        .field_attribute("EnclaveInfo.attestation", "#[serde(with = \"crate::base64_bytes\")]")
        .field_attribute("EnclaveInfo.pubkey", "#[serde(with = \"crate::base64_bytes\")]")
        .compile_fds(fds)?;
    Ok(())
}
