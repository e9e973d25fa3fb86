//! Builds the C workloads with Debian's gcc at -O2 (no frame pointers on x86_64), against
//! Debian's glibc: the creator-stack tests must unwind binaries like the ones in production.

use std::{path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    for (name, env) in [("spawner", "SPAWNER_BIN"), ("leaker", "LEAKER_BIN")] {
        let src = format!("workloads/{name}.c");
        println!("cargo:rerun-if-changed={src}");
        let bin = out.join(name);
        let st = Command::new("cc")
            .args(["-O2", "-fomit-frame-pointer", "-pthread", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .expect("running cc (apt-get install gcc libc6-dev; `cargo xtask setup` does)");
        assert!(st.success(), "cc failed to build {src}");
        println!("cargo:rustc-env={env}={}", bin.display());
    }
}
