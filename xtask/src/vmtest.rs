//! `cargo xtask vmtest`: the integration tests on the kernels fleets run, each booted under
//! qemu (TCG: nested KVM hangs on this kind of machine).
//!
//! - Kernels are Debian's cloud kernels, fetched with `apt-get download` through a private
//!   sources list and package lists (the host's apt setup is untouched), and cached under
//!   `~/.cache/tracer-vmtest` (or `$TRACER_VMTEST_CACHE`): a second run needs no network.
//! - One initramfs serves every kernel: busybox, the util-linux tools the tests call, the
//!   tracer, the workload and the test binaries at the same absolute paths as on the host (so
//!   the tests run unchanged: they find `tracer` next to their own `deps/` directory), and
//!   the glibc files they load (`ldd`).
//! - `/init` mounts what a Debian host has (proc, sys, devtmpfs, tracefs and
//!   the same hybrid cgroup layout as this machine: v1 memory and pids under `/sys/fs/cgroup`,
//!   cgroup2 at `/sys/fs/cgroup/unified`), runs each test binary, prints its output on the
//!   serial console, and powers off.
//!
//! Anchors: aya's `xtask integration-test vm` (kernel images + initramfs + qemu) and kunai's
//! matrix of LTS kernels.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A kernel of the matrix: the newest Debian cloud package whose name is
/// `{prefix}<number>{suffix}`.
pub struct Kernel {
    pub label: &'static str,
    pub what: &'static str,
    prefix: &'static str,
    suffix: &'static str,
}

pub const KERNELS: &[Kernel] = &[
    Kernel {
        label: "5.10",
        what: "Debian 11 bullseye",
        prefix: "linux-image-5.10.0-",
        suffix: "-cloud-amd64",
    },
    Kernel {
        label: "6.1",
        what: "Debian 12 bookworm",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64",
    },
    Kernel {
        label: "6.12",
        what: "Debian 12 bookworm-security",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-cloud-amd64",
    },
    Kernel {
        label: "6.18",
        what: "Debian 13 trixie-backports",
        prefix: "linux-image-6.18.",
        suffix: "+deb13-cloud-amd64",
    },
];

const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main
";

/// Host tools the tests run, copied with their libraries (busybox's versions lack options the
/// tests use, such as `unshare --propagation`).
const HOST_TOOLS: &[&str] = &[
    "/usr/bin/setpriv",
    "/usr/bin/unshare",
    "/usr/bin/mount",
    "/usr/bin/umount",
    // The findings tests' healthy control.
    "/usr/bin/redis-server",
    "/usr/bin/redis-benchmark",
    // Brings the loopback up: the daemon tests serve and scrape on 127.0.0.1.
    "/usr/bin/ip",
];

/// Printed by `/init` after the last test binary, with how many failed.
const DONE_MARK: &str = "VMTEST-DONE";
/// Lines of a guest test's panic message echoed to the host's output.
const PANIC_LINES: usize = 40;

/// The guest's `/init`: `@TESTS@` becomes one line per test binary.
const INIT: &str = r#"#!/bin/sh
export PATH=/usr/bin:/usr/sbin:/bin:/sbin HOME=/root RUST_BACKTRACE=1 TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
# No tmpfs over /tmp: the root is already in RAM, and a checkout under /tmp (where CI may
# clone) holds the binaries.
chmod 1777 /tmp
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t tmpfs cgroup /sys/fs/cgroup
for c in memory pids; do mkdir -p /sys/fs/cgroup/$c; mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c; done
mkdir -p /sys/fs/cgroup/unified
mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
echo 1 > /sys/fs/cgroup/memory/memory.use_hierarchy 2>/dev/null
hostname vmtest
ip link set lo up
echo "vmtest: kernel $(uname -r), $(nproc) CPUs"
failed=0
run() {
  echo "vmtest: running $1"
  "$@" 2>&1
  rc=$?
  echo "vmtest: $1 exited $rc"
  [ $rc -eq 0 ] || failed=$((failed+1))
}
@TESTS@
echo "@DONE@ $failed"
echo o > /proc/sysrq-trigger
sleep 10
"#;

fn cache_dir() -> PathBuf {
    std::env::var_os("TRACER_VMTEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/tracer-vmtest")
        })
}

/// What `vmtest` found on each kernel.
pub struct Outcome {
    pub passed: u64,
    pub failed: u64,
    pub rows: Vec<(String, String, u64, u64, String)>,
}

