//! Builds the kernel programs (`tracer-ebpf`) from source and leaves the object in OUT_DIR,
//! where `src/probes/load.rs` embeds it in the binary.
//!
//! The eBPF build must use Debian's rustc-web (it ships a prebuilt libcore for
//! `bpfel-unknown-none`; the rustup toolchains here have no rust-src). aya-build runs
//! `rustup run <toolchain> cargo` whenever `rustup` is on PATH, so PATH entries holding rustup
//! are removed for the nested build, and bpf-linker is named by absolute path instead.
//! See shared/toolchain.md and `xtask setup`.

use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};

const SETUP_HINT: &str = "run `cargo xtask setup` (or the README command), which installs \
                          rustc-web, libstd-rust-web-dev-bpf, llvm-22-dev and bpf-linker";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=TRACER_BPF_LINKER");
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = env::split_paths(&path).collect();

    let linker = match env::var_os("TRACER_BPF_LINKER") {
        Some(l) => PathBuf::from(l),
        None => dirs
            .iter()
            .map(|d| d.join("bpf-linker"))
            .chain(home_cargo_bin("bpf-linker"))
            .find(|p| p.is_file())
            .with_context(|| {
                format!("bpf-linker not found on PATH or in ~/.cargo/bin: {SETUP_HINT}")
            })?,
    };
    if !PathBuf::from("/usr/lib/rustlib/bpfel-unknown-none").is_dir() {
        bail!(
            "/usr/lib/rustlib/bpfel-unknown-none is missing (Debian's libstd-rust-web-dev-bpf): {SETUP_HINT}"
        );
    }

    let kept: Vec<PathBuf> = dirs
        .into_iter()
        .filter(|d| !d.join("rustup").exists())
        .collect();
    let new_path = env::join_paths(kept).context("rebuilding PATH")?;
    // SAFETY: build scripts are single-threaded at this point; the variables are read by
    // aya-build and the cargo it spawns.
    unsafe {
        env::set_var("PATH", new_path);
        env::set_var("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker);
        // aya-ebpf enables one unstable feature (asm_experimental_arch) on the bpf target.
        env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf");
        // Cargo and rustup variables of the outer build must not steer the nested one.
        for var in [
            "CARGO",
            "RUSTUP_TOOLCHAIN",
            "RUSTC_WRAPPER",
            "CARGO_TARGET_DIR",
        ] {
            env::remove_var(var);
        }
    }

    let ebpf = aya_build::Package {
        name: "tracer-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
        .with_context(|| format!("building the eBPF programs failed: {SETUP_HINT}"))
}

fn home_cargo_bin(name: &str) -> Option<PathBuf> {
    env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(name))
}
