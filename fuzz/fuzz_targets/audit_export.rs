//! `cargo +nightly fuzz run audit_export`: see `keyward_fuzz_harness::audit_export` for the input and what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_fuzz_harness::audit_export::check(data);
});
