use super::*;
use crate::api::finding::PartnerKind;
use crate::api::finding::{Endpoint, IndicatorSpec, PartnerRef, TestRef};
use crate::api::{DefenderPartnerSpec, IndicatorType, ProbeFindingSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

const NOW: i64 = 1_800_000_000;

fn partner(name: &str) -> DefenderPartner {
    let mut partner = DefenderPartner::new(
        name,
        DefenderPartnerSpec {
            api: None,
            cloud: Default::default(),
            credentials: serde_json::from_value(serde_json::json!({"secretRef": {"name": "s"}})).unwrap(),
            suspend: false,
            finding_selector: None,
            indicator: Default::default(),
            deletion_policy: Default::default(),
            revalidate_interval: "1h".into(),
            correlation: Default::default(),
            namespace_selector: None,
        },
    );
    partner.metadata.namespace = Some("ns".into());
    partner
}

fn settings(partner: &DefenderPartner) -> PartnerSettings {
    PartnerSettings {
        namespace: "ns".into(),
        name: partner.metadata.name.clone().unwrap(),
        marker: partner.owner_marker(),
        indicator: partner.spec.indicator.clone(),
        delete_withdrawn: true,
    }
}

fn finding(name: &str, state: TestState, hashes: &[&str]) -> ProbeFinding {
    let mut finding = ProbeFinding::new(
        name,
        ProbeFindingSpec {
            test: TestRef {
                id: "2b6d3b5a-1a2b-4c3d-8e9f-0a1b2c3d4e5f".into(),
                name: "Will your computer quarantine a malicious Office document?".into(),
            },
            endpoint: Some(Endpoint { hostname: Some("laptop-7".into()), ..Default::default() }),
            state: Some(state),
            code: None,
            observed_time: Some(Time(Timestamp::from_second(NOW - 3600).unwrap())),
            indicators: hashes
                .iter()
                .map(|h| IndicatorSpec { type_: IndicatorType::FileSha256, value: h.to_string(), file: None })
                .collect(),
            partner_ref: None,
        },
    );
    finding.metadata.namespace = Some("ns".into());
    finding
}

fn key(hash: &str) -> IndicatorKey {
    IndicatorKey { type_: IndicatorType::FileSha256, value: hash.to_lowercase() }
}

fn now() -> Timestamp {
    Timestamp::from_second(NOW).unwrap()
}

fn hash(c: char) -> String {
    c.to_string().repeat(64)
}

#[test]
fn partner_ref_and_selector_pick_findings() {
    let mut labelled = partner("labelled");
    labelled.spec.finding_selector = Some(LabelSelector {
        match_labels: Some([("team".to_string(), "red".to_string())].into()),
        ..Default::default()
    });
    let plain = partner("plain");

    let mut red = finding("red", TestState::Unprotected, &[&hash('a')]);
    red.metadata.labels = Some([("team".to_string(), "red".to_string())].into());
    let blue = finding("blue", TestState::Unprotected, &[&hash('b')]);
    let mut pinned = finding("pinned", TestState::Unprotected, &[&hash('c')]);
    pinned.spec.partner_ref = Some(PartnerRef { name: "plain".into(), kind: None });

    assert!(
        selects(&labelled, &red, &NamespaceLabels::new())
            && !selects(&labelled, &blue, &NamespaceLabels::new())
            && !selects(&labelled, &pinned, &NamespaceLabels::new())
    );
    assert!(
        selects(&plain, &red, &NamespaceLabels::new())
            && selects(&plain, &blue, &NamespaceLabels::new())
            && selects(&plain, &pinned, &NamespaceLabels::new())
    );

    let mut elsewhere = finding("x", TestState::Unprotected, &[&hash('d')]);
    elsewhere.metadata.namespace = Some("other".into());
    assert!(!selects(&plain, &elsewhere, &NamespaceLabels::new()));
}

#[test]
fn only_unprotected_unexpired_findings_are_pushed_but_all_are_referenced() {
    let partner = partner("p");
    let settings = settings(&partner);
    let mut expired = finding("old", TestState::Unprotected, &[&hash('e')]);
    expired.spec.observed_time = Some(Time(Timestamp::from_second(NOW - 721 * 3600).unwrap()));
    let findings = [
        finding("u", TestState::Unprotected, &[&hash('A')]),
        finding("p", TestState::Protected, &[&hash('b')]),
        finding("n", TestState::NotRelevant, &[&hash('c')]),
        finding("e", TestState::Error, &[&hash('d')]),
        expired,
    ];
    let desired = desired(&partner, &settings, &findings, &NamespaceLabels::new(), now());
    assert_eq!(desired.push.keys().cloned().collect::<Vec<_>>(), vec![key(&hash('a'))]);
    assert_eq!(desired.referenced.len(), 5);
}

#[test]
fn indicator_carries_the_partner_settings_and_marker() {
    let mut partner = partner("p");
    partner.spec.indicator.action = IndicatorAction::Audit;
    partner.spec.indicator.generate_alert = false;
    partner.spec.indicator.expire_after = "24h".into();
    partner.spec.indicator.title_prefix = "BAS: ".into();
    let settings = settings(&partner);
    let finding = finding("f", TestState::Unprotected, &[&hash('a')]);
    let desired = desired(&partner, &settings, [&finding], &NamespaceLabels::new(), now());
    let indicator = desired.indicator(&key(&hash('a')), &settings).unwrap();
    assert_eq!(indicator.action, "Audit");
    assert!(indicator.generate_alert, "Audit forces generateAlert");
    assert_eq!(indicator.severity, "High");
    assert_eq!(indicator.title, "BAS: Will your computer quarantine a malicious Office document?");
    assert_eq!(indicator.application, "defender-operator");
    assert_eq!(indicator.external_id, "ns/p");
    assert!(indicator.description.contains("laptop-7") && indicator.description.contains("ns/f"));
    let expected = Timestamp::from_second(NOW - 3600 + 24 * 3600).unwrap().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert_eq!(indicator.expiration_time.as_deref(), Some(expected.as_str()));
}

#[test]
fn titles_and_descriptions_are_one_line_without_control_or_bidi_characters() {
    let partner = partner("p");
    let settings = settings(&partner);
    let mut finding = finding("f", TestState::Unprotected, &[&hash('a')]);
    finding.spec.test.name = "line one\nline two\ttabbed\u{7}bell\u{202e}reversed  Ünïcödé 日本".into();
    finding.spec.endpoint = Some(Endpoint { hostname: Some("host\r\nInjected: header".into()), ..Default::default() });
    let indicator = new_indicator(&key(&hash('a')), &finding, &settings, None);
    assert_eq!(indicator.title, "Detect: line one line two tabbed bell reversed Ünïcödé 日本");
    assert!(indicator.description.contains(" on host Injected: header. "), "{}", indicator.description);
    assert!(!indicator.description.chars().any(|c| c.is_control() || c == '\u{202e}'));

    let mut settings = settings;
    settings.indicator.title_prefix = String::new();
    finding.spec.test.name = "\n\t".into();
    let indicator = new_indicator(&key(&hash('a')), &finding, &settings, None);
    assert_eq!(indicator.title, finding.spec.test.id, "never an empty title");
}

#[test]
fn plan_skips_what_defender_holds_and_withdraws_only_our_unreferenced() {
    let partner = partner("p");
    let settings = settings(&partner);
    let findings = [finding("f", TestState::Unprotected, &[&hash('a'), &hash('b')])];
    let desired = desired(&partner, &settings, &findings, &NamespaceLabels::new(), now());
    let remote = HashMap::from([
        (key(&hash('a')), Remote { id: "1".into(), holder: Holder::Us }),
        (key(&hash('c')), Remote { id: "3".into(), holder: Holder::Us }),
        (key(&hash('d')), Remote { id: "4".into(), holder: Holder::Foreign }),
    ]);
    let plan = plan(&desired, &settings, &remote, 3, 15_000);
    assert_eq!(plan.push.iter().map(|p| p.indicator().indicator_value).collect::<Vec<_>>(), vec![hash('b')]);
    assert_eq!(plan.withdraw, vec!["3".to_string()]);

    let retaining = PartnerSettings { delete_withdrawn: false, ..settings.clone() };
    let retain = super::plan(&desired, &retaining, &remote, 3, 15_000);
    assert!(retain.withdraw.is_empty());
}

#[test]
fn plan_stops_at_the_tenant_cap() {
    let partner = partner("p");
    let settings = settings(&partner);
    let findings = [finding("f", TestState::Unprotected, &[&hash('a'), &hash('b'), &hash('c')])];
    let desired = desired(&partner, &settings, &findings, &NamespaceLabels::new(), now());
    let plan = plan(&desired, &settings, &HashMap::new(), 14_999, 15_000);
    assert_eq!(plan.push.len(), 1);
    assert_eq!(plan.over_quota.len(), 2);
}

#[test]
fn delivery_states() {
    let unprotected = finding("f", TestState::Unprotected, &[&hash('a'), &hash('b')]);
    let keys = unprotected.indicator_keys().unwrap();
    let held =
        |holder: Holder| move |_: &IndicatorKey| ValueStatus::Held(Remote { id: "7".into(), holder: holder.clone() });

    let ours = held(Holder::Us);
    let d = delivery("p", &unprotected, &keys, None, Ok(&ours), None);
    assert_eq!(d.state, DeliveryState::Submitted);
    assert!(d.indicators.iter().all(|i| i.id.as_deref() == Some("7")));

    let theirs = held(Holder::Foreign);
    assert_eq!(delivery("p", &unprotected, &keys, None, Ok(&theirs), None).state, DeliveryState::External);

    let pending = |_: &IndicatorKey| ValueStatus::Pending;
    assert_eq!(delivery("p", &unprotected, &keys, None, Ok(&pending), None).state, DeliveryState::Pending);
    let expired = delivery("p", &unprotected, &keys, Some("expired at …; not pushed again"), Ok(&pending), None);
    assert_eq!(
        (expired.state, expired.message.as_deref()),
        (DeliveryState::Expired, Some("expired at …; not pushed again"))
    );
    // Failures no longer matter once expired: it is never pushed again.
    let failed = |_: &IndicatorKey| ValueStatus::Failed("InvalidHashValue".into());
    assert_eq!(delivery("p", &unprotected, &keys, Some("expired"), Ok(&failed), None).state, DeliveryState::Expired);
    // Held before it expired: still held.
    let d = delivery("p", &unprotected, &keys, Some("expired"), Ok(&ours), None);
    assert_eq!((d.state, d.message), (DeliveryState::Submitted, None));

    let d = delivery("p", &unprotected, &keys, None, Ok(&failed), None);
    assert_eq!((d.state, d.message.as_deref()), (DeliveryState::Failed, Some("InvalidHashValue")));

    let mut protected = finding("f", TestState::Protected, &[&hash('a')]);
    let skipped = delivery("p", &protected, &keys, None, Ok(&pending), None);
    assert_eq!(
        (skipped.state, skipped.message.as_deref()),
        (DeliveryState::Skipped, Some("nothing to push: the test was PROTECTED"))
    );
    protected.spec.state = None;
    protected.spec.code = Some(4242);
    let unknown = delivery("p", &protected, &keys, None, Err("InvalidSecret"), None);
    assert_eq!(unknown.state, DeliveryState::Skipped);
    assert_eq!(
        unknown.message.as_deref(),
        Some("nothing to push: exit code 4242 is not in Prelude's exit-code table, so the result is NONE")
    );
    protected.spec.code = Some(104);
    let not_relevant = delivery("p", &protected, &keys, None, Ok(&pending), None);
    assert_eq!(not_relevant.message.as_deref(), Some("nothing to push: exit code 104 means NOT_RELEVANT"));

    let detached = delivery("p", &unprotected, &keys, None, Err("InvalidSecret"), None);
    assert_eq!(
        (detached.state, detached.message.as_deref()),
        (DeliveryState::Pending, Some("not attached: InvalidSecret")),
        "the reason, without the partner's name: the delivery's `partner` field says it"
    );

    let protected = finding("g", TestState::Protected, &[&hash('a')]);
    let keys = protected.indicator_keys().unwrap();
    assert_eq!(delivery("p", &protected, &keys, None, Ok(&pending), None).state, DeliveryState::Skipped);
    // Pushed earlier, now PROTECTED: the indicator is working and stays.
    assert_eq!(delivery("p", &protected, &keys, None, Ok(&ours), None).state, DeliveryState::Submitted);
}

#[test]
fn an_unusable_expire_after_pushes_nothing_and_fails_the_delivery_naming_the_field() {
    let pending = |_: &IndicatorKey| ValueStatus::Pending;
    let unprotected = finding("f", TestState::Unprotected, &[&hash('a')]);
    let keys = unprotected.indicator_keys().unwrap();
    for (expire_after, says) in [
        ("87601h", "spec.indicator.expireAfter: 87601h is more than the maximum, 87600h"),
        ("99999999999999999999999h", "spec.indicator.expireAfter: invalid duration"),
    ] {
        let mut partner = partner("p");
        partner.spec.indicator.expire_after = expire_after.into();
        let settings = settings(&partner);
        assert!(expiry(&unprotected, &settings.indicator).unwrap_err().starts_with(says), "{expire_after}");
        // Not pushed without an expiry ("never expires" in Defender), but still referenced.
        let desired = desired(&partner, &settings, [&unprotected], &NamespaceLabels::new(), now());
        assert!(desired.push.is_empty(), "{expire_after}: {desired:?}");
        assert_eq!(desired.referenced.len(), 1);
        for engine in [Ok(&pending as &dyn Fn(&IndicatorKey) -> ValueStatus), Err("InvalidSecret")] {
            let d = partner_delivery(&partner, &unprotected, &keys, now(), engine, None);
            assert_eq!(d.state, DeliveryState::Failed, "{expire_after}");
            let message = d.message.unwrap();
            assert!(message.starts_with(says), "{message}");
        }
        // Nothing to push anyway: still Skipped, saying why.
        let protected = finding("g", TestState::Protected, &[&hash('a')]);
        assert_eq!(
            partner_delivery(&partner, &protected, &keys, now(), Ok(&pending), None).state,
            DeliveryState::Skipped
        );
    }

    // At the maximum: pushed, expiring ten years after the observation.
    let mut partner = partner("p");
    partner.spec.indicator.expire_after = crate::api::partner::MAX_EXPIRE_AFTER.into();
    let settings = settings(&partner);
    let wanted = desired(&partner, &settings, [&unprotected], &NamespaceLabels::new(), now());
    let indicator = wanted.indicator(&key(&hash('a')), &settings).unwrap();
    let expected =
        Timestamp::from_second(NOW - 3600 + 87600 * 3600).unwrap().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    assert_eq!(indicator.expiration_time.as_deref(), Some(expected.as_str()));
    // An observation time so late that the expiry is past what a timestamp holds: an error too.
    let mut late = finding("late", TestState::Unprotected, &[&hash('a')]);
    late.spec.observed_time = Some(Time("9999-01-01T00:00:00Z".parse().unwrap()));
    assert!(expiry(&late, &settings.indicator).unwrap_err().contains("spec.observedTime"));
    assert!(desired(&partner, &settings, [&late], &NamespaceLabels::new(), now()).push.is_empty());

    // Expired through partner_delivery, as through delivery, saying when and why.
    let mut old = finding("old", TestState::Unprotected, &[&hash('a')]);
    old.spec.observed_time = Some(Time(Timestamp::from_second(NOW - 721 * 3600).unwrap()));
    let partner = self::partner("p");
    let expired = partner_delivery(&partner, &old, &keys, now(), Ok(&pending), None);
    let at = |second: i64| Timestamp::from_second(second).unwrap().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let says = format!(
        "expired at {} (observed {} + expireAfter 720h); not pushed again",
        at(NOW - 3600),
        at(NOW - 721 * 3600)
    );
    assert_eq!((expired.state, expired.message.as_deref()), (DeliveryState::Expired, Some(says.as_str())));
    // The same at every pass: the status is not rewritten for it.
    let later = Timestamp::from_second(NOW + 86_400).unwrap();
    assert_eq!(partner_delivery(&partner, &old, &keys, later, Ok(&pending), Some(&expired)), expired);
    // Exactly at the expiry: expired. A second before: still pushed.
    let partner_expiry = Timestamp::from_second(NOW - 3600).unwrap();
    assert_eq!(
        partner_delivery(&partner, &old, &keys, partner_expiry, Ok(&pending), None).state,
        DeliveryState::Expired
    );
    let before = Timestamp::from_second(NOW - 3601).unwrap();
    let pending_delivery = partner_delivery(&partner, &old, &keys, before, Ok(&pending), None);
    assert_eq!((pending_delivery.state, pending_delivery.message), (DeliveryState::Pending, None));
    // A partner that is not attached: Pending with its reason, as for any finding.
    let detached = partner_delivery(&partner, &old, &keys, now(), Err("InvalidSecret"), None);
    assert_eq!(detached.state, DeliveryState::Pending);
}

fn with_state(mut partner: DefenderPartner, state: PartnerState) -> DefenderPartner {
    partner.status = Some(crate::api::DefenderPartnerStatus { state: Some(state), ..Default::default() });
    partner
}

#[test]
fn only_validated_unsuspended_partners_count_as_attached() {
    assert!(!attached(&partner("new")), "not validated yet");
    assert!(attached(&with_state(partner("a"), PartnerState::Attached)));
    assert!(!attached(&with_state(partner("d"), PartnerState::Detached)));
    let mut suspended = with_state(partner("s"), PartnerState::Attached);
    suspended.spec.suspend = true;
    assert!(!attached(&suspended), "suspend: true, not reconciled yet");
    let mut deleting = with_state(partner("x"), PartnerState::Attached);
    deleting.metadata.deletion_timestamp = Some(Time(now()));
    assert!(!attached(&deleting));
}

fn delivered_as(partner: &str, state: DeliveryState, message: Option<&str>) -> Delivery {
    Delivery {
        partner: partner.into(),
        state,
        indicators: vec![],
        submitted_time: None,
        message: message.map(str::to_string),
        machine: None,
        detection: None,
        alerts: vec![],
    }
}

#[test]
fn ready_waits_only_for_attached_partners() {
    let unprotected = finding("f", TestState::Unprotected, &[&hash('a')]);
    let attached_ones = |names: &'static [&'static str]| move |name: &str| names.contains(&name);
    let submitted = delivered_as("good", DeliveryState::Submitted, None);
    let detached = delivered_as("bad", DeliveryState::Pending, Some("not attached: InvalidSecret"));
    let suspended = delivered_as("paused", DeliveryState::Pending, Some("not attached: Suspended"));

    // The attached partner holds it; the detached and the suspended ones do not hold Ready back.
    let ready = finding_ready(
        &unprotected,
        &[detached.clone(), submitted.clone(), suspended.clone()],
        attached_ones(&["good"]),
    );
    assert_eq!((ready.status, ready.reason), (true, "Delivered"));
    assert!(ready.message.contains("not attached, so not waited for: bad, paused"), "{}", ready.message);
    let external = delivered_as("good", DeliveryState::External, None);
    assert!(finding_ready(&unprotected, &[detached.clone(), external], attached_ones(&["good"])).status);

    // An attached partner still pushing holds it back, with its own message, whatever comes first.
    let pushing = delivered_as("good", DeliveryState::Pending, None);
    let ready = finding_ready(&unprotected, &[detached.clone(), pushing], attached_ones(&["good"]));
    assert_eq!((ready.status, ready.reason, ready.message.as_str()), (false, "Pending", "partner good: Pending"));
    let failed = delivered_as("good", DeliveryState::Failed, Some("InvalidHashValue"));
    let ready = finding_ready(&unprotected, &[detached.clone(), failed], attached_ones(&["good"]));
    assert_eq!((ready.status, ready.reason), (false, "DeliveryFailed"));
    // Expired is an expected end, not a failure: done, and Ready (expired_indicators_are_done_not_failed).
    let expired = delivered_as("good", DeliveryState::Expired, None);
    let ready = finding_ready(&unprotected, &[detached.clone(), expired.clone()], attached_ones(&["good"]));
    assert_eq!((ready.status, ready.reason), (true, "Expired"));
    let ready = finding_ready(&unprotected, &[submitted.clone(), expired], |_: &str| true);
    assert_eq!((ready.status, ready.reason), (true, "Delivered"));

    // No attached partner at all: nothing holds the indicators, so not Ready; the detached
    // partner's reason is shown.
    let ready = finding_ready(&unprotected, &[detached.clone(), suspended], attached_ones(&[]));
    assert_eq!((ready.status, ready.reason), (false, "Pending"));
    assert_eq!(ready.message, "partner bad: not attached: InvalidSecret", "the partner named once");
    let ready = finding_ready(&unprotected, &[], attached_ones(&[]));
    assert_eq!((ready.status, ready.reason), (false, "NoPartner"));

    // Every attached partner holds it and none is detached: no note about detached partners.
    let ready = finding_ready(&unprotected, &[submitted], attached_ones(&["good"]));
    assert_eq!(ready.message, "every attached partner holds this finding's indicators (or has nothing to hold)");
}

