#![no_main]
//! See consentd::fuzzing::authoring (src/fuzzing.rs) for what this target drives and checks.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| consentd::fuzzing::authoring(data));
