//! Draws a [`TopView`] as `Ui` asks: header, findings pane, jobs, processes, keys; or one
//! process's detail. Names of traced programs are escaped before they reach the terminal.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row as TRow, Sparkline, Table, TableState},
};

use super::{
    ui::{Focus, Ui},
    view::{Detail, Row, TopView},
};
use crate::escape;

const SPARK: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The last `width` values as block characters, scaled to their own range.
pub fn spark(values: &[u64], width: usize) -> String {
    let v = &values[values.len().saturating_sub(width)..];
    let (Some(&lo), Some(&hi)) = (v.iter().min(), v.iter().max()) else {
        return String::new();
    };
    v.iter()
        .map(|&x| {
            if hi == lo {
                SPARK[0]
            } else {
                SPARK[((x - lo) * 7 / (hi - lo)) as usize]
            }
        })
        .collect()
}

pub fn mib(b: u64) -> String {
    format!("{:.1}M", b as f64 / (1 << 20) as f64)
}

fn signed_mib(b: i64) -> String {
    format!("{:+.1}M", b as f64 / (1 << 20) as f64)
}

/// Styles: colour only when `colour` (a TTY without NO_COLOR); bold/reverse always.
struct Theme {
    colour: bool,
}

impl Theme {
    fn bad(&self) -> Style {
        if self.colour {
            Style::new().red().bold()
        } else {
            Style::new().bold()
        }
    }
    fn good(&self) -> Style {
        if self.colour {
            Style::new().green()
        } else {
            Style::new()
        }
    }
    fn head(&self) -> Style {
        if self.colour {
            Style::new().cyan().bold()
        } else {
            Style::new().bold()
        }
    }
}

pub fn draw(f: &mut Frame, v: &TopView, ui: &Ui, detail: Option<&Detail>, colour: bool) {
    let t = Theme { colour };
    let findings_h = (v.findings.len() as u16).clamp(1, 8) + 2;
    let [header, findings, body, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(findings_h),
        Constraint::Min(6),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let head = format!(
        " tracer top · {:.0}s · {} processes · {} threads · {} events · {} lost · sort: {} ",
        v.elapsed_s,
        v.processes,
        v.threads,
        v.events,
        v.lost,
        ui.sort.name()
    );
    let filter = if ui.editing {
        format!("· filter: {}▏", escape::term(&ui.filter))
    } else if !ui.filter.is_empty() {
        format!("· filter: {}", escape::term(&ui.filter))
    } else {
        String::new()
    };
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(head, t.head()),
            Span::raw(filter),
            if v.lost > 0 {
                Span::styled(" counts are lower bounds", t.bad())
            } else {
                Span::raw("")
            },
        ])),
        header,
    );
    draw_findings(f, findings, v, &t);
    match detail {
        Some(d) => draw_detail(f, body, d, &t),
        None => {
            let [jobs, procs] =
                Layout::vertical([Constraint::Percentage(35), Constraint::Percentage(65)])
                    .areas(body);
            draw_rows(
                f,
                jobs,
                "jobs",
                &ui.jobs(v),
                ui.selected_job,
                ui.focus == Focus::Jobs,
                &t,
            );
            draw_rows(
                f,
                procs,
                "processes",
                &ui.procs(v),
                ui.selected_proc,
                ui.focus == Focus::Processes,
                &t,
            );
        }
    }
    let help = if detail.is_some() {
        " q/Esc back · Ctrl-C quit"
    } else {
        " q quit · s sort · / filter (job, name or pid) · Tab jobs/processes · ↑↓ select · Enter open · Esc clear"
    };
    f.render_widget(
        Paragraph::new(help).style(Style::new().add_modifier(Modifier::DIM)),
        keys,
    );
}

