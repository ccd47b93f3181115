use super::*;
use crate::api::finding::{Endpoint, IndicatorSpec, PartnerRef, TestRef};
use crate::api::partner::{Credentials, SecretRef};
use crate::api::{DefenderPartnerSpec, IndicatorType, ProbeFindingSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

const NOW: i64 = 1_800_000_000;

fn partner(name: &str) -> DefenderPartner {
    let mut partner = DefenderPartner::new(
        name,
        DefenderPartnerSpec {
            api: None,
            cloud: Default::default(),
            credentials: Credentials {
                secret_ref: SecretRef {
                    name: "s".into(),
                    tenant_id_key: "tenantId".into(),
                    client_id_key: "clientId".into(),
                    client_secret_key: "clientSecret".into(),
                },
            },
            suspend: false,
            finding_selector: None,
            indicator: Default::default(),
            deletion_policy: Default::default(),
            revalidate_interval: "1h".into(),
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
    pinned.spec.partner_ref = Some(PartnerRef { name: "plain".into() });

    assert!(selects(&labelled, &red) && !selects(&labelled, &blue) && !selects(&labelled, &pinned));
    assert!(selects(&plain, &red) && selects(&plain, &blue) && selects(&plain, &pinned));

    let mut elsewhere = finding("x", TestState::Unprotected, &[&hash('d')]);
    elsewhere.metadata.namespace = Some("other".into());
    assert!(!selects(&plain, &elsewhere));
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
    let desired = desired(&partner, &settings, &findings, now());
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
    let desired = desired(&partner, &settings, [&finding], now());
    let indicator = &desired.push[&key(&hash('a'))];
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
fn plan_skips_what_defender_holds_and_withdraws_only_our_unreferenced() {
    let partner = partner("p");
    let settings = settings(&partner);
    let findings = [finding("f", TestState::Unprotected, &[&hash('a'), &hash('b')])];
    let desired = desired(&partner, &settings, &findings, now());
    let remote = HashMap::from([
        (key(&hash('a')), Remote { id: "1".into(), holder: Holder::Us }),
        (key(&hash('c')), Remote { id: "3".into(), holder: Holder::Us }),
        (key(&hash('d')), Remote { id: "4".into(), holder: Holder::Foreign }),
    ]);
    let plan = plan(&desired, &remote, true, 3, 15_000);
    assert_eq!(plan.push.iter().map(|i| i.indicator_value.clone()).collect::<Vec<_>>(), vec![hash('b')]);
    assert_eq!(plan.withdraw, vec!["3".to_string()]);

    let retain = super::plan(&desired, &remote, false, 3, 15_000);
    assert!(retain.withdraw.is_empty());
}

#[test]
fn plan_stops_at_the_tenant_cap() {
    let partner = partner("p");
    let settings = settings(&partner);
    let findings = [finding("f", TestState::Unprotected, &[&hash('a'), &hash('b'), &hash('c')])];
    let desired = desired(&partner, &settings, &findings, now());
    let plan = plan(&desired, &HashMap::new(), false, 14_999, 15_000);
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
    let d = delivery("p", &unprotected, &keys, false, Ok(&ours), None);
    assert_eq!(d.state, DeliveryState::Submitted);
    assert!(d.indicators.iter().all(|i| i.id.as_deref() == Some("7")));

    let theirs = held(Holder::Foreign);
    assert_eq!(delivery("p", &unprotected, &keys, false, Ok(&theirs), None).state, DeliveryState::External);

    let pending = |_: &IndicatorKey| ValueStatus::Pending;
    assert_eq!(delivery("p", &unprotected, &keys, false, Ok(&pending), None).state, DeliveryState::Pending);
    assert_eq!(delivery("p", &unprotected, &keys, true, Ok(&pending), None).state, DeliveryState::Expired);

    let failed = |_: &IndicatorKey| ValueStatus::Failed("InvalidHashValue".into());
    let d = delivery("p", &unprotected, &keys, false, Ok(&failed), None);
    assert_eq!((d.state, d.message.as_deref()), (DeliveryState::Failed, Some("InvalidHashValue")));

    let detached = delivery("p", &unprotected, &keys, false, Err("InvalidSecret"), None);
    assert_eq!(detached.state, DeliveryState::Pending);
    assert!(detached.message.unwrap().contains("InvalidSecret"));

    let protected = finding("g", TestState::Protected, &[&hash('a')]);
    let keys = protected.indicator_keys().unwrap();
    assert_eq!(delivery("p", &protected, &keys, false, Ok(&pending), None).state, DeliveryState::Skipped);
    // Pushed earlier, now PROTECTED: the indicator is working and stays.
    assert_eq!(delivery("p", &protected, &keys, false, Ok(&ours), None).state, DeliveryState::Submitted);
}

#[test]
fn partner_conditions_follow_the_verdict() {
    let (state, verdicts) = partner_conditions(
        &Attachment::Attached {
            granted: vec!["Ti.ReadWrite.All".into()],
            missing_optional: vec!["Alert.Read.All".into()],
        },
        Some(&SyncReport { ready: true, submitted: 3, ..Default::default() }),
    );
    assert_eq!(state, PartnerState::Attached);
    assert!(verdicts.iter().all(|v| v.status));
    assert!(verdicts[2].message.contains("Alert.Read.All"));

    let (state, verdicts) = partner_conditions(
        &Attachment::Detached {
            reason: "MissingPermission".into(),
            message: "grant Ti.ReadWrite.All".into(),
            credentials_ok: true,
            permissions_ok: Some(false),
        },
        None,
    );
    assert_eq!(state, PartnerState::Detached);
    let by_type = |t: &str| verdicts.iter().find(|v| v.type_ == t).unwrap().clone();
    assert!(!by_type(READY).status && by_type(CREDENTIALS_VALID).status && !by_type(PERMISSIONS_GRANTED).status);
    assert_eq!(by_type(READY).reason, "MissingPermission");
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
