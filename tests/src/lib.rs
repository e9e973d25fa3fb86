//! Workloads (src/bin/workload.rs) and integration tests (tests/) for the tracer.
