//! Compiles the .proto contract with protox (pure Rust), so a fresh machine needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = protox::compile(["mcpssh/v1/daemon.proto"], ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)?;
    println!("cargo:rerun-if-changed=mcpssh");
    Ok(())
}
