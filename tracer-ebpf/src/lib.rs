// Empty on purpose: the kernel programs are the `tracer` binary of this crate. The library
// target exists so `tracer` can name this crate as a build-dependency (see aya-build).
#![no_std]
