//! Every reason the operator writes, one enum per kind: a partner's ([`PartnerReason`]: its
//! `status.reason` and condition reasons), a finding's ([`FindingReason`]: its `Ready` reason), a
//! delivery's ([`crate::api::DeliveryState`]) and the events that are not a state
//! ([`EventReason`]). Each reason knows its PascalCase spelling, its [`Outlook`] and its fix. The
//! README's tables and the Argo CD and Flux health checks are tested against these enums, so a
//! reason cannot be added, renamed or dropped without them.

use std::fmt;

/// What a reason means for whoever watches the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outlook {
    /// Working, done, or what the user asked for: a Normal event, never a failure.
    Fine,
    /// Not there yet, or a failure the operator retries by itself: wait.
    Retrying,
    /// Stays until a person fixes the object, its Secret or the Entra app: Argo CD calls it
    /// Degraded and Flux failed.
    Terminal,
}

/// Defines a reason enum: each variant with its outlook and its fix (as the README says it), its
/// PascalCase spelling being the variant's name.
macro_rules! reasons {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $outlook:ident, $fix:literal; )*
        }
    ) => {
        $(#[$meta])*
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )*
        }

        impl $name {
            /// Every reason, in the order the README lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),* }
            }

            pub fn outlook(self) -> $crate::api::reason::Outlook {
                match self { $($name::$variant => $crate::api::reason::Outlook::$outlook),* }
            }

            /// Stays until a person fixes something (see [`Outlook::Terminal`]).
            pub fn is_terminal(self) -> bool {
                self.outlook() == $crate::api::reason::Outlook::Terminal
            }

            /// What the user does about it, as the README's table says (`—` for nothing).
            pub fn fix(self) -> &'static str {
                match self { $($name::$variant => $fix),* }
            }

            /// The reason of this spelling, if this operator knows it.
            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|reason| reason.as_str() == text)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl $crate::api::reason::Reason for $name {
            fn as_str(&self) -> &'static str {
                $name::as_str(*self)
            }

            fn outlook(&self) -> $crate::api::reason::Outlook {
                $name::outlook(*self)
            }
        }
    };
}
pub(crate) use reasons;

/// Any of the reason enums, where a condition is built from one.
pub trait Reason: Copy + fmt::Debug {
    fn as_str(&self) -> &'static str;
    fn outlook(&self) -> Outlook;
}

reasons! {
    /// Why a partner is in its state (`status.reason`, the `Ready` condition, the state-change
    /// event), and the reasons of its other conditions.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum PartnerReason {
        Attached => Fine, "—";
        Suspended => Fine, "Set it to false.";
        Deleting => Fine, "—";
        InvalidSpec => Terminal, "Set a shorter duration.";
        UnsupportedSpec => Terminal, "Upgrade the operator (CRDs first), or remove what the message names.";
        SecretNotFound => Terminal, "Create it (same namespace).";
        SecretKeyMissing => Terminal, "Add them, or set `tenantIdKey`/`clientIdKey`/`clientSecretKey`.";
        SecretKeyInvalid => Terminal, "Store the plain value.";
        InvalidSecret => Terminal, "Copy the secret **value**.";
        CredentialsIncomplete => Terminal, "Set `spec.credentials.tenantId` and `clientId`, the Secret's keys, or the ServiceAccount's `azure.workload.identity/tenant-id` and `client-id` annotations.";
        CertificateInvalid => Terminal, "Store the app's PEM certificate and its unencrypted RSA key (PKCS#1 or PKCS#8) under `certificateKey`/`privateKeyKey`.";
        CertificateExpired => Terminal, "Upload a new certificate to the app in Entra and update the Secret.";
        AssertionRejected => Terminal, "Check the certificate is uploaded to the app (Certificates & secrets), or the cluster's issuer is reachable over https.";
        ServiceAccountNotFound => Terminal, "Create the ServiceAccount in the partner's namespace, or correct `serviceAccountRef.name`.";
        TokenRequestDenied => Terminal, "Grant the operator `create` on `serviceaccounts/token` (the ClusterRole in `deploy/` has it).";
        FederatedCredentialMismatch => Terminal, "Add a federated credential to the app with the issuer, subject and audience the message names.";
        SecretExpired => Terminal, "Create a new secret, update the Secret.";
        CredentialMissing => Terminal, "Fill `clientSecret`.";
        AppNotFound => Terminal, "Check the client id and the tenant.";
        AppDisabled => Terminal, "Enable it in Entra.";
        TenantNotFound => Terminal, "Check the tenant id and `spec.cloud`.";
        TenantInvalid => Terminal, "Store the tenant GUID or a verified domain under the Secret's `tenantId` key (or the key `tenantIdKey` names).";
        WrongCloud => Terminal, "Set `spec.cloud` (GCC, GCCHigh, DoD).";
        DefenderNotProvisioned => Terminal, "Onboard Defender for Endpoint in that tenant.";
        ConfigError => Terminal, "Check `spec.cloud` and the operator's `--authority-url`.";
        Blocked => Terminal, "Exclude the app or allow the operator's egress.";
        TokenMismatch => Terminal, "Check the tenant and client ids.";
        MissingPermission => Terminal, "Add the WindowsDefenderATP application permission and **grant admin consent**.";
        DisabledFeature => Terminal, "Enable the feature in the Defender portal.";
        Unauthorized => Retrying, "Check the API host matches the cloud.";
        ApiHostNotAllowed => Terminal, "Use a documented host, or have the operator's admin extend the allow-list.";
        AuthenticationFailed => Retrying, "Look the code up in Entra's error reference.";
        EntraUnavailable => Retrying, "Transient; check egress to the login host.";
        Forbidden => Retrying, "Check the app's roles and the indicator's `rbacGroupNames`.";
        ProtocolError => Retrying, "If it persists, check a proxy in between.";
        DefenderError => Retrying, "See the message.";
        DefenderUnreachable => Retrying, "Usually transient; check egress to 443.";
        Throttled => Retrying, "Transient.";
        QuotaExceeded => Terminal, "Make room: delete or let expire indicators the tenant no longer needs.";
        // The reasons of the other conditions (CredentialsValid, PermissionsGranted,
        // IndicatorsSynced); their failures carry the reasons above.
        Valid => Fine, "—";
        Granted => Fine, "—";
        NotChecked => Fine, "—";
        Detached => Fine, "—";
        Starting => Fine, "—";
        Pushing => Fine, "—";
        Synced => Fine, "—";
        PushFailed => Terminal, "See the findings whose delivery is `Failed`: their messages say what Defender refused.";
    }
}

