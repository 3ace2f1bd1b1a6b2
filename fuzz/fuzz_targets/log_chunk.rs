//! `cargo +nightly fuzz run log_chunk`: see `keyward_fuzz_harness::log_chunk` for the input and what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_fuzz_harness::log_chunk::check(data);
});