/// What an attached partner delivered for `finding`: `Submitted` (or `External`) with ids `1`,
/// `2`, … and, for `Submitted`, a `submittedTime`.
fn held_by(partner: &str, finding: &ProbeFinding, state: DeliveryState) -> Delivery {
    let keys = finding.indicator_keys().unwrap();
    let ids: HashMap<IndicatorKey, String> =
        keys.iter().enumerate().map(|(i, k)| (k.clone(), (i + 1).to_string())).collect();
    let holder = if state == DeliveryState::Submitted { Holder::Us } else { Holder::Foreign };
    let lookup = |k: &IndicatorKey| ValueStatus::Held(Remote { id: ids[k].clone(), holder: holder.clone() });
    let mut d = delivery(partner, finding, &keys, None, Ok(&lookup), None);
    assert_eq!(d.state, state);
    if state == DeliveryState::Submitted {
        // As the finding reconciler stamps a delivery that just became Submitted.
        d.submitted_time = Some(Time(Timestamp::from_second(NOW - 600).unwrap()));
    }
    d
}

#[test]
fn a_partner_that_is_not_attached_keeps_what_it_delivered() {
    let unprotected = finding("f", TestState::Unprotected, &[&hash('a'), &hash('b')]);
    let keys = unprotected.indicator_keys().unwrap();
    let submitted = held_by("defender", &unprotected, DeliveryState::Submitted);
    let ids = |d: &Delivery| d.indicators.iter().map(|i| i.id.clone()).collect::<Vec<_>>();

    // Suspended (or detached, or being deleted) after pushing: nothing withdrew the indicators.
    for why in ["Suspended", "InvalidSecret", "Deleting"] {
        let d = delivery("defender", &unprotected, &keys, None, Err(why), Some(&submitted));
        assert_eq!(d.state, DeliveryState::Submitted, "{why}");
        assert_eq!(ids(&d), ids(&submitted), "{why}: the Defender ids stay");
        assert_eq!(d.submitted_time, submitted.submitted_time, "{why}: submittedTime stays");
        let says = format!("not attached ({why}); its indicators stay in Defender");
        assert_eq!(d.message.as_deref(), Some(says.as_str()));
        assert!(delivered(&d), "{why}: counted in DELIVERED");
    }
    // The same through partner_delivery, and at every pass (the status is not rewritten).
    let partner = partner("defender");
    let once = partner_delivery(&partner, &unprotected, &keys, now(), Err("Suspended"), Some(&submitted));
    let twice = partner_delivery(&partner, &unprotected, &keys, now(), Err("Suspended"), Some(&once));
    assert_eq!(once.state, DeliveryState::Submitted);
    assert_eq!(once, twice);
    // Even with an expireAfter that would push nothing now: what is held stays held.
    let mut unusable = self::partner("defender");
    unusable.spec.indicator.expire_after = "87601h".into();
    let d = partner_delivery(&unusable, &unprotected, &keys, now(), Err("Suspended"), Some(&submitted));
    assert_eq!((d.state, d.submitted_time.clone()), (DeliveryState::Submitted, submitted.submitted_time.clone()));

    // Already there under another owner: External stays External, with its ids.
    let external = held_by("defender", &unprotected, DeliveryState::External);
    let d = delivery("defender", &unprotected, &keys, None, Err("Suspended"), Some(&external));
    assert_eq!(d.state, DeliveryState::External);
    assert_eq!((ids(&d), d.submitted_time.clone()), (ids(&external), None));
    assert_eq!(d.message.as_deref(), Some("not attached (Suspended); its indicators stay in Defender"));

    // Pushed earlier, now PROTECTED: still held, as with an attached partner.
    let mut protected = unprotected.clone();
    protected.spec.state = Some(TestState::Protected);
    let d = delivery("defender", &protected, &keys, None, Err("Suspended"), Some(&submitted));
    assert_eq!((d.state, ids(&d)), (DeliveryState::Submitted, ids(&submitted)));

    // Nothing held before: as ever, Pending with the reason, or Skipped when nothing is to push.
    for previous in [
        None,
        Some(delivered_as("defender", DeliveryState::Pending, None)),
        Some(delivered_as("defender", DeliveryState::Failed, Some("InvalidHashValue"))),
        Some(delivered_as("defender", DeliveryState::Expired, Some("expired at …"))),
    ] {
        let d = delivery("defender", &unprotected, &keys, None, Err("Suspended"), previous.as_ref());
        assert_eq!((d.state, d.message.as_deref()), (DeliveryState::Pending, Some("not attached: Suspended")));
        assert!(d.indicators.iter().all(|i| i.id.is_none()) && d.submitted_time.is_none());
        let d = delivery("defender", &protected, &keys, None, Err("Suspended"), previous.as_ref());
        assert_eq!(d.state, DeliveryState::Skipped);
    }
    // The finding gained a value while the partner was away: not all of it is in Defender.
    let grown = finding("f", TestState::Unprotected, &[&hash('a'), &hash('b'), &hash('c')]);
    let grown_keys = grown.indicator_keys().unwrap();
    let d = delivery("defender", &grown, &grown_keys, None, Err("Suspended"), Some(&submitted));
    assert_eq!((d.state, d.message.as_deref()), (DeliveryState::Pending, Some("not attached: Suspended")));
    // It lost one: what is left is still held, with its id.
    let shrunk = finding("f", TestState::Unprotected, &[&hash('b')]);
    let d = delivery("defender", &shrunk, &shrunk.indicator_keys().unwrap(), None, Err("Suspended"), Some(&submitted));
    assert_eq!((d.state, ids(&d)), (DeliveryState::Submitted, vec![Some("2".to_string())]));
}

