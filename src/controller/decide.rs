//! The operator's decisions as pure functions: which partners a finding goes to, what to push,
//! what to withdraw, what a finding's delivery says, and which conditions a partner shows.
//! No IO here; everything is unit-tested directly.

pub mod batching;
pub mod outcomes;
pub mod partner;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use jiff::Timestamp;
use kube::core::{Selector, SelectorExt};

use crate::api::conditions::{INDICATORS_SYNCED, READY, Verdict};
use crate::api::finding::{DeliveredIndicator, IndicatorKey, PartnerKind, PartnerRef};
use crate::api::partner::IndicatorSettings;
use crate::api::{
    DefenderPartner, Delivery, DeliveryState, FindingReason, IndicatorAction, PartnerReason, PartnerState,
    ProbeFinding, TestState,
};
use crate::defender::{APPLICATION, NewIndicator};

/// The labels of every namespace the operator watches, for ClusterDefenderPartners'
/// `namespaceSelector`s.
pub type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;

/// Which findings a partner receives, worked out once for many findings.
pub struct Selection {
    /// A DefenderPartner's namespace; `None` for a ClusterDefenderPartner.
    namespace: Option<String>,
    /// For a ClusterDefenderPartner: the namespaces its `namespaceSelector` selects.
    namespaces: Option<std::collections::HashSet<String>>,
    name: String,
    kind: PartnerKind,
    /// `None` selects every finding; an unparseable selector selects none.
    finding_selector: Option<Option<Selector>>,
}

impl Selection {
    pub fn of(partner: &DefenderPartner, namespaces: &NamespaceLabels) -> Self {
        let parse = |selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector| {
            Selector::try_from(selector.clone()).ok()
        };
        let cluster = partner.is_cluster_wide();
        let selected = cluster.then(|| {
            let selector = partner.spec.namespace_selector.as_ref().map(parse);
            namespaces
                .iter()
                .filter(|(_, labels)| match &selector {
                    None => true,
                    Some(Some(selector)) => selector.matches(labels),
                    // An unparseable selector selects nothing rather than everything.
                    Some(None) => false,
                })
                .map(|(name, _)| name.clone())
                .collect()
        });
        Self {
            namespace: partner.metadata.namespace.clone(),
            namespaces: selected,
            name: partner.metadata.name.clone().unwrap_or_default(),
            kind: if cluster { PartnerKind::ClusterDefenderPartner } else { PartnerKind::DefenderPartner },
            finding_selector: partner.spec.finding_selector.as_ref().map(parse),
        }
    }

    /// Does the partner receive `finding`? Its namespace is the partner's (or one the cluster
    /// partner's `namespaceSelector` selects), `partnerRef` (if any) names it, and its
    /// `findingSelector` (if any) matches the finding's labels.
    pub fn selects(&self, finding: &ProbeFinding) -> bool {
        let in_scope = match (&self.namespace, &self.namespaces) {
            (Some(namespace), _) => finding.metadata.namespace.as_ref() == Some(namespace),
            (None, Some(namespaces)) => finding.metadata.namespace.as_ref().is_some_and(|ns| namespaces.contains(ns)),
            (None, None) => false,
        };
        if !in_scope {
            return false;
        }
        if let Some(partner_ref) = &finding.spec.partner_ref
            && (partner_ref.name != self.name || partner_ref.kind.unwrap_or_default() != self.kind)
        {
            return false;
        }
        match &self.finding_selector {
            None => true,
            Some(Some(selector)) => selector.matches(finding.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())),
            Some(None) => false,
        }
    }
}

/// Does `partner` receive `finding`? See [`Selection::selects`].
pub fn selects(partner: &DefenderPartner, finding: &ProbeFinding, namespaces: &NamespaceLabels) -> bool {
    Selection::of(partner, namespaces).selects(finding)
}

