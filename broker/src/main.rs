//! The `keyward` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    keyward_broker::cli::main()
}
