//! `cargo +nightly fuzz run plan_json`: see `keyward_fuzz_harness::plan_json` for the input and what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_fuzz_harness::plan_json::check(data);
});
