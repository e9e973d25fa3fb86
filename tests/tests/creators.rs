//! Who creates threads: the creator's stack at each creation, unwound with `.eh_frame`
//! through binaries without frame pointers (a C spawner built at -O2, Debian's stripped
//! CPython and Ruby), symbolized, and counted per site.

mod common;

use common::*;
use tracer::model::{CreatorSite, ProcessSummary};

fn the_process<'a>(t: &'a Traced, exe_suffix: &str) -> &'a ProcessSummary {
    let all: Vec<_> = t
        .report
        .processes
        .iter()
        .filter(|p| p.exe.as_deref().is_some_and(|e| e.ends_with(exe_suffix)))
        .collect();
    assert_eq!(all.len(), 1, "one {exe_suffix} process: {all:#?}");
    all[0]
}

fn only_site(p: &ProcessSummary) -> &CreatorSite {
    assert_eq!(p.creator_sites.len(), 1, "{:#?}", p.creator_sites);
    &p.creator_sites[0]
}

#[test]
fn a_c_spawner_without_frame_pointers_is_named_as_the_site_with_the_exact_count() {
    let t = record(&[], &[env!("SPAWNER_BIN"), "40", "200"]);
    assert_eq!(t.status, 0, "{}", t.stderr());
    let p = the_process(&t, "/spawner");
    assert_eq!(p.threads_created, 40);
    assert_eq!(
        p.creation_stacks, 40,
        "every creation's stack, within the budget"
    );
    assert!(!p.stacks_sampled);
    let s = only_site(p);
    assert_eq!(s.threads, 40);
    assert!(
        s.site.starts_with("tracer_test_spawn_site_q7 (spawner+0x"),
        "the site is the spawning function: {s:#?}"
    );
    // Unwound through glibc (clone3 → pthread_create; their names come from libc's dynamic
    // symbols, or its debug info where libc6-dbg is installed) to the site and on to main.
    let at = |name: &str| s.frames.iter().position(|f| f.contains(name));
    assert!(s.frames[0].contains("libc.so.6+0x"), "{:#?}", s.frames);
    let (create, site, main) = (
        at("pthread_create"),
        at("tracer_test_spawn_site_q7"),
        s.frames
            .iter()
            .position(|f| f.starts_with("main (spawner+")),
    );
    assert!(
        create.is_some() && create < site && site < main,
        "{:#?}",
        s.frames
    );
    let text = String::from_utf8_lossy(&run_report(&t.path, &[]).stdout).into_owned();
    assert!(text.contains("tracer_test_spawn_site_q7"), "{text}");
}

#[test]
fn cpython_threads_are_unwound_through_the_interpreter() {
    let py = interpreter("/usr/bin/python3.11");
    let code = "import threading, time\n\
                ts = [threading.Thread(target=time.sleep, args=(0.1,)) for _ in range(12)]\n\
                [t.start() for t in ts]\n\
                [t.join() for t in ts]\n";
    let t = record(&[], &[py, "-I", "-S", "-c", code]);
    assert_eq!(t.status, 0, "{}", t.stderr());
    let p = the_process(&t, "/python3.11");
    assert_eq!(p.threads_created, 12);
    let s = only_site(p);
    assert_eq!(s.threads, 12);
    assert!(
        s.site
            .starts_with("PyThread_start_new_thread (python3.11+0x"),
        "{s:#?}"
    );
    // Past the thread module, through the eval loop: exported symbols by name, the rest as
    // module+offset.
    let frames = &s.frames;
    assert!(
        frames
            .iter()
            .any(|f| f.starts_with("_PyEval_EvalFrameDefault (python3.11+"))
    );
    assert!(
        frames.iter().any(|f| f.starts_with("python3.11+0x")),
        "static functions show as module+offset: {frames:#?}"
    );
}

#[test]
fn ruby_threads_are_unwound_through_the_interpreter() {
    let ruby = interpreter("/usr/bin/ruby");
    let t = record(
        &[],
        &[
            ruby,
            "--disable-gems",
            "-e",
            "12.times.map { Thread.new { sleep 0.1 } }.each(&:join)",
        ],
    );
    assert_eq!(t.status, 0, "{}", t.stderr());
    let p = t
        .report
        .processes
        .iter()
        .find(|p| p.threads_created > 0 && p.comm.starts_with("ruby"))
        .expect("the ruby process");
    // Ruby 3.1 starts its timer thread with the first Thread.new.
    let s = p
        .creator_sites
        .iter()
        .find(|s| s.threads == 12)
        .unwrap_or_else(|| panic!("a site with the 12 threads: {:#?}", p.creator_sites));
    assert!(s.site.contains("libruby"), "{s:#?}");
    assert!(
        s.frames
            .iter()
            .any(|f| f.starts_with("rb_vm_exec (libruby")),
        "unwound through the VM: {:#?}",
        s.frames
    );
    assert_eq!(
        p.creator_sites.iter().map(|s| s.threads).sum::<u64>(),
        p.threads_created
    );
}

