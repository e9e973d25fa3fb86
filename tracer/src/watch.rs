//! Findings as a stream: each one once when it opens and once when it resolves (`tracer
//! watch`, and the daemon's log on stdout). One line per change, as text or JSON.

use std::collections::HashMap;

use serde::Serialize;

use crate::{detect::Finding, escape};

/// What happened to a finding since the last look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Open,
    Resolved,
}

/// A finding is the same finding across looks by what it is about and when it began.
type Key = (String, Option<u32>, String, u64);

fn key(f: &Finding) -> Key {
    (f.kind.clone(), f.pid, f.job.clone(), f.since_ns)
}

/// Remembers the findings already streamed and whether each was open, for those still in the
/// detectors' list (bounded by it: `detect::MAX_FINDINGS`).
#[derive(Default)]
pub struct FindingStream {
    seen: HashMap<Key, bool>,
}

impl FindingStream {
    /// The changes in `findings` since the last call, in the list's order. A finding that
    /// opened and resolved in between (an OOM kill) is streamed as both.
    pub fn changes<'a>(&mut self, findings: &'a [Finding]) -> Vec<(Change, &'a Finding)> {
        let mut out = Vec::new();
        let mut next = HashMap::with_capacity(findings.len());
        for f in findings {
            let k = key(f);
            let open = f.state == "active";
            match (self.seen.get(&k), open) {
                (None, true) => out.push((Change::Open, f)),
                (None, false) => {
                    out.push((Change::Open, f));
                    out.push((Change::Resolved, f));
                }
                (Some(true), false) => out.push((Change::Resolved, f)),
                _ => {}
            }
            next.insert(k, open);
        }
        // Findings evicted from the detectors' list are forgotten with it.
        self.seen = next;
        out
    }
}

/// One line of the stream, for machines: the change, then every field of the finding.
#[derive(Serialize)]
pub struct Line<'a> {
    pub event: Change,
    #[serde(flatten)]
    pub finding: &'a Finding,
}

pub fn json_line(change: Change, f: &Finding) -> String {
    // A Finding always serializes (strings, numbers, a JSON map).
    serde_json::to_string(&Line {
        event: change,
        finding: f,
    })
    .unwrap_or_default()
        + "\n"
}

/// One line for people: `OPEN runaway_threads pid 42 systemd:w.service: <summary>`, with the
/// traced program's names escaped, and the change coloured when `colour`.
pub fn text_line(change: Change, f: &Finding, colour: bool) -> String {
    let word = match change {
        Change::Open => "OPEN",
        Change::Resolved => "RESOLVED",
    };
    let word = match (colour, change) {
        (false, _) => word.to_owned(),
        (true, Change::Open) => format!("\x1b[1;31m{word}\x1b[0m"),
        (true, Change::Resolved) => format!("\x1b[32m{word}\x1b[0m"),
    };
    format!(
        "{word} {}{} {}: {}\n",
        f.kind,
        f.pid.map_or_else(String::new, |p| format!(" pid {p}")),
        escape::term(&f.job),
        escape::term(&f.summary)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(kind: &str, pid: u32, since: u64, state: &str) -> Finding {
        Finding {
            kind: kind.into(),
            pid: Some(pid),
            job: "systemd:w\x1b[2J.service".into(),
            since_ns: since,
            since_unix: 0,
            last_ns: since,
            detected_ns: since,
            state: state.into(),
            summary: "rising".into(),
            evidence: Default::default(),
            lost_events: 0,
        }
    }

    #[test]
    fn each_finding_opens_and_resolves_once() {
        let mut s = FindingStream::default();
        let a = finding("runaway_threads", 1, 10, "active");
        let b = finding("oom_kill", 2, 20, "resolved");
        let list = [a.clone(), b.clone()];
        let got = s.changes(&list);
        let kinds: Vec<_> = got.iter().map(|(c, f)| (*c, f.kind.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (Change::Open, "runaway_threads"),
                (Change::Open, "oom_kill"),
                (Change::Resolved, "oom_kill")
            ]
        );
        // Updates of an open finding (new numbers) are not changes.
        let mut a2 = a.clone();
        a2.summary = "rising faster".into();
        assert!(s.changes(&[a2.clone(), b.clone()]).is_empty());
        a2.state = "resolved".into();
        let list = [a2.clone(), b.clone()];
        let got = s.changes(&list);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, Change::Resolved);
        assert!(s.changes(&[a2, b]).is_empty());
        // The same process's next episode is a new finding.
        let again = finding("runaway_threads", 1, 99, "active");
        assert_eq!(s.changes(&[again]).len(), 1);
        assert_eq!(s.seen.len(), 1, "evicted findings are forgotten");
    }

    #[test]
    fn lines_escape_and_parse() {
        let f = finding("runaway_threads", 1, 10, "active");
        let t = text_line(Change::Open, &f, false);
        assert!(!t.contains('\x1b'), "{t:?}");
        assert!(t.starts_with("OPEN runaway_threads pid 1 "), "{t}");
        assert!(text_line(Change::Open, &f, true).starts_with("\x1b[1;31mOPEN"));
        let j: serde_json::Value = serde_json::from_str(&json_line(Change::Resolved, &f)).unwrap();
        assert_eq!(j["event"], "resolved");
        assert_eq!(j["kind"], "runaway_threads");
        assert_eq!(j["job"], "systemd:w\x1b[2J.service");
    }
}
