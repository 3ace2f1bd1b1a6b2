//! `cargo +nightly fuzz run token_form`: see `keyward_fuzz_harness::token_form` for the input and what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_fuzz_harness::token_form::check(data);
});
