//! Runs inputs through a target's check on stable Rust, without libFuzzer: reproduces a crash the
//! fuzzer saved (a panic here is the crash) and prints where each input ended.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml -p keyward-fuzz-harness --bin replay -- TARGET FILE...`

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(target) = args.next() else {
        eprintln!("usage: replay TARGET FILE... (targets: {})", keyward_fuzz_harness::TARGETS.join(", "));
        return std::process::ExitCode::FAILURE;
    };
    for file in args {
        let data = match std::fs::read(&file) {
            Ok(data) => data,
            Err(error) => {
                eprintln!("{file}: {error}");
                return std::process::ExitCode::FAILURE;
            }
        };
        match keyward_fuzz_harness::check(&target, &data) {
            Some(outcome) => println!("{file}: {outcome:?}"),
            None => {
                eprintln!("unknown target `{target}` (targets: {})", keyward_fuzz_harness::TARGETS.join(", "));
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    std::process::ExitCode::SUCCESS
}
