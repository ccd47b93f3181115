use super::*;
use crate::api::outcome::Correlation;
use crate::defender::outcomes::Evidence;
use serde_json::json;

const NOW: i64 = 1_800_000_000;

fn at(seconds_from_now: i64) -> Timestamp {
    Timestamp::from_second(NOW + seconds_from_now).unwrap()
}

fn now() -> Timestamp {
    at(0)
}

fn hash(c: char) -> String {
    c.to_string().repeat(64)
}

fn machine(id: &str, name: &str) -> Machine {
    Machine {
        id: id.into(),
        computer_dns_name: Some(name.into()),
        last_seen: Some(at(-300)),
        last_ip_address: None,
        health_status: Some("Active".into()),
        onboarding_status: Some("Onboarded".into()),
        os_platform: Some("Windows11".into()),
        machine_tags: vec![],
    }
}

fn av(id: &str, mode: &str, version: &str) -> AvInfo {
    AvInfo {
        id: Some(id.into()),
        machine_id: Some(id.into()),
        av_mode: Some(mode.into()),
        av_platform_version: Some(version.into()),
        os_kind: Some("windows".into()),
    }
}

fn alert(id: &str, machine: &str, created: Timestamp, sha256: &str, status: &str) -> Alert {
    Alert {
        id: id.into(),
        title: Some(format!("alert {id}")),
        severity: Some("Medium".into()),
        machine_id: Some(machine.into()),
        alert_creation_time: Some(created),
        last_update_time: Some(created),
        evidence: vec![Evidence {
            entity_type: Some("File".into()),
            sha1: None,
            sha256: Some(sha256.to_uppercase()),
            detection_status: Some(status.into()),
        }],
    }
}

fn finding(state: &str, endpoint: serde_json::Value, observed: Timestamp, hashes: &[String]) -> ProbeFinding {
    let indicators: Vec<_> = hashes.iter().map(|h| json!({"type": "FileSha256", "value": h})).collect();
    serde_json::from_value(json!({
        "apiVersion": "detect.dev/v1alpha1", "kind": "ProbeFinding",
        "metadata": {"name": "f", "namespace": "ns", "uid": "u1", "creationTimestamp": at(-7200).to_string()},
        "spec": {"test": {"id": "3ebbda49-738c-4799-a8fb-206630cf609e", "name": "t"}, "endpoint": endpoint,
                 "state": state, "observedTime": observed.to_string(), "indicators": indicators}
    }))
    .unwrap()
}

fn fleet(machines: Vec<Machine>, av: Vec<AvInfo>) -> Fleet {
    Fleet::listed(machines, av, at(-3600))
}

fn endpoint(hostname: Option<&str>, ip: Option<&str>, id: Option<&str>) -> EndpointRef {
    EndpointRef {
        machine_id: id.map(str::to_string),
        hostname: hostname.map(str::to_string),
        ip: ip.map(|ip| ip.parse().unwrap()),
    }
}

fn matched_id(matched: Matched<'_>) -> Option<String> {
    match matched {
        Matched::Machine { machine, .. } => Some(machine.id.clone()),
        _ => None,
    }
}

#[test]
fn hostnames_match_case_insensitively_and_a_short_name_matches_the_first_label() {
    let fleet = fleet(
        vec![machine("a", "laptop-7.contoso.com"), machine("b", "server-2"), machine("c", "laptop-70.contoso.com")],
        vec![],
    );
    let by = |host: &str| matched_id(match_machine(&endpoint(Some(host), None, None), &fleet));
    assert_eq!(by("laptop-7"), Some("a".into()), "short name, first label");
    assert_eq!(by("LAPTOP-7.Contoso.COM"), Some("a".into()), "full name, any case");
    assert_eq!(by("server-2.contoso.com"), Some("b".into()), "an FQDN matches a machine known by its short name");
    assert_eq!(by("laptop-7.fabrikam.com"), None, "another domain is another machine");
    assert_eq!(by("laptop"), None, "a prefix is not a label");
}

