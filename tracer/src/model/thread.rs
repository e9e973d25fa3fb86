//! One live thread of a process: who created it, when, and the names it took.

use serde::Serialize;

/// At most this many names are kept per thread: its first and the latest ones.
pub const MAX_NAMES: usize = 4;

/// The thread that created another one, with its name at that moment.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Creator {
    pub tid: u32,
    pub comm: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Thread {
    pub tid: u32,
    /// When it was created, or first seen (threads that existed before tracing).
    pub born_ns: u64,
    /// None for threads that existed before tracing started (or whose birth was lost).
    pub creator: Option<Creator>,
    /// Its names over its life, oldest first: the first one and the latest
    /// [`MAX_NAMES`] - 1 (the ones between are dropped).
    pub names: Vec<String>,
    /// Where it was created (a site id of `model::sites`), when its creator's stack was
    /// recorded.
    pub site: Option<u32>,
    /// Parked in futex, or waiting in poll/select/epoll, since then (CLOCK_MONOTONIC ns), at
    /// the last sample.
    pub futex_since: Option<u64>,
    pub poll_since: Option<u64>,
}

impl Thread {
    pub fn new(tid: u32, born_ns: u64) -> Self {
        Self {
            tid,
            born_ns,
            ..Default::default()
        }
    }

    /// Its name now, if known.
    pub fn name(&self) -> Option<&str> {
        self.names.last().map(String::as_str)
    }

    /// Records a new name (unchanged names are not repeated).
    pub fn rename(&mut self, name: String) {
        if self.name() == Some(name.as_str()) {
            return;
        }
        if self.names.len() >= MAX_NAMES {
            self.names.remove(1);
        }
        self.names.push(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_the_first_and_the_latest() {
        let mut t = Thread::new(7, 0);
        for n in ["a", "a", "b", "c", "d", "e"] {
            t.rename(n.to_owned());
        }
        assert_eq!(t.names, ["a", "c", "d", "e"]);
        assert_eq!(t.name(), Some("e"));
    }
}
