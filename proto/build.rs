//! Generates the gRPC code into `OUT_DIR` (one codegen policy: build-time only).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/controller.proto", "proto/minion.proto"], &["proto"])?;
    Ok(())
}
