//! NumPy `.npy` files in and out of [`Tensor`], by hand: format versions 1.0, 2.0 and 3.0, C
//! order; writes `<f4`, reads `<f4`, `<f8`, `<i8` and `<i4` (converted to f32). Every malformed
//! file is an error, never a panic.
//!
//! The format: the magic `\x93NUMPY`, a major and minor version byte, the header length
//! (u16 little-endian in 1.0, u32 in 2.0 and 3.0), then a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }` padded with spaces to a multiple
//! of 64 bytes and ended by `\n`, then the raw data.

use crate::error::{RuntimeError, fmt_shape};
use crate::tensor::{Tensor, element_count};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// NumPy pads the preamble and header to a multiple of this.
const ALIGN: usize = 64;
/// Larger headers are refused; NumPy itself refuses headers over 10 000 bytes by default.
const MAX_HEADER_LEN: usize = 64 << 10;

/// The element types this reader accepts.
#[derive(Debug, Clone, Copy)]
enum Dtype {
    F4,
    F8,
    I8,
    I4,
}

impl Dtype {
    fn parse(descr: &str) -> Result<Dtype, RuntimeError> {
        match descr {
            "<f4" => Ok(Dtype::F4),
            "<f8" => Ok(Dtype::F8),
            "<i8" => Ok(Dtype::I8),
            "<i4" => Ok(Dtype::I4),
            other if other.starts_with('>') => Err(npy(format!(
                "big-endian dtype '{other}' is not supported; save little-endian (e.g. arr.astype('<f4'))"
            ))),
            other => Err(npy(format!("dtype '{other}' is not supported; use '<f4' (also read: '<f8', '<i8', '<i4')"))),
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F4 | Dtype::I4 => 4,
            Dtype::F8 | Dtype::I8 => 8,
        }
    }

    /// One little-endian element to f32 (f64 and i64 values round to the nearest f32).
    fn to_f32(self, bytes: &[u8]) -> f32 {
        let mut b8 = [0u8; 8];
        b8[..bytes.len()].copy_from_slice(bytes);
        let b4 = [b8[0], b8[1], b8[2], b8[3]];
        match self {
            Dtype::F4 => f32::from_le_bytes(b4),
            Dtype::I4 => i32::from_le_bytes(b4) as f32,
            Dtype::F8 => f64::from_le_bytes(b8) as f32,
            Dtype::I8 => i64::from_le_bytes(b8) as f32,
        }
    }
}

fn npy(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Npy(message.into())
}