reasons! {
    /// Why a finding's `Ready` condition is what it is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum FindingReason {
        Delivered => Fine, "—";
        NothingToDeliver => Fine, "—";
        Expired => Fine, "—";
        Pending => Retrying, "—";
        NoPartner => Retrying, "Create a `DefenderPartner` in the finding's namespace that selects it, or label the namespace for a `ClusterDefenderPartner`.";
        DeliveryFailed => Terminal, "See the failed delivery's message.";
        PartnerNotFound => Terminal, "Correct `spec.partnerRef`, or label the finding (or, for a `ClusterDefenderPartner`, its namespace) to match the partner's selectors.";
        InvalidFinding => Terminal, "Fix the field the message names.";
    }
}

reasons! {
    /// Events that report something done or left undone rather than a state.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum EventReason {
        /// A deleted partner's indicators were withdrawn (`deletionPolicy: Delete`).
        Withdrawn => Fine, "—";
        /// A deleted partner's indicators were left in Defender (credentials unusable, or
        /// Defender unreachable for 10 minutes).
        IndicatorsNotWithdrawn => Retrying, "Delete them in the Defender portal (application `defender-operator`).";
        /// The partner's certificate expires within 30 days (each re-validation says it again).
        CredentialsExpiring => Terminal, "Upload a new certificate to the app in Entra and update the Secret.";
        /// A finding whose indicators were submitted reported PROTECTED (on the finding, Normal).
        Protected => Fine, "—";
    }
}

/// The reasons Argo CD and Flux must treat as failed: every terminal partner and finding reason
/// (one list serves both kinds' health checks).
pub fn terminal_reasons() -> Vec<&'static str> {
    let partner = PartnerReason::ALL.iter().filter(|r| r.is_terminal()).map(|r| r.as_str());
    let finding = FindingReason::ALL.iter().filter(|r| r.is_terminal()).map(|r| r.as_str());
    partner.chain(finding).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_are_pascal_case_and_unique_across_kinds() {
        let mut seen = std::collections::BTreeSet::new();
        let all = PartnerReason::ALL.iter().map(|r| r.as_str()).chain(FindingReason::ALL.iter().map(|r| r.as_str()));
        for reason in all {
            assert!(
                reason.chars().next().unwrap().is_ascii_uppercase()
                    && reason.chars().all(|c| c.is_ascii_alphanumeric())
            );
            // Expired is a finding reason and a delivery state, never a partner reason.
            assert!(seen.insert(reason), "{reason} is a reason of two kinds");
        }
        assert_eq!(PartnerReason::parse("InvalidSecret"), Some(PartnerReason::InvalidSecret));
        assert_eq!(PartnerReason::parse("Nonsense"), None);
        assert_eq!(PartnerReason::Throttled, "Throttled");
    }
}