/// When a finding's indicators stop being worth pushing: its observation time plus the partner's
/// `expireAfter`. An `expireAfter` the operator cannot use (unreadable, over its maximum) or an
/// expiry past what a timestamp holds is an error naming the field, never "no expiry" — which
/// Defender would read as "never expires".
pub fn expiry(finding: &ProbeFinding, settings: &IndicatorSettings) -> Result<Option<Timestamp>, String> {
    let expire_after = settings.expire_after().map_err(|e| e.to_string())?;
    let Some(observed) = finding.observed_time() else { return Ok(None) };
    jiff::SignedDuration::try_from(expire_after)
        .ok()
        .and_then(|after| observed.checked_add(after).ok())
        .map(Some)
        .ok_or_else(|| {
            format!(
                "spec.indicator.expireAfter: {} after the finding's observation time ({observed}) is past the \
                 latest time Defender can be given; check the finding's spec.observedTime",
                settings.expire_after
            )
        })
}

/// What one partner should hold for its namespace, built from the findings it selects. It
/// borrows the findings: an indicator's body is built only for what is pushed
/// ([`Desired::indicator`]), since a round plans over every finding and pushes few.
#[derive(Debug, Default)]
pub struct Desired<'a> {
    /// Indicators to be in Defender: UNPROTECTED, unexpired, valid findings.
    pub push: BTreeMap<IndicatorKey, Want<'a>>,
    /// Every value a live finding refers to, in any state: what `deletionPolicy: Delete` keeps.
    pub referenced: BTreeSet<IndicatorKey>,
}

/// Where one wanted value comes from: of the findings that carry it, the one that expires last.
#[derive(Clone, Copy, Debug)]
pub struct Want<'a> {
    pub finding: &'a ProbeFinding,
    pub expires: Option<Timestamp>,
}

impl Desired<'_> {
    /// The indicator body a push sends for `key`, with the partner's settings.
    pub fn indicator(&self, key: &IndicatorKey, settings: &PartnerSettings) -> Option<NewIndicator> {
        self.push.get(key).map(|want| new_indicator(key, want.finding, settings, want.expires))
    }
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
    namespaces: &NamespaceLabels,
    now: Timestamp,
) -> Desired<'a> {
    let mut desired = Desired::default();
    let selection = Selection::of(partner, namespaces);
    for finding in findings.into_iter().filter(|f| selection.selects(f)) {
        let Ok(keys) = finding.indicator_keys() else { continue };
        desired.referenced.extend(keys.iter().cloned());
        if finding.effective_state() != TestState::Unprotected {
            continue;
        }
        // Without a usable expiry nothing is pushed: the finding's delivery says why.
        let Ok(expires) = expiry(finding, &settings.indicator) else { continue };
        if expires.is_some_and(|at| at <= now) {
            continue;
        }
        for key in keys {
            // Several findings may share a value: keep the one that expires last.
            match desired.push.get(&key) {
                Some(existing) if existing.expires >= expires => {}
                _ => {
                    desired.push.insert(key, Want { finding, expires });
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
    let title = one_line(&format!("{}{}", indicator.title_prefix, spec.test.name));
    NewIndicator {
        indicator_value: key.value.clone(),
        indicator_type: key.type_.as_str().to_string(),
        action: format!("{:?}", indicator.action),
        // Defender requires a title: a name of nothing but control characters falls back to the id.
        title: if title.is_empty() { spec.test.id.clone() } else { title },
        description: one_line(&format!(
            "Security test {} ({}) ran UNPROTECTED on {endpoint}. Finding {finding_name}; pushed by {APPLICATION} for partner {}.",
            spec.test.name, spec.test.id, settings.marker
        )),
        application: APPLICATION.to_string(),
        external_id: settings.marker.clone(),
        expiration_time: expires.map(rfc3339),
        severity: format!("{:?}", indicator.severity),
        recommended_actions: indicator.recommended_actions.clone(),
        rbac_group_names: indicator.rbac_group_names.clone(),
        generate_alert: indicator.generate_alert || indicator.action == IndicatorAction::Audit,
    }
}

/// Free text from a finding or partner as one line for Defender's title and description:
/// control characters (newlines, tabs, …) and bidirectional overrides, which could make a title
/// read differently in the portal, become spaces; whitespace runs become one space.
fn one_line(text: &str) -> String {
    let is_bidi_control =
        |c: char| matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let spaced: String = text.chars().map(|c| if c.is_control() || is_bidi_control(c) { ' ' } else { c }).collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
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
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// Oldest finding first, so that what a round holds back is what came last.
    pub push: Vec<Planned<'a>>,
    pub withdraw: Vec<String>,
    /// Values not pushed because the tenant would pass its cap.
    pub over_quota: Vec<IndicatorKey>,
}

/// A value to push, for the partner that pushes it. Its body is built only when it leaves
/// ([`Planned::indicator`]): a round may hold most of its plan back.
#[derive(Clone, Copy, Debug)]
pub struct Planned<'a> {
    pub key: &'a IndicatorKey,
    pub want: Want<'a>,
    pub settings: &'a PartnerSettings,
}

impl Planned<'_> {
    pub fn indicator(&self) -> NewIndicator {
        new_indicator(self.key, self.want.finding, self.settings, self.want.expires)
    }

    /// When its finding was created (findings of one second by value).
    fn age_order(&self) -> (Option<Timestamp>, &IndicatorKey) {
        (self.want.finding.metadata.creation_timestamp.as_ref().map(|t| t.0), self.key)
    }
}

/// A value Defender holds, as the engine of its tenant and app keeps it: whose it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub id: String,
    /// The marker of the partner that created it (`externalId`), when it is of our application;
    /// `None`: someone else's.
    pub owner: Option<String>,
}

