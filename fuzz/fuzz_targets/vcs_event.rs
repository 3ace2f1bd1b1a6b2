//! `cargo +nightly fuzz run vcs_event`: see `keyward_fuzz_harness::vcs_event` for the input and what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_fuzz_harness::vcs_event::check(data);
});
