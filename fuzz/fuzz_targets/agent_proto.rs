//! `cargo +nightly fuzz run agent_proto`: see `keyward_fuzz_harness::agent_proto` for the input and what must hold.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_fuzz_harness::agent_proto::check(data);
});
