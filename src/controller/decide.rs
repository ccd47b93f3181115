//! The operator's decisions as pure functions: which partners a finding goes to, what to push,
//! what to withdraw, what a finding's delivery says, and which conditions a partner shows.
//! No IO here; everything is unit-tested directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use kube::core::{Selector, SelectorExt};

use crate::api::conditions::{CREDENTIALS_VALID, INDICATORS_SYNCED, PERMISSIONS_GRANTED, READY, Verdict};
use crate::api::finding::{DeliveredIndicator, IndicatorKey};
use crate::api::partner::IndicatorSettings;
use crate::api::{DefenderPartner, Delivery, DeliveryState, IndicatorAction, PartnerState, ProbeFinding, TestState};
use crate::defender::{APPLICATION, NewIndicator};

/// Does `partner` receive `finding`? Same namespace, `partnerRef` (if any) names it, and its
/// `findingSelector` (if any) matches the finding's labels.
pub fn selects(partner: &DefenderPartner, finding: &ProbeFinding) -> bool {
    if partner.metadata.namespace != finding.metadata.namespace {
        return false;
    }
    if let Some(partner_ref) = &finding.spec.partner_ref
        && Some(&partner_ref.name) != partner.metadata.name.as_ref()
    {
        return false;
    }
    match &partner.spec.finding_selector {
        None => true,
        Some(selector) => match Selector::try_from(selector.clone()) {
            Ok(selector) => selector.matches(finding.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())),
            // An unparseable selector selects nothing rather than everything.
            Err(_) => false,
        },
    }
}

/// When a finding's indicators stop being worth pushing.
pub fn expiry(finding: &ProbeFinding, settings: &IndicatorSettings) -> Option<Timestamp> {
    let expire_after = crate::api::duration::parse(&settings.expire_after).ok()?;
    let observed = finding.observed_time()?;
    observed.checked_add(jiff::SignedDuration::try_from(expire_after).ok()?).ok()
}

/// What one partner should hold for its namespace, built from the findings it selects.
#[derive(Debug, Default, PartialEq)]
pub struct Desired {
    /// Indicators to be in Defender: UNPROTECTED, unexpired, valid findings.
    pub push: BTreeMap<IndicatorKey, NewIndicator>,
    /// Every value a live finding refers to, in any state: what `deletionPolicy: Delete` keeps.
    pub referenced: BTreeSet<IndicatorKey>,
}

/// The partner's identity and settings as the sync engine needs them.
#[derive(Clone, Debug, PartialEq)]
pub struct PartnerSettings {
    pub namespace: String,
    pub name: String,
    pub marker: String,
    pub indicator: IndicatorSettings,
    pub delete_withdrawn: bool,
}

pub fn desired<'a>(
    partner: &DefenderPartner,
    settings: &PartnerSettings,
    findings: impl IntoIterator<Item = &'a ProbeFinding>,
    now: Timestamp,
) -> Desired {
    let mut desired = Desired::default();
    for finding in findings.into_iter().filter(|f| selects(partner, f)) {
        let Ok(keys) = finding.indicator_keys() else { continue };
        desired.referenced.extend(keys.iter().cloned());
        if finding.effective_state() != TestState::Unprotected {
            continue;
        }
        let expires = expiry(finding, &settings.indicator);
        if expires.is_some_and(|at| at <= now) {
            continue;
        }
        for key in keys {
            let indicator = new_indicator(&key, finding, settings, expires);
            // Several findings may share a value: keep the one that expires last.
            match desired.push.get(&key) {
                Some(existing) if existing.expiration_time >= indicator.expiration_time => {}
                _ => {
                    desired.push.insert(key, indicator);
                }
            }
        }
    }
    desired
}

/// The indicator body for one value of one finding, with the partner's settings and marker.
pub fn new_indicator(
    key: &IndicatorKey,
    finding: &ProbeFinding,
    settings: &PartnerSettings,
    expires: Option<Timestamp>,
) -> NewIndicator {
    let spec = &finding.spec;
    let indicator = &settings.indicator;
    let endpoint = spec
        .endpoint
        .as_ref()
        .and_then(|e| e.hostname.clone().or_else(|| e.id.clone()))
        .unwrap_or_else(|| "an endpoint".into());
    let finding_name = format!(
        "{}/{}",
        finding.metadata.namespace.as_deref().unwrap_or_default(),
        finding.metadata.name.as_deref().unwrap_or_default()
    );
    NewIndicator {
        indicator_value: key.value.clone(),
        indicator_type: key.type_.as_str().to_string(),
        action: format!("{:?}", indicator.action),
        title: format!("{}{}", indicator.title_prefix, spec.test.name),
        description: format!(
            "Security test {} ({}) ran UNPROTECTED on {endpoint}. Finding {finding_name}; pushed by {APPLICATION} for partner {}.",
            spec.test.name, spec.test.id, settings.marker
        ),
        application: APPLICATION.to_string(),
        external_id: settings.marker.clone(),
        expiration_time: expires.map(|at| at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        severity: format!("{:?}", indicator.severity),
        recommended_actions: indicator.recommended_actions.clone(),
        rbac_group_names: indicator.rbac_group_names.clone(),
        generate_alert: indicator.generate_alert || indicator.action == IndicatorAction::Audit,
    }
}

/// Who holds a value in Defender, from the partner's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Created by this partner (our application and marker).
    Us,
    /// Created by someone else: never modified or deleted.
    Foreign,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub id: String,
    pub holder: Holder,
}

