//! libFuzzer's entry for `fuzz_checks::token` (what it asserts is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::token::check(data));
