//! defender-operator: pushes the file hashes of security tests that ran UNPROTECTED to Microsoft
//! Defender for Endpoint as indicators, driven by `DefenderPartner` and `ProbeFinding` resources.

pub mod api;
pub mod cli;
pub mod controller;
pub mod defender;
#[doc(hidden)]
pub mod fuzzing;
pub mod lease;
pub mod sandbox;
pub mod telemetry;