/// One partner of an engine, as a round plans for it.
pub struct Member<'a> {
    pub settings: &'a PartnerSettings,
    pub desired: &'a Desired<'a>,
}

/// The plan of one partner alone (see [`plan_members`]); `remote`'s values held by `Us` are its.
pub fn plan<'a>(
    desired: &'a Desired<'a>,
    settings: &'a PartnerSettings,
    remote: &HashMap<IndicatorKey, Remote>,
    tenant_total: usize,
    cap: usize,
) -> Plan<'a> {
    let held: HashMap<IndicatorKey, Held> = remote
        .iter()
        .map(|(key, remote)| {
            let owner = (remote.holder == Holder::Us).then(|| settings.marker.clone());
            (key.clone(), Held { id: remote.id.clone(), owner })
        })
        .collect();
    plan_members(&[Member { settings, desired }], &held, tenant_total, cap)
}

/// The sync plan of one tenant and app for a round, over all its partners: push what no one
/// holds yet — once, with the first partner (by marker) that wants it — within the tenant's cap;
/// withdraw, for each partner with `deletionPolicy: Delete`, what it created and none of its live
/// findings refers to, unless another partner of the engine still wants it.
pub fn plan_members<'a>(
    members: &[Member<'a>],
    held: &HashMap<IndicatorKey, Held>,
    tenant_total: usize,
    cap: usize,
) -> Plan<'a> {
    let mut plan = Plan::default();
    let mut room = cap.saturating_sub(tenant_total);
    let mut members: Vec<&Member> = members.iter().collect();
    members.sort_by_key(|m| &m.settings.marker);
    let mut planned: BTreeSet<&IndicatorKey> = BTreeSet::new();
    for member in &members {
        for (key, want) in &member.desired.push {
            if held.contains_key(key) || !planned.insert(key) {
                continue;
            }
            if room == 0 {
                plan.over_quota.push(key.clone());
                continue;
            }
            room -= 1;
            plan.push.push(Planned { key, want: *want, settings: member.settings });
        }
    }
    plan.push.sort_by(|a, b| a.age_order().cmp(&b.age_order()));
    for member in members.iter().filter(|m| m.settings.delete_withdrawn) {
        let wanted_elsewhere = |key: &IndicatorKey| members.iter().any(|m| m.desired.push.contains_key(key));
        plan.withdraw.extend(
            held.iter()
                .filter(|(key, held)| {
                    held.owner.as_ref() == Some(&member.settings.marker)
                        && !member.desired.referenced.contains(*key)
                        && !wanted_elsewhere(key)
                })
                .map(|(_, held)| held.id.clone()),
        );
    }
    plan.withdraw.sort();
    plan
}

