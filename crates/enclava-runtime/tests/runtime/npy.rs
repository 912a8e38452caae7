//! `.npy`: round trips, the dtypes read, every refusal, and a seeded mutation loop.

use enclava_runtime::{RuntimeError, Tensor};

use crate::Rng;

/// A `.npy` v1.0 file with this header text (padded as NumPy pads) and data.
fn npy_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut header = header.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&u16::try_from(header.len()).expect("short header").to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn header(descr: &str, shape: &str) -> String {
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
}

#[test]
fn writes_what_numpy_writes() {
    let t = Tensor::new(vec![3], vec![1.0, 2.0, 3.0]).expect("valid");
    let data: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    // np.save(f, np.array([1, 2, 3], dtype='<f4')): 128 bytes of preamble and header.
    let expected = npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", &data);
    assert_eq!(t.to_npy(), expected);
    assert_eq!(&expected[8..10], &[118, 0]);
}

#[test]
fn round_trips() {
    for shape in [vec![], vec![0], vec![5], vec![2, 3], vec![1, 3, 4, 4], vec![1; 16]] {
        let count = shape.iter().product();
        let data: Vec<f32> = (0..count).map(|i| i as f32 * 0.37 - 1.0).collect();
        let t = Tensor::new(shape.clone(), data).expect("valid");
        let bytes = t.to_npy();
        let header_end = bytes.len() - count * 4;
        assert_eq!(header_end % 64, 0, "{shape:?}: header padded to 64");
        assert_eq!(bytes[header_end - 1], b'\n');
        assert_eq!(Tensor::from_npy(&bytes).expect("reads back"), t, "{shape:?}");
    }
    let special = Tensor::new(vec![3], vec![f32::NAN, f32::INFINITY, -0.0]).expect("valid");
    let back = Tensor::from_npy(&special.to_npy()).expect("reads back");
    assert!(back.data()[0].is_nan() && back.data()[1] == f32::INFINITY && back.data()[2].is_sign_negative());
}

#[test]
fn reads_other_dtypes_as_f32() {
    let f8: Vec<u8> = [1.5f64, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i8: Vec<u8> = [7i64, -3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let i4: Vec<u8> = [9i32, -4].iter().flat_map(|v| v.to_le_bytes()).collect();
    for (descr, data, expected) in [("<f8", f8, [1.5, -2.0]), ("<i8", i8, [7.0, -3.0]), ("<i4", i4, [9.0, -4.0])] {
        let t = Tensor::from_npy(&npy_file(&header(descr, "(1, 2)"), &data)).expect(descr);
        assert_eq!((t.shape(), t.data()), (&[1usize, 2][..], &expected[..]), "{descr}");
    }
    // Version 2.0 (u32 header length) and double-quoted keys.
    let text = "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (1,)}\n";
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend_from_slice(&u32::try_from(text.len()).expect("short").to_le_bytes());
    v2.extend_from_slice(text.as_bytes());
    v2.extend_from_slice(&4.0f32.to_le_bytes());
    assert_eq!(Tensor::from_npy(&v2).expect("v2").data(), &[4.0]);
}

#[test]
fn refusals_say_why() {
    let four = [0u8; 4];
    let fortran = npy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", &four);
    let mut version = npy_file(&header("<f4", "(1,)"), &four);
    version[6] = 4;
    let ok = npy_file(&header("<f4", "(2,)"), &[0; 8]);
    for (bytes, needle) in [
        (fortran, "fortran_order arrays are not supported"),
        (npy_file(&header(">f4", "(1,)"), &four), "big-endian dtype '>f4'"),
        (npy_file(&header("<f2", "(2,)"), &four), "dtype '<f2' is not supported"),
        (npy_file(&header("|b1", "(4,)"), &four), "dtype '|b1' is not supported"),
        (npy_file(&header("<f4", "(2,)"), &four), "needs 8 data bytes but the file has 4"),
        (npy_file(&header("<f4", "(1,)"), &[0; 5]), "needs 4 data bytes but the file has 5"),
        (npy_file(&header("<f4", "(4294967296, 4294967296)"), &[]), "elements allowed"),
        (version, "format version 4.0 is not supported"),
        (ok[..20].to_vec(), "file ends before"),
        (ok[..9].to_vec(), "ends inside the header length"),
        (b"\x93NUM".to_vec(), "too short"),
        (b"PK\x03\x04 not an npy file".to_vec(), "no \\x93NUMPY magic"),
    ] {
        let err = Tensor::from_npy(&bytes).expect_err(needle);
        assert!(matches!(&err, RuntimeError::Npy(m) | RuntimeError::Tensor(m) if m.contains(needle)), "{err}");
    }
}

/// Seeded mutations of valid files (mostly in the header) never panic, and whatever reads keeps
/// the tensor invariant.
#[test]
fn mutated_files_never_panic() {
    let f4 = Tensor::new(vec![2, 3], (0..6).map(|i| i as f32).collect()).expect("valid").to_npy();
    let f8 = npy_file(&header("<f8", "(3,)"), &[0; 24]);
    let i4 = npy_file(&header("<i4", "()"), &[1, 0, 0, 0]);
    let mut rng = Rng::new(0x5eed);
    let (mut read, mut refused) = (0, 0);
    for round in 0..30_000 {
        let seed_file = [&f4, &f8, &i4][round % 3];
        let bytes = if round % 50 == 0 {
            let len = rng.below(200);
            rng.bytes(len)
        } else {
            rng.mutate(seed_file, 128)
        };
        match Tensor::from_npy(&bytes) {
            Ok(t) => {
                assert_eq!(t.shape().iter().product::<usize>(), t.data().len());
                read += 1;
            }
            Err(_) => refused += 1,
        }
    }
    assert!(read > 100 && refused > 10_000, "read {read}, refused {refused}");
}
