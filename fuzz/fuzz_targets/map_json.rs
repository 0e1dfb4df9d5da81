//! libFuzzer's entry for `fuzz_checks::map_json` (what it asserts is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::map_json::check(data));
