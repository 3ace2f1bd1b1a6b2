//! `cargo +nightly fuzz run policy_input`: see `keyward_fuzz_harness::policy_input` for the input and what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_fuzz_harness::policy_input::check(data);
});