#[test]
fn delivery_messages_do_not_repeat_the_partner_name() {
    let unprotected = finding("f", TestState::Unprotected, &[&hash('a')]);
    let keys = unprotected.indicator_keys().unwrap();
    let submitted = held_by("acme", &unprotected, DeliveryState::Submitted);
    let partner = partner("acme");
    let foreign = |_: &IndicatorKey| ValueStatus::Held(Remote { id: "9".into(), holder: Holder::Foreign });
    let mut old = unprotected.clone();
    old.spec.observed_time = Some(Time(Timestamp::from_second(NOW - 721 * 3600).unwrap()));
    let pending = |_: &IndicatorKey| ValueStatus::Pending;
    let deliveries = [
        partner_delivery(&partner, &unprotected, &keys, now(), Err("InvalidSecret"), None),
        partner_delivery(&partner, &unprotected, &keys, now(), Err("Suspended"), Some(&submitted)),
        partner_delivery(&partner, &unprotected, &keys, now(), Ok(&foreign), None),
        partner_delivery(&partner, &old, &keys, now(), Ok(&pending), None),
        partner_delivery(&partner, &finding("p", TestState::Protected, &[&hash('a')]), &keys, now(), Err("x"), None),
    ];
    for d in &deliveries {
        let message = d.message.as_deref().unwrap();
        assert!(!message.contains("acme") && !message.contains("partner"), "{message}");
    }
    // Ready names it once, in front.
    let ready = finding_ready(&unprotected, &deliveries[..1], |_: &str| false);
    assert_eq!(ready.message, "partner acme: not attached: InvalidSecret");
}