/// Boots each selected kernel (all when `only` is empty) and runs `tests` in it.
pub fn run(root: &Path, only: &[String], tests: &[PathBuf]) -> anyhow::Result<Outcome> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| only.is_empty() || only.iter().any(|o| o == k.label))
        .collect();
    if kernels.is_empty() {
        bail!(
            "no kernel matches {only:?}; the matrix has {}",
            KERNELS
                .iter()
                .map(|k| k.label)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let work = root.join("target/vmtest");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let initrd = build_initramfs(&work, tests)?;
    let mut out = Outcome {
        passed: 0,
        failed: 0,
        rows: Vec::new(),
    };
    for k in kernels {
        let vmlinuz = kernel_image(&cache, k)?;
        let log = work.join(format!("console-{}.log", k.label));
        eprintln!(
            "xtask: vmtest: booting {} ({}) under qemu TCG; console in {}",
            vmlinuz.display(),
            k.what,
            log.display()
        );
        let started = Instant::now();
        let r = boot(&vmlinuz, &initrd, &log)?;
        eprintln!(
            "xtask: vmtest: {}: {} passed, {} failed in {:.0}s{}",
            k.label,
            r.passed,
            r.failed,
            started.elapsed().as_secs_f64(),
            r.problem
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        );
        out.passed += r.passed;
        out.failed += r.failed + r.problem.is_some() as u64;
        out.rows.push((
            k.label.to_owned(),
            r.release,
            r.passed,
            r.failed,
            r.problem.unwrap_or_else(|| "ok".into()),
        ));
    }
    Ok(out)
}

fn apt_options(cache: &Path) -> Vec<String> {
    let apt = cache.join("apt");
    vec![
        format!(
            "-o=Dir::Etc::sourcelist={}",
            apt.join("sources.list").display()
        ),
        "-o=Dir::Etc::sourceparts=/dev/null".into(),
        format!("-o=Dir::State::Lists={}", apt.join("lists").display()),
        format!("-o=Dir::Cache={}", apt.join("cache").display()),
        "-o=APT::Sandbox::User=root".into(),
    ]
}

/// The kernel image of `k`, from the cache or downloaded (the newest matching package).
fn kernel_image(cache: &Path, k: &Kernel) -> anyhow::Result<PathBuf> {
    let dir = cache.join("kernels").join(k.label);
    if let Some(img) = find_vmlinuz(&dir) {
        return Ok(img);
    }
    let apt = cache.join("apt");
    std::fs::create_dir_all(apt.join("lists/partial"))?;
    std::fs::create_dir_all(apt.join("cache/archives/partial"))?;
    std::fs::write(apt.join("sources.list"), SOURCES)?;
    let opts = apt_options(cache);
    let lists_fresh = std::fs::read_dir(apt.join("lists"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("bullseye"))
        })
        .unwrap_or(false);
    if !lists_fresh {
        eprintln!(
            "xtask: vmtest: apt-get update (private sources list: bullseye, bookworm, trixie-backports)"
        );
        run_quiet(Command::new("apt-get").args(&opts).args(["update", "-q"]))
            .context("apt-get update with the private sources list")?;
    }
    let dl = cache.join("debs");
    std::fs::create_dir_all(&dl)?;
    let pkg = match newest_package(&opts, k).and_then(|pkg| download(&opts, &dl, &pkg)) {
        Ok(pkg) => pkg,
        Err(_) => {
            // Cached package lists can name a package the archive has since dropped.
            run_quiet(Command::new("apt-get").args(&opts).args(["update", "-q"]))
                .context("apt-get update with the private sources list")?;
            download(&opts, &dl, &newest_package(&opts, k)?)?
        }
    };
    let deb = std::fs::read_dir(&dl)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{pkg}_")))
        })
        .with_context(|| format!("the downloaded .deb of {pkg} is not in {}", dl.display()))?;
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let img = find_vmlinuz(&tmp.join("boot"))
        .with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))?;
    std::fs::create_dir_all(&dir)?;
    let dest = dir.join(img.file_name().expect("file name"));
    std::fs::copy(&img, &dest)?;
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_file(&deb);
    Ok(dest)
}

/// The newest package of kernel `k` in the private package lists.
fn newest_package(opts: &[String], k: &Kernel) -> anyhow::Result<String> {
    let names = Command::new("apt-cache")
        .args(opts)
        .args(["pkgnames", "linux-image-"])
        .output()
        .context("apt-cache pkgnames")?;
    String::from_utf8_lossy(&names.stdout)
        .lines()
        .filter_map(|n| {
            let mid = n.strip_prefix(k.prefix)?.strip_suffix(k.suffix)?;
            mid.parse::<u32>().ok().map(|v| (v, n.to_owned()))
        })
        .max()
        .map(|(_, n)| n)
        .with_context(|| {
            format!(
                "no package {}N{} in Debian's archive (kernel {})",
                k.prefix, k.suffix, k.label
            )
        })
}

