//! meterkit core: everything that runs per byte or per event on an LLM stream.
//!
//! Data flow, one module per step:
//! `sse` (framing) → `extract` (per wire format) → `tokens` (exact BPE counts) →
//! `meter` (forward / truncate / pause, per network read) → `endings` (synthetic events).
//! The PyO3 binding lives in `python` only, behind the `python` feature, so `cargo test`
//! runs without Python. `crypto` holds the payment layer's signatures and digests.

pub mod budget;
pub mod crypto;
pub mod endings;
pub mod extract;
pub mod meter;
pub mod pretokenize;
pub mod sse;
pub mod tokens;

#[cfg(feature = "python")]
mod python;
