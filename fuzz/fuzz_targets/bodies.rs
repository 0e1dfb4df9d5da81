//! libFuzzer's entry for `fuzz_checks::bodies` (what it asserts is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::bodies::check(data));