#[test]
fn submitted_time_survives_a_suspend_and_resume() {
    let unprotected = finding("f", TestState::Unprotected, &[&hash('a')]);
    let keys = unprotected.indicator_keys().unwrap();
    let ours = |_: &IndicatorKey| ValueStatus::Held(Remote { id: "1".into(), holder: Holder::Us });
    let first = held_by("defender", &unprotected, DeliveryState::Submitted);
    // Suspended: the engine stops; the delivery stays Submitted.
    let suspended = delivery("defender", &unprotected, &keys, None, Err("Suspended"), Some(&first));
    assert_eq!(suspended.submitted_time, first.submitted_time);
    // Resumed: the engine finds the indicator where it was and re-sends nothing.
    let resumed = delivery("defender", &unprotected, &keys, None, Ok(&ours), Some(&suspended));
    assert_eq!((resumed.state, resumed.message.as_deref()), (DeliveryState::Submitted, None));
    assert_eq!(resumed.submitted_time, first.submitted_time, "not moved to the resume");
    assert_eq!(resumed, first);
}

#[test]
fn ready_counts_what_a_partner_that_is_not_attached_left_in_defender() {
    let unprotected = finding("f", TestState::Unprotected, &[&hash('a')]);
    let keys = unprotected.indicator_keys().unwrap();
    let submitted = held_by("paused", &unprotected, DeliveryState::Submitted);
    let kept = delivery("paused", &unprotected, &keys, None, Err("Suspended"), Some(&submitted));
    let attached_ones = |names: &'static [&'static str]| move |name: &str| names.contains(&name);

    // The only partner is suspended, but its indicators are in Defender: Ready, saying none is attached.
    let ready = finding_ready(&unprotected, std::slice::from_ref(&kept), attached_ones(&[]));
    assert_eq!(
        (ready.status, ready.reason, ready.message.as_str()),
        (
            true,
            "Delivered",
            "every partner holds this finding's indicators (or has nothing to hold); none is attached: paused"
        )
    );
    // Also a detached partner that never held them: with none attached every delivery decides,
    // so not Ready, naming it once.
    let detached = delivery("bad", &unprotected, &keys, None, Err("InvalidSecret"), None);
    let ready = finding_ready(&unprotected, &[detached.clone(), kept.clone()], attached_ones(&[]));
    assert_eq!((ready.status, ready.reason), (false, "Pending"));
    assert_eq!(ready.message, "partner bad: not attached: InvalidSecret");
    // An attached partner decides, as before; the suspended one is not waited for.
    let good = held_by("good", &unprotected, DeliveryState::Submitted);
    let ready = finding_ready(&unprotected, &[good, kept, detached], attached_ones(&["good"]));
    assert_eq!((ready.status, ready.reason), (true, "Delivered"));
    assert!(ready.message.ends_with("; not attached, so not waited for: paused, bad"), "{}", ready.message);
}