#[test]
fn past_its_budget_a_process_s_sites_are_sampled_and_its_count_stays_exact() {
    let t = record(
        &["--stacks-per-sec", "1", "--stack-burst", "5"],
        // Parks of 400 ms: the process outlives the unwinding of its stacks, even emulated
        // (a process gone within a drain of its creations has no module list to read).
        &[env!("SPAWNER_BIN"), "60", "400"],
    );
    assert_eq!(t.status, 0, "{}", t.stderr());
    let p = the_process(&t, "/spawner");
    assert_eq!(p.threads_created, 60, "creation counts are exact");
    // 5 per CPU of burst, and about one a second after.
    assert!(
        (5..=15).contains(&p.creation_stacks),
        "stacks within the budget: {}",
        p.creation_stacks
    );
    assert!(p.stacks_sampled);
    assert_eq!(only_site(p).threads, p.creation_stacks);
    let skipped = t.report.kernel_counters["stacks_skipped"];
    assert_eq!(
        skipped + p.creation_stacks,
        60,
        "{:?}",
        t.report.kernel_counters
    );
    let text = String::from_utf8_lossy(&run_report(&t.path, &[]).stdout).into_owned();
    assert!(
        text.contains("sampled"),
        "the report says the counts are sampled:\n{text}"
    );
}

#[test]
fn the_census_names_long_parked_threads_and_their_site() {
    // 30 threads parked 6 s; the recording stops at 3.5 s, with parks over 0.5 s "long"
    // (room for slow starts under qemu's emulation).
    let t = record(&["-d", "3.5"], &[env!("SPAWNER_BIN"), "30", "6000"]);
    let p = the_process(&t, "/spawner");
    assert_eq!((p.threads_created, p.threads_live), (30, 31), "{p:#?}");
    let s = only_site(p);
    assert_eq!((s.threads, s.alive, s.parked), (30, 30, 30), "{s:#?}");
    let r = tracer::report::build_with(
        std::io::BufReader::new(std::fs::File::open(&t.path).unwrap()),
        500_000_000,
    )
    .unwrap();
    let p = r.processes.iter().find(|q| q.pid == p.pid).unwrap();
    // The 30 workers, and the main thread parked in pthread_join.
    assert_eq!(p.long_parked_count, 31, "{p:#?}");
    assert!(p.long_parked_min_ns.is_some_and(|n| n >= 500_000_000));
    assert!(
        p.long_parked_site
            .as_deref()
            .is_some_and(|s| s.starts_with("tracer_test_spawn_site_q7")),
        "{p:#?}"
    );
    assert_eq!(p.long_parked.len(), 20, "listed up to the cap");
    assert!(p.long_parked.iter().all(|w| w.for_ns >= 500_000_000));
    // Every worker has its site; the main thread (created before tracing) has none.
    for w in &p.long_parked {
        assert_eq!(w.site.is_some(), w.tid != p.pid, "{w:?}");
    }
    assert!(
        p.park_histogram.is_empty(),
        "no park completed while traced"
    );
    // Each worker: created by the main thread, named by itself (pthread_setname_np).
    assert_eq!(p.threads.len(), 31);
    for th in p.threads.iter().filter(|th| th.tid != p.pid) {
        let c = th.creator.as_ref().expect("a creator");
        assert_eq!((c.tid, c.comm.as_str()), (p.pid, "spawner"), "{th:?}");
        assert_eq!(th.names, ["spawner", "tspawn-worker"], "{th:?}");
        assert!(
            th.site
                .as_deref()
                .is_some_and(|s| s.starts_with("tracer_test_spawn_site_q7"))
        );
        assert!(th.futex_since_ns.is_some());
    }
    assert!(
        p.long_parked
            .iter()
            .filter(|w| w.tid != p.pid)
            .all(|w| w.name == "tspawn-worker")
    );
    let j = r.jobs.iter().find(|j| j.job == p.job).unwrap();
    assert_eq!(j.long_parked_count, 31);
    assert_eq!(j.creator_sites[0].parked, 30);
    let text = String::from_utf8_lossy(&run_report(&t.path, &["--long-park-secs", "0.5"]).stdout)
        .into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("threads parked in futex"))
        .unwrap_or_else(|| panic!("the census line:\n{text}"));
    assert!(
        line.contains("31 of 31 threads parked in futex > ")
            && line.contains("created by tracer_test_spawn_site_q7")
            && line.ends_with("; 0 waiting in ppoll/select/epoll"),
        "{line}"
    );
}
