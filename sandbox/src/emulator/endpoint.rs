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
    /// `GET /api/machines`
    Machines,
    /// `GET /api/machines/{id}` (device id or computer name)
    MachineById,
    /// `GET /api/machines/findbyip(ip='…',timestamp=…)`
    FindMachinesByIp,
    /// `GET /api/machines/{id}/alerts`
    MachineAlerts,
    /// `POST /api/machines/{id}/tags`
    MachineTags,
    /// `POST /api/machines/AddOrRemoveTagForMultipleMachines`
    TagMachines,
    /// `GET /api/deviceavinfo` (its own, smaller, rate limit)
    DeviceAvInfo,
    /// `GET /api/alerts`
    Alerts,
    /// `GET /api/alerts/{id}`
    AlertById,
    /// Anything else, including the undocumented `GET /api/indicators/{id}` (served).
    Other,
}

impl Endpoint {
    /// The machine, antivirus health and alert reads (what outcome correlation calls).
    pub const MACHINE_AND_ALERT_READS: [Endpoint; 7] = [
        Endpoint::Machines,
        Endpoint::MachineById,
        Endpoint::FindMachinesByIp,
        Endpoint::MachineAlerts,
        Endpoint::DeviceAvInfo,
        Endpoint::Alerts,
        Endpoint::AlertById,
    ];
}
