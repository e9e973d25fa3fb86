//! Workloads with exactly known behaviour, traced by the integration tests and the benchmark.
//! Each subcommand does one thing a fixed number of times and exits.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("argument {i} ({what}) missing or invalid"))
}

fn futex(word: &AtomicU32, op: i32, val: u32) -> i64 {
    // SAFETY: the word outlives the call; no timeout, no second address.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
            val,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        )
    }
}

/// N threads park on one futex word for `ms` milliseconds, then are woken and joined.
fn park(n: usize, ms: u64) {
    let word = Arc::new(AtomicU32::new(0));
    let parked = Arc::new(AtomicU32::new(0));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (word, parked) = (word.clone(), parked.clone());
            std::thread::spawn(move || {
                parked.fetch_add(1, Ordering::SeqCst);
                while word.load(Ordering::SeqCst) == 0 {
                    futex(&word, libc::FUTEX_WAIT, 0);
                }
            })
        })
        .collect();
    while parked.load(Ordering::SeqCst) < n as u32 {
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(ms));
    word.store(1, Ordering::SeqCst);
    futex(&word, libc::FUTEX_WAKE, i32::MAX as u32);
    for h in handles {
        h.join().expect("thread");
    }
}

/// One thread parks on a futex; a helper process stops this process (SIGSTOP) while it is
/// parked and continues it (SIGCONT) `stop_ms` later; the thread is woken `after_ms` after
/// that. The stop interrupts the wait (it returns and is restarted after SIGCONT): two parks
/// of about `park_ms` and `after_ms`, and the stopped time in neither.
fn stopped_park(park_ms: u64, stop_ms: u64, after_ms: u64) {
    let word = Arc::new(AtomicU32::new(0));
    let parked = Arc::new(AtomicU32::new(0));
    let handle = {
        let (word, parked) = (word.clone(), parked.clone());
        std::thread::spawn(move || {
            parked.store(1, Ordering::SeqCst);
            while word.load(Ordering::SeqCst) == 0 {
                futex(&word, libc::FUTEX_WAIT, 0);
            }
        })
    };
    while parked.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    let start = Instant::now();
    let me = std::process::id() as i32;
    // SAFETY: the child only sleeps, signals and exits (async-signal-safe calls).
    let helper = unsafe { libc::fork() };
    assert!(helper >= 0, "fork failed");
    if helper == 0 {
        std::thread::sleep(Duration::from_millis(park_ms));
        // SAFETY: signalling the parent, then leaving without running its destructors.
        unsafe {
            libc::kill(me, libc::SIGSTOP);
            libc::usleep((stop_ms * 1000) as u32);
            libc::kill(me, libc::SIGCONT);
            libc::_exit(0);
        }
    }
    let total = Duration::from_millis(park_ms + stop_ms + after_ms);
    // The sleep is itself stopped and restarted: sleep to a deadline.
    while let Some(left) = total.checked_sub(start.elapsed()) {
        std::thread::sleep(left);
    }
    word.store(1, Ordering::SeqCst);
    futex(&word, libc::FUTEX_WAKE, 1);
    handle.join().expect("thread");
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(helper, std::ptr::null_mut(), 0) };
}

/// The sizes `mmap` maps: distinct, so the test can find each one in the trace.
pub fn mmap_size(i: usize) -> usize {
    (1 << 20) + i * (64 << 10)
}

/// An anonymous private read/write mapping of `len` bytes.
fn map_anon(len: usize) -> *mut libc::c_void {
    // SAFETY: a fresh anonymous mapping; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap of {len} bytes");
    p
}

/// Unmaps the even-numbered mappings.
fn unmap_even(maps: Vec<(*mut libc::c_void, usize)>) {
    for (i, (p, len)) in maps.into_iter().enumerate() {
        if i % 2 == 0 {
            // SAFETY: unmapping what map_anon mapped.
            assert_eq!(unsafe { libc::munmap(p, len) }, 0);
        }
    }
}

/// K anonymous mappings of `mmap_size(i)` bytes, every page touched; the even ones unmapped.
fn mmaps(k: usize) {
    let maps = (0..k)
        .map(|i| {
            let len = mmap_size(i);
            let p = map_anon(len);
            // SAFETY: the mapping is `len` bytes, writable.
            unsafe { std::ptr::write_bytes(p.cast::<u8>(), 1, len) };
            (p, len)
        })
        .collect();
    unmap_even(maps);
}

