//! `cargo +nightly fuzz run jwks`: see `keyward_fuzz_harness::jwks` for the input and what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_fuzz_harness::jwks::check(data);
});
