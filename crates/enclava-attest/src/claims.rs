//! The normalised claims every evidence format yields, so policy is written once.

use std::collections::BTreeMap;

use serde::Serialize;

pub use enclava_core::Platform;

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