#[test]
fn expired_indicators_are_done_not_failed() {
    let unprotected = finding("f", TestState::Unprotected, &[&hash('a')]);
    let attached_ones = |names: &'static [&'static str]| move |name: &str| names.contains(&name);
    let expired = |partner: &str| {
        delivered_as(
            partner,
            DeliveryState::Expired,
            Some(
                "expired at 2027-01-15T08:00:00Z (observed 2026-12-16T08:00:00Z + expireAfter 720h); not pushed again",
            ),
        )
    };
    assert!(delivered(&expired("good")), "nothing left to do: counted in DELIVERED");

    // Every attached partner saw them expire: Ready, reason Expired, saying so and naming the partner.
    let ready = finding_ready(&unprotected, &[expired("good")], attached_ones(&["good"]));
    assert_eq!(
        (ready.status, ready.reason, ready.message.as_str()),
        (
            true,
            "Expired",
            "this finding's indicators expired and are not pushed again; partner good: expired at \
             2027-01-15T08:00:00Z (observed 2026-12-16T08:00:00Z + expireAfter 720h)"
        )
    );
    // Several partners, one with nothing to push and one detached (not waited for).
    let skipped = delivered_as("quiet", DeliveryState::Skipped, Some("nothing to push"));
    let detached = delivered_as("bad", DeliveryState::Pending, Some("not attached: InvalidSecret"));
    let no_message = delivered_as("old", DeliveryState::Expired, None);
    let ready = finding_ready(
        &unprotected,
        &[expired("good"), skipped.clone(), detached.clone(), no_message],
        attached_ones(&["good", "quiet", "old"]),
    );
    assert_eq!((ready.status, ready.reason), (true, "Expired"));
    assert_eq!(
        ready.message,
        "this finding's indicators expired and are not pushed again; partner good: expired at 2027-01-15T08:00:00Z \
         (observed 2026-12-16T08:00:00Z + expireAfter 720h); partner old: expired; not attached, so not waited \
         for: bad"
    );

    // Held by one partner, expired for another: Delivered, naming where they expired.
    let submitted = delivered_as("good", DeliveryState::Submitted, None);
    let ready = finding_ready(&unprotected, &[submitted.clone(), expired("late")], attached_ones(&["good", "late"]));
    assert_eq!(
        (ready.status, ready.reason, ready.message.as_str()),
        (
            true,
            "Delivered",
            "every attached partner holds this finding's indicators (or has nothing to hold) except where they \
             expired and are not pushed again: late"
        )
    );
    let external = delivered_as("good", DeliveryState::External, None);
    assert_eq!(finding_ready(&unprotected, &[expired("late"), external], |_: &str| true).reason, "Delivered");

    // Expired for one attached partner, still pushing or failing for another: not Ready.
    let pushing = delivered_as("slow", DeliveryState::Pending, None);
    let ready = finding_ready(&unprotected, &[expired("good"), pushing], attached_ones(&["good", "slow"]));
    assert_eq!((ready.status, ready.reason), (false, "Pending"));
    let failed = delivered_as("slow", DeliveryState::Failed, Some("InvalidHashValue"));
    let ready = finding_ready(&unprotected, &[failed, expired("good")], attached_ones(&["good", "slow"]));
    assert_eq!((ready.status, ready.reason), (false, "DeliveryFailed"));

    // Expired for a detached partner while an attached one holds them: the attached one decides.
    let ready = finding_ready(&unprotected, &[expired("bad"), submitted], attached_ones(&["good"]));
    assert_eq!((ready.status, ready.reason), (true, "Delivered"));
    // No attached partner: the detached partners' deliveries decide, as for any finding.
    let ready = finding_ready(&unprotected, &[expired("good"), detached], attached_ones(&[]));
    assert_eq!((ready.status, ready.reason), (false, "Pending"));
    let ready = finding_ready(&unprotected, &[expired("good"), skipped], attached_ones(&[]));
    assert_eq!((ready.status, ready.reason), (true, "Expired"));
    assert!(ready.message.ends_with("; not attached, so not waited for: good, quiet"), "{}", ready.message);
}

