//! Puts the kernel object into OUT_DIR for `include_bytes_aligned!`. `cargo xtask build` sets
//! WEFT_BPF_OBJECT to the object it built with nightly; without it (plain `cargo check`,
//! clippy in an editor) an empty stand-in is embedded and the agent refuses to start capture,
//! saying how to build the real one.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rerun-if-env-changed=WEFT_BPF_OBJECT");
    println!("cargo::rustc-check-cfg=cfg(weft_bpf_stub)");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("weft-ebpf.o");
    match env::var_os("WEFT_BPF_OBJECT") {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo::rerun-if-changed={}", path.display());
            fs::copy(&path, &out).unwrap_or_else(|e| {
                panic!(
                    "WEFT_BPF_OBJECT={} cannot be read ({e}): run `cargo xtask build`",
                    path.display()
                )
            });
        }
        None => {
            fs::write(&out, b"").expect("writing the stand-in object");
            println!("cargo::rustc-cfg=weft_bpf_stub");
        }
    }
}
