//! `cargo xtask bench`: filled in below.
use std::path::Path;

pub fn run(_root: &Path, _iters: u64, _threads: usize) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
