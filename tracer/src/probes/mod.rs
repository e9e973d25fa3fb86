//! Loading and attaching the kernel programs, and reading their maps.

mod btf;
mod formats;
mod load;
mod maps;
mod privileges;
mod tracefs;

pub use load::{LoadConfig, LoadError, Probes, require_privileges};
pub use maps::{KernelStats, WaitTable, wait_slots_len, wait_snapshot};
pub use tracefs::ensure_tracefs;
