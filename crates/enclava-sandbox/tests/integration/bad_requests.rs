//! Bad requests get INVALID_ARGUMENT with a message that says what to send, never a panic, and
//! leave the server serving.

use enclava_core::ErrorCode;
use std::sync::Arc;

use enclava_client::{ClientError, FindEnclaveRequest, ListEnclavesRequest};
use enclava_contracts::discovery::v1::EnclavePolicy;
use enclava_manager::ManagerConfig as ServerConfig;
use enclava_registry::memory::MemoryRegistry;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_invalid_argument() {
    let registry = Arc::new(MemoryRegistry::new(keys()));
    let server = Server::start(registry, ServerConfig::default()).await;
    let mut c = server.client().await;
    let huge: Vec<String> = (0..100_000).map(|i| format!("{i:032x}")).collect();
    let cases: Vec<(FindEnclaveRequest, &str)> = vec![
        (FindEnclaveRequest::default(), "send a data id"),
        (FindEnclaveRequest { limit: -1, ..find_req("d", 1) }, "limit is -1"),
        (FindEnclaveRequest { limit: i32::MAX, ..find_req("d", 1) }, "at most"),
        (FindEnclaveRequest { enclave_deny_list: huge, ..find_req("d", 1) }, "deny list"),
        (FindEnclaveRequest { platform: "quantum".into(), ..find_req("d", 1) }, "unknown platform"),
        (FindEnclaveRequest { platform: "sim".into(), ..Default::default() }, "send a data id"),
        (
            FindEnclaveRequest { policy: Some(EnclavePolicy { mrenclave: "not hex".into() }), ..Default::default() },
            "hex",
        ),
        (find_req("has space", 1), "whitespace"),
        (find_req(&"x".repeat(10_000), 1), "longer than"),
        // A 3 MB measurement: refused with a message that quotes a short prefix, not 3 MB.
        (
            FindEnclaveRequest {
                policy: Some(EnclavePolicy { mrenclave: "A".repeat(3_000_000) }),
                ..Default::default()
            },
            "(3000000 bytes)",
        ),
        (FindEnclaveRequest { platform: "é".repeat(100_000), ..find_req("d", 1) }, "unknown platform"),
    ];
    for (req, want) in cases {
        match c.find(req).await {
            Err(ClientError::Refused(enclava_core::Error { code: ErrorCode::InvalidArgument, message, .. })) => {
                assert!(message.contains(want), "{message:?} should say {want:?}");
                assert!(message.len() < 300, "the message echoes the input: {} bytes", message.len());
            }
            other => panic!("expected INVALID_ARGUMENT ({want}), got {other:?}"),
        }
    }
    for req in [
        ListEnclavesRequest { page_size: -5, ..Default::default() },
        ListEnclavesRequest { platform: "quantum".into(), ..Default::default() },
        ListEnclavesRequest { mrenclave: "XYZ".into(), ..Default::default() },
        ListEnclavesRequest { mrenclave: "f".repeat(3_000_001), ..Default::default() },
        ListEnclavesRequest { dataaccess: "d d".repeat(1_000_000), ..Default::default() },
    ] {
        let err = c.list(req).await.expect_err("invalid");
        assert!(
            matches!(&err, ClientError::Refused(enclava_core::Error { code: ErrorCode::InvalidArgument, message, .. }) if message.len() < 300),
            "{err:?}"
        );
    }
    // Still serving.
    assert!(c.find(find_req("d", 1)).await.expect("valid request").found.is_empty());
    server.stop().await;
}
