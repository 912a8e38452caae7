//! The seed's registry schema, letter for letter: key names, the enclave info JSON, index values,
//! the TTLs and periods, and the checks that keep user input out of key names.

use std::collections::BTreeMap;
use std::time::Duration;

use enclava_core::text::quote;
use serde::{Deserialize, Serialize};

/// Presence is written every second…
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(1);
/// …with a TTL of 3 seconds: three missed heartbeats mean the enclave is gone.
pub const PRESENCE_TTL_SECS: u64 = 3;
/// Info and index entries are written every 30 seconds…
pub const INFO_PERIOD: Duration = Duration::from_secs(30);
/// …with an info TTL of 40 seconds.
pub const INFO_TTL_SECS: u64 = 40;

/// Whether `p` names a platform Enclava knows ([`enclava_core::Platform`]; the seed's "sgx" is
/// one of them).
pub fn is_known_platform(p: &str) -> bool {
    p.parse::<enclava_core::Platform>().is_ok()
}

/// Builds the seed's key names for one namespace and service.
///
/// The seed writes placeholders in braces (`{InstanceID}`); they are replaced by the value, so the
/// keys carry no Redis Cluster hash tags and spread over all slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    namespace: String,
    service: String,
}

impl Keys {
    /// Keys for namespace `namespace` and service `service` (both checked by [`check_name`]).
    pub fn new(namespace: &str, service: &str) -> Result<Keys, String> {
        check_name("namespace", namespace)?;
        check_name("service", service)?;
        Ok(Keys { namespace: namespace.to_owned(), service: service.to_owned() })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// `N:service:S:{id}:presence`
    pub fn presence(&self, id: &str) -> String {
        format!("{}:service:{}:{id}:presence", self.namespace, self.service)
    }

    /// `N:S:service:{id}:info`
    pub fn info(&self, id: &str) -> String {
        format!("{}:{}:service:{id}:info", self.namespace, self.service)
    }

    /// `N:S:doc:{name}`: a versioned document (a pool's shared state).
    pub fn doc(&self, name: &str) -> String {
        format!("{}:{}:doc:{name}", self.namespace, self.service)
    }

    /// `N:S:byplatform:{p}`, `N:S:bymrenclave:{m}` or `N:S:bydataaccess:{d}`.
    pub fn index(&self, index: &Index) -> String {
        format!("{}{}{}", self.index_prefix(), index.kind(), index.value())
    }

    /// `N:S:`, the prefix every index key starts with.
    pub fn index_prefix(&self) -> String {
        format!("{}:{}:", self.namespace, self.service)
    }

    /// The index a key names, or `None` when it is not an index key of this namespace and service.
    pub fn parse_index(&self, key: &str) -> Option<Index> {
        let rest = key.strip_prefix(&self.index_prefix())?;
        if let Some(v) = rest.strip_prefix("byplatform:") {
            return Some(Index::Platform(v.to_owned()));
        }
        if let Some(v) = rest.strip_prefix("bymrenclave:") {
            return Some(Index::Measurement(v.to_owned()));
        }
        rest.strip_prefix("bydataaccess:").map(|v| Index::Data(v.to_owned()))
    }
}

/// One of the seed's three indexes, with its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Index {
    Platform(String),
    Measurement(String),
    Data(String),
}

impl Index {
    fn kind(&self) -> &'static str {
        match self {
            Index::Platform(_) => "byplatform:",
            Index::Measurement(_) => "bymrenclave:",
            Index::Data(_) => "bydataaccess:",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Index::Platform(v) | Index::Measurement(v) | Index::Data(v) => v,
        }
    }
}

/// The value stored in `bydataaccess:{d}` for an instance: `{"hot":true,"mrenclave":"xx"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataIndexEntry {
    pub hot: bool,
    pub mrenclave: String,
}

/// The value stored in `byplatform` and `bymrenclave`: `{}`.
pub const EMPTY_ENTRY: &str = "{}";

/// `policy` in the info JSON: the measurement, plus room for more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PolicyJson {
    pub mrenclave: String,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One entry of `dataAccess` in the info JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DataAccessJson {
    pub hot: bool,
}

/// The seed's enclave info JSON, with room for extra fields. Binary fields are base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnclaveInfoJson {
    pub instance_id: String,
    #[serde(default)]
    pub service_name: String,
    pub platform: String,
    #[serde(default)]
    pub service_version: String,
    pub policy: PolicyJson,
    /// Serialized attestation evidence; empty until the node publishes evidence.
    #[serde(default, with = "b64")]
    pub attestation: Vec<u8>,
    /// The enclave's public key (the key requests are sealed to).
    #[serde(default, with = "b64")]
    pub pubkey: Vec<u8>,
    pub connection_string: String,
    #[serde(default)]
    pub data_access: BTreeMap<String, DataAccessJson>,
    /// Custom info (cloud, hostname, …).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The largest info JSON a reader accepts (evidence with its certificates is a few kilobytes).
pub const MAX_INFO_BYTES: usize = 256 * 1024;
/// The most data ids one info may list.
pub const MAX_DATA_ACCESS: usize = 4096;

