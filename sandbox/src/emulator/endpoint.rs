//! The documented endpoints, as routing recognises them: what call records report and rate limits
//! count per.

/// Which documented endpoint a request hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    TokenV2,
    TokenV1,
    ListIndicators,
    SubmitIndicator,
    ImportIndicators,
    DeleteIndicator,
    BatchDeleteIndicators,
    Machines,
    Alerts,
    /// Anything else, including the undocumented `GET /api/indicators/{id}` (served).
    Other,
}