#[test]
fn machine_id_wins_and_ip_is_the_last_resort() {
    let mut with_ip = machine("b", "server-2.contoso.com");
    with_ip.last_ip_address = Some("10.0.2.2".into());
    let fleet = fleet(vec![machine("a", "laptop-7.contoso.com"), with_ip], vec![]);
    let ep = |h, ip, id| matched_id(match_machine(&endpoint(h, ip, id), &fleet));
    assert_eq!(ep(Some("laptop-7"), None, Some("B")), Some("b".into()), "machineId over hostname, any case");
    assert_eq!(ep(Some("laptop-7"), None, Some("zz")), None, "an explicit id that is not there does not fall back");
    assert_eq!(ep(Some("unknown"), Some("10.0.2.2"), None), Some("b".into()), "the IP when no machine has the name");
    assert_eq!(ep(Some("laptop-7"), Some("10.0.2.2"), None), Some("a".into()), "the hostname before the IP");
    assert_eq!(match_machine(&endpoint(None, None, None), &fleet), Matched::NoEndpoint);
    let Matched::Unmatched { keys } = match_machine(&endpoint(Some("X"), Some("10.9.9.9"), None), &fleet) else {
        panic!()
    };
    assert_eq!(keys, [EndpointKey::Name("x".into()), EndpointKey::Ip("10.9.9.9".parse().unwrap())]);
}

#[test]
fn of_two_machines_with_one_name_the_most_recently_seen_is_used_and_said() {
    let mut old = machine("old", "laptop-7.contoso.com");
    old.last_seen = Some(at(-86400));
    let recent = machine("new", "laptop-7.contoso.com");
    let fleet = fleet(vec![old, recent], vec![av("new", "0", "4.18.2206.108")]);
    let Matched::Machine { machine, candidates, by } = match_machine(&endpoint(Some("laptop-7"), None, None), &fleet)
    else {
        panic!()
    };
    assert_eq!((machine.id.as_str(), candidates, by), ("new", 2, "hostname"));
    let snapshot = snapshot(fleet, AlertBook::default());
    let f = finding("UNPROTECTED", json!({"hostname": "laptop-7"}), now(), &[hash('a')]);
    let status = evaluate(&f, &Correlation::default(), &snapshot, now()).machine.unwrap();
    assert_eq!(status.id.as_deref(), Some("new"));
    assert!(
        status.message.ends_with("2 machines match hostname laptop-7: the most recently seen is used"),
        "{status:?}"
    );
}

fn readiness_of(machine: &Machine, av: Option<&AvInfo>) -> (Readiness, String) {
    readiness(machine, av, now())
}

