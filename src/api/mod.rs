//! The CRD types (`detect.dev/v1alpha1`) and the pure rules around them. No IO.

pub mod conditions;
pub mod duration;
pub mod finding;
pub mod outcome;
pub mod partner;
pub mod reason;

pub use finding::{
    Delivery, DeliveryState, IndicatorSpec, IndicatorType, ProbeFinding, ProbeFindingSpec, ProbeFindingStatus,
    TestState,
};
pub use outcome::{Detection, OutcomesReason, Readiness};
pub use partner::{
    CLUSTER_KIND, Cloud, ClusterDefenderPartner, ClusterDefenderPartnerSpec, CredentialsType, DefenderPartner,
    DefenderPartnerSpec, DefenderPartnerStatus, DeletionPolicy, IndicatorAction, PartnerState, Severity,
};
pub use reason::{EventReason, FindingReason, Outlook, PartnerReason};

pub const GROUP: &str = "detect.dev";
/// Finalizer held by a partner until its indicators are withdrawn (or deliberately retained).
pub const FINALIZER: &str = "detect.dev/indicators";
/// Field manager for everything the operator writes.
pub const MANAGER: &str = "defender-operator";
/// Setting this annotation on a partner to a new value asks for a re-validation now (as after
/// fixing something in Entra); `status.lastHandledRevalidate` echoes the value acted on.
pub const REVALIDATE_ANNOTATION: &str = "detect.dev/revalidate";

/// All CRDs the operator serves, in the order `crd` prints them.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![DefenderPartner::crd(), ProbeFinding::crd(), ClusterDefenderPartner::crd()]
}

/// The CRDs as one multi-document YAML stream, exactly what `crds/` holds.
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|crd| serde_yaml_ng::to_string(crd).expect("CRDs serialize to YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}
