//! The glue between the operator and the sandbox crate (`defender-sandbox`): the operator running
//! on the in-process API server against the Defender emulator, for `sandbox --demo` and the
//! integration tests. Behind the default-on `sandbox` feature; never used by `run`.

pub mod cluster;
pub mod demo;

pub use cluster::{Install, Operator, Sandbox, SandboxOptions};
