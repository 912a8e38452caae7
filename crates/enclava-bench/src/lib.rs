//! The benchmarks `enclava bench …` runs, each against a floor measured in the same run (these
//! machines are shared and noisy): ratios, not absolute numbers, are what they report. Each starts
//! the system through the sandbox (`enclava-sandbox`) and, where it needs Redis, a throwaway
//! `redis-server` (`enclava-testkit`), so nothing here wires the system by hand.
//!
//! # Layout
//! - [`dashboard`]: the dashboard's first screen and change-to-page latency with 10,000 enclaves.
//! - [`discovery`]: FindEnclave over gRPC against Redis's own floor; heartbeat capacity.
//! - [`federation`]: input sealing, a three-organisation round trip, a task over 100 organisations.
//! - [`farm`]: the Wasm executor's warm and cold starts and fuel metering against a process spawn and unmetered runs.
//! - [`evidence`]: verifications per second per platform, cold and warm, against the signature floor.
//! - [`keys`]: attested key releases over gRPC against evidence verification plus one HPKE seal.
//! - [`pools`]: the pool's routing against round-robin, random and FnPacker, simulated in virtual time;
//!   [`pools_live`]: the same over four sim nodes through the `pools` role, with the direct floor.
//! - [`serving`]: sealed inference against plain tract; encrypted model load against plaintext.

pub mod dashboard;
pub mod discovery;
pub mod evidence;
pub mod farm;
pub mod federation;
pub mod keys;
pub mod pools;
pub mod pools_live;
pub mod serving;

/// The dashboard's page size (what its first screen shows).
pub const DASHBOARD_PAGE: usize = 50;
