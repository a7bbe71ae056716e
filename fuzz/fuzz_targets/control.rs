//! libFuzzer target; the body is `harness::control` (shared with tests/fuzz_regressions.rs).
#![no_main]

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::control(data));
