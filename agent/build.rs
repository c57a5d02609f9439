//! Puts the kernel object into OUT_DIR for `include_bytes_aligned!`. `cargo xtask build` sets
//! WEFT_BPF_OBJECT to the object it built with nightly; without it (plain `cargo check`,
//! clippy in an editor) an empty stand-in is embedded and the agent refuses to start capture,
//! saying how to build the real one.
#![expect(
    clippy::disallowed_methods,
    reason = "a build script has no async runtime"
)]
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=WEFT_BPF_OBJECT");
    let out_dir = env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = PathBuf::from(out_dir).join("weft-ebpf.o");
    if let Some(path) = env::var_os("WEFT_BPF_OBJECT") {
        let path = PathBuf::from(path);
        println!("cargo::rerun-if-changed={}", path.display());
        if let Err(e) = fs::copy(&path, &out) {
            panic!(
                "WEFT_BPF_OBJECT={} cannot be read ({e}): run `cargo xtask build`",
                path.display()
            );
        }
    } else {
        fs::write(&out, b"").expect("writing the stand-in object");
    }
}
