//! The sandbox: an embedded Kubernetes API server and a Defender/Entra emulator, for the
//! one-command demo and the integration tests. Never used by `run`.

pub mod defender;
pub mod kube;