/// What one partner of an engine reports: its wants against the engine's view (`(ready,
/// tenant_total, cap)`), its values over the cap, and the round's error.
pub fn member_report(
    member: &Member,
    held: &HashMap<IndicatorKey, Held>,
    failed: &HashMap<IndicatorKey, String>,
    over_quota: usize,
    (ready, tenant_total, cap): (bool, usize, usize),
    error: Option<(PartnerReason, String)>,
) -> SyncReport {
    let mut report = SyncReport {
        ready,
        desired: member.desired.push.len() as u32,
        over_quota: over_quota as u32,
        tenant_total: tenant_total as u32,
        tenant_cap: cap as u32,
        error,
        ..Default::default()
    };
    // Held by this partner, or by another partner of the engine (written once for both): held
    // for it. Anyone else's: external.
    for key in member.desired.push.keys() {
        match held.get(key).map(|h| h.owner.is_some()) {
            Some(true) => report.submitted += 1,
            Some(false) => report.external += 1,
            None if failed.contains_key(key) => report.failed += 1,
            None => report.pending += 1,
        }
    }
    // Values that stay for live findings no longer asking for them (a later PROTECTED result is
    // the indicator working) are in Defender for this partner too.
    let kept = member.desired.referenced.iter().filter(|key| !member.desired.push.contains_key(*key));
    let kept =
        kept.filter(|key| held.get(*key).is_some_and(|h| h.owner.as_ref() == Some(&member.settings.marker))).count();
    report.desired += kept as u32;
    report.submitted += kept as u32;
    report
}

/// Whether `finding`'s delivery `delivery` still shows what its engine read of Defender: the
/// finding is reconciled at its generation, the delivery is `Submitted`, and each of its values is
/// held for the partner (`held` gives the id) under the id it shows. After an engine's first read
/// (a restart) only the findings for which this is false need a reconcile.
pub fn still_shows<'a>(
    finding: &ProbeFinding,
    delivery: &str,
    held: impl Fn(&IndicatorKey) -> Option<&'a str>,
) -> bool {
    let Some(status) = &finding.status else { return false };
    let Some(delivery) = status.deliveries.iter().find(|d| d.partner == delivery) else { return false };
    status.observed_generation == finding.metadata.generation
        && delivery.state == DeliveryState::Submitted
        && !delivery.indicators.is_empty()
        && delivery.indicators.iter().all(|shown| {
            let key = IndicatorKey { type_: shown.type_, value: shown.value.clone() };
            shown.id.is_some() && held(&key) == shown.id.as_deref()
        })
}

/// What the sync engine knows about one value, for a finding's delivery status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueStatus {
    Held(Remote),
    Failed(String),
    Pending,
}