/// `apt-get download pkg` into `dir`; returns the package name.
fn download(opts: &[String], dir: &Path, pkg: &str) -> anyhow::Result<String> {
    eprintln!("xtask: vmtest: apt-get download {pkg}");
    run_quiet(
        Command::new("apt-get")
            .args(opts)
            .args(["download", "-q", pkg])
            .current_dir(dir),
    )
    .with_context(|| format!("apt-get download {pkg}"))?;
    Ok(pkg.to_owned())
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// The initramfs (gzip'd newc cpio) with everything the tests need.
fn build_initramfs(work: &Path, tests: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let tree = work.join("initramfs");
    for d in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "etc",
        "run",
    ] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    for (link, to) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(to, tree.join(link))?;
    }
    std::fs::write(
        tree.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
    )?;
    std::fs::write(tree.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox is missing: `apt-get install busybox-static` (xtask setup does)");
    }
    std::fs::copy(busybox, tree.join("usr/bin/busybox"))?;
    let applets = Command::new(busybox)
        .arg("--list")
        .output()
        .context("busybox --list")?;
    for a in String::from_utf8_lossy(&applets.stdout).lines() {
        let link = tree.join("usr/bin").join(a);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    let mut libs = BTreeSet::new();
    for tool in HOST_TOOLS {
        let dest = tree.join(tool.trim_start_matches('/'));
        let _ = std::fs::remove_file(&dest);
        std::fs::copy(tool, &dest).with_context(|| format!("copying {tool}"))?;
        libs.extend(shared_libs(Path::new(tool))?);
    }
    for bin in tests {
        let dest = tree.join(bin.strip_prefix("/").unwrap_or(bin));
        std::fs::create_dir_all(dest.parent().expect("parent"))?;
        // Debug info is most of a test binary's size, and all of it would sit in guest RAM.
        let st = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(bin)
            .arg(&dest)
            .status()
            .context("objcopy")?;
        if !st.success() {
            std::fs::copy(bin, &dest)?;
        }
        libs.extend(shared_libs(bin)?);
    }
    for (bin, files) in interpreter_files()? {
        libs.extend(shared_libs(Path::new(bin))?);
        for f in files {
            if f.extension().is_some_and(|e| e == "so") {
                libs.extend(shared_libs(&f)?);
            }
            let dest = tree.join(f.strip_prefix("/").unwrap_or(&f));
            std::fs::create_dir_all(dest.parent().expect("parent"))?;
            std::fs::copy(&f, &dest).with_context(|| format!("copying {}", f.display()))?;
        }
        let dest = tree.join(bin.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("parent"))?;
        let _ = std::fs::remove_file(&dest);
        std::fs::copy(bin, &dest).with_context(|| format!("copying {bin}"))?;
    }
    for lib in libs {
        let dest = tree.join(lib.strip_prefix("/").unwrap_or(&lib));
        std::fs::create_dir_all(dest.parent().expect("parent"))?;
        // Follow the link: the guest gets the file under the name the loader asks for.
        std::fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    let runs: String = tests
        .iter()
        .filter(|t| t.to_string_lossy().contains("/deps/"))
        .map(|t| format!("run {}\n", t.display()))
        .collect();
    let init = INIT.replace("@TESTS@", &runs).replace("@DONE@", DONE_MARK);
    let init_path = tree.join("init");
    std::fs::write(&init_path, init)?;
    std::fs::set_permissions(&init_path, std::fs::Permissions::from_mode(0o755))?;
    let out = work.join("initramfs.cpio.gz");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}",
            tree.display(),
            out.display()
        ))
        .status()
        .context("cpio")?;
    if !st.success() {
        bail!("building the initramfs failed (cpio and gzip are needed)");
    }
    Ok(out)
}

/// Debian's interpreters the creator-stack tests run, and a command that prints the files
/// each loads for what the tests do (the guest gets those, not the whole standard library).
const INTERPRETERS: &[(&str, &[&str])] = &[
    (
        "/usr/bin/python3.11",
        &[
            "-I",
            "-S",
            "-c",
            "import threading, time, sys\n\
             print('\\n'.join(sorted({m.__file__ for m in list(sys.modules.values()) \
             if getattr(m, '__file__', None)})))",
        ],
    ),
    (
        "/usr/bin/ruby",
        &[
            "--disable-gems",
            "-e",
            "Thread.new { sleep 0.01 }.join; puts $LOADED_FEATURES",
        ],
    ),
];

