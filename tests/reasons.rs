//! The README's reason tables list exactly the reasons the operator writes, each with the fix the
//! code knows: a reason added, renamed or dropped in one place fails here until the other follows.

use std::collections::BTreeMap;

use defender_operator::api::{
    DeliveryState, Detection, EventReason, FindingReason, OutcomesReason, PartnerReason, Readiness,
};

const README: &str = include_str!("../README.md");

/// The rows (`reason` → fix) of the README table whose header's first cell is `first_cell`.
fn table(first_cell: &str) -> BTreeMap<String, String> {
    let header = format!("| {first_cell} |");
    let start = README.lines().position(|line| line.starts_with(&header)).unwrap_or_else(|| {
        panic!("the README has no table headed {header:?}");
    });
    let mut rows = BTreeMap::new();
    for line in README.lines().skip(start + 2).take_while(|line| line.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let reason = cells[0].trim_matches('`').to_string();
        let fix = cells.last().unwrap().to_string();
        assert!(rows.insert(reason.clone(), fix).is_none(), "{reason} is listed twice under {header:?}");
    }
    rows
}

fn expected(reasons: impl Iterator<Item = (&'static str, &'static str)>) -> BTreeMap<String, String> {
    reasons.map(|(reason, fix)| (reason.to_string(), fix.to_string())).collect()
}

#[test]
fn the_partner_tables_list_every_partner_reason_with_its_fix() {
    let mut documented = table("Reason");
    documented.extend(table("Condition reason"));
    assert_eq!(documented, expected(PartnerReason::ALL.iter().map(|r| (r.as_str(), r.fix()))));
}

#[test]
fn the_finding_table_lists_every_finding_reason_with_its_fix() {
    assert_eq!(table("Finding reason"), expected(FindingReason::ALL.iter().map(|r| (r.as_str(), r.fix()))));
}

#[test]
fn the_delivery_table_lists_every_delivery_state_with_its_fix() {
    assert_eq!(table("Delivery state"), expected(DeliveryState::ALL.iter().map(|r| (r.as_str(), r.fix()))));
}

#[test]
fn the_event_table_lists_every_event_reason_with_its_fix() {
    assert_eq!(table("Event"), expected(EventReason::ALL.iter().map(|r| (r.as_str(), r.fix()))));
}

#[test]
fn the_outcome_tables_list_every_readiness_detection_and_outcomes_reason_with_its_fix() {
    assert_eq!(table("Readiness"), expected(Readiness::ALL.iter().map(|r| (r.as_str(), r.fix()))));
    assert_eq!(table("Detection"), expected(Detection::ALL.iter().map(|r| (r.as_str(), r.fix()))));
    assert_eq!(table("Outcomes reason"), expected(OutcomesReason::ALL.iter().map(|r| (r.as_str(), r.fix()))));
}

/// A terminal reason always tells the user what to do.
#[test]
fn every_terminal_reason_has_a_fix() {
    let partner = PartnerReason::ALL.iter().filter(|r| r.is_terminal()).map(|r| (r.as_str(), r.fix()));
    let finding = FindingReason::ALL.iter().filter(|r| r.is_terminal()).map(|r| (r.as_str(), r.fix()));
    let readiness = Readiness::ALL.iter().filter(|r| r.is_terminal()).map(|r| (r.as_str(), r.fix()));
    let detection = Detection::ALL.iter().filter(|r| r.is_terminal()).map(|r| (r.as_str(), r.fix()));
    let outcomes = OutcomesReason::ALL.iter().filter(|r| r.is_terminal()).map(|r| (r.as_str(), r.fix()));
    for (reason, fix) in partner.chain(finding).chain(readiness).chain(detection).chain(outcomes) {
        assert!(fix != "—" && !fix.is_empty(), "{reason} is terminal but has no fix");
    }
}