/// The sync plan for one round: push what is missing (within the tenant's cap), withdraw what
/// no live finding refers to (only with `deletionPolicy: Delete`, only our own).
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub push: Vec<NewIndicator>,
    pub withdraw: Vec<String>,
    /// Values not pushed because the tenant would pass its cap.
    pub over_quota: Vec<IndicatorKey>,
}

pub fn plan(
    desired: &Desired,
    remote: &HashMap<IndicatorKey, Remote>,
    delete_withdrawn: bool,
    tenant_total: usize,
    cap: usize,
) -> Plan {
    let mut plan = Plan::default();
    let mut room = cap.saturating_sub(tenant_total);
    for (key, indicator) in &desired.push {
        if remote.contains_key(key) {
            continue;
        }
        if room == 0 {
            plan.over_quota.push(key.clone());
            continue;
        }
        room -= 1;
        plan.push.push(indicator.clone());
    }
    if delete_withdrawn {
        let mut withdraw: Vec<String> = remote
            .iter()
            .filter(|(key, remote)| remote.holder == Holder::Us && !desired.referenced.contains(*key))
            .map(|(_, remote)| remote.id.clone())
            .collect();
        withdraw.sort();
        plan.withdraw = withdraw;
    }
    plan
}

/// What the sync engine knows about one value, for a finding's delivery status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueStatus {
    Held(Remote),
    Failed(String),
    Pending,
}

/// A finding's delivery to one partner. `engine` is `None` when the partner is not attached,
/// with the partner's reason.
pub fn delivery(
    partner: &str,
    finding: &ProbeFinding,
    keys: &[IndicatorKey],
    expired: bool,
    engine: Result<&dyn Fn(&IndicatorKey) -> ValueStatus, &str>,
    previous: Option<&Delivery>,
) -> Delivery {
    let mut delivery = Delivery {
        partner: partner.to_string(),
        state: DeliveryState::Pending,
        indicators: keys
            .iter()
            .map(|k| DeliveredIndicator { type_: k.type_, value: k.value.clone(), id: None })
            .collect(),
        submitted_time: None,
        message: None,
    };
    let lookup = match engine {
        Err(why) => {
            delivery.message = Some(format!("partner {partner} is not attached: {why}"));
            if finding.effective_state() != TestState::Unprotected {
                delivery.state = DeliveryState::Skipped;
                delivery.message = None;
            }
            return keep_submitted_time(delivery, previous);
        }
        Ok(lookup) => lookup,
    };
    let statuses: Vec<ValueStatus> = keys.iter().map(lookup).collect();
    for (indicator, status) in delivery.indicators.iter_mut().zip(&statuses) {
        if let ValueStatus::Held(remote) = status {
            indicator.id = Some(remote.id.clone());
        }
    }
    let held_by_us = statuses.iter().filter(|s| matches!(s, ValueStatus::Held(r) if r.holder == Holder::Us)).count();
    let foreign = statuses.iter().filter(|s| matches!(s, ValueStatus::Held(r) if r.holder == Holder::Foreign)).count();
    let failures: Vec<&String> =
        statuses.iter().filter_map(|s| if let ValueStatus::Failed(why) = s { Some(why) } else { None }).collect();

    let unprotected = finding.effective_state() == TestState::Unprotected;
    delivery.state = if !unprotected && held_by_us + foreign == 0 {
        DeliveryState::Skipped
    } else if !unprotected || held_by_us + foreign == keys.len() {
        // Once pushed, an indicator stays while its finding exists, whatever later results say.
        if held_by_us > 0 { DeliveryState::Submitted } else { DeliveryState::External }
    } else if expired {
        DeliveryState::Expired
    } else if !failures.is_empty() {
        delivery.message = Some(failures[0].clone());
        DeliveryState::Failed
    } else {
        DeliveryState::Pending
    };
    if delivery.state == DeliveryState::External {
        delivery.message = Some("already in Defender under another owner; left untouched".into());
    } else if delivery.state == DeliveryState::Submitted && foreign > 0 {
        delivery.message = Some(format!("{foreign} of {} already in Defender under another owner", keys.len()));
    }
    keep_submitted_time(delivery, previous)
}