impl EnclaveInfoJson {
    /// Parses info JSON written by anyone and checks every field a reader relies on: the instance
    /// id, platform and measurement are what the node's own writes would hold, and every data id
    /// could be a key name. Errors quote at most a short prefix.
    pub fn parse(raw: &str) -> Result<EnclaveInfoJson, String> {
        if raw.len() > MAX_INFO_BYTES {
            return Err(format!("info is {} bytes, more than {MAX_INFO_BYTES}", raw.len()));
        }
        let info: EnclaveInfoJson = serde_json::from_str(raw).map_err(|e| e.to_string())?;
        check_name("instanceId", &info.instance_id)?;
        if !is_known_platform(&info.platform) {
            return Err(format!("unknown platform {}", quote(&info.platform)));
        }
        check_measurement(&info.policy.mrenclave)?;
        if info.connection_string.len() > 512 || info.connection_string.chars().any(char::is_control) {
            return Err(format!("connectionString {} is not a connection string", quote(&info.connection_string)));
        }
        if info.data_access.len() > MAX_DATA_ACCESS {
            return Err(format!("dataAccess lists {} ids, more than {MAX_DATA_ACCESS}", info.data_access.len()));
        }
        for id in info.data_access.keys() {
            check_name("a dataAccess id", id)?;
        }
        Ok(info)
    }

    pub fn to_json(&self) -> String {
        // Serializing plain maps, strings and bools cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Every index entry this info implies, with its value.
    pub fn index_entries(&self) -> Vec<(Index, String)> {
        let mut out = vec![
            (Index::Platform(self.platform.clone()), EMPTY_ENTRY.to_owned()),
            (Index::Measurement(self.policy.mrenclave.clone()), EMPTY_ENTRY.to_owned()),
        ];
        for (data, access) in &self.data_access {
            let entry = DataIndexEntry { hot: access.hot, mrenclave: self.policy.mrenclave.clone() };
            out.push((Index::Data(data.clone()), serde_json::to_string(&entry).unwrap_or_default()));
        }
        out
    }
}

/// Checks a name that becomes part of a key (namespace, service, platform, data id, instance id).
/// The error quotes at most a short prefix of `v`.
pub fn check_name(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if v.len() > 256 {
        return Err(format!("{what} {} is longer than 256 bytes", quote(v)));
    }
    if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{what} {} contains whitespace or control characters", quote(v)));
    }
    Ok(())
}

/// Checks a measurement: lowercase hex, even length, at most 64 bytes. The error quotes at most a
/// short prefix of `v`.
pub fn check_measurement(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len().is_multiple_of(2)
        && v.len() <= 128
        && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok { Ok(()) } else { Err(format!("measurement {} is not lowercase hex of at most 64 bytes", quote(v))) }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_seeds() {
        let k = Keys::new("mithrilcloud", "blindai").expect("valid names");
        assert_eq!(k.presence("ID"), "mithrilcloud:service:blindai:ID:presence");
        assert_eq!(k.info("ID"), "mithrilcloud:blindai:service:ID:info");
        assert_eq!(k.index(&Index::Platform("sgx".into())), "mithrilcloud:blindai:byplatform:sgx");
        assert_eq!(k.index(&Index::Measurement("ab".into())), "mithrilcloud:blindai:bymrenclave:ab");
        assert_eq!(k.index(&Index::Data("cchudant/gpt2".into())), "mithrilcloud:blindai:bydataaccess:cchudant/gpt2");
        let idx = Index::Data("a:b".into());
        assert_eq!(k.parse_index(&k.index(&idx)), Some(idx));
        assert_eq!(k.parse_index("other:blindai:byplatform:sgx"), None);
    }

    #[test]
    fn data_entry_is_letter_for_letter() {
        let e = DataIndexEntry { hot: true, mrenclave: "xx".into() };
        assert_eq!(serde_json::to_string(&e).expect("serializes"), r#"{"hot":true,"mrenclave":"xx"}"#);
    }

    #[test]
    fn info_keeps_extra_fields_and_rejects_garbage() {
        let raw = r#"{"instanceId":"i","serviceName":"s","platform":"sim","serviceVersion":"1",
            "policy":{"mrenclave":"ab"},"attestation":"","pubkey":"AQI=","connectionString":"h:1",
            "dataAccess":{"m":{"hot":true}},"cloud":"eu"}"#;
        let info = EnclaveInfoJson::parse(raw).expect("parses");
        assert_eq!(info.pubkey, vec![1, 2]);
        assert_eq!(info.extra["cloud"], "eu");
        let again = EnclaveInfoJson::parse(&info.to_json()).expect("round trip");
        assert_eq!(again, info);
        for bad in ["", "null", "{}", r#"{"instanceId":""}"#, "[1,2]", r#"{"instanceId":"i","pubkey":"!!"}"#] {
            assert!(EnclaveInfoJson::parse(bad).is_err(), "{bad} must not parse");
        }
        // Fields a reader relies on are checked, and errors quote a short prefix only.
        let with = |field: &str, value: &str| raw.replace(field, value);
        for (bad, says) in [
            (with(r#""platform":"sim""#, r#""platform":"quantum""#), "unknown platform"),
            (with(r#""mrenclave":"ab""#, r#""mrenclave":"é€""#), "measurement"),
            (with(r#""instanceId":"i""#, r#""instanceId":"a b""#), "whitespace"),
            (with(r#""dataAccess":{"m""#, r#""dataAccess":{"m n""#), "dataAccess id"),
            (with(r#""mrenclave":"ab""#, &format!(r#""mrenclave":"{}""#, "é".repeat(100_000))), "bytes)"),
        ] {
            let err = EnclaveInfoJson::parse(&bad).expect_err(says);
            assert!(err.contains(says) && err.len() < 200, "{err}");
        }
    }

    #[test]
    fn names_and_measurements_are_checked() {
        assert!(check_name("x", "acme/gpt2").is_ok());
        assert!(check_name("x", "").is_err());
        assert!(check_name("x", "a b").is_err());
        assert!(check_measurement("00ff").is_ok());
        assert!(check_measurement("0FF").is_err());
        assert!(check_measurement("zz").is_err());
        let huge = "A".repeat(3_000_000);
        assert!(check_measurement(&huge).expect_err("too long").len() < 200, "errors quote a short prefix");
        assert!(check_name("x", &huge).expect_err("too long").len() < 200);
    }
}
