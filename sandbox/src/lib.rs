//! The sandbox: what defender-operator talks to when there is no cluster and no Azure tenant.
//!
//! - [`apiserver`]: an in-process Kubernetes API server (HTTP and HTTPS on loopback, state in
//!   memory) that kube-rs clients, controllers and `kubectl` use as they would a real one.
//! - [`emulator`]: a Microsoft Entra + Defender for Endpoint emulator, built from the public API
//!   documentation rather than from what the operator's client expects.
//!
//! This crate does not depend on the operator: the operator's demo and integration tests depend
//! on it, and the operator's release binary contains none of it.
#![forbid(unsafe_code)]

pub mod apiserver;
pub mod emulator;
