//! libFuzzer's entry for `fuzz_checks::meta_commands` (what it asserts is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::meta_commands::check(data));
