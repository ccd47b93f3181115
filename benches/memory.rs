//! `cargo bench --bench memory`: where the operator's memory per finding goes. Counts the heap
//! bytes each structure the operator keeps per finding takes, with a counting allocator, for
//! `BENCH_FINDINGS` findings (default 10,000) shaped as the convergence benchmark's are once
//! delivered and correlated. Prints a table, then one JSON line. Heap bytes, not RSS: the
//! allocator's own overhead and fragmentation come on top (the convergence benchmark's RSS).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use defender_operator::api::finding::IndicatorKey;
use defender_operator::api::{DefenderPartner, ProbeFinding};
use defender_operator::controller::decide::{self, Held, PartnerSettings};
use kube::ResourceExt;
use kube::runtime::reflector;
use kube::runtime::watcher;
use serde_json::{Value, json};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes per item that `build` keeps alive (it returns what it built, dropped after).
fn per_finding<T>(n: usize, build: impl FnOnce() -> T) -> (f64, T) {
    let before = LIVE.load(Ordering::Relaxed);
    let kept = build();
    let after = LIVE.load(Ordering::Relaxed);
    ((after - before) as f64 / n as f64, kept)
}

/// A finding as the API server sends it once delivered to one partner and correlated: the
/// convergence benchmark's shape, with the managed fields a server-side apply leaves.
fn finding_json(i: usize) -> Value {
    let value = format!("{i:016x}").repeat(4);
    json!({
        "apiVersion": "detect.dev/v1alpha1", "kind": "ProbeFinding",
        "metadata": {
            "name": format!("finding-{i}"), "namespace": format!("tenant-{}", i % 10),
            "uid": format!("6f9619ff-8b86-d011-b42d-{i:012x}"), "resourceVersion": format!("{}", 100_000 + i),
            "generation": 1, "creationTimestamp": "2026-11-29T06:00:00Z",
            "managedFields": [
                {"manager": "bench", "operation": "Update", "apiVersion": "detect.dev/v1alpha1", "time": "2026-11-29T06:00:00Z",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {".": {}, "f:code": {}, "f:endpoint": {".": {}, "f:hostname": {}}, "f:indicators": {}, "f:observedTime": {}, "f:test": {".": {}, "f:id": {}, "f:name": {}}}}},
                {"manager": "defender-operator", "operation": "Apply", "apiVersion": "detect.dev/v1alpha1", "time": "2026-11-29T06:00:20Z",
                 "subresource": "status", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}, "f:delivered": {}, "f:deliveries": {}, "f:observedGeneration": {}, "f:outcome": {}, "f:state": {}}}}
            ]
        },
        "spec": {
            "test": {"id": "3ebbda49-738c-4799-a8fb-206630cf609e", "name": "Will a malicious Office document be quarantined?"},
            "endpoint": {"hostname": format!("host-{}", i % 2000)}, "code": 101, "observedTime": "2026-11-29T05:59:00Z",
            "indicators": [{"type": "FileSha256", "value": value}]
        },
        "status": {
            "state": "UNPROTECTED", "delivered": "1/1", "observedGeneration": 1, "outcome": "NotDetected",
            "deliveries": [{
                "partner": "defender", "state": "Submitted", "submittedTime": "2026-11-29T06:00:15Z",
                "indicators": [{"type": "FileSha256", "value": value, "id": format!("{}", 1000 + i)}],
                "machine": {"id": format!("{:040x}", i % 2000), "name": format!("host-{}.bench.contoso.com", i % 2000), "readiness": "Ready", "message": "onboarded, active, antivirus in active mode"},
                "detection": "NotDetected"
            }],
            "conditions": [{"type": "Ready", "status": "True", "reason": "Delivered", "message": "every attached partner holds its indicators",
                            "lastTransitionTime": "2026-11-29T06:00:15Z", "observedGeneration": 1}]
        }
    })
}