/// `submittedTime` is set once, when the delivery first became `Submitted`.
fn keep_submitted_time(mut delivery: Delivery, previous: Option<&Delivery>) -> Delivery {
    if delivery.state == DeliveryState::Submitted {
        delivery.submitted_time = previous.and_then(|p| p.submitted_time.clone());
    }
    delivery
}

/// Is a delivery done (nothing left to do for this partner)?
pub fn delivered(delivery: &Delivery) -> bool {
    matches!(delivery.state, DeliveryState::Submitted | DeliveryState::External | DeliveryState::Skipped)
}

/// The outcome of one partner reconcile, before it becomes status.
#[derive(Clone, Debug, PartialEq)]
pub enum Attachment {
    Attached { granted: Vec<String>, missing_optional: Vec<String> },
    Detached { reason: String, message: String, credentials_ok: bool, permissions_ok: Option<bool> },
}

/// Conditions for a partner from its attach verdict and the sync engine's report.
pub fn partner_conditions(verdict: &Attachment, sync: Option<&SyncReport>) -> (PartnerState, Vec<Verdict>) {
    match verdict {
        Attachment::Attached { missing_optional, .. } => {
            let permissions_message = if missing_optional.is_empty() {
                "all permissions granted".to_string()
            } else {
                format!("Ti write role granted; optional {} not granted", missing_optional.join(", "))
            };
            let synced = match sync {
                Some(report) => report.verdict(),
                None => Verdict::new(INDICATORS_SYNCED, false, "Starting", "the sync engine is reading Defender"),
            };
            (
                PartnerState::Attached,
                vec![
                    Verdict::new(READY, true, "Attached", "credentials valid and Defender reachable"),
                    Verdict::new(
                        CREDENTIALS_VALID,
                        true,
                        "Valid",
                        "a token was issued for the configured tenant and app",
                    ),
                    Verdict::new(PERMISSIONS_GRANTED, true, "Granted", permissions_message),
                    synced,
                ],
            )
        }
        Attachment::Detached { reason, message, credentials_ok, permissions_ok } => {
            let credentials = if *credentials_ok {
                Verdict::new(CREDENTIALS_VALID, true, "Valid", "a token was issued for the configured tenant and app")
            } else {
                Verdict::new(CREDENTIALS_VALID, false, reason.clone(), message.clone())
            };
            let permissions = match permissions_ok {
                Some(true) => Verdict::new(PERMISSIONS_GRANTED, true, "Granted", "Ti write role granted"),
                Some(false) => Verdict::new(PERMISSIONS_GRANTED, false, reason.clone(), message.clone()),
                None => Verdict::new(PERMISSIONS_GRANTED, false, "Unknown", "not checked: no valid token"),
            };
            (
                PartnerState::Detached,
                vec![
                    Verdict::new(READY, false, reason.clone(), message.clone()),
                    credentials,
                    permissions,
                    Verdict::new(INDICATORS_SYNCED, false, "Detached", "nothing is pushed while detached"),
                ],
            )
        }
    }
}

/// What the sync engine reports to its partner's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub ready: bool,
    pub desired: u32,
    pub submitted: u32,
    pub pending: u32,
    pub failed: u32,
    pub external: u32,
    pub over_quota: u32,
    pub tenant_total: u32,
    /// The cap the engine keeps under (Defender's 15,000).
    pub tenant_cap: u32,
    /// The last round's error: (reason, message).
    pub error: Option<(String, String)>,
}

impl SyncReport {
    pub fn verdict(&self) -> Verdict {
        if !self.ready {
            Verdict::new(INDICATORS_SYNCED, false, "Starting", "the sync engine is reading Defender")
        } else if self.over_quota > 0 {
            Verdict::new(
                INDICATORS_SYNCED,
                false,
                "QuotaExceeded",
                format!(
                    "{} indicators not pushed: the tenant holds {} of the {} active indicators Defender allows",
                    self.over_quota, self.tenant_total, self.tenant_cap
                ),
            )
        } else if let Some((reason, message)) = &self.error {
            Verdict::new(INDICATORS_SYNCED, false, reason.clone(), message.clone())
        } else if self.failed > 0 {
            Verdict::new(
                INDICATORS_SYNCED,
                false,
                "PushFailed",
                format!("{} indicators were refused by Defender", self.failed),
            )
        } else if self.pending > 0 {
            Verdict::new(
                INDICATORS_SYNCED,
                false,
                "Pushing",
                format!("{} indicators waiting to be pushed", self.pending),
            )
        } else {
            Verdict::new(
                INDICATORS_SYNCED,
                true,
                "Synced",
                format!("{} indicators in Defender", self.submitted + self.external),
            )
        }
    }
}

#[cfg(test)]
mod tests;