#[test]
fn every_readiness_value_names_the_prerequisite() {
    let ready = machine("m", "pc");
    let good = av("m", "0", "4.18.2206.108");
    let (readiness, message) = readiness_of(&ready, Some(&good));
    assert_eq!(readiness, Readiness::Ready);
    for unseen in ["cloud protection", "\"Allow or block file\"", "4.18.2206.108"] {
        assert!(message.contains(unseen), "Ready names {unseen}: {message}");
    }

    let mut not_onboarded = ready.clone();
    not_onboarded.onboarding_status = Some("CanBeOnboarded".into());
    let (readiness, message) = readiness_of(&not_onboarded, None);
    assert_eq!(readiness, Readiness::NotOnboarded);
    assert!(message.contains("CanBeOnboarded"), "{message}");
    let mut documented = ready.clone();
    documented.onboarding_status = Some("onboarded".into());
    assert_eq!(readiness_of(&documented, Some(&good)).0, Readiness::Ready, "compared case-insensitively");

    let mut inactive = ready.clone();
    inactive.health_status = Some("Inactive".into());
    let (readiness, message) = readiness_of(&inactive, Some(&good));
    assert_eq!(readiness, Readiness::Inactive);
    assert!(message.contains("healthStatus is Inactive"), "{message}");
    let mut unseen = ready.clone();
    unseen.last_seen = Some(at(-8 * 86400));
    let (readiness, message) = readiness_of(&unseen, Some(&good));
    assert_eq!(readiness, Readiness::Inactive);
    assert!(message.contains("more than 7 days ago"), "{message}");

    for (mode, what) in [("1", "passive mode"), ("5", "passive audit mode"), ("2", "disabled")] {
        let (readiness, message) = readiness_of(&ready, Some(&av("m", mode, "4.18.2206.108")));
        assert_eq!(readiness, Readiness::PassiveMode, "{mode}");
        assert!(message.contains(what) && message.contains("active mode"), "{message}");
    }

    let (readiness, message) = readiness_of(&ready, Some(&av("m", "0", "4.18.1807.18075")));
    assert_eq!(readiness, Readiness::OutdatedPlatform);
    assert!(message.contains("4.18.1807.18075") && message.contains("4.18.1901"), "{message}");
    assert_eq!(readiness_of(&ready, Some(&av("m", "0", "4.18.1901"))).0, Readiness::Ready, "exactly the minimum");
    assert_eq!(readiness_of(&ready, Some(&av("m", "0", "4.2.1"))).0, Readiness::OutdatedPlatform, "numeric, not text");

    for (av, why) in [
        (None, "no antivirus health"),
        (Some(av("m", "4", "4.18.2206.108")), "EDR in block mode"),
        (Some(av("m", "", "4.18.2206.108")), "another antivirus"),
        (Some(av("m", "0", "four")), "unreadable"),
    ] {
        let (readiness, message) = readiness_of(&ready, av.as_ref());
        assert_eq!(readiness, Readiness::Unknown, "{why}");
        assert!(message.contains(why), "{message}");
    }

    let mut mac = av("m", "0", "101.24082.0004");
    mac.os_kind = Some("mac".into());
    let (readiness, message) = readiness_of(&ready, Some(&mac));
    assert_eq!(readiness, Readiness::Ready, "the Windows platform minimum is not a macOS one");
    assert!(message.contains("enable-file-hash-computation"), "{message}");
}

fn snapshot(fleet: Fleet, book: AlertBook) -> Snapshot {
    Snapshot { ready: true, machines: Access::Granted(Arc::new(fleet)), alerts: Access::Granted(Arc::new(book)) }
}

fn book(alerts: &[Alert], polled_at: Timestamp) -> AlertBook {
    let mut book = AlertBook::default();
    for alert in alerts {
        book.record(alert);
    }
    book.polled_at = Some(polled_at);
    book
}

fn two_hours() -> Duration {
    Duration::from_secs(7200)
}

#[test]
fn every_detection_value() {
    let laptop = machine("m", "laptop-7");
    let window = Window::of(at(-600), two_hours()).unwrap();
    assert_eq!((window.start, window.end), (at(-1200), at(6600)));
    let h = [hash('a')];
    let alerts = |list: &[Alert], polled: Timestamp| Access::Granted(Arc::new(book(list, polled)));
    let seen = alerts(&[alert("1", "M", at(-300), &hash('a'), "Detected")], now());

    let (found, refs) = detection(TestState::Unprotected, Some(&window), &h, Some(&laptop), &seen);
    assert_eq!(found, Detection::Detected);
    assert_eq!(refs[0].detection_status.as_deref(), Some("Detected"));
    assert_eq!(refs[0].created_time, Time(at(-300)));

    let (found, refs) = detection(TestState::Protected, Some(&window), &h, Some(&laptop), &seen);
    assert_eq!((found, refs.len()), (Detection::Prevented, 1), "a PROTECTED finding lists its alerts too");
    let (found, _) = detection(TestState::Protected, Some(&window), &h, None, &Access::Missing("Alert.Read.All"));
    assert_eq!(found, Detection::Prevented, "the probe's word, whatever Defender shows");

    let none = alerts(&[], now());
    assert_eq!(detection(TestState::Unprotected, Some(&window), &h, Some(&laptop), &none).0, Detection::Pending);
    let after = alerts(&[], at(6600));
    assert_eq!(
        detection(TestState::Unprotected, Some(&window), &h, Some(&laptop), &after).0,
        Detection::NotDetected,
        "a poll that started when the window ended found nothing"
    );
    assert_eq!(detection(TestState::Unprotected, Some(&window), &h, None, &after).0, Detection::Unknown, "no machine");
    let no_role = Access::Missing("Alert.Read.All");
    assert_eq!(detection(TestState::Unprotected, Some(&window), &h, Some(&laptop), &no_role).0, Detection::Unknown);
    assert_eq!(detection(TestState::Unprotected, None, &h, Some(&laptop), &after).0, Detection::Unknown, "no window");
    assert_eq!(detection(TestState::Error, Some(&window), &h, Some(&laptop), &seen).0, Detection::Unknown);
}

