//! The crate's one integration-test binary (one link on 2 cores), a module per area.

mod model;
mod npy;
mod tensor;

/// xorshift64 for seeded test inputs and mutations.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// One to four random edits: overwrite, flip a bit, insert, delete, truncate, or mostly
    /// within the first `hot` bytes (where headers live).
    pub fn mutate(&mut self, input: &[u8], hot: usize) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=self.below(4) {
            let span = if self.below(4) == 0 || out.len() <= hot { out.len() } else { hot };
            let at = if span == 0 { 0 } else { self.below(span) };
            match self.below(6) {
                0 if at < out.len() => out[at] = self.next_u64() as u8,
                1 if at < out.len() => out[at] ^= 1 << self.below(8),
                2 => out.insert(at.min(out.len()), self.next_u64() as u8),
                3 if at < out.len() => {
                    out.remove(at);
                }
                4 => out.truncate(at),
                _ if at < out.len() => out[at] = b"0123456789(),' TrueFalse:{}<>f4i8"[self.below(33)],
                _ => {}
            }
        }
        out
    }
}
