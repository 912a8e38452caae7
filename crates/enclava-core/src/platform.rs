//! Where a workload runs, and what that means for its owner: the platforms Enclava knows
//! (DESIGN.md) and the security status every submitter is shown, in words (as GPUX shows it).

use serde::{Deserialize, Serialize};

/// A platform a node can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    Sgx,
    Tdx,
    SevSnp,
    Nitro,
    /// Enclava's simulated TEE: its evidence is really signed, by a per-deployment root, but
    /// nothing protects the workload from its host.
    Sim,
    /// No TEE at all (GPUX's plaintext jobs): the host sees everything.
    Plaintext,
}

/// What a platform promises the owner of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SecurityStatus {
    /// Whether the workload's memory is protected from its host.
    pub confidential: bool,
    /// The label a submitter sees.
    pub label: &'static str,
    /// Why, in a sentence.
    pub why: &'static str,
}

impl Platform {
    /// Every platform, TEEs first.
    pub const ALL: [Platform; 6] =
        [Platform::Sgx, Platform::Tdx, Platform::SevSnp, Platform::Nitro, Platform::Sim, Platform::Plaintext];

    /// The name used in the registry, policies and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Sgx => "sgx",
            Platform::Tdx => "tdx",
            Platform::SevSnp => "sev-snp",
            Platform::Nitro => "nitro",
            Platform::Sim => "sim",
            Platform::Plaintext => "plaintext",
        }
    }

    /// Whether the platform produces attestation evidence (every one but `plaintext`).
    pub fn attests(self) -> bool {
        self != Platform::Plaintext
    }

    /// Whether the platform protects the workload from its host.
    pub fn is_confidential(self) -> bool {
        self.security().confidential
    }

    /// The security status DESIGN.md gives the platform.
    pub fn security(self) -> SecurityStatus {
        match self {
            Platform::Sgx | Platform::Tdx | Platform::SevSnp | Platform::Nitro => SecurityStatus {
                confidential: true,
                label: "Confidential",
                why: "the hardware keeps the workload's memory from the host, and attests to the code it runs",
            },
            Platform::Sim => SecurityStatus {
                confidential: false,
                label: "Simulated TEE: testing only",
                why: "the evidence is signed by this deployment's simulated root, but nothing hides the workload from its host",
            },
            Platform::Plaintext => SecurityStatus {
                confidential: false,
                label: "Not confidential: the host can see everything",
                why: "no TEE: the host reads the workload, its inputs and its outputs",
            },
        }
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
        Platform::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            format!("unknown platform {}: use sgx, tdx, sev-snp, nitro, sim or plaintext", crate::text::quote(s))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_tees_are_confidential() {
        for p in Platform::ALL {
            assert_eq!(p.as_str().parse::<Platform>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).expect("json"), format!("\"{p}\""));
        }
        assert!(Platform::SevSnp.is_confidential());
        assert!(!Platform::Sim.is_confidential());
        assert!(!Platform::Plaintext.is_confidential() && !Platform::Plaintext.attests());
        assert_eq!(Platform::Plaintext.security().label, "Not confidential: the host can see everything");
        assert!("quantum".parse::<Platform>().is_err());
    }
}
