//! `tracer top`: the live view for an incident, htop for leaking threads and memory. `view`
//! takes the engine's state at each refresh, `ui` holds what the keyboard chose, `render`
//! draws both with ratatui, and `app` runs the terminal (raw mode, the alternate screen,
//! restoring it on exit and on panic).

pub mod app;
pub mod render;
pub mod ui;
pub mod view;
