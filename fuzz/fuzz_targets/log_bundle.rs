//! `cargo +nightly fuzz run log_bundle`: see `keyward_fuzz_harness::log_bundle` for the input and what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_fuzz_harness::log_bundle::check(data);
});
