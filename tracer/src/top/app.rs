//! The interactive terminal: raw mode and the alternate screen for the session, keys read
//! between samples, the view rebuilt every refresh and redrawn on keys. The terminal is
//! restored when the session ends, on `q`/Ctrl-C, on an error and on a panic (ratatui's hook).
//! Log lines are held back while the screen is ours (see `terminal::LogGate`) and printed after.

use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use super::{
    render,
    ui::{Effect, Key, Ui},
    view::{Detail, History, TopView},
};
use crate::collector::{self, Next, Outcome, SessionOptions};

/// How often keys are read (and the screen redrawn when they changed something).
const KEY_POLL: Duration = Duration::from_millis(100);

/// Set (to anything) to panic after the first screen is drawn: the tests' way to prove the
/// terminal is restored after a panic. Nothing else reads it.
const PANIC_FOR_TESTS: &str = "TRACER_TEST_PANIC_IN_TOP";

/// Puts the terminal back however the session ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        // On a panic ratatui's hook has restored the terminal before the message was printed;
        // leaving the alternate screen twice would move the cursor back over that message.
        if !std::thread::panicking() {
            ratatui::restore();
        }
        crate::terminal::LogGate::release();
    }
}

fn key_of(k: event::KeyEvent) -> Option<Key> {
    if k.kind != KeyEventKind::Press {
        return None;
    }
    Some(match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Tab => Key::Tab,
        _ => return None,
    })
}

/// Runs a tracing session behind the interactive view, refreshed every `every`.
pub async fn run(mut opts: SessionOptions, every: Duration) -> anyhow::Result<Outcome> {
    opts.print_every = Some(KEY_POLL);
    crate::terminal::LogGate::hold();
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            crate::terminal::LogGate::release();
            return Err(anyhow::Error::new(e).context("setting up the terminal (try --no-tui)"));
        }
    };
    let _restore = Restore;
    let colour = crate::terminal::colour(true);
    let mut history = History::default();
    let mut ui = Ui::default();
    let mut view = TopView::default();
    let mut detail: Option<Detail> = None;
    let mut last: Option<Instant> = None;
    let mut failed = None;
    let outcome = collector::run(opts, |engine, elapsed| {
        let mut redraw = false;
        while event::poll(Duration::ZERO).unwrap_or(false) {
            match event::read() {
                Ok(Event::Key(k)) => {
                    let Some(k) = key_of(k) else { continue };
                    match ui.key(k, &view) {
                        Effect::Quit => return Next::Break("quit"),
                        Effect::Drill(pid) => {
                            detail = view
                                .procs
                                .iter()
                                .find(|r| r.pid == Some(pid))
                                .and_then(|r| Detail::build(engine, r));
                        }
                        Effect::None => {}
                    }
                    redraw = true;
                }
                Ok(Event::Resize(..)) => redraw = true,
                _ => {}
            }
        }
        if last.is_none_or(|t| t.elapsed() >= every) {
            last = Some(Instant::now());
            view = TopView::build(
                engine,
                &mut history,
                elapsed.as_secs_f64(),
                collector::monotonic_ns(),
            );
            if let Some(pid) = ui.detail {
                // The drilled-into process may have gone: back to the list then.
                let row = view.procs.iter().find(|r| r.pid == Some(pid)).cloned();
                detail = row.and_then(|r| Detail::build(engine, &r));
                if detail.is_none() {
                    ui.detail = None;
                }
            }
            redraw = true;
        }
        if ui.detail.is_none() {
            detail = None;
        }
        if redraw
            && let Err(e) = terminal.draw(|f| render::draw(f, &view, &ui, detail.as_ref(), colour))
        {
            failed = Some(e);
            return Next::Break("drawing the screen failed");
        }
        if redraw && std::env::var_os(PANIC_FOR_TESTS).is_some() {
            panic!("{PANIC_FOR_TESTS} is set: panicking after the first screen");
        }
        Next::Continue(())
    })
    .await;
    drop(_restore);
    if let Some(e) = failed {
        tracing::error!("drawing the screen: {e}");
    }
    outcome
}
