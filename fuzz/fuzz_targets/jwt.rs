//! `cargo +nightly fuzz run jwt`: see `keyward_fuzz_harness::jwt` for the input and what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_fuzz_harness::jwt::check(data);
});
