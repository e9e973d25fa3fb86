//! Developer tasks: `cargo xtask setup | run | test | vmtest | bench`.
//!
//! `setup` installs what the eBPF build needs (Debian's rustc-web with the prebuilt BPF libcore,
//! LLVM 22, bpf-linker 0.13 built against it: see shared/toolchain.md). It is idempotent and
//! takes well under a second when everything is present. `run` and `test` call it first, so
//! the README commands work on a fresh machine.

mod bench;
mod vmtest;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain (apt packages, bpf-linker) if missing.
    Setup,
    /// Set up, build (release) and run the tracer; arguments go to `tracer` (default: `live`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run formatting and lint checks and the whole test suite (needs root): on
    /// this machine's kernel, then on each kernel of the matrix under qemu (`vmtest`).
    Test {
        /// Only this machine's kernel: skip the qemu matrix.
        #[arg(long)]
        host_only: bool,
    },
    /// Set up, build, then run the integration tests on Debian's kernels under qemu.
    Vmtest {
        /// Kernels to boot (default: the whole matrix), e.g. `--kernel 5.10 --kernel 6.1`.
        #[arg(long = "kernel", value_name = "VERSION")]
        kernels: Vec<String>,
        /// Only these test binaries (default: all), e.g. `--tests uses --tests memory`.
        #[arg(long = "tests", value_name = "NAME")]
        tests: Vec<String>,
    },
    /// Build the release binary linked statically (runs on any x86_64 Linux, in a `FROM
    /// scratch` image, copied to a VM): target/dist/tracer, without debug info.
    Dist,
    /// `dist`, then build the container image localhost/tracer:<version> from
    /// deploy/Dockerfile with podman.
    Image,
    /// Set up, then measure tracing overhead against bpftrace, throughput and collector RSS.
    Bench {
        /// Iterations of each hot loop.
        #[arg(long, default_value_t = 1_000_000)]
        iters: u64,
        /// Threads for the collector-RSS measurement.
        #[arg(long, default_value_t = 10_000)]
        threads: usize,
    },
}

