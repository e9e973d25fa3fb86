//! What a terminal gets: colours only on a TTY, and never when `NO_COLOR` is set
//! (<https://no-color.org>: present and not empty).

use std::io::IsTerminal;

/// Whether output to a stream that `is_tty` may be coloured.
pub fn colour(is_tty: bool) -> bool {
    is_tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn colour_stdout() -> bool {
    colour(std::io::stdout().is_terminal())
}

pub fn colour_stderr() -> bool {
    colour(std::io::stderr().is_terminal())
}
