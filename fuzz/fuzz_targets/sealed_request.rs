//! Fuzzes what every node request goes through before anything is authenticated: the binary and
//! JSON sealed-request framing, the OpenWhisk `/run` envelope, then opening it in both modes with a
//! fixed key; and the client's side, sealed responses. Nothing may panic.
#![no_main]

use enclava_contracts::sealed::{InferRequest, InferResponse, from_openwhisk_run, open_request, open_serverless};
use libfuzzer_sys::fuzz_target;

fn key() -> &'static enclava_seal::KeyPair {
    static K: std::sync::OnceLock<enclava_seal::KeyPair> = std::sync::OnceLock::new();
    K.get_or_init(enclava_seal::KeyPair::generate)
}

fuzz_target!(|data: &[u8]| {
    let key = key();
    let requests = [
        InferRequest::from_binary(data).ok(),
        serde_json::from_slice::<InferRequest>(data).ok(),
        from_openwhisk_run(data).ok(),
    ];
    for req in requests.into_iter().flatten() {
        let _ = open_request(key, &req);
        let _ = open_serverless(&[9; 32], &req);
        let _ = req.clone().to_binary();
    }
    let _ = InferResponse::from_binary(data);
    let _ = serde_json::from_slice::<InferResponse>(data);
});