/// n anonymous mappings of 28 KiB (small: batched in the kernel), the even ones unmapped.
fn small_maps(n: usize) {
    let len = 28 << 10;
    unmap_even((0..n).map(|_| (map_anon(len), len)).collect());
}

/// `steps` calls of sbrk(+bytes).
fn brk(steps: usize, bytes: isize) {
    for _ in 0..steps {
        // SAFETY: growing the break; the memory is not used.
        let r = unsafe { libc::sbrk(bytes) };
        assert_ne!(r as isize, -1, "sbrk");
    }
}

/// n waits of `ms` each in poll, ppoll, select and pselect6 (4n blocking waits), plus n
/// zero-timeout calls of each (not waits).
fn polls(n: usize, ms: u64) {
    let ts = |ms: u64| libc::timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: ((ms % 1000) * 1_000_000) as i64,
    };
    let null = std::ptr::null_mut::<libc::c_void>();
    for timeout in [ms, 0] {
        for _ in 0..n {
            let t = ts(timeout);
            let mut tv = libc::timeval {
                tv_sec: (timeout / 1000) as i64,
                tv_usec: ((timeout % 1000) * 1000) as i64,
            };
            // Raw syscalls: glibc implements select() with pselect6, and the test wants each
            // of the four calls exactly. No fds; valid timeouts.
            unsafe {
                libc::syscall(libc::SYS_poll, null, 0, timeout as i32);
                libc::syscall(libc::SYS_ppoll, null, 0, &t, null, 8);
                libc::syscall(libc::SYS_select, 0, null, null, null, &mut tv);
                let t = ts(timeout);
                libc::syscall(libc::SYS_pselect6, 0, null, null, null, &t, null);
            }
        }
    }
}

/// `spawns` children that exec /bin/true (posix_spawn: clone with CLONE_VFORK) and `forks`
/// plain fork()ed children that exit with code 3; then exits with code 7.
fn children(spawns: usize, forks: usize) -> ! {
    for _ in 0..spawns {
        let st = std::process::Command::new("/bin/true")
            .status()
            .expect("spawn /bin/true");
        assert!(st.success());
    }
    for _ in 0..forks {
        // SAFETY: the child only calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            unsafe { libc::_exit(3) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    std::process::exit(7)
}

/// A process per message: `count` fork()ed children, `rate` a second, each sleeping `hold_s`
/// and exiting; then waits for them.
fn forks(count: usize, rate: u64, hold_s: u64) {
    let mut kids = Vec::new();
    for _ in 0..count {
        // SAFETY: the child only sleeps and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            unsafe {
                libc::sleep(hold_s as u32);
                libc::_exit(0)
            };
        }
        kids.push(pid);
        std::thread::sleep(Duration::from_millis(1000 / rate));
    }
    for pid in kids {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
}

/// A non-main thread execs /bin/true: the kernel kills the other threads and the exec'ing
/// thread takes over the process id.
fn exec_from_thread() -> ! {
    let t = std::thread::spawn(|| {
        let path = c"/bin/true";
        let argv = [path.as_ptr(), std::ptr::null()];
        // SAFETY: valid NUL-terminated path and argv.
        unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
        panic!("execv failed");
    });
    let _ = t.join();
    unreachable!("the exec replaces the whole process")
}

/// Joins the cgroup directory given, then allocates and touches memory until killed.
fn oom(cgroup_dir: &str) -> ! {
    std::fs::write(
        format!("{cgroup_dir}/cgroup.procs"),
        std::process::id().to_string(),
    )
    .expect("joining the cgroup");
    let mut hog: Vec<Vec<u8>> = Vec::new();
    loop {
        hog.push(vec![1u8; 4 << 20]);
    }
}

