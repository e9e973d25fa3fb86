//! The collector's own state while it runs, for its health metrics and `/healthz`: how full
//! its bounded tables are and what it dropped outside the kernel. Live sessions only (a trace
//! file does not carry it).

use serde::Serialize;

/// One bounded table: entries now and the most it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableUsage {
    pub name: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionHealth {
    /// Kernel maps (`WAIT_SLOTS`, `TRACED`) and the collector's tables, at the last sample.
    pub tables: Vec<TableUsage>,
    /// Creator stacks the unwinder thread could not keep up with (dropped unwound).
    pub stacks_dropped: u64,
}
