#![no_main]
//! See consentd::fuzzing::control_request (src/fuzzing.rs) for what this target drives and checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| consentd::fuzzing::control_request(data));