fn draw_findings(f: &mut Frame, area: Rect, v: &TopView, t: &Theme) {
    let lines: Vec<Line> = if v.findings.is_empty() {
        vec![Line::from(Span::styled("none", t.good()))]
    } else {
        v.findings
            .iter()
            .map(|x| {
                let active = x.state == "active";
                Line::from(vec![
                    Span::styled(
                        if active { "OPEN " } else { "resolved " },
                        if active { t.bad() } else { t.good() },
                    ),
                    Span::styled(x.kind.clone(), Style::new().bold()),
                    Span::raw(match x.pid {
                        Some(p) => format!(" pid {p} "),
                        None => " ".into(),
                    }),
                    Span::raw(escape::term(&x.job)),
                    Span::raw(": "),
                    Span::raw(escape::term(&x.summary)),
                ])
            })
            .collect()
    };
    f.render_widget(
        Paragraph::new(lines).block(Block::new().borders(Borders::ALL).title(format!(
            " findings ({}) ",
            v.findings.iter().filter(|x| x.state == "active").count()
        ))),
        area,
    );
}

fn draw_rows(
    f: &mut Frame,
    area: Rect,
    title: &str,
    rows: &[&Row],
    selected: usize,
    focused: bool,
    t: &Theme,
) {
    let header = TRow::new([
        "PID", "NAME", "JOB", "PROCS", "THR", "PARKED", "POLL", "BIRTH/m", "DEATH/m", "RSS",
        "ΔRSS", "RSS~", "THR~", "FINDINGS",
    ])
    .style(t.head());
    let body: Vec<TRow> = rows
        .iter()
        .map(|r| {
            let cells = vec![
                Cell::from(r.pid.map_or_else(String::new, |p| p.to_string())),
                Cell::from(escape::term_cut(&r.name, 24)),
                Cell::from(escape::term_cut(&r.job, 40)),
                Cell::from(r.processes.to_string()),
                Cell::from(r.threads.to_string()),
                Cell::from(r.parked.to_string()),
                Cell::from(r.polls.to_string()),
                Cell::from(format!("{:.0}", r.births_per_min)),
                Cell::from(format!("{:.0}", r.deaths_per_min)),
                Cell::from(mib(r.rss)),
                Cell::from(signed_mib(r.rss_growth)),
                Cell::from(spark(&r.rss_history, 12)),
                Cell::from(spark(&r.thread_history, 12)),
                Cell::from(Span::styled(r.findings.join(","), t.bad())),
            ];
            TRow::new(cells)
        })
        .collect();
    let widths = [
        Constraint::Length(8),
        Constraint::Length(16),
        Constraint::Min(20),
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(16),
    ];
    let mut state = TableState::default();
    if focused && !rows.is_empty() {
        state.select(Some(selected.min(rows.len() - 1)));
    }
    let table = Table::new(body, widths)
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .block(
            Block::new()
                .borders(Borders::ALL)
                .title(format!(" {title} ({}) ", rows.len()))
                .border_style(if focused { t.head() } else { Style::new() }),
        );
    f.render_stateful_widget(table, area, &mut state);
}