impl Tensor {
    /// Reads a `.npy` file held in memory. Refuses Fortran order, dtypes other than `<f4`,
    /// `<f8`, `<i8` and `<i4`, trailing or missing data bytes, and tensors past the caps.
    pub fn from_npy(bytes: &[u8]) -> Result<Tensor, RuntimeError> {
        let (major, minor) = match bytes {
            [m0, m1, m2, m3, m4, m5, major, minor, ..] if [*m0, *m1, *m2, *m3, *m4, *m5] == *MAGIC => (*major, *minor),
            _ if bytes.len() < 8 => return Err(npy(format!("{} bytes is too short for a .npy file", bytes.len()))),
            _ => return Err(npy("no \\x93NUMPY magic at the start")),
        };
        let (header_start, header_len) = match (major, minor) {
            (1, 0) => (10, bytes.get(8..10).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))),
            (2, 0) | (3, 0) => {
                (12, bytes.get(8..12).and_then(|b| usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()))
            }
            _ => return Err(npy(format!("format version {major}.{minor} is not supported (1.0, 2.0, 3.0 are)"))),
        };
        let header_len = header_len.ok_or_else(|| npy("file ends inside the header length"))?;
        if header_len > MAX_HEADER_LEN {
            return Err(npy(format!("header of {header_len} bytes is longer than the {MAX_HEADER_LEN} allowed")));
        }
        let data_start = header_start + header_len;
        let header = bytes
            .get(header_start..data_start)
            .ok_or_else(|| npy(format!("header says {header_len} bytes but the file ends before")))?;
        let header = std::str::from_utf8(header).map_err(|_| npy("header is not text"))?;
        let Header { descr, fortran_order, shape } = Header::parse(header)?;
        if fortran_order {
            return Err(npy("fortran_order arrays are not supported; save C order (np.ascontiguousarray)"));
        }
        let dtype = Dtype::parse(&descr)?;
        let count = element_count(&shape)?;
        let data = &bytes[data_start..];
        // count <= MAX_ELEMENTS, so this cannot overflow.
        let expected = count * dtype.size();
        if data.len() != expected {
            return Err(npy(format!(
                "shape {} of '{descr}' needs {expected} data bytes but the file has {}",
                fmt_shape(&shape),
                data.len()
            )));
        }
        let values = data.chunks_exact(dtype.size()).map(|chunk| dtype.to_f32(chunk)).collect();
        Tensor::new(shape, values)
    }

    /// The tensor as a `.npy` file (version 1.0, or 2.0 if the header needs it; `<f4`, C order),
    /// which `numpy.load` reads.
    pub fn to_npy(&self) -> Vec<u8> {
        let dims: Vec<String> = self.shape().iter().map(ToString::to_string).collect();
        let shape = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        let mut preamble = 10;
        let padded = |preamble: usize, header: &str| (preamble + header.len() + 1).div_ceil(ALIGN) * ALIGN - preamble;
        if padded(preamble, &header) > usize::from(u16::MAX) {
            preamble = 12;
        }
        let header_len = padded(preamble, &header);
        while header.len() + 1 < header_len {
            header.push(' ');
        }
        header.push('\n');

        let mut out = Vec::with_capacity(header_len + preamble + self.data().len() * 4);
        out.extend_from_slice(MAGIC);
        if preamble == 10 {
            out.extend_from_slice(&[1, 0]);
            // Checked just above: header_len fits in a u16 here.
            out.extend_from_slice(&u16::try_from(header_len).unwrap_or(u16::MAX).to_le_bytes());
        } else {
            out.extend_from_slice(&[2, 0]);
            out.extend_from_slice(&u32::try_from(header_len).unwrap_or(u32::MAX).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        for value in self.data() {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out
    }
}

/// The three keys of a `.npy` header dict.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value in the header dict: the subset of Python literals NumPy writes there.
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

impl Header {
    /// Parses the header's dict literal; only whitespace (the padding) may follow it.
    fn parse(text: &str) -> Result<Header, RuntimeError> {
        let mut cursor = Cursor { text: text.as_bytes(), pos: 0 };
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        cursor.expect(b'{')?;
        loop {
            cursor.skip_ws();
            if cursor.eat(b'}') {
                break;
            }
            let key = cursor.string()?;
            cursor.skip_ws();
            cursor.expect(b':')?;
            cursor.skip_ws();
            let value = cursor.value()?;
            let duplicate = match (key.as_str(), value) {
                ("descr", Value::Str(s)) => descr.replace(s).is_some(),
                ("fortran_order", Value::Bool(b)) => fortran_order.replace(b).is_some(),
                ("shape", Value::Tuple(t)) => shape.replace(t).is_some(),
                ("descr" | "fortran_order" | "shape", _) => {
                    return Err(npy(format!("header key '{key}' has a value of the wrong kind")));
                }
                _ => return Err(npy(format!("unexpected header key '{key}'"))),
            };
            if duplicate {
                return Err(npy(format!("header key '{key}' appears twice")));
            }
            cursor.skip_ws();
            if !cursor.eat(b',') {
                cursor.expect(b'}')?;
                break;
            }
        }
        cursor.skip_ws();
        if cursor.pos != cursor.text.len() {
            return Err(npy("unexpected text after the header dict"));
        }
        let missing = |key: &str| npy(format!("header has no '{key}'"));
        Ok(Header {
            descr: descr.ok_or_else(|| missing("descr"))?,
            fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
            shape: shape.ok_or_else(|| missing("shape"))?,
        })
    }
}

/// A position in the header text.
struct Cursor<'a> {
    text: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        if matched {
            self.pos += 1;
        }
        matched
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let matched = self.text[self.pos..].starts_with(word.as_bytes());
        if matched {
            self.pos += word.len();
        }
        matched
    }

    fn expect(&mut self, byte: u8) -> Result<(), RuntimeError> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(npy(format!("header: expected '{}' at byte {}", char::from(byte), self.pos)))
        }
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// A quoted string without escapes (NumPy never writes any in these three keys).
    fn string(&mut self) -> Result<String, RuntimeError> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(npy(format!("header: expected a quoted string at byte {}", self.pos))),
        };
        self.pos += 1;
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b == quote {
                let s = String::from_utf8_lossy(&self.text[start..self.pos]).into_owned();
                self.pos += 1;
                return Ok(s);
            }
            if b == b'\\' {
                return Err(npy("header: escapes in strings are not supported"));
            }
            self.pos += 1;
        }
        Err(npy("header: unterminated string"))
    }

    fn value(&mut self) -> Result<Value, RuntimeError> {
        match self.peek() {
            Some(b'\'' | b'"') => self.string().map(Value::Str),
            Some(b'(') => self.tuple().map(Value::Tuple),
            _ if self.eat_word("True") => Ok(Value::Bool(true)),
            _ if self.eat_word("False") => Ok(Value::Bool(false)),
            _ => Err(npy(format!("header: unexpected value at byte {}", self.pos))),
        }
    }

    /// `()`, `(3,)`, `(1, 3, 224, 224)`; also `(3L, 4L)` from Python 2 era files.
    fn tuple(&mut self) -> Result<Vec<usize>, RuntimeError> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(b')') {
                return Ok(dims);
            }
            if dims.len() >= Tensor::MAX_RANK {
                return Err(npy(format!("shape has more than {} dimensions", Tensor::MAX_RANK)));
            }
            dims.push(self.dim()?);
            self.skip_ws();
            if !self.eat(b',') {
                self.skip_ws();
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }

    fn dim(&mut self) -> Result<usize, RuntimeError> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits = std::str::from_utf8(&self.text[start..self.pos]).unwrap_or_default();
        let dim = digits.parse::<usize>().map_err(|_| npy(format!("header: bad dimension at byte {start}")))?;
        self.eat(b'L');
        Ok(dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_forms_numpy_writes() {
        let parsed = Header::parse("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }    \n")
            .expect("numpy header parses");
        assert_eq!(parsed, Header { descr: "<f4".into(), fortran_order: false, shape: vec![2, 3] });
        let parsed = Header::parse("{\"descr\":\"<i8\",\"shape\":(5,),\"fortran_order\":True}").expect("parses");
        assert_eq!(parsed, Header { descr: "<i8".into(), fortran_order: true, shape: vec![5] });
        let parsed = Header::parse("{'descr': '<f8', 'fortran_order': False, 'shape': (3L, 4L), }").expect("parses");
        assert_eq!(parsed.shape, vec![3, 4]);
        let parsed = Header::parse("{'descr': '<f4', 'fortran_order': False, 'shape': (), }").expect("parses");
        assert_eq!(parsed.shape, Vec::<usize>::new());
    }

    #[test]
    fn header_errors() {
        for (text, needle) in [
            ("{'descr': '<f4', 'shape': (1,), }", "no 'fortran_order'"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 'y'}", "unexpected header key 'x'"),
            ("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", "appears twice"),
            ("{'descr': 4}", "unexpected value"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x", "after the header"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", "bad dimension"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}", "bad dimension"),
            ("{'descr': '<f4", "unterminated"),
            ("", "expected '{'"),
        ] {
            let err = Header::parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