#[test]
fn ready_is_nothing_to_deliver_when_every_delivery_is_skipped() {
    let mut finding = finding("f", TestState::NotRelevant, &[&hash('a')]);
    let skipped = |partner: &str| delivered_as(partner, DeliveryState::Skipped, Some("nothing to push"));
    let everyone = |_: &str| true;
    let ready = finding_ready(&finding, &[skipped("a"), skipped("b")], everyone);
    assert_eq!(
        (ready.status, ready.reason, ready.message.as_str()),
        (true, "NothingToDeliver", "nothing to push: the test was NOT_RELEVANT")
    );
    // Skipped by a detached partner too.
    assert_eq!(finding_ready(&finding, &[skipped("a")], |_: &str| false).reason, "NothingToDeliver");
    // No partner at all: the same, spelled as the API spells states.
    finding.spec.state = None;
    finding.spec.code = Some(4242);
    let ready = finding_ready(&finding, &[], everyone);
    assert_eq!((ready.status, ready.reason), (true, "NothingToDeliver"));
    assert_eq!(
        ready.message,
        "nothing to push: exit code 4242 is not in Prelude's exit-code table, so the result is NONE"
    );
    finding.spec.state = Some(TestState::Protected);
    assert_eq!(finding_ready(&finding, &[], everyone).message, "nothing to push: the test was PROTECTED");
    // Pushed earlier and now PROTECTED: held, so Delivered, not NothingToDeliver.
    let held = delivered_as("a", DeliveryState::Submitted, None);
    assert_eq!(finding_ready(&finding, &[held, skipped("b")], everyone).reason, "Delivered");
}

