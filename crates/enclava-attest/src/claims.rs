//! The normalised claims every evidence format yields, so policy is written once.

use std::collections::BTreeMap;

use serde::Serialize;

/// A TEE platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    Sgx,
    Tdx,
    SevSnp,
    Nitro,
    /// Enclava's simulated TEE: really signed, but not confidential.
    Sim,
}

impl Platform {
    pub const ALL: [Platform; 5] = [Platform::Sgx, Platform::Tdx, Platform::SevSnp, Platform::Nitro, Platform::Sim];

    /// The name used in the registry, policies and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Sgx => "sgx",
            Platform::Tdx => "tdx",
            Platform::SevSnp => "sev-snp",
            Platform::Nitro => "nitro",
            Platform::Sim => "sim",
        }
    }

    /// Whether the platform protects the workload from its host (DESIGN.md's security status).
    pub fn is_confidential(self) -> bool {
        self != Platform::Sim
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Platform::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown platform {s:?}: use sgx, tdx, sev-snp, nitro or sim"))
    }
}

/// What verified evidence says about the enclave that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Claims {
    pub platform: Platform,
    /// MRENCLAVE, MRTD, the SNP launch measurement, Nitro PCR0 or the sim measurement (hex).
    #[serde(with = "hex_bytes")]
    pub measurement: Vec<u8>,
    /// MRSIGNER, the SNP ID-key digest, Nitro PCR8, the sim signer (hex; empty when none).
    #[serde(with = "hex_bytes")]
    pub signer: Vec<u8>,
    /// ISVPRODID (SGX), or none.
    pub product_id: Option<u16>,
    /// ISVSVN (SGX), guest SVN (SNP), or the sim SVN.
    pub security_version: Option<u32>,
    /// The platform TCB status from the vendor's collateral (`UpToDate`, …), when it has one.
    pub tcb_status: Option<String>,
    /// Security advisories that apply to that TCB level.
    pub advisories: Vec<String>,
    /// Whether the enclave runs in debug mode (its memory is readable by the host).
    pub debug: bool,
    /// The 64 bytes the enclave chose to bind (see `binding`).
    #[serde(with = "hex_bytes")]
    pub report_data: Vec<u8>,
    /// When the evidence says it was made (Unix seconds), if it says.
    pub issued_at: Option<u64>,
    /// The platform's raw fields, named as the vendor names them (hex for bytes).
    pub raw: BTreeMap<String, String>,
}

impl Claims {
    pub fn measurement_hex(&self) -> String {
        hex::encode(&self.measurement)
    }
}

mod hex_bytes {
    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
