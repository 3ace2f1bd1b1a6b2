//! Compiles the agent protocol with `protox` (pure Rust), so building Keyward never needs a system `protoc`.
//! Only with the `grpc` feature: without it (the offline verifier) there is nothing to generate.

#[cfg(feature = "grpc")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/keyward/agent/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().build_transport(false).compile_fds(descriptors)?;
    Ok(())
}

#[cfg(not(feature = "grpc"))]
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
