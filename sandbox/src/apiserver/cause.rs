//! One entry of a `Status`'s `details.causes`: what schema validation, name checks and
//! server-side apply conflicts report per field. It has a module of its own, depending on nothing,
//! because `error` depends on `registry`, which depends on `schema`, which builds causes: were
//! `Cause` in `error`, the three would form a cycle.

/// One entry of `details.causes`.
#[derive(Debug, Clone)]
pub struct Cause {
    pub reason: &'static str,
    pub message: String,
    pub field: String,
}
