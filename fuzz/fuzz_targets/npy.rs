//! Fuzzes `.npy` tensors and JSON tensors (users' inputs, enclaves' outputs). Nothing may panic,
//! and whatever parses writes back and parses to the same tensor.
#![no_main]

use enclava_runtime::Tensor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Tensor::from_npy(data) {
        let again = Tensor::from_npy(&t.to_npy()).expect("a written tensor reads back");
        assert_eq!(again.shape(), t.shape());
    }
    let _ = serde_json::from_slice::<Tensor>(data);
});