/// Each interpreter and the files it loaded on the host.
fn interpreter_files() -> anyhow::Result<Vec<(&'static str, Vec<PathBuf>)>> {
    let mut v = Vec::new();
    for (bin, args) in INTERPRETERS {
        let out = Command::new(bin).args(*args).output().with_context(|| {
            format!("running {bin} (the creator-stack tests need it: `cargo xtask setup`)")
        })?;
        if !out.status.success() {
            bail!("{bin} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let files = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(PathBuf::from)
            .filter(|p| p.is_absolute() && p.is_file())
            .collect();
        v.push((*bin, files));
    }
    Ok(v)
}

/// The shared libraries `bin` loads (and the loader), from `ldd`.
fn shared_libs(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .with_context(|| format!("ldd {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let p = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect())
}

struct Boot {
    release: String,
    passed: u64,
    failed: u64,
    problem: Option<String>,
}

/// How long one kernel may take: boot, and every test binary under TCG (a kernel took 474-531 s
/// on this VM, and passed 600 s on a slower day; 4 × 15 min still fits CI's 90 min with the
/// host tests).
const BOOT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

fn boot(vmlinuz: &Path, initrd: &Path, log: &Path) -> anyhow::Result<Boot> {
    let mut child = Command::new("qemu-system-x86_64")
        // Single-threaded TCG: with one host thread per vCPU (MTTCG), the kernel's live
        // patching of its own text (tracepoints attached, detached: int3 + IPIs) raced under
        // load here, an int3 oops in mm_trace_rss_stat on 6.18 and a stalled IPI on 6.1. Two
        // vCPUs still, for the per-CPU paths.
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "3072",
        ])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init mitigations=off",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut file = std::fs::File::create(log)?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut r = Boot {
        release: String::new(),
        passed: 0,
        failed: 0,
        problem: None,
    };
    let mut done = false;
    // Lines of a panic message still to show.
    let mut echo = 0usize;
    let verbose = std::env::var_os("VMTEST_VERBOSE").is_some();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            r.problem = Some(format!("timed out after {}s", BOOT_TIMEOUT.as_secs()));
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_secs(5))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                writeln!(file, "{line}")?;
                if verbose {
                    println!("[vm] {line}");
                }
                if let Some((_, rest)) = line.split_once("vmtest: kernel ") {
                    r.release = rest.split(',').next().unwrap_or("").to_owned();
                }
                if let Some(rest) = line.strip_prefix("test result: ") {
                    r.passed += count(rest, " passed");
                    r.failed += count(rest, " failed");
                }
                if line.starts_with(DONE_MARK) {
                    done = true;
                }
                if line.contains("Kernel panic") || line.contains("soft lockup") {
                    r.problem = Some(format!("kernel panic: {line}"));
                }
                // Failures are worth seeing without opening the log: the panic and its message
                // (up to the backtrace, at most PANIC_LINES lines), as CI shows only this.
                if line.starts_with("stack backtrace:") || line.starts_with("note: ") {
                    echo = 0;
                }
                if line.contains("panicked at") {
                    echo = PANIC_LINES;
                    println!("[vm {}] {line}", r.release);
                } else if echo > 0 || line.starts_with("---- ") {
                    echo = echo.saturating_sub(1);
                    println!("[vm {}] {line}", r.release);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Ok(Some(_)) = child.try_wait() {
            // Drain what is left.
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                writeln!(file, "{}", line.trim_end_matches('\r'))?;
            }
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if !done && r.problem.is_none() {
        r.problem = Some(format!(
            "the guest stopped before its last test (see {})",
            log.display()
        ));
    }
    if r.passed + r.failed == 0 && r.problem.is_none() {
        r.problem = Some("no test ran".into());
    }
    Ok(r)
}

/// `N passed` / `N failed` out of cargo test's summary line.
pub fn count(rest: &str, what: &str) -> u64 {
    rest.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(what)
        })
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The test executables `cargo test --no-run` builds for the packages that trace, from
/// cargo's JSON messages.
pub fn test_binaries(root: &Path, packages: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["test", "--no-run", "--message-format=json"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let out = cmd
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("`cargo test --no-run` failed");
    }
    let mut v = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };

        if let Some(exe) = msg["executable"].as_str() {
            v.push(PathBuf::from(exe));
        }
        // Workloads built by build scripts (the C spawner): every executable in OUT_DIR.
        if msg["reason"] == "build-script-executed"
            && let Some(out) = msg["out_dir"].as_str()
        {
            for e in std::fs::read_dir(out).into_iter().flatten().flatten() {
                let exec = e
                    .metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
                if exec {
                    v.push(e.path());
                }
            }
        }
    }
    let _ = std::io::stdout().flush();
    Ok(v)
}
