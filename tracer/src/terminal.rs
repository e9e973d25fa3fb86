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

/// Where log lines go: stderr, except while a full-screen view owns the terminal, when they
/// are held (at most `HELD_MAX` bytes; the rest are counted) and printed when it ends.
pub struct LogGate;

const HELD_MAX: usize = 64 << 10;

struct Held {
    on: bool,
    buf: Vec<u8>,
    dropped: u64,
}

static HELD: std::sync::Mutex<Held> = std::sync::Mutex::new(Held {
    on: false,
    buf: Vec::new(),
    dropped: 0,
});

fn held() -> std::sync::MutexGuard<'static, Held> {
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogGate {
    /// From now on, hold log lines.
    pub fn hold() {
        held().on = true;
    }

    /// Print what was held, and write to stderr again.
    pub fn release() {
        let mut h = held();
        if !h.on {
            return;
        }
        h.on = false;
        let buf = std::mem::take(&mut h.buf);
        let dropped = std::mem::take(&mut h.dropped);
        drop(h);
        use std::io::Write;
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(&buf);
        if dropped > 0 {
            let _ = writeln!(e, "tracer: {dropped} bytes of log lines were not kept");
        }
    }
}

impl std::io::Write for LogGate {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut h = held();
        if !h.on {
            drop(h);
            return std::io::stderr().write(b);
        }
        if h.buf.len() + b.len() <= HELD_MAX {
            h.buf.extend_from_slice(b);
        } else {
            h.dropped += b.len() as u64;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