/// Debian packages the build needs. bpftrace is the benchmark's reference peer; qemu, busybox
/// and cpio boot the kernel matrix (`vmtest`).
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "bpftrace",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    // The creator-stack tests: a C workload built at -O2, Debian's CPython and Ruby.
    "gcc",
    "libc6-dev",
    "python3.11",
    "ruby",
    // A healthy control of the findings tests: redis under redis-benchmark.
    "redis-server",
    "redis-tools",
    // The real-container test (host only): podman with runc.
    "podman",
    "runc",
    // The guests' loopback (the daemon tests scrape 127.0.0.1).
    "iproute2",
    // The live view's test drives the binary in a terminal.
    "tmux",
    // A virtualenv for the manifest validator (kubernetes-validate, from PyPI).
    "python3-venv",
];
/// Python tools the host-only tests run, pinned, in one virtualenv: the manifests' schema
/// validator (tests/deploy.rs) and Perfetto's own trace schema with the protobuf runtime it
/// was generated for (tests/perfetto_schema.rs).
const PYTHON_TOOLS: &[&str] = &[
    "kubernetes-validate==1.37.0",
    "perfetto==0.59.1",
    "protobuf==6.33.6",
];
pub const TOOLS_VENV: &str = "target/tools/venv";
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Dist => {
            setup()?;
            dist(&root).map(|_| ())
        }
        Cmd::Image => {
            setup()?;
            dist(&root)?;
            image(&root)
        }
        Cmd::Run { args } => {
            setup()?;
            cargo(&root, &["build", "--release", "-p", "tracer"])?;
            let bin = root.join("target/release/tracer");
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test { host_only } => {
            setup()?;
            cargo(&root, &["fmt", "--all", "--", "--check"])?;
            cargo(&root, &["clippy", "--all-targets", "--", "-D", "warnings"])?;
            clippy_ebpf(&root)?;
            // The integration tests run the tracer binary: build it first; the container test
            // runs the static release binary.
            cargo(&root, &["build", "-p", "tracer", "--bins"])?;
            dist(&root)?;
            let (passed, failed) = cargo_test(&root)?;
            let (vm_passed, vm_failed) = if host_only {
                (0, 0)
            } else {
                matrix(&root, &[], &[])?
            };
            println!(
                "tests: {} passed, {} failed",
                passed + vm_passed,
                failed + vm_failed
            );
            if failed + vm_failed > 0 {
                bail!("{} tests failed", failed + vm_failed);
            }
            Ok(())
        }
        Cmd::Vmtest { kernels, tests } => {
            setup()?;
            cargo(&root, &["build", "-p", "tracer", "--bins"])?;
            // The static release binary is tested in each guest too (copied to a VM).
            dist(&root)?;
            let (passed, failed) = matrix(&root, &kernels, &tests)?;
            println!("vmtest: {passed} passed, {failed} failed");
            if failed > 0 {
                bail!("{failed} tests failed in the kernel matrix");
            }
            Ok(())
        }
        Cmd::Bench { iters, threads } => {
            setup()?;
            apt_install(&["redis-server", "redis-tools"])?;
            cargo(
                &root,
                &["build", "--release", "-p", "tracer", "-p", "tracer-tests"],
            )?;
            bench::run(&root, iters, threads)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The static release binary, stripped of debug info: target/dist/tracer.
fn dist(root: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    eprintln!("xtask: cargo build --release -p tracer --target {target} (+crt-static)");
    // Through the target's own RUSTFLAGS: build scripts and the eBPF build are not touched.
    run(Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "tracer",
            "--bin",
            "tracer",
            "--target",
            target,
        ])
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .current_dir(root))?;
    let built = root.join(format!("target/{target}/release/tracer"));
    let dir = root.join("target/dist");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("tracer");
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&built)
        .arg(&out))
    .context("objcopy (binutils)")?;
    // Static: no interpreter, no needed libraries.
    let elf = std::fs::read(&out)?;
    let obj = String::from_utf8_lossy(&elf);
    if obj.contains("/lib64/ld-linux-x86-64.so.2") {
        bail!(
            "{} still names the dynamic loader: not static",
            out.display()
        );
    }
    eprintln!("xtask: {} ({} bytes, static)", out.display(), elf.len());
    Ok(out)
}

/// localhost/tracer:<version> from deploy/Dockerfile, with target/dist as the context.
fn image(root: &Path) -> anyhow::Result<()> {
    let tag = format!("localhost/tracer:{}", env!("CARGO_PKG_VERSION"));
    run(Command::new("podman")
        .args(["build", "-t", &tag, "-f"])
        .arg(root.join("deploy/Dockerfile"))
        .arg(root.join("target/dist")))?;
    eprintln!("xtask: built {tag}; deploy/daemonset.yaml runs it");
    Ok(())
}

/// Clippy on the kernel programs. The rustup toolchains cannot build the bpf target (no
/// rust-src) and Debian's has no clippy, so the crate is checked for the host with
/// `panic=abort` (it is `no_std`), in a target directory of its own.
fn clippy_ebpf(root: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo clippy -p tracer-ebpf (host check, panic=abort)");
    run(Command::new(&cargo)
        .args(["clippy", "-p", "tracer-ebpf", "--target-dir"])
        .arg(root.join("target/clippy-ebpf"))
        .args(["--", "-D", "warnings"])
        .env("RUSTFLAGS", "-C panic=abort")
        .current_dir(root))
}

/// `cargo test`, passing its output through; returns the totals of every test binary (cargo's
/// own last line is that of the last binary, often one with no tests).
fn cargo_test(root: &Path) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo test --no-fail-fast");
    let mut child = Command::new(&cargo)
        .args(["test", "--no-fail-fast"])
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cargo}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += vmtest::count(rest, " passed");
            failed += vmtest::count(rest, " failed");
        }
    }
    let status = child.wait()?;
    println!(
        "host tests ({}): {passed} passed, {failed} failed",
        kernel_release()
    );
    if !status.success() && failed == 0 {
        bail!("`cargo test` failed ({status})");
    }
    if passed == 0 {
        bail!("`cargo test` ran no test");
    }
    Ok((passed, failed))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The integration tests (and the tracer's own, some of which read the kernel's BTF) on each
