//! defender-operator: pushes the file hashes of security tests that ran UNPROTECTED to Microsoft
//! Defender for Endpoint as indicators, driven by `DefenderPartner` and `ProbeFinding` resources.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod defender;
#[doc(hidden)]
pub mod fuzzing;
pub mod lease;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod telemetry;