fn main() {
    let n: usize = std::env::var("BENCH_FINDINGS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let wire: Vec<Vec<u8>> = (0..n).map(|i| serde_json::to_vec(&finding_json(i)).unwrap()).collect();
    let wire_bytes = wire.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;

    // What a watch event holds while it is read: the untyped object.
    let (untyped, values) =
        per_finding(n, || wire.iter().map(|w| serde_json::from_slice::<Value>(w).unwrap()).collect::<Vec<_>>());
    // The typed finding as read, then as cached (managed fields dropped), in the reflector's store.
    let (typed, findings) = per_finding(n, || {
        values.iter().map(|v| serde_json::from_value::<ProbeFinding>(v.clone()).unwrap()).collect::<Vec<_>>()
    });
    drop(values);
    let mut lean: Vec<ProbeFinding> = findings.clone();
    drop(findings);
    lean.iter_mut().for_each(defender_operator::controller::lean);
    let (cache, (store, writer)) = per_finding(n, || {
        let (store, mut writer) = reflector::store::<ProbeFinding>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for f in &lean {
            writer.apply_watcher_event(&watcher::Event::InitApply(f.clone()));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        (store, writer)
    });
    // One reconcile request per finding, as a restart queues them all.
    let (queued, queue) =
        per_finding(n, || lean.iter().map(defender_operator::controller::finding_ref).collect::<Vec<_>>());
    // The engine's view of Defender: one entry per indicator.
    let (view, held) = per_finding(n, || {
        lean.iter()
            .flat_map(|f| f.indicator_keys().unwrap())
            .enumerate()
            .map(|(i, key)| (key, Held { id: format!("{}", 1000 + i), owner: Some("tenant-3/defender".into()) }))
            .collect::<HashMap<IndicatorKey, Held>>()
    });
    // The correlation's fingerprint of a finding's outcome, by uid, kept while the finding's
    // status lags behind it (here all of them, the most it can be).
    let (shown, fingerprints) =
        per_finding(n, || lean.iter().map(|f| (f.uid().unwrap(), 0u64)).collect::<HashMap<String, u64>>());
    // A sync round's wants: built for every finding of the partner, every round.
    let partner: DefenderPartner = serde_json::from_value(json!({
        "apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
        "metadata": {"name": "defender", "namespace": "tenant-3"},
        "spec": {"credentials": {"secretRef": {"name": "creds"}}}
    }))
    .unwrap();
    let settings = PartnerSettings {
        namespace: "tenant-3".into(),
        name: "defender".into(),
        marker: partner.owner_marker(),
        indicator: partner.spec.indicator.clone(),
        delete_withdrawn: false,
    };
    let everyone: decide::NamespaceLabels = HashMap::new();
    let cached: Vec<Arc<ProbeFinding>> = store.state();
    let (round, desired) = per_finding(n, || {
        decide::desired(&partner, &settings, cached.iter().map(|f| &**f), &everyone, jiff::Timestamp::now())
    });

    let rows = [
        ("finding on the wire (JSON bytes)", wire_bytes, "transient"),
        ("watch event, untyped (serde_json::Value)", untyped, "transient, per page of a list"),
        ("typed finding, as read (with managed fields)", typed, "transient"),
        ("findings cache: typed, managed fields dropped", cache, "kept"),
        ("reconcile queue entry (ObjectRef)", queued, "kept while queued (a restart queues all)"),
        ("engine view: indicator -> Defender id, owner", view, "kept, per indicator"),
        ("correlation: fingerprint by uid", shown, "while the status lags, per finding and partner"),
        ("sync round: the partner's wants", round, "transient, each round, per partner"),
    ];
    println!("defender-operator memory per finding (heap bytes, {n} findings)");
    for (what, bytes, lifetime) in &rows {
        println!("{what:<48} {bytes:>8.0} B   {lifetime}");
    }
    let kept = cache + view;
    println!("{:<48} {:>8.0} B", "kept per finding (cache + view)", kept);
    let figures: serde_json::Map<String, Value> =
        rows.iter().map(|(what, bytes, _)| (what.to_string(), json!(bytes.round()))).collect();
    println!("{}", json!({"findings": n, "bytes_per_finding": figures, "kept_bytes_per_finding": kept.round()}));
    drop(desired);
    drop((store, writer, queue, held, fingerprints, cached, lean));
}
