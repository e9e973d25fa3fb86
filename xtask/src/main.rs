//! Developer tasks: `cargo xtask setup | run | test | bench`.
//!
//! `setup` installs what the eBPF build needs (Debian's rustc-web with the prebuilt BPF libcore,
//! LLVM 22, bpf-linker 0.13 built against it: see shared/toolchain.md). It is idempotent and
//! takes well under a second when everything is present. `run` and `test` call it first, so
//! the README commands work on a fresh machine.

mod bench;

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
    /// Set up, then run formatting and lint checks and the whole test suite (needs root).
    Test,
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

/// Debian packages the build needs. bpftrace is the benchmark's reference peer.
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "bpftrace",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.cmd {
        Cmd::Setup => setup(),
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
        Cmd::Test => {
            setup()?;
            cargo(&root, &["fmt", "--all", "--", "--check"])?;
            cargo(&root, &["clippy", "--all-targets", "--", "-D", "warnings"])?;
            clippy_ebpf(&root)?;
            // The integration tests run the tracer binary: build it first.
            cargo(&root, &["build", "-p", "tracer", "--bins"])?;
            cargo_test(&root)
        }
        Cmd::Bench { iters, threads } => {
            setup()?;
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

/// `cargo test`, passing its output through, then one closing line with the totals of every
/// test binary (cargo's own last line is that of the last binary, often one with no tests).
fn cargo_test(root: &Path) -> anyhow::Result<()> {
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
            let count = |what: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(what)
                    })
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() || failed > 0 {
        bail!("`cargo test` failed ({status})");
    }
    if passed == 0 {
        bail!("`cargo test` ran no test");
    }
    Ok(())
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
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
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