#[test]
fn partner_ref_not_found_says_whether_the_partner_is_missing_or_does_not_select() {
    let missing = partner_ref_not_found(&PartnerRef { name: "late".into(), kind: None }, None);
    assert_eq!((missing.status, missing.reason), (false, "PartnerNotFound"));
    assert_eq!(
        missing.message,
        "spec.partnerRef names DefenderPartner \"late\", which does not exist in this namespace; create it, or \
         correct spec.partnerRef.name"
    );

    let mut choosy = partner("late");
    choosy.spec.finding_selector = Some(LabelSelector {
        match_labels: Some([("team".to_string(), "red".to_string())].into()),
        ..Default::default()
    });
    let excluded = partner_ref_not_found(&PartnerRef { name: "late".into(), kind: None }, Some(&choosy));
    assert_eq!((excluded.status, excluded.reason), (false, "PartnerNotFound"));
    assert!(!excluded.message.contains("does not exist"), "{}", excluded.message);
    assert_eq!(
        excluded.message,
        "spec.partnerRef names DefenderPartner \"late\", which exists but does not receive this finding: its \
         spec.findingSelector (team=red) does not match this finding's labels; label the finding to match, or \
         change the partner's findingSelector"
    );

    choosy.spec.finding_selector = Some(LabelSelector {
        match_expressions: Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
            key: "team".into(),
            operator: "Equals".into(),
            values: None,
        }]),
        ..Default::default()
    });
    let invalid = partner_ref_not_found(&PartnerRef { name: "late".into(), kind: None }, Some(&choosy));
    assert!(
        invalid.message.contains("its spec.findingSelector is invalid, so it selects no finding"),
        "{}",
        invalid.message
    );
}

#[test]
fn sync_report_verdicts() {
    let quota = SyncReport { ready: true, over_quota: 5, tenant_total: 15_000, ..Default::default() };
    assert_eq!(quota.verdict().reason, "QuotaExceeded");
    let pending = SyncReport { ready: true, pending: 2, ..Default::default() };
    assert!(!pending.verdict().status);
    let done = SyncReport { ready: true, submitted: 2, ..Default::default() };
    assert!(done.verdict().status);
}

/// A ClusterDefenderPartner, as the operator works with it.
fn cluster_partner(name: &str, namespace_selector: Option<LabelSelector>) -> DefenderPartner {
    let mut partner = partner(name);
    partner.metadata.namespace = None;
    partner.spec.namespace_selector = namespace_selector;
    partner
}