/// A finding's delivery to one partner. `engine` is `Err` when the partner is not attached,
/// with the partner's reason: what its `previous` delivery held stays held (see
/// [`held_while_not_attached`]); otherwise the delivery is `Pending` saying why (`not attached:
/// InvalidSecret`), or `Skipped` when there is nothing to push. `expired` is `Some` when the
/// finding's indicators have expired for this partner, with the delivery's message (see
/// [`partner_delivery`]): what is not held by then is `Expired` — done, never pushed again —
/// rather than `Pending` or `Failed`. Messages never name the partner: the delivery's `partner`
/// field does, and [`finding_ready`] prefixes it.
pub fn delivery(
    partner: &str,
    finding: &ProbeFinding,
    keys: &[IndicatorKey],
    expired: Option<&str>,
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
        machine: None,
        detection: None,
        alerts: Vec::new(),
    };
    let lookup = match engine {
        Err(why) => {
            if let Some(held) = held_while_not_attached(partner, finding, keys, why, previous) {
                return held;
            }
            delivery.message = Some(format!("not attached: {why}"));
            if finding.effective_state() != TestState::Unprotected {
                delivery.state = DeliveryState::Skipped;
                delivery.message = Some(nothing_to_push(finding));
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
    } else if let Some(why) = expired {
        delivery.message = Some(why.to_string());
        DeliveryState::Expired
    } else if !failures.is_empty() {
        delivery.message = Some(failures[0].clone());
        DeliveryState::Failed
    } else {
        DeliveryState::Pending
    };
    if delivery.state == DeliveryState::Skipped {
        delivery.message = Some(nothing_to_push(finding));
    } else if delivery.state == DeliveryState::External {
        delivery.message = Some("already in Defender under another owner; left untouched".into());
    } else if delivery.state == DeliveryState::Submitted && foreign > 0 {
        delivery.message = Some(format!("{foreign} of {} already in Defender under another owner", keys.len()));
    }
    keep_submitted_time(delivery, previous)
}

/// The delivery of a partner that is not attached, when its `previous` delivery held this
/// finding's indicators (`Submitted` or `External`): nothing withdraws them meanwhile — suspending
/// and `deletionPolicy: Retain` never do, and `Delete` withdraws only when the partner is deleted,
/// when its delivery goes with it — so the delivery keeps its state, its Defender ids and its
/// `submittedTime`, and says `not attached (Suspended); its indicators stay in Defender`. `None`
/// when nothing was held, or when the finding's indicators changed so that what was held no longer
/// covers them (an UNPROTECTED finding needs every value held; any other needs one, as with an
/// attached partner): then the delivery waits like any other.
fn held_while_not_attached(
    partner: &str,
    finding: &ProbeFinding,
    keys: &[IndicatorKey],
    why: &str,
    previous: Option<&Delivery>,
) -> Option<Delivery> {
    let previous = previous
        .filter(|p| p.partner == partner && matches!(p.state, DeliveryState::Submitted | DeliveryState::External))?;
    let indicators: Vec<DeliveredIndicator> = keys
        .iter()
        .map(|key| DeliveredIndicator {
            type_: key.type_,
            value: key.value.clone(),
            id: previous
                .indicators
                .iter()
                .find(|held| held.type_ == key.type_ && held.value == key.value)
                .and_then(|held| held.id.clone()),
        })
        .collect();
    let held = indicators.iter().filter(|i| i.id.is_some()).count();
    let covered = if finding.effective_state() == TestState::Unprotected { held == keys.len() } else { held > 0 };
    if !covered {
        return None;
    }
    let delivery = Delivery {
        partner: partner.to_string(),
        state: previous.state,
        indicators,
        submitted_time: None,
        message: Some(format!("not attached ({why}); its indicators stay in Defender")),
        machine: None,
        detection: None,
        alerts: Vec::new(),
    };
    Some(keep_submitted_time(delivery, Some(previous)))
}

/// A finding's delivery to `partner`: [`delivery`] with the partner's expiry applied at `now`. An
/// expired delivery says when and why, e.g. `expired at 2026-01-31T10:00:00Z (observed
/// 2026-01-01T10:00:00Z + expireAfter 720h); not pushed again` — a message that does not change
/// from one pass to the next. When the partner's `expireAfter` gives no usable expiry, nothing is
/// pushed and the delivery fails with the reason, naming the field (unless it is already held, or
/// there is nothing to push).
pub fn partner_delivery(
    partner: &DefenderPartner,
    finding: &ProbeFinding,
    keys: &[IndicatorKey],
    now: Timestamp,
    engine: Result<&dyn Fn(&IndicatorKey) -> ValueStatus, &str>,
    previous: Option<&Delivery>,
) -> Delivery {
    let name = partner.delivery_name();
    let name = name.as_str();
    match expiry(finding, &partner.spec.indicator) {
        Ok(expires) => {
            let expired = expires.filter(|at| *at <= now).map(|at| {
                let observed = finding.observed_time().map_or_else(|| "unknown".to_string(), rfc3339);
                format!(
                    "expired at {} (observed {observed} + expireAfter {}){NOT_PUSHED_AGAIN}",
                    rfc3339(at),
                    partner.spec.indicator.expire_after
                )
            });
            delivery(name, finding, keys, expired.as_deref(), engine, previous)
        }
        Err(problem) => {
            let mut delivery = delivery(name, finding, keys, None, engine, previous);
            if delivery.state == DeliveryState::Pending {
                delivery.state = DeliveryState::Failed;
                delivery.message = Some(problem);
            }
            delivery
        }
    }
}

/// How an expired delivery's message ends.
const NOT_PUSHED_AGAIN: &str = "; not pushed again";

/// A timestamp as Defender and Kubernetes write it, to the second.
fn rfc3339(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Is the partner attached: validated, not suspended, not being deleted? Only attached partners
/// hold a finding's `Ready` back.
pub fn attached(partner: &DefenderPartner) -> bool {
    !partner.spec.suspend
        && partner.metadata.deletion_timestamp.is_none()
        && partner.status.as_ref().is_some_and(|status| status.state == Some(PartnerState::Attached))
}

/// A finding's `Ready` condition from its deliveries, one per partner that selects it: True when every attached partner is done with it — holds its indicators
/// (`Submitted` or `External`), has nothing to push (`Skipped`), or saw them expire (`Expired`:
/// an expected end, not a failure) — or when there is nothing to deliver; False with the first
/// attached partner's reason while anything is pending or failed. The True reason is
/// `NothingToDeliver` when every delivery is `Skipped`, `Expired` when every delivery that is not
/// `Skipped` is `Expired` (the indicators are not pushed again), and `Delivered` otherwise (some
/// partner holds them). Partners that are not attached (detached, suspended) do not hold `Ready`
/// back: their delivery keeps what they held (`Submitted`, `External`: the indicators stay in
/// Defender) or is `Pending` with the reason — unless no attached partner selects the finding at
/// all, when their deliveries decide instead: `Delivered` if they left its indicators in Defender,
/// `Pending` with the first one's reason if nothing holds them.
pub fn finding_ready(finding: &ProbeFinding, deliveries: &[Delivery], attached: impl Fn(&str) -> bool) -> Verdict {
    let nothing_to_deliver = || Verdict::new(READY, true, FindingReason::NothingToDeliver, nothing_to_push(finding));
    if deliveries.is_empty() {
        return if finding.effective_state() == TestState::Unprotected {
            Verdict::new(
                READY,
                false,
                FindingReason::NoPartner,
                "no DefenderPartner in this namespace selects this finding",
            )
        } else {
            nothing_to_deliver()
        };
    }
    if deliveries.iter().all(|d| d.state == DeliveryState::Skipped) {
        return nothing_to_deliver();
    }
    let (on, off): (Vec<&Delivery>, Vec<&Delivery>) = deliveries.iter().partition(|d| attached(&d.partner));
    // The deliveries that decide: the attached partners', or, when none is attached, the others'.
    let deciding = if on.is_empty() { &off } else { &on };
    if let Some(first) = deciding.iter().find(|d| !delivered(d)) {
        let reason = match first.state {
            DeliveryState::Failed => FindingReason::DeliveryFailed,
            _ => FindingReason::Pending,
        };
        let message = match &first.message {
            Some(message) => format!("partner {}: {message}", first.partner),
            None => format!("partner {}: {:?}", first.partner, first.state),
        };
        return Verdict::new(READY, false, reason, message);
    }
    let not_waited_for = if off.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = off.iter().map(|d| d.partner.as_str()).collect();
        format!("; not attached, so not waited for: {}", names.join(", "))
    };
    let expired: Vec<&Delivery> = deciding.iter().filter(|d| d.state == DeliveryState::Expired).copied().collect();
    if !expired.is_empty()
        && deciding.iter().all(|d| matches!(d.state, DeliveryState::Expired | DeliveryState::Skipped))
    {
        let details: Vec<String> = expired
            .iter()
            .map(|d| {
                let when = d.message.as_deref().map(|m| m.strip_suffix(NOT_PUSHED_AGAIN).unwrap_or(m));
                format!("partner {}: {}", d.partner, when.unwrap_or("expired"))
            })
            .collect();
        let message = format!(
            "this finding's indicators expired and are not pushed again; {}{not_waited_for}",
            details.join("; ")
        );
        return Verdict::new(READY, true, FindingReason::Expired, message);
    }
    // No partner is attached: the others decided, and left the indicators in Defender.
    let (holders, not_attached) = if on.is_empty() {
        let names: Vec<&str> = off.iter().map(|d| d.partner.as_str()).collect();
        ("every partner", format!("; none is attached: {}", names.join(", ")))
    } else {
        ("every attached partner", not_waited_for)
    };
    let mut message = format!("{holders} holds this finding's indicators (or has nothing to hold)");
    if !expired.is_empty() {
        let names: Vec<&str> = expired.iter().map(|d| d.partner.as_str()).collect();
        message += &format!(" except where they expired and are not pushed again: {}", names.join(", "));
    }
    Verdict::new(READY, true, FindingReason::Delivered, message + &not_attached)
}

/// `Ready` of a finding whose `spec.partnerRef` names a partner that does not receive it: `named`
/// is the partner of that name in the finding's namespace, if there is one. Either way the reason
/// is `PartnerNotFound`; the message says which case it is and how to fix it.
pub fn partner_ref_not_found(partner_ref: &PartnerRef, named: Option<&DefenderPartner>) -> Verdict {
    let name = &partner_ref.name;
    let cluster = partner_ref.kind == Some(PartnerKind::ClusterDefenderPartner);
    let (kind, scope) =
        if cluster { ("ClusterDefenderPartner", "") } else { ("DefenderPartner", " in this namespace") };
    let message = match named {
        None => format!(
            "spec.partnerRef names {kind} {name:?}, which does not exist{scope}; create it, or correct \
             spec.partnerRef.{}",
            if cluster { "kind" } else { "name" }
        ),
        Some(partner) => {
            let why = match partner.spec.finding_selector.clone().map(Selector::try_from) {
                Some(Ok(selector)) => {
                    format!("its spec.findingSelector ({selector}) does not match this finding's labels")
                }
                Some(Err(_)) => "its spec.findingSelector is invalid, so it selects no finding".to_string(),
                None if cluster => "its spec.namespaceSelector does not select this finding's namespace".to_string(),
                None => "it does not select this finding".to_string(),
            };
            let fix = if cluster {
                "label the finding or its namespace to match, or change the partner's selectors"
            } else {
                "label the finding to match, or change the partner's findingSelector"
            };
            format!(
                "spec.partnerRef names {kind} {name:?}, which exists but does not receive this finding: {why}; {fix}"
            )
        }
    };
    Verdict::new(READY, false, FindingReason::PartnerNotFound, message)
}

/// Why a finding that did not run UNPROTECTED has nothing to push, in the API's words: an exit
/// code outside Prelude's table is said to be so, rather than left to look like a delivery.
fn nothing_to_push(finding: &ProbeFinding) -> String {
    let state = finding.effective_state();
    let spelled = serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    match (finding.spec.state, finding.spec.code) {
        (None, Some(code)) if state == TestState::None => {
            format!("nothing to push: exit code {code} is not in Prelude's exit-code table, so the result is NONE")
        }
        (None, Some(code)) => format!("nothing to push: exit code {code} means {spelled}"),
        _ => format!("nothing to push: the test was {spelled}"),
    }
}

/// `submittedTime` is set once, when the delivery first became `Submitted`, and kept while it
/// stays `Submitted` — also while its partner is not attached (suspended, detached), so a resume
/// that re-sends nothing does not move it.
fn keep_submitted_time(mut delivery: Delivery, previous: Option<&Delivery>) -> Delivery {
    if delivery.state == DeliveryState::Submitted {
        delivery.submitted_time = previous.and_then(|p| p.submitted_time.clone());
    }
    delivery
}

/// Is a delivery done (nothing left to do for this partner)? `Submitted` and `External` hold the
/// indicators, `Skipped` had nothing to push, `Expired` will not push them again. This is also
/// what the `DELIVERED` column counts.
pub fn delivered(delivery: &Delivery) -> bool {
    matches!(
        delivery.state,
        DeliveryState::Submitted | DeliveryState::External | DeliveryState::Skipped | DeliveryState::Expired
    )
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
    pub error: Option<(PartnerReason, String)>,
    /// What the engine's outcome correlation reports.
    pub outcomes: Option<outcomes::CorrelationReport>,
}

impl SyncReport {
    pub fn verdict(&self) -> Verdict {
        if !self.ready {
            Verdict::new(INDICATORS_SYNCED, false, PartnerReason::Starting, "the sync engine is reading Defender")
        } else if self.over_quota > 0 {
            Verdict::new(
                INDICATORS_SYNCED,
                false,
                PartnerReason::QuotaExceeded,
                format!(
                    "{} indicators not pushed: the tenant holds {} of the {} active indicators Defender allows",
                    self.over_quota, self.tenant_total, self.tenant_cap
                ),
            )
        } else if let Some((reason, message)) = &self.error {
            Verdict::new(INDICATORS_SYNCED, false, *reason, message.clone())
        } else if self.failed > 0 {
            Verdict::new(
                INDICATORS_SYNCED,
                false,
                PartnerReason::PushFailed,
                format!("{} indicators were refused by Defender", self.failed),
            )
        } else if self.pending > 0 {
            Verdict::new(
                INDICATORS_SYNCED,
                false,
                PartnerReason::Pushing,
                format!("{} indicators waiting to be pushed", self.pending),
            )
        } else {
            Verdict::new(
                INDICATORS_SYNCED,
                true,
                PartnerReason::Synced,
                format!("{} indicators in Defender", self.submitted + self.external),
            )
        }
    }
}

#[cfg(test)]
mod tests;
