//! The `keyward` binary; everything lives in the library.

/// mimalloc instead of the system allocator: an exchange allocates and frees hundreds of small
/// objects (JSON, policy values, SQL rows), and glibc's malloc was 13 % of the broker's CPU
/// under load (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    keyward_broker::cli::main()
}
