//! tracer: a host-wide thread, wait and memory tracer for worker fleets, on eBPF.
//!
//! Data flow: `probes` (kernel programs, loaded and attached) → `events` (decoding) →
//! `model` (process/thread state) → surfaces: `collector` (live loop, trace file writer),
//! `tracefile` (file format), `report` (offline summary).

pub mod cgroups;
pub mod collector;
pub mod command;
pub mod detect;
pub mod engine;
pub mod escape;
pub mod events;
pub mod export;
pub mod health;
pub mod jobscan;
pub mod metrics;
pub mod model;
pub mod probes;
pub mod report;
pub mod seed;
pub mod stacks;
pub mod terminal;
pub mod top;
pub mod tracefile;
pub mod waits;
pub mod watch;
