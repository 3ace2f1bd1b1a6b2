//! Compiles Terraform's plugin protocol (tfplugin6.8) and go-plugin's controller and stdio
//! services with `protox` (pure Rust), so building the test provider never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos =
        ["proto/tfplugin6/tfplugin6.8.proto", "proto/plugin/grpc_controller.proto", "proto/plugin/grpc_stdio.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().build_client(false).build_transport(false).compile_fds(descriptors)?;
    Ok(())
}
