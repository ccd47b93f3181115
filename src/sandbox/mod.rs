//! The sandbox: an embedded Kubernetes API server and a Defender/Entra emulator, for the
//! one-command demo and the integration tests. Never used by `run`.

pub mod cluster;
pub mod defender;
pub mod demo;
pub mod kube;

pub use cluster::{Operator, Sandbox, SandboxOptions};