/// kernel of the matrix; prints a kernel × result table and returns the totals.
fn matrix(root: &Path, kernels: &[String], tests: &[String]) -> anyhow::Result<(u64, u64)> {
    let mut bins = vmtest::test_binaries(root, &["tracer", "tracer-tests"])?;
    if !tests.is_empty() {
        // Test binaries are `deps/<name>-<hash>`; `tracer-<hash>` is the library's unit
        // tests. The workloads they run (outside deps/) stay.
        bins.retain(|b| {
            !b.to_string_lossy().contains("/deps/")
                || b.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    tests.iter().any(|t| {
                        n.strip_prefix(t.as_str())
                            .is_some_and(|r| r.starts_with('-'))
                    })
                })
        });
        if !bins.iter().any(|b| b.to_string_lossy().contains("/deps/")) {
            bail!("no test binary is named {tests:?} (tests/tests/<name>.rs, or tracer)");
        }
    }
    // The guests have no container runtime, Python or tmux: tests/containers.rs (podman),
    // tests/deploy.rs (the manifest validator), tests/perfetto_schema.rs (Perfetto's Python
    // schema) and tests/top.rs (tmux) run on the host only.
    bins.retain(|b| {
        let host_only = b.file_name().is_some_and(|n| {
            let n = n.to_string_lossy();
            ["containers-", "deploy-", "top-", "perfetto_schema-"]
                .iter()
                .any(|p| n.starts_with(p))
        });
        if host_only {
            eprintln!(
                "xtask: vmtest: {} runs on the host only (no podman, Python or tmux in the guests)",
                b.display()
            );
        }
        !host_only
    });
    for b in ["tracer", "workload"] {
        bins.push(root.join("target/debug").join(b));
    }
    // `cargo xtask dist`'s static binary, at the path the tests look for it.
    bins.push(root.join("target/dist/tracer"));
    bins.sort();
    bins.dedup();
    let o = vmtest::run(root, kernels, &bins)?;
    println!("kernel matrix:");
    println!(
        "  {:<6} {:<32} {:>6} {:>6}  status",
        "kernel", "release", "passed", "failed"
    );
    for (label, release, passed, failed, status) in &o.rows {
        println!("  {label:<6} {release:<32} {passed:>6} {failed:>6}  {status}");
    }
    Ok((o.passed, o.failed))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn apt_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn setup() -> anyhow::Result<()> {
    apt_install(APT_PACKAGES)?;
    setup_linker()?;
    setup_python_tools(&workspace_root())
}

/// [`PYTHON_TOOLS`] in a virtualenv of the workspace (Debian's pip refuses system-wide
/// installs); nothing to do when the stamp says those versions are there.
fn setup_python_tools(root: &Path) -> anyhow::Result<()> {
    let venv = root.join(TOOLS_VENV);
    let stamp = venv.join("installed.txt");
    let want = PYTHON_TOOLS.join("\n") + "\n";
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == want)
        && venv.join("bin/kubernetes-validate").is_file()
    {
        return Ok(());
    }
    eprintln!(
        "xtask: installing {} into {}",
        PYTHON_TOOLS.join(" "),
        venv.display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .context("python3 -m venv (apt-get install python3-venv)")?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "-q"])
        .args(PYTHON_TOOLS))
    .context("pip install (from PyPI)")?;
    std::fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))
}

/// Installs the Debian packages of `pkgs` that are missing (none: no apt call at all).
fn apt_install(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !apt_installed(p)).collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))
            .context("apt-get update (are you root?)")?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .context("apt-get install")?;
    }
    Ok(())
}

fn setup_linker() -> anyhow::Result<()> {
    // On PATH, or where `cargo install` puts it (the build looks there too).
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin/bpf-linker"));
    let linker_ok = ["bpf-linker".into()]
        .into_iter()
        .chain(cargo_bin)
        .any(|bin: PathBuf| {
            Command::new(bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        });
    if !linker_ok {
        eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (~2 min)");
        // Debian's cargo (rustc-web 1.96), as verified in shared/toolchain.md.
        run(Command::new("/usr/bin/cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
        .context("installing bpf-linker")?;
    }
    Ok(())
}