#[test]
fn a_cluster_partner_selects_the_findings_of_the_namespaces_its_selector_selects() {
    let namespaces: NamespaceLabels =
        [("red".to_string(), [("team".to_string(), "red".to_string())].into()), ("blue".to_string(), BTreeMap::new())]
            .into();
    let in_namespace = |namespace: &str| {
        let mut finding = finding(namespace, TestState::Unprotected, &[&hash('a')]);
        finding.metadata.namespace = Some(namespace.into());
        finding
    };
    let red_only = cluster_partner(
        "fleet",
        Some(LabelSelector {
            match_labels: Some([("team".to_string(), "red".to_string())].into()),
            ..Default::default()
        }),
    );
    assert!(selects(&red_only, &in_namespace("red"), &namespaces));
    assert!(!selects(&red_only, &in_namespace("blue"), &namespaces));
    assert!(!selects(&red_only, &in_namespace("unknown"), &namespaces), "a namespace not (yet) seen");
    let everywhere = cluster_partner("fleet", None);
    assert!(selects(&everywhere, &in_namespace("blue"), &namespaces));

    // partnerRef names a partner and, optionally, its kind.
    let mut pinned = in_namespace("blue");
    pinned.spec.partner_ref = Some(PartnerRef { name: "fleet".into(), kind: None });
    assert!(!selects(&everywhere, &pinned, &namespaces), "a bare name means the DefenderPartner of the namespace");
    pinned.spec.partner_ref =
        Some(PartnerRef { name: "fleet".into(), kind: Some(PartnerKind::ClusterDefenderPartner) });
    assert!(selects(&everywhere, &pinned, &namespaces));
    let mut namespaced = partner("fleet");
    namespaced.metadata.namespace = Some("blue".into());
    assert!(!selects(&namespaced, &pinned, &namespaces), "not the cluster partner");

    // Deliveries and indicators name it by kind.
    assert_eq!(everywhere.delivery_name(), "ClusterDefenderPartner/fleet");
    assert_eq!(everywhere.owner_marker(), "ClusterDefenderPartner/fleet");
}

#[test]
fn partners_of_one_tenant_write_a_shared_value_once_and_withdraw_only_their_own() {
    let (a, b) = (partner("a"), partner("b"));
    let (settings_a, settings_b) = (settings(&a), settings(&b));
    let both = finding("both", TestState::Unprotected, &[&hash('a')]);
    let mut only_b = finding("only-b", TestState::Unprotected, &[&hash('b')]);
    only_b.spec.partner_ref = Some(PartnerRef { name: "b".into(), kind: None });
    let findings = [both, only_b];
    let want_a = desired(&a, &settings_a, &findings, &NamespaceLabels::new(), now());
    let want_b = desired(&b, &settings_b, &findings, &NamespaceLabels::new(), now());
    let members =
        [Member { settings: &settings_a, desired: &want_a }, Member { settings: &settings_b, desired: &want_b }];
    let plan = plan_members(&members, &HashMap::new(), 0, 15_000);
    let pushed: Vec<(String, String)> =
        plan.push.iter().map(|p| (p.indicator().indicator_value, p.indicator().external_id)).collect();
    assert_eq!(pushed, [(hash('a'), settings_a.marker.clone()), (hash('b'), settings_b.marker.clone())], "a once");

    // Held: a's `a`, b's stale `c`, a's stale `d` that b still wants, someone else's `e`.
    let held = |id: &str, owner: Option<&String>| Held { id: id.into(), owner: owner.cloned() };
    let mut want_b = want_b;
    want_b.push.insert(key(&hash('d')), want_a.push[&key(&hash('a'))]);
    let members =
        [Member { settings: &settings_a, desired: &want_a }, Member { settings: &settings_b, desired: &want_b }];
    let remote = HashMap::from([
        (key(&hash('a')), held("1", Some(&settings_a.marker))),
        (key(&hash('c')), held("3", Some(&settings_b.marker))),
        (key(&hash('d')), held("4", Some(&settings_a.marker))),
        (key(&hash('e')), held("5", None)),
    ]);
    let plan = plan_members(&members, &remote, 4, 15_000);
    assert_eq!(plan.withdraw, ["3"], "b's own stale value only; a's `d` stays while b wants it");

    // The report counts a value held by a sibling partner as held for b.
    let report = member_report(&members[1], &remote, &HashMap::new(), 0, (true, 4, 15_000), None);
    assert_eq!((report.submitted, report.pending, report.external), (2, 1, 0), "{report:?}");
}

#[test]
fn a_plan_pushes_the_oldest_findings_first() {
    let partner = partner("p");
    let settings = settings(&partner);
    let created = |name: &str, value: char, second: i64| {
        let mut finding = finding(name, TestState::Unprotected, &[&hash(value)]);
        finding.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_700_000_000 + second).unwrap()));
        finding
    };
    let findings = [created("new", 'a', 9), created("old", 'c', 1), created("same-second", 'b', 9)];
    let desired = desired(&partner, &settings, &findings, &NamespaceLabels::new(), now());
    let plan = plan(&desired, &settings, &HashMap::new(), 0, 15_000);
    let pushed: Vec<String> = plan.push.iter().map(|p| p.indicator().indicator_value).collect();
    assert_eq!(pushed, [hash('c'), hash('a'), hash('b')], "by creation, then by value");
}

#[test]
fn after_a_read_only_findings_whose_delivery_disagrees_with_it_need_a_reconcile() {
    let mut shown = finding("f", TestState::Unprotected, &[&hash('a')]);
    shown.metadata.generation = Some(2);
    shown.status = Some(
        serde_json::from_value(serde_json::json!({
            "observedGeneration": 2,
            "deliveries": [{"partner": "p", "state": "Submitted",
                            "indicators": [{"type": "FileSha256", "value": hash('a'), "id": "7"}]}]
        }))
        .unwrap(),
    );
    let holds = |id: &'static str| move |k: &IndicatorKey| (k == &key(&hash('a'))).then_some(id);
    assert!(still_shows(&shown, "p", holds("7")));
    assert!(!still_shows(&shown, "p", holds("8")), "deleted in the portal and pushed again by someone");
    assert!(!still_shows(&shown, "p", |_| None), "no longer held");
    assert!(!still_shows(&shown, "other", holds("7")), "no delivery to that partner yet");
    let mut changed = shown.clone();
    changed.metadata.generation = Some(3);
    assert!(!still_shows(&changed, "p", holds("7")), "changed while the operator was down");
    let mut pending = shown.clone();
    pending.status.as_mut().unwrap().deliveries[0].state = DeliveryState::Pending;
    assert!(!still_shows(&pending, "p", holds("7")));
}