/// CPU time (user + system) of the whole process so far, in ns. Kernel programs run in the
/// context of the traced task, so their cost shows here; idle time waiting for a thread to be
/// scheduled does not, which makes it steadier than wall time.
fn cpu_ns() -> u64 {
    // SAFETY: valid out-pointer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Renames itself (comm, via prctl) to `name`, an untrusted string, then starts one thread,
/// which parks for `hold_ms` (0: exits at once).
fn rename(name: &str, hold_ms: u64) {
    let c = std::ffi::CString::new(name).expect("no NUL in the name");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15 bytes).
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
    std::thread::spawn(move || std::thread::sleep(Duration::from_millis(hold_ms)))
        .join()
        .expect("thread");
}

/// Hot loops for the benchmark: `iters` calls; prints the mean wall-clock and CPU ns per call.
fn bench(what: &str, iters: u64) {
    let word = AtomicU32::new(0);
    let cpu_start = cpu_ns();
    let start = Instant::now();
    for _ in 0..iters {
        // SAFETY: each arm is a plain syscall with valid arguments.
        unsafe {
            match what {
                "futex-wake" => {
                    futex(&word, libc::FUTEX_WAKE, 1);
                }
                "futex-eagain" => {
                    // The word is 0, the expected value 1: returns EAGAIN at once, a futex
                    // wait that never parks (streamed when --min-wait-ms is 0).
                    futex(&word, libc::FUTEX_WAIT, 1);
                }
                "poll0" => {
                    libc::syscall(libc::SYS_poll, std::ptr::null_mut::<libc::c_void>(), 0, 0);
                }
                "ppoll0" => {
                    let t = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    };
                    libc::ppoll(std::ptr::null_mut(), 0, &t, std::ptr::null());
                }
                "brk0" => {
                    libc::syscall(libc::SYS_brk, 0usize);
                }
                "mmap" => {
                    libc::munmap(map_anon(4096), 4096);
                }
                "thread" => {
                    std::thread::spawn(|| {}).join().expect("thread");
                }
                "getppid" => {
                    libc::getppid();
                }
                _ => panic!("unknown bench loop {what}"),
            }
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / iters as f64;
    let cpu = (cpu_ns() - cpu_start) as f64 / iters as f64;
    println!("{ns:.1} {cpu:.1}");
}

/// Holds n threads parked on a futex until stdin closes (for the collector-RSS benchmark).
fn hold(n: usize) {
    let word = Arc::new(AtomicU32::new(0));
    let mut handles = Vec::new();
    for _ in 0..n {
        let word = word.clone();
        handles.push(
            std::thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    while word.load(Ordering::SeqCst) == 0 {
                        futex(&word, libc::FUTEX_WAIT, 0);
                    }
                })
                .expect("spawn"),
        );
    }
    println!("ready");
    let mut buf = String::new();
    let _ = std::io::stdin().read_line(&mut buf);
    word.store(1, Ordering::SeqCst);
    futex(&word, libc::FUTEX_WAKE, i32::MAX as u32);
    for h in handles {
        let _ = h.join();
    }
}

/// CLOCK_MONOTONIC now, in ns (the tracer's event clock).
fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Allocates `mib` MiB from the brk heap (64 KiB blocks, under glibc's mmap threshold),
/// written so that it is resident, and keeps it.
fn grow_heap(kept: &mut Vec<Vec<u8>>, mib: u64) {
    for _ in 0..mib * 16 {
        kept.push(vec![1u8; 64 << 10]);
    }
}

/// `threads` threads park for good (a flat count); after `idle_s`, the heap grows by
/// `mib_per_s` for `secs`, in tenths of a second. Prints the onset ("onset NS", monotonic).
fn leak(threads: usize, idle_s: u64, mib_per_s: u64, secs: u64) {
    let word = Arc::new(AtomicU32::new(0));
    for _ in 0..threads {
        let word = word.clone();
        std::thread::spawn(move || {
            while word.load(Ordering::SeqCst) == 0 {
                futex(&word, libc::FUTEX_WAIT, 0);
            }
        });
    }
    std::thread::sleep(Duration::from_secs(idle_s));
    println!("onset {}", monotonic_ns());
    let mut kept = Vec::new();
    let start = Instant::now();
    let mut tenths = 0;
    while tenths < secs * 10 {
        tenths += 1;
        // A tenth of the rate, in 64 KiB blocks.
        let kib = mib_per_s * 1024 / 10;
        for _ in 0..kib / 64 {
            kept.push(vec![1u8; 64 << 10]);
        }
        let next = Duration::from_millis(100 * tenths);
        if let Some(d) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(d);
        }
    }
}