#[test]
fn only_alerts_on_the_machine_with_the_hash_inside_the_window_count() {
    let laptop = machine("m", "laptop-7");
    let window = Window::of(now(), two_hours()).unwrap();
    let h = [hash('a')];
    let polled_after = at(7201);
    for (alert, why) in [
        (alert("other-machine", "n", at(60), &hash('a'), "Detected"), "on another machine"),
        (alert("other-hash", "m", at(60), &hash('b'), "Detected"), "with another hash"),
        (alert("too-early", "m", at(-601), &hash('a'), "Detected"), "before observedTime - 10m"),
        (alert("too-late", "m", at(7201), &hash('a'), "Detected"), "after the window"),
    ] {
        let access = Access::Granted(Arc::new(book(&[alert], polled_after)));
        let (found, refs) = detection(TestState::Unprotected, Some(&window), &h, Some(&laptop), &access);
        assert_eq!((found, refs.len()), (Detection::NotDetected, 0), "an alert {why} does not count");
    }
    let edges =
        [alert("start", "m", at(-600), &hash('a'), "Detected"), alert("end", "m", at(7200), &hash('a'), "Prevented")];
    let access = Access::Granted(Arc::new(book(&edges, polled_after)));
    let (found, refs) = detection(TestState::Unprotected, Some(&window), &h, Some(&laptop), &access);
    assert_eq!(found, Detection::Detected);
    assert_eq!(refs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["end", "start"], "newest first");

    // SHA-1 evidence counts for a FileSha1 indicator; at most five are listed.
    let sha1 = "c".repeat(40);
    let mut many: Vec<Alert> =
        (0..7).map(|i| alert(&format!("a{i}"), "m", at(i * 60), &hash('z'), "Detected")).collect();
    for alert in &mut many {
        alert.evidence[0].sha1 = Some(sha1.to_uppercase());
    }
    let access = Access::Granted(Arc::new(book(&many, now())));
    let (found, refs) = detection(TestState::Unprotected, Some(&window), &[sha1], Some(&laptop), &access);
    assert_eq!(found, Detection::Detected);
    assert_eq!(refs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a6", "a5", "a4", "a3", "a2"]);
}

#[test]
fn the_alert_book_keeps_what_is_useful_and_follows_updates() {
    let mut book = AlertBook::default();
    assert!(book.record(&alert("1", "M", at(0), &hash('a'), "Detected")));
    assert!(!book.record(&alert("1", "M", at(0), &hash('a'), "Detected")), "the same alert again changes nothing");
    let mut resolved = alert("1", "M", at(0), &hash('a'), "Prevented");
    resolved.title = Some("renamed".into());
    assert!(book.record(&resolved));
    assert_eq!(book.len(), 1);
    let window = Window::of(now(), two_hours()).unwrap();
    let refs = book.matching("m", &[hash('a')], &window);
    assert_eq!((refs[0].title.as_deref(), refs[0].detection_status.as_deref()), (Some("renamed"), Some("Prevented")));

    let mut no_file = alert("2", "m", at(0), &hash('a'), "Detected");
    no_file.evidence.clear();
    let mut no_machine = alert("3", "m", at(0), &hash('a'), "Detected");
    no_machine.machine_id = None;
    assert!(!book.record(&no_file) && !book.record(&no_machine), "of no use");
    book.record(&alert("4", "m", at(-100_000), &hash('a'), "Detected"));
    book.prune(at(-1000));
    assert_eq!(book.len(), 1);
}

fn correlation(alert_window: &str) -> Correlation {
    Correlation { alert_window: alert_window.into(), ..Correlation::default() }
}

#[test]
fn evaluate_brings_machine_readiness_and_detection_together() {
    let fleet = fleet(vec![machine("m", "laptop-7.contoso.com")], vec![av("m", "0", "4.18.2206.108")]);
    let seen = book(&[alert("1", "m", at(-60), &hash('a'), "Detected")], now());
    let snapshot = snapshot(fleet.clone(), seen);
    let f = finding("UNPROTECTED", json!({"hostname": "laptop-7"}), at(-120), &[hash('a')]);
    let evaluation = evaluate(&f, &correlation("2h"), &snapshot, now());
    let machine = evaluation.machine.clone().unwrap();
    assert_eq!(
        (machine.id.as_deref(), machine.name.as_deref(), machine.readiness),
        (Some("m"), Some("laptop-7.contoso.com"), Readiness::Ready)
    );
    assert_eq!((evaluation.detection, evaluation.alerts.len()), (Some(Detection::Detected), 1));
    assert_eq!(evaluation.machine_id.as_deref(), Some("m"));

    // An unusable window (an object stored before the schema's rules): no detection but Unknown.
    let evaluation = evaluate(&f, &correlation("0s"), &snapshot, now());
    assert_eq!(evaluation.detection, Some(Detection::Unknown));

    // No machine role: Unknown, naming the role.
    let no_machines = Snapshot { machines: Access::Missing("Machine.Read.All"), ..snapshot.clone() };
    let evaluation = evaluate(&f, &correlation("2h"), &no_machines, now());
    let machine = evaluation.machine.unwrap();
    assert_eq!(machine.readiness, Readiness::Unknown);
    assert!(machine.message.starts_with("Machine.Read.All is not granted"), "{}", machine.message);
    assert_eq!(evaluation.detection, Some(Detection::Unknown));

    // No endpoint Defender could know.
    let nameless = finding("UNPROTECTED", json!({"platform": "windows-x86_64"}), at(-120), &[hash('a')]);
    let machine = evaluate(&nameless, &correlation("2h"), &snapshot, now()).machine.unwrap();
    assert_eq!(machine.readiness, Readiness::NotFound);
    assert!(machine.message.contains("spec.endpoint gives no hostname"), "{}", machine.message);
}

#[test]
fn an_unknown_endpoint_is_looked_up_once_when_the_finding_is_newer_than_the_list() {
    let mut fleet = fleet(vec![machine("m", "laptop-7")], vec![]);
    let mut f = finding("UNPROTECTED", json!({"hostname": "kiosk-99", "ipAddress": "10.1.2.3"}), now(), &[hash('a')]);
    // Created before the list: the list would have had it.
    let evaluation = evaluate(&f, &correlation("2h"), &snapshot(fleet.clone(), AlertBook::default()), now());
    let status = evaluation.machine.unwrap();
    assert_eq!(status.readiness, Readiness::NotFound);
    assert_eq!(status.message, "no Defender machine has hostname kiosk-99 (nor lastIpAddress 10.1.2.3)");
    assert!(evaluation.unseen.is_empty());
    // Created after it: looked up, by name and by IP.
    f.metadata.creation_timestamp = Some(Time(at(-60)));
    let evaluation = evaluate(&f, &correlation("2h"), &snapshot(fleet.clone(), AlertBook::default()), now());
    assert_eq!(evaluation.machine.unwrap().readiness, Readiness::Unknown);
    assert_eq!(evaluation.unseen, [EndpointKey::Name("kiosk-99".into()), EndpointKey::Ip("10.1.2.3".parse().unwrap())]);
    assert_eq!(evaluation.detection, Some(Detection::Unknown));
    // Looked up, and Defender does not know it.
    fleet.not_found.extend(evaluation.unseen);
    let evaluation = evaluate(&f, &correlation("2h"), &snapshot(fleet.clone(), AlertBook::default()), now());
    assert_eq!(evaluation.machine.unwrap().readiness, Readiness::NotFound);
    assert!(evaluation.unseen.is_empty());
    // Created in the second the list was read (creation times have whole seconds): looked up.
    let mut same_second = fleet.clone();
    same_second.not_found.clear();
    same_second.listed_at = Some(Timestamp::from_millisecond((NOW - 3600) * 1000 + 700).unwrap());
    f.metadata.creation_timestamp = Some(Time(at(-3600)));
    assert_eq!(evaluate(&f, &correlation("2h"), &snapshot(same_second, AlertBook::default()), now()).unseen.len(), 2);
    // Found by the look-up.
    assert!(fleet.upsert_all(vec![machine("k", "kiosk-99.contoso.com")]));
    assert!(!fleet.upsert_all(vec![machine("k", "kiosk-99.contoso.com")]), "nothing new");
    let evaluation = evaluate(&f, &correlation("2h"), &snapshot(fleet, AlertBook::default()), now());
    assert_eq!(evaluation.machine_id.as_deref(), Some("k"));
}

#[test]
fn the_best_outcome_over_partners_and_the_counts() {
    let with = |detection: Option<Detection>| Delivery {
        partner: "p".into(),
        state: DeliveryState::Submitted,
        indicators: vec![],
        submitted_time: None,
        message: None,
        machine: None,
        detection,
        alerts: vec![],
    };
    assert_eq!(best(&[]), None);
    assert_eq!(best(&[with(None)]), None);
    let deliveries = [with(Some(Detection::Pending)), with(Some(Detection::Detected)), with(None)];
    assert_eq!(best(&deliveries), Some(Detection::Detected));
    assert_eq!(
        best(&[with(Some(Detection::Unknown)), with(Some(Detection::NotDetected))]),
        Some(Detection::NotDetected)
    );
    assert_eq!(best(&[with(Some(Detection::Detected)), with(Some(Detection::Prevented))]), Some(Detection::Prevented));
    let counts = count([
        Detection::Prevented,
        Detection::Detected,
        Detection::Detected,
        Detection::NotDetected,
        Detection::Pending,
        Detection::Unknown,
    ]);
    assert_eq!(counts, OutcomeCounts { prevented: 1, detected: 2, not_detected: 1, pending: 1 });
}

fn submitted_at(seconds: i64) -> Delivery {
    Delivery {
        partner: "p".into(),
        state: DeliveryState::Submitted,
        indicators: vec![],
        submitted_time: Some(Time(at(seconds))),
        message: None,
        machine: None,
        detection: None,
        alerts: vec![],
    }
}

#[test]
fn time_to_protect_is_set_once_when_an_unprotected_finding_turns_protected() {
    let was = |state: TestState| ProbeFindingStatus { state: Some(state), ..Default::default() };
    let deliveries = [submitted_at(-1385), submitted_at(-600)];
    // Observed after the submission: the probe's time.
    let (at_, took) =
        protection(&was(TestState::Unprotected), TestState::Protected, Some(at(-5)), &deliveries, now()).unwrap();
    assert_eq!((at_, took.as_str()), (Time(at(-5)), "23m0s"));
    // Observed before it (the state changed, the time did not): now.
    let (at_, took) =
        protection(&was(TestState::Unprotected), TestState::Protected, Some(at(-7200)), &deliveries, now()).unwrap();
    assert_eq!((at_, took.as_str()), (Time(now()), "23m5s"));
    // Not a turn from UNPROTECTED with submitted indicators: nothing.
    assert!(protection(&was(TestState::Protected), TestState::Protected, None, &deliveries, now()).is_none());
    assert!(protection(&ProbeFindingStatus::default(), TestState::Protected, None, &deliveries, now()).is_none());
    assert!(protection(&was(TestState::Unprotected), TestState::Unprotected, None, &deliveries, now()).is_none());
    let pending = Delivery { state: DeliveryState::Pending, submitted_time: None, ..submitted_at(0) };
    assert!(protection(&was(TestState::Unprotected), TestState::Protected, None, &[pending], now()).is_none());
    // Once set, kept, whatever comes after.
    let set = ProbeFindingStatus {
        state: Some(TestState::Unprotected),
        protected_time: Some(Time(at(-5))),
        time_to_protect: Some("22m0s".into()),
        ..Default::default()
    };
    assert_eq!(protection(&set, TestState::Unprotected, None, &[], at(999)), Some((Time(at(-5)), "22m0s".to_string())));
}

#[test]
fn outcomes_available_says_what_is_missing_and_never_touches_ready() {
    let report = |state: CorrelationState| CorrelationReport { state, interval: "5m".into(), ..Default::default() };
    let verdict = available(Some(&report(CorrelationState::Available)));
    assert_eq!((verdict.type_, verdict.status, verdict.reason), (OUTCOMES_AVAILABLE, true, "Available"));
    assert!(verdict.message.contains("every 5m"), "{}", verdict.message);

    let verdict = available(Some(&report(CorrelationState::MissingRoles(vec!["Machine.Read.All", "Alert.Read.All"]))));
    assert_eq!((verdict.status, verdict.unknown, verdict.reason), (false, false, "MissingPermission"));
    assert!(verdict.message.contains("Machine.Read.All and Alert.Read.All"), "{}", verdict.message);
    let verdict = available(Some(&report(CorrelationState::MissingRoles(vec!["Alert.Read.All"]))));
    assert!(verdict.message.contains("machines are matched, but without alerts"), "{}", verdict.message);

    assert_eq!(available(Some(&report(CorrelationState::Disabled))).reason, "Disabled");
    let invalid = available(Some(&report(CorrelationState::Invalid("spec.correlation.interval: …".into()))));
    assert_eq!((invalid.status, invalid.reason), (false, "InvalidCorrelation"));
    assert!(invalid.message.starts_with("spec.correlation.interval"));
    let failed = available(Some(&report(CorrelationState::Failed("Defender answered 503".into()))));
    assert_eq!((failed.status, failed.reason), (false, "ReadFailed"));
    let reading = available(Some(&report(CorrelationState::Reading)));
    assert!(reading.unknown && reading.reason == "Reading");
    let tagged = CorrelationReport {
        tag_problem: Some("machineTag \"bas\" is not added".into()),
        ..report(CorrelationState::Available)
    };
    assert!(available(Some(&tagged)).message.ends_with("machineTag \"bas\" is not added"));
    let detached = not_attached();
    assert!(detached.unknown && detached.reason == "NotAttached");
}

#[test]
fn a_restarted_engine_keeps_what_the_partner_said_until_it_has_read() {
    let reading = CorrelationReport { state: CorrelationState::Reading, ..Default::default() };
    let before = crate::api::conditions::merge(
        &[],
        &[available(Some(&CorrelationReport {
            state: CorrelationState::Available,
            interval: "5m".into(),
            ..Default::default()
        }))],
        Some(1),
        &Time(now()),
    );
    let previous = DefenderPartnerStatus {
        conditions: before.clone(),
        outcomes: Some(OutcomeCounts { pending: 3, ..Default::default() }),
        ..Default::default()
    };
    let mut verdicts = vec![available(Some(&reading))];
    let mut counts = None;
    keep_while_reading(&mut verdicts, &mut counts, Some(&reading), &previous);
    let merged = crate::api::conditions::merge(&before, &verdicts, Some(1), &Time(at(60)));
    assert_eq!(merged, before, "nothing to write");
    assert_eq!(counts, previous.outcomes);
    // Once read, the engine's word counts.
    let read = CorrelationReport { state: CorrelationState::Disabled, ..Default::default() };
    let mut verdicts = vec![available(Some(&read))];
    keep_while_reading(&mut verdicts, &mut None, Some(&read), &previous);
    assert_eq!(verdicts[0].reason, "Disabled");
    // Nothing said before: Reading.
    let mut verdicts = vec![available(Some(&reading))];
    keep_while_reading(&mut verdicts, &mut None, Some(&reading), &DefenderPartnerStatus::default());
    assert_eq!(verdicts[0].reason, "Reading");
}