fn draw_detail(f: &mut Frame, area: Rect, d: &Detail, t: &Theme) {
    let s = &d.summary;
    let [info, sparks, lists] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Length(6),
        Constraint::Min(4),
    ])
    .areas(area);
    let text = vec![
        Line::from(format!(
            "threads: {} live, {} created, {} exited, peak {} · parked {} · polling {} · long-parked {}",
            s.threads_live,
            s.threads_created,
            s.threads_exited,
            s.threads_peak,
            s.futex_parked_now,
            s.poll_waiting_now,
            s.long_parked_count
        )),
        Line::from(format!(
            "memory: RSS {} (anon {}, file {}), heap {}, mapped +{} −{}, brk +{}",
            mib(s.rss_bytes),
            mib(s.rss_anon_bytes),
            mib(s.rss_file_bytes),
            mib(s.heap_bytes),
            mib(s.mmap_bytes + s.mremap_grow_bytes),
            mib(s.munmap_bytes + s.mremap_shrink_bytes),
            mib(s.brk_growth_bytes)
        )),
        Line::from(Span::styled(d.row.findings.join(", "), t.bad())),
    ];
    f.render_widget(
        Paragraph::new(text).block(Block::new().borders(Borders::ALL).title(format!(
            " pid {} {} · {} ",
            d.row.pid.unwrap_or(0),
            escape::term(&s.comm),
            escape::term(&s.job)
        ))),
        info,
    );
    let [rss, thr] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(sparks);
    let last = |v: &[u64]| v.last().copied().unwrap_or(0);
    f.render_widget(
        Sparkline::default()
            .data(&d.rss_kib)
            .block(Block::new().borders(Borders::ALL).title(format!(
                " RSS, last hour (10 s): {} ",
                mib(last(&d.rss_kib) * 1024)
            ))),
        rss,
    );
    f.render_widget(
        Sparkline::default().data(&d.threads).block(
            Block::new()
                .borders(Borders::ALL)
                .title(format!(" live threads: {} ", last(&d.threads))),
        ),
        thr,
    );
    let [sites, parked] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(lists);
    let site_rows: Vec<TRow> = d
        .sites
        .iter()
        .map(|c| {
            TRow::new([
                Cell::from(c.threads.to_string()),
                Cell::from(c.alive.to_string()),
                Cell::from(c.parked.to_string()),
                Cell::from(escape::term(&c.site)),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            site_rows,
            [
                Constraint::Length(7),
                Constraint::Length(6),
                Constraint::Length(7),
                Constraint::Min(10),
            ],
        )
        .header(TRow::new(["CREATED", "ALIVE", "PARKED", "CREATING SITE"]).style(t.head()))
        .block(
            Block::new()
                .borders(Borders::ALL)
                .title(" who created its threads "),
        ),
        sites,
    );
    let parked_rows: Vec<TRow> = d
        .long_parked
        .iter()
        .map(|w| {
            TRow::new([
                Cell::from(w.tid.to_string()),
                Cell::from(format!("{:.0}s", w.for_ns as f64 / 1e9)),
                Cell::from(escape::term_cut(&w.name, 16)),
                Cell::from(escape::term(w.site.as_deref().unwrap_or("?"))),
            ])
        })
        .collect();
    f.render_widget(
        Table::new(
            parked_rows,
            [
                Constraint::Length(8),
                Constraint::Length(6),
                Constraint::Length(16),
                Constraint::Min(10),
            ],
        )
        .header(TRow::new(["TID", "FOR", "NAME", "CREATED AT"]).style(t.head()))
        .block(
            Block::new()
                .borders(Borders::ALL)
                .title(format!(" long-parked threads ({}) ", s.long_parked_count)),
        ),
        parked,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::detect::Finding;

    fn screen(v: &TopView, ui: &Ui, d: Option<&Detail>) -> String {
        let mut term = Terminal::new(TestBackend::new(200, 40)).unwrap();
        term.draw(|f| draw(f, v, ui, d, false)).unwrap();
        let buf = term.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    fn view() -> TopView {
        let leaker = Row {
            pid: Some(4242),
            name: "leak\x1b[2Jer".into(),
            job: "systemd:worker.service".into(),
            processes: 1,
            threads: 301,
            parked: 300,
            births_per_min: 600.0,
            rss: 40 << 20,
            thread_growth: 280,
            rss_growth: 20 << 20,
            findings: vec!["runaway_threads".into()],
            rss_history: vec![1, 2, 3, 4, 5, 6, 7, 8],
            thread_history: vec![10, 20, 30, 40],
            ..Default::default()
        };
        let quiet = Row {
            pid: Some(7),
            name: "sshd".into(),
            job: "systemd:ssh.service".into(),
            processes: 1,
            threads: 1,
            rss: 5 << 20,
            ..Default::default()
        };
        TopView {
            elapsed_s: 42.0,
            processes: 2,
            threads: 302,
            events: 1234,
            lost: 0,
            jobs: vec![
                Row {
                    pid: None,
                    name: "systemd:worker.service".into(),
                    ..leaker.clone()
                },
                Row {
                    pid: None,
                    name: "systemd:ssh.service".into(),
                    ..quiet.clone()
                },
            ],
            procs: vec![quiet, leaker],
            findings: vec![Finding {
                kind: "runaway_threads".into(),
                pid: Some(4242),
                job: "systemd:worker.service".into(),
                since_ns: 0,
                since_unix: 0,
                last_ns: 0,
                detected_ns: 0,
                state: "active".into(),
                summary: "live threads 21 → 301 over 30 s".into(),
                evidence: Default::default(),
                lost_events: 0,
            }],
        }
    }

    #[test]
    fn the_screen_shows_trouble_first_with_sparklines_and_findings() {
        let v = view();
        let s = screen(&v, &Ui::default(), None);
        assert!(
            s.contains("tracer top · 42s · 2 processes · 302 threads"),
            "{s}"
        );
        assert!(
            s.contains(
                "OPEN runaway_threads pid 4242 systemd:worker.service: live threads 21 → 301"
            ),
            "{s}"
        );
        let lines: Vec<&str> = s.lines().collect();
        let is_leaker = |l: &str| l.contains("4242") && l.contains("leak\\x1b");
        let leaker = lines
            .iter()
            .position(|l| is_leaker(l))
            .expect("the leaker's row");
        let sshd = lines
            .iter()
            .position(|l| l.contains("sshd"))
            .expect("sshd's row");
        assert!(leaker < sshd, "findings first:\n{s}");
        let row = lines.iter().find(|l| is_leaker(l)).unwrap();
        assert!(
            row.contains("▁▂▃▄▄▅▆█") || row.contains('█'),
            "a sparkline: {row}"
        );
        assert!(
            row.contains("+20.0M") && row.contains("40.0M") && row.contains("600"),
            "{row}"
        );
        // The hostile name is escaped, not sent to the terminal.
        assert!(!s.contains('\x1b'), "{s}");
        assert!(s.contains("leak\\x1b[2Jer"), "{s}");
        assert!(s.contains("q quit"));
    }

    #[test]
    fn a_filter_and_the_detail_view() {
        let v = view();
        let ui = Ui {
            filter: "ssh".into(),
            ..Default::default()
        };
        let s = screen(&v, &ui, None);
        assert!(s.contains("filter: ssh"));
        assert!(!s.lines().any(|l| l.contains("leak\\x1b")), "{s}");
        let d = Detail {
            row: v.procs[1].clone(),
            summary: crate::model::ProcessSummary {
                pid: 4242,
                comm: "leaker".into(),
                job: "systemd:worker.service".into(),
                threads_live: 301,
                threads_created: 300,
                long_parked_count: 1,
                ..Default::default()
            },
            sites: vec![crate::model::CreatorSite {
                site: "handle_message (worker.c:42)".into(),
                frames: vec![],
                threads: 300,
                alive: 300,
                parked: 299,
            }],
            long_parked: vec![crate::model::census::WaitingThread {
                tid: 4300,
                name: "worker".into(),
                since_ns: 0,
                for_ns: 25_000_000_000,
                site: Some("handle_message (worker.c:42)".into()),
            }],
            rss_kib: vec![100, 200, 300],
            threads: vec![1, 100, 301],
        };
        let s = screen(
            &v,
            &Ui {
                detail: Some(4242),
                ..Default::default()
            },
            Some(&d),
        );
        assert!(
            s.contains("pid 4242 leaker · systemd:worker.service"),
            "{s}"
        );
        assert!(s.contains("threads: 301 live, 300 created"), "{s}");
        assert!(s.contains("handle_message (worker.c:42)"), "{s}");
        assert!(s.contains("4300") && s.contains("25s"), "{s}");
        assert!(s.contains("live threads: 301"), "{s}");
    }

    #[test]
    fn sparklines_scale_to_their_range() {
        assert_eq!(spark(&[0, 7], 8), "▁█");
        assert_eq!(spark(&[5, 5, 5], 8), "▁▁▁");
        assert_eq!(spark(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 3), "▁▄█");
        assert_eq!(spark(&[], 3), "");
    }
}
