//! Finds the eBPF object that `cargo xtask build-ebpf` leaves behind, so the
//! agent can embed it, and fails with the command to run when it is missing.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LINKMESH_BPF_OBJECT");
    let object = env::var_os("LINKMESH_BPF_OBJECT").map_or_else(
        || {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            manifest.join("../target/bpf/linkmesh.bpf.o")
        },
        PathBuf::from,
    );
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        // A build script's panic is the way to stop the build with a message.
        eprintln!(
            "error: the eBPF object {} is missing.\n\
             Build it first with:  cargo xtask build-ebpf\n\
             (or point LINKMESH_BPF_OBJECT at a built linkmesh.bpf.o)",
            object.display()
        );
        std::process::exit(1);
    }
    let object = object.canonicalize().unwrap_or(object);
    println!("cargo:rustc-env=LINKMESH_BPF_OBJECT={}", object.display());
}
