//! `tracer top` in a real terminal: the binary driven in tmux (send-keys, capture-pane)
//! against a leaking workload. Host only: the guests have no tmux. The screen's layout is
//! tested on ratatui's TestBackend in `tracer::top::render`.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::*;

struct Session(String);

impl Session {
    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux (apt-get install tmux; `cargo xtask setup` does)");
        assert!(out.status.success(), "tmux {args:?}: {}", stderr_of(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// A detached 200×50 terminal running `cmd` in a shell.
    fn start(&self, cmd: &str) {
        self.tmux(&[
            "new-session",
            "-d",
            "-s",
            &self.0,
            "-x",
            "200",
            "-y",
            "50",
            cmd,
        ]);
    }
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.0])
    }
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.0];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }
    /// Waits until the screen shows `what`; its content then.
    fn wait_for(&self, what: &str, max: Duration) -> String {
        let t = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                t.elapsed() < max,
                "no {what:?} on the screen in {max:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

#[test]
fn top_shows_a_leaker_first_drills_into_it_filters_and_restores_the_terminal() {
    require_root();
    let mut leaker = Command::new(env!("LEAKER_BIN"))
        .args(["leak", "10", "60"])
        .spawn()
        .expect("the leaker");
    let pid = leaker.id();
    let s = Session(format!("tracer-test-top-{}", std::process::id()));
    let cmd = format!(
        "{} top --every 1 --sample-ms 200 --runaway-window-secs 5 -p {pid}; echo EXITED $?; sleep 60",
        tracer_bin().display()
    );
    s.start(&cmd);
    let screen = s.wait_for(
        &format!("OPEN runaway_threads pid {pid}"),
        Duration::from_secs(40),
    );
    let row = screen
        .lines()
        .find(|l| l.starts_with(&format!("│{pid} ")))
        .unwrap_or_else(|| panic!("the leaker's row:\n{screen}"));
    assert!(
        row.contains("leaker") && row.contains("runaway_threads"),
        "{row}"
    );
    assert!(row.contains('█'), "a sparkline: {row}");
    assert!(
        screen.contains("processes (1)"),
        "-p: only the leaker:\n{screen}"
    );
    // Enter: the process's detail, with the site that creates its threads.
    s.keys(&["Enter"]);
    let detail = s.wait_for("who created its threads", Duration::from_secs(5));
    assert!(detail.contains(&format!("pid {pid} leaker")), "{detail}");
    s.wait_for("tracer_test_message_handler_spawn", Duration::from_secs(5));
    assert!(detail.contains("long-parked threads"), "{detail}");
    // q: back to the list; / filters it.
    s.keys(&["q"]);
    s.wait_for("processes (1)", Duration::from_secs(5));
    s.keys(&["/", "n", "o", "m", "a", "t", "c", "h", "Enter"]);
    let filtered = s.wait_for("processes (0)", Duration::from_secs(5));
    assert!(filtered.contains("filter: nomatch"), "{filtered}");
    s.keys(&["Escape"]);
    s.wait_for("processes (1)", Duration::from_secs(5));
    // s: the next sort order.
    s.keys(&["s"]);
    s.wait_for("sort: threads", Duration::from_secs(5));
    // Ctrl-C quits and gives the terminal back (the alternate screen is gone).
    s.keys(&["C-c"]);
    let after = s.wait_for("EXITED 0", Duration::from_secs(15));
    assert!(
        !after.contains("┌ findings"),
        "the view is still on screen:\n{after}"
    );
    assert!(
        after.contains("tracing stopped"),
        "held log lines printed after:\n{after}"
    );
    assert!(
        after.contains(r#"reason="quit""#),
        "the end reason is the key, not a closed output:\n{after}"
    );
    let _ = leaker.kill();
    let _ = leaker.wait();
}

#[test]
fn top_gives_the_terminal_back_after_a_panic() {
    require_root();
    let s = Session(format!("tracer-test-top-panic-{}", std::process::id()));
    // The binary panics after its first screen (a switch only tests set); the shell then
    // shows the exit status and whether the line discipline is cooked again (`icanon`, not
    // `-icanon` as raw mode leaves it). The trace it records is finished all the same.
    let file = temp_path("top-panic.trc");
    let cmd = format!(
        "RUST_BACKTRACE=0 TRACER_TEST_PANIC_IN_TOP=1 {} top --every 1 -d 30 -o {}; echo EXITED $?; \
         stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon'; sleep 60",
        tracer_bin().display(),
        file.display()
    );
    s.start(&cmd);
    let after = s.wait_for("EXITED 101", Duration::from_secs(40));
    assert!(
        after.lines().any(|l| l == "EXITED 101"),
        "the shell's line starts where the panic's output ended:\n{after}"
    );
    assert!(
        after.contains("panicking after the first screen"),
        "the panic message is on the restored screen:\n{after}"
    );
    assert!(
        !after.contains("┌ findings"),
        "the view is still on screen:\n{after}"
    );
    let mode = s.wait_for("icanon", Duration::from_secs(5));
    assert!(
        mode.lines().any(|l| l == "icanon"),
        "raw mode left on after the panic:\n{mode}"
    );
    let r = read_report(&file);
    assert_eq!(
        r.end_reason.as_deref(),
        Some("the live view panicked"),
        "the trace is finished with its end record after the panic"
    );
    assert_eq!(r.truncated, None);
    assert!(
        r.host.events > 0,
        "the trace holds the events before the panic"
    );
    assert!(
        r.findings_match_live.is_some(),
        "the live findings record is written after the panic"
    );
}
