// Tells rustc which target-arch cfg values exist, and rebuilds when bpf-linker changes.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\",\"aarch64\"))");
}
