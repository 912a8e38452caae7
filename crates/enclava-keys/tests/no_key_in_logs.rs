//! No key material in logs or `Debug` output: a full flow (register, key, grant, request key,
//! release, replay) is logged at TRACE into a buffer, which is searched for the keys in hex and
//! base64. Its own test binary: tracing caches per-callsite interest process-wide, so a test
//! running beside others could miss events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::*;

/// Captures every log line of a full flow at TRACE and looks for the keys in hex and base64.
#[test]
fn no_key_material_in_logs_or_debug_output() {
    use base64::Engine;
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let debug_dump = tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tmp");
            let b = open(&format!("sqlite://{}/k.db", dir.path().display()), dir.path(), Duration::from_secs(60)).await;
            let sim = Sim::new();
            let (alice, _) = b.register(None).await.expect("register");
            b.put_model_key(&alice, "m", &MODEL_KEY, Some(&sim.policy()), false).await.expect("key");
            b.grant(&alice, "m", &hexm(&M1), &alice).await.expect("grant");
            b.put_request_key(&alice, "m", &hexm(&M1), &REQUEST_KEY).await.expect("rk");
            let (req, kp) = request(&b, &sim, M1, "m", &[&alice]);
            let r = b.release(req.clone()).await.expect("release");
            let p = open_release(&r, &kp, &req.nonce);
            let (replay, _) = (req.clone(), ());
            let _ = b.release(replay).await;
            format!("{b:?} {p:?} {r:?} {kp:?} {:?}", b.list(&alice, None).await.expect("list"))
        })
    });
    let logs = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
    assert!(logs.contains("keys released"), "the flow was logged");
    for key in [MODEL_KEY, REQUEST_KEY] {
        for needle in [
            hex::encode(key),
            hex::encode_upper(key),
            base64::engine::general_purpose::STANDARD.encode(key),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
            format!("{:?}", &key[..8]).trim_end_matches(']').to_owned(),
        ] {
            assert!(!logs.contains(&needle), "key material in logs: {needle}");
            assert!(!debug_dump.contains(&needle), "key material in Debug output: {needle}");
        }
    }
}