/// After `idle_s`, `steps` rises of `step_mib` each (within a fraction of a second),
/// `interval_s` apart; then holds for `hold_s`. Prints each step's time ("step NS").
fn stairs(idle_s: u64, steps: u64, step_mib: u64, interval_s: u64, hold_s: u64) {
    std::thread::sleep(Duration::from_secs(idle_s));
    let mut kept = Vec::new();
    for i in 0..steps {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(interval_s));
        }
        println!("step {}", monotonic_ns());
        grow_heap(&mut kept, step_mib);
    }
    std::thread::sleep(Duration::from_secs(hold_s));
}

/// Warms up: `mib` MiB over the first second, then holds for `hold_s` (a healthy plateau).
fn warmup(mib: u64, hold_s: u64) {
    let mut kept = Vec::new();
    for _ in 0..10 {
        grow_heap(&mut kept, mib / 10);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(hold_s));
}

/// Maps, writes and unmaps `mib` MiB every 20 ms for `secs` (heavy churn at a flat level).
fn churn(mib: usize, secs: u64) {
    let len = mib << 20;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        // SAFETY: an anonymous private mapping, written within its length, then unmapped.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert!(p != libc::MAP_FAILED, "mmap");
            for off in (0..len).step_by(4096) {
                *(p as *mut u8).add(off) = 1;
            }
            libc::munmap(p, len);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("park") => park(arg(&args, 1, "threads"), arg(&args, 2, "ms")),
        Some("stopped-park") => stopped_park(
            arg(&args, 1, "park ms"),
            arg(&args, 2, "stop ms"),
            arg(&args, 3, "after ms"),
        ),
        Some("mmap") => mmaps(arg(&args, 1, "count")),
        Some("small-maps") => {
            small_maps(arg(&args, 1, "count"));
            // Optionally stay alive: the tracer must flush the batch without a process exit.
            if let Some(ms) = args.get(2).and_then(|a| a.parse().ok()) {
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
        Some("brk") => brk(arg(&args, 1, "steps"), arg(&args, 2, "bytes")),
        Some("poll") => polls(arg(&args, 1, "count"), arg(&args, 2, "ms")),
        Some("children") => children(arg(&args, 1, "spawns"), arg(&args, 2, "forks")),
        Some("oom") => oom(&args[1]),
        Some("rename") => rename(
            &args[1],
            args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0),
        ),
        Some("exec-thread") => exec_from_thread(),
        Some("bench") => bench(&args[1], arg(&args, 2, "iterations")),
        Some("hold") => hold(arg(&args, 1, "threads")),
        Some("leak") => leak(
            arg(&args, 1, "threads"),
            arg(&args, 2, "idle secs"),
            arg(&args, 3, "MiB/s"),
            arg(&args, 4, "secs"),
        ),
        Some("stairs") => stairs(
            arg(&args, 1, "idle secs"),
            arg(&args, 2, "steps"),
            arg(&args, 3, "step MiB"),
            arg(&args, 4, "interval secs"),
            arg(&args, 5, "hold secs"),
        ),
        Some("warmup") => warmup(arg(&args, 1, "MiB"), arg(&args, 2, "hold secs")),
        Some("churn") => churn(arg(&args, 1, "MiB"), arg(&args, 2, "secs")),
        Some("forks") => forks(
            arg(&args, 1, "count"),
            arg(&args, 2, "rate"),
            arg(&args, 3, "hold secs"),
        ),
        _ => {
            eprintln!(
                "usage: workload park N MS | stopped-park PARK_MS STOP_MS AFTER_MS | mmap K | brk STEPS BYTES | poll N MS | \
                 children SPAWNS FORKS | oom CGROUP_DIR | rename NAME [HOLD_MS] | bench LOOP ITERS | hold N | \
                 leak THREADS IDLE_S MIB_PER_S SECS | stairs IDLE_S STEPS STEP_MIB INTERVAL_S HOLD_S | \
                 warmup MIB HOLD_S | churn MIB SECS | forks COUNT RATE HOLD_S"
            );
            std::process::exit(2);
        }
    }
}
