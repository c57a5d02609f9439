//! Generates `weft.echo.v1` (tests/proto) for weft-echo's gRPC server and client with protoc,
//! and the descriptor set its reflection service serves. Only with the `grpc` feature.

use std::process::ExitCode;

fn main() -> ExitCode {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    generate()
}

#[cfg(not(feature = "grpc"))]
fn generate() -> ExitCode {
    ExitCode::SUCCESS
}

#[cfg(feature = "grpc")]
fn generate() -> ExitCode {
    use std::{env, path::PathBuf};

    if !protoc_exists() {
        eprintln!(
            "protoc not found: run `cargo xtask setup` (it installs Debian's protobuf-compiler) or set PROTOC to a protoc binary."
        );
        return ExitCode::FAILURE;
    }
    let Some(out) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        eprintln!("OUT_DIR is not set: build.rs runs under cargo only.");
        return ExitCode::FAILURE;
    };
    // Metadata maps as BTreeMaps: `weft-echo grpc` prints them sorted, the same every run.
    let built = tonic_prost_build::configure()
        .btree_map(".")
        .file_descriptor_set_path(out.join("weft_echo_v1_descriptor.bin"))
        .compile_protos(&["proto/weft/echo/v1/echo.proto"], &["proto"]);
    match built {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("generating tests/proto/weft/echo/v1/echo.proto failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `$PROTOC` if set, else `protoc` on `PATH`: where prost-build looks.
#[cfg(feature = "grpc")]
fn protoc_exists() -> bool {
    use std::{env, path::PathBuf};

    if let Some(protoc) = env::var_os("PROTOC") {
        return PathBuf::from(protoc).is_file();
    }
    env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join("protoc").is_file()))
}
