//! What the person at the keyboard chose: sort order, filter, selection, drill-down; and the
//! keys that change it. Pure: no terminal here.

use super::view::{Row, TopView};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    /// Open findings, then thread growth, parked threads, memory growth.
    #[default]
    Trouble,
    Threads,
    Parked,
    Births,
    Rss,
    Pid,
}

impl Sort {
    pub fn next(self) -> Self {
        match self {
            Sort::Trouble => Sort::Threads,
            Sort::Threads => Sort::Parked,
            Sort::Parked => Sort::Births,
            Sort::Births => Sort::Rss,
            Sort::Rss => Sort::Pid,
            Sort::Pid => Sort::Trouble,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::Trouble => "trouble",
            Sort::Threads => "threads",
            Sort::Parked => "parked",
            Sort::Births => "births/min",
            Sort::Rss => "rss",
            Sort::Pid => "pid",
        }
    }

    /// Orders rows, worst first.
    pub fn apply(self, rows: &mut [&Row]) {
        let f = |r: &Row| r.births_per_min;
        match self {
            Sort::Trouble => rows.sort_by(|a, b| {
                (b.findings.len(), b.thread_growth, b.parked, b.rss_growth)
                    .cmp(&(a.findings.len(), a.thread_growth, a.parked, a.rss_growth))
                    .then(b.threads.cmp(&a.threads))
                    .then(a.pid.cmp(&b.pid))
                    .then(a.name.cmp(&b.name))
            }),
            Sort::Threads => rows.sort_by(|a, b| b.threads.cmp(&a.threads).then(a.pid.cmp(&b.pid))),
            Sort::Parked => rows.sort_by(|a, b| b.parked.cmp(&a.parked).then(a.pid.cmp(&b.pid))),
            Sort::Births => rows.sort_by(|a, b| f(b).total_cmp(&f(a)).then(a.pid.cmp(&b.pid))),
            Sort::Rss => rows.sort_by(|a, b| b.rss.cmp(&a.rss).then(a.pid.cmp(&b.pid))),
            Sort::Pid => rows.sort_by(|a, b| a.pid.cmp(&b.pid).then(a.name.cmp(&b.name))),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Focus {
    Jobs,
    #[default]
    Processes,
}

/// A key, as the UI understands it (the terminal's events are mapped to these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    PageUp,
    PageDown,
    Tab,
    CtrlC,
}

#[derive(Clone, Debug, Default)]
pub struct Ui {
    pub sort: Sort,
    /// Rows shown must contain this in their pid, name or job.
    pub filter: String,
    /// Typing a filter (after `/`).
    pub editing: bool,
    pub focus: Focus,
    pub selected_job: usize,
    pub selected_proc: usize,
    /// The pid drilled into (Enter on a process).
    pub detail: Option<u32>,
    pub quit: bool,
}

/// What a key asks of the caller beyond a redraw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Open the detail of this pid (built from the engine).
    Drill(u32),
    Quit,
}

fn matches(r: &Row, filter: &str) -> bool {
    filter.is_empty()
        || r.name.contains(filter)
        || r.job.contains(filter)
        || r.pid.is_some_and(|p| p.to_string() == filter)
}

impl Ui {
    /// The rows shown, in order.
    pub fn jobs<'a>(&self, v: &'a TopView) -> Vec<&'a Row> {
        let mut rows: Vec<&Row> = v.jobs.iter().filter(|r| matches(r, &self.filter)).collect();
        self.sort.apply(&mut rows);
        rows
    }

    pub fn procs<'a>(&self, v: &'a TopView) -> Vec<&'a Row> {
        let mut rows: Vec<&Row> = v
            .procs
            .iter()
            .filter(|r| matches(r, &self.filter))
            .collect();
        self.sort.apply(&mut rows);
        rows
    }

    pub fn key(&mut self, k: Key, v: &TopView) -> Effect {
        if k == Key::CtrlC {
            self.quit = true;
            return Effect::Quit;
        }
        if self.editing {
            match k {
                Key::Enter | Key::Esc => self.editing = false,
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Char(c) if !c.is_control() && self.filter.len() < 64 => self.filter.push(c),
                _ => {}
            }
            self.selected_job = 0;
            self.selected_proc = 0;
            return Effect::None;
        }
        let (jobs, procs) = (self.jobs(v).len(), self.procs(v).len());
        let sel = match self.focus {
            Focus::Jobs => (&mut self.selected_job, jobs),
            Focus::Processes => (&mut self.selected_proc, procs),
        };
        match k {
            // q and Esc leave the detail first.
            Key::Char('q') | Key::Esc if self.detail.is_some() => self.detail = None,
            Key::Char('q') => {
                self.quit = true;
                return Effect::Quit;
            }
            Key::Esc => self.filter.clear(),
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            Key::Tab => {
                self.focus = match self.focus {
                    Focus::Jobs => Focus::Processes,
                    Focus::Processes => Focus::Jobs,
                }
            }
            Key::Up | Key::Char('k') => *sel.0 = sel.0.saturating_sub(1),
            Key::Down | Key::Char('j') => *sel.0 = (*sel.0 + 1).min(sel.1.saturating_sub(1)),
            Key::PageUp => *sel.0 = sel.0.saturating_sub(10),
            Key::PageDown => *sel.0 = (*sel.0 + 10).min(sel.1.saturating_sub(1)),
            Key::Enter => match self.focus {
                // A job: show its processes.
                Focus::Jobs => {
                    if let Some(r) = self.jobs(v).get(self.selected_job) {
                        self.filter = r.job.clone();
                        self.focus = Focus::Processes;
                        self.selected_proc = 0;
                    }
                }
                Focus::Processes => {
                    if let Some(pid) = self.procs(v).get(self.selected_proc).and_then(|r| r.pid) {
                        self.detail = Some(pid);
                        return Effect::Drill(pid);
                    }
                }
            },
            _ => {}
        }
        Effect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: u32, name: &str, threads: u64, findings: &[&str]) -> Row {
        Row {
            pid: Some(pid),
            name: name.into(),
            job: format!("systemd:{name}.service"),
            threads,
            findings: findings.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn view() -> TopView {
        TopView {
            procs: vec![
                row(1, "init", 50, &[]),
                row(2, "worker", 5, &["runaway_threads"]),
                row(3, "redis", 9, &[]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn trouble_first_then_other_orders() {
        let v = view();
        let mut ui = Ui::default();
        let pids = |ui: &Ui| {
            ui.procs(&v)
                .iter()
                .map(|r| r.pid.unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(pids(&ui), [2, 1, 3], "the finding first");
        ui.key(Key::Char('s'), &v);
        assert_eq!(ui.sort, Sort::Threads);
        assert_eq!(pids(&ui), [1, 3, 2]);
        for _ in 0..4 {
            ui.key(Key::Char('s'), &v);
        }
        assert_eq!(ui.sort, Sort::Pid);
        assert_eq!(pids(&ui), [1, 2, 3]);
    }

    #[test]
    fn filter_select_drill_and_quit() {
        let v = view();
        let mut ui = Ui::default();
        ui.key(Key::Char('/'), &v);
        for c in "redis".chars() {
            ui.key(Key::Char(c), &v);
        }
        ui.key(Key::Enter, &v);
        assert!(!ui.editing);
        assert_eq!(ui.procs(&v).len(), 1);
        assert_eq!(ui.key(Key::Enter, &v), Effect::Drill(3));
        assert_eq!(ui.detail, Some(3));
        // q leaves the detail first, then quits.
        assert_eq!(ui.key(Key::Char('q'), &v), Effect::None);
        assert_eq!(ui.detail, None);
        ui.key(Key::Esc, &v);
        assert_eq!(ui.filter, "", "Esc clears the filter");
        ui.key(Key::Down, &v);
        ui.key(Key::Down, &v);
        ui.key(Key::Down, &v);
        assert_eq!(ui.selected_proc, 2, "stops at the last row");
        // A pid filters exactly.
        ui.key(Key::Char('/'), &v);
        ui.key(Key::Char('2'), &v);
        assert_eq!(ui.procs(&v).len(), 1);
        ui.key(Key::Esc, &v);
        assert_eq!(ui.key(Key::CtrlC, &v), Effect::Quit);
        assert!(ui.quit);
    }
}
