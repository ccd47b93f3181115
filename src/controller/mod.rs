//! The reconcilers: partners (attach, validate, detach) and findings (delivery status), and the
//! per-partner sync engine that owns all Defender traffic.

pub mod credentials;
pub mod decide;
mod finding;
pub mod outcomes;
pub(crate) mod partner;
mod readable;
mod status;
pub mod sync;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt, core::PartialObjectMeta};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{info, warn};

use crate::api::{CLUSTER_KIND, ClusterDefenderPartner, DefenderPartner, ProbeFinding};
use crate::defender::{HostPolicy, RateLimiter, RateLimits};
use crate::telemetry::{Health, Metrics};
use sync::{Caches, EngineConfig, Engines, Triggers};

/// How long in-flight reconciles may finish after shutdown (the Deployment allows 30 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// What `run` needs to know; built from the command line.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Watch one namespace only (a namespaced install), or all.
    pub namespace: Option<String>,
    /// Where ClusterDefenderPartners' credentials live (the operator's own namespace).
    pub cluster_resource_namespace: String,
    pub host_policy: HostPolicy,
    pub engine: EngineConfig,
    pub rate_limits: Option<RateLimits>,
    /// How long one Defender or Entra call may take; default 30 s.
    pub request_timeout: Option<Duration>,
    /// Name under which events are reported (the pod name in a cluster).
    pub instance: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Defender(#[from] crate::defender::DefenderError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApiError",
            Error::Defender(error) => error.reason().as_str(),
            Error::Finalizer(_) => "FinalizerError",
        }
    }

    /// A write lost to a concurrent one (409 Conflict).
    fn is_conflict(&self) -> bool {
        use kube::runtime::finalizer::Error as Finalizing;
        let conflict = |error: &kube::Error| matches!(error, kube::Error::Api(status) if status.code == 409);
        match self {
            Error::Kube(error) => conflict(error),
            Error::Finalizer(inner) => match &**inner {
                Finalizing::ApplyFailed(e) | Finalizing::CleanupFailed(e) => e.is_conflict(),
                Finalizing::AddFinalizer(e) | Finalizing::RemoveFinalizer(e) => conflict(e),
                _ => false,
            },
            Error::Defender(_) => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Defender(error) => error.retry_after(),
            Error::Finalizer(inner) => match &**inner {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.retry_after()
                }
                _ => None,
            },
            Error::Kube(_) => None,
        }
    }
}

/// Shared by both controllers and every reconcile.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub http: reqwest::Client,
    pub limiter: Arc<RateLimiter>,
    pub engines: Arc<Engines>,
    /// Findings and partners the API server holds but the operator cannot read, and why.
    pub unreadable_findings: Arc<readable::Unreadable<ProbeFinding>>,
    pub unreadable_partners: Arc<readable::Unreadable<DefenderPartner>>,
    pub unreadable_cluster_partners: Arc<readable::Unreadable<ClusterDefenderPartner>>,
    pub partners: Store<DefenderPartner>,
    pub cluster_partners: Store<ClusterDefenderPartner>,
    pub findings: Store<ProbeFinding>,
    /// Namespaces' labels, for ClusterDefenderPartners (empty in a namespaced install).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub recorder: Recorder,
    pub triggers: Triggers,
    pub metrics: Arc<Metrics>,
    pub secret_index: Arc<SecretIndex>,
    /// Status fields the API server does not keep (an older CRD), so that they are not rewritten.
    pruned: status::Pruned,
    /// Consecutive failures per object, for exponential backoff (kube-runtime keeps none).
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// Every partner, ClusterDefenderPartners as their namespaced views.
    pub fn all_partners(&self) -> Vec<Arc<DefenderPartner>> {
        let cluster = self.cluster_partners.state().into_iter().map(|p| Arc::new(p.as_partner()));
        self.partners.state().into_iter().chain(cluster).collect()
    }

    /// Where a partner's Secret and ServiceAccount are: its namespace, or the operator's own for a
    /// ClusterDefenderPartner (never a user's).
    pub fn credentials_namespace(&self, partner: &DefenderPartner) -> String {
        partner.metadata.namespace.clone().unwrap_or_else(|| self.config.cluster_resource_namespace.clone())
    }

    /// Why the partner (of either kind) could not be read, if it could not.
    pub fn unreadable_partner(&self, partner: &DefenderPartner) -> Option<String> {
        match partner.metadata.namespace {
            Some(_) => self.unreadable_partners.why_meta(&partner.metadata),
            None => self.unreadable_cluster_partners.why_meta(&partner.metadata),
        }
    }

    /// What the engines read.
    pub fn caches(&self) -> Caches {
        Caches { findings: self.findings.clone(), namespaces: self.namespaces.clone() }
    }

    fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap().remove(key);
    }

    /// Per-object exponential backoff with jitter (1 s doubling to 5 min), or `Retry-After`.
    /// A write conflict (409) is retried at once: the next attempt reads the latest object.
    fn backoff(&self, key: &str, error: &Error) -> Action {
        if error.is_conflict() {
            return Action::requeue(Duration::from_millis(200 + rand::random::<u64>() % 800));
        }
        let attempt = {
            let mut failures = self.failures.lock().unwrap();
            let count = failures.entry(key.to_string()).or_insert(0);
            *count += 1;
            *count
        };
        let delay = error.retry_after().unwrap_or_else(|| {
            let base = 2f64.powi(attempt.min(9) as i32 - 1).min(300.0);
            Duration::from_secs_f64(base * (0.8 + rand::random::<f64>() * 0.4))
        });
        Action::requeue(delay)
    }
}

fn object_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// `K`'s objects as untyped ones, in the watched namespace or all: read one by one (`readable`).
fn untyped<K: Resource<DynamicType = ()>>(client: &Client, config: &Config) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<K>(&());
    match &config.namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Runs both controllers until `shutdown` resolves; `health` turns ready once both caches are
/// synced.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let (finding_tx, finding_rx) = mpsc::unbounded_channel();
    let (partner_tx, partner_rx) = mpsc::unbounded_channel();
    let (cluster_partner_tx, cluster_partner_rx) = mpsc::unbounded_channel();
    // ClusterDefenderPartners and namespaces need cluster-wide rights: a namespaced install has
    // neither.
    let cluster_wide = config.namespace.is_none();

    let (findings, writer) = reflector::store::<ProbeFinding>();
    let (partner_cache, partner_writer) = reflector::store::<DefenderPartner>();
    let unreadable_partners = Arc::new(readable::Unreadable::default());
    let partner_stream = partner_events(
        untyped::<DefenderPartner>(&client, &config),
        partner_writer,
        unreadable_partners.clone(),
        findings.clone(),
        finding_tx.clone(),
    );
    let partner_controller = Controller::for_stream(partner_stream, partner_cache);
    let partners = partner_controller.store();
    let secret_index = Arc::new(SecretIndex::default());
    let secrets_to_partners = secret_index.clone();
    let partner_controller = partner_controller
        // Metadata only: a Secret's change re-validates the partners that use it, which then
        // read the one Secret they need.
        .watches(
            scoped::<PartialObjectMeta<Secret>>(&client, &config.namespace),
            watcher::Config::default(),
            move |secret| secrets_to_partners.partners_using(&secret),
        )
        .reconcile_on(UnboundedReceiverStream::new(partner_rx))
        .graceful_shutdown_on(shutdown.clone());

    let (cluster_partner_cache, cluster_partner_writer) = reflector::store::<ClusterDefenderPartner>();
    let unreadable_cluster_partners = Arc::new(readable::Unreadable::default());
    let cluster_partner_events = partner_events(
        Api::all_with(client.clone(), &ApiResource::erase::<ClusterDefenderPartner>(&())),
        cluster_partner_writer,
        unreadable_cluster_partners.clone(),
        findings.clone(),
        finding_tx.clone(),
    );
    let cluster_partner_controller = Controller::for_stream(cluster_partner_events, cluster_partner_cache);
    let cluster_partners = cluster_partner_controller.store();
    let secrets_to_cluster_partners = secret_index.clone();
    let cluster_partner_controller = cluster_partner_controller
        // Their Secrets are in the operator's namespace only.
        .watches(
            Api::<PartialObjectMeta<Secret>>::namespaced(client.clone(), &config.cluster_resource_namespace),
            watcher::Config::default(),
            move |secret| secrets_to_cluster_partners.cluster_partners_using(&secret),
        )
        .reconcile_on(UnboundedReceiverStream::new(cluster_partner_rx))
        .graceful_shutdown_on(shutdown.clone());

    let engines = Arc::new(Engines::default());
    let (namespaces, namespace_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let namespace_events = namespace_events(
        &client,
        namespace_writer,
        engines.clone(),
        findings.clone(),
        finding_tx.clone(),
        shutdown.clone(),
    );
    let unreadable_findings = Arc::new(readable::Unreadable::default());
    let finding_events = finding_events(&client, &config, writer, engines.clone(), unreadable_findings.clone());
    let finding_controller = Controller::for_stream(finding_events, findings)
        .with_config(controller::Config::default().concurrency(16))
        .reconcile_on(UnboundedReceiverStream::new(finding_rx))
        .graceful_shutdown_on(shutdown.clone());
    let findings = finding_controller.store();

    let reporter = Reporter {
        controller: crate::api::MANAGER.into(),
        instance: config.instance.clone().or_else(|| std::env::var("HOSTNAME").ok()),
    };
    let limiter = Arc::new(RateLimiter::new(config.rate_limits.clone().unwrap_or_default()));
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        http: crate::defender::client::default_http_client().expect("the HTTP client builds (TLS roots load)"),
        limiter,
        engines,
        unreadable_findings,
        unreadable_partners,
        unreadable_cluster_partners,
        partners,
        cluster_partners,
        findings,
        namespaces,
        triggers: Triggers { findings: finding_tx, partners: partner_tx, cluster_partners: cluster_partner_tx },
        failures: Mutex::default(),
        pruned: status::Pruned::default(),
        secret_index,
        metrics,
        config,
    });
    let (partner_cache, finding_cache) = (ctx.partners.clone(), ctx.findings.clone());
    let (cluster_partner_cache, namespace_cache) = (ctx.cluster_partners.clone(), ctx.namespaces.clone());
    tokio::spawn(async move {
        synced(&partner_cache).await;
        synced(&finding_cache).await;
        if cluster_wide {
            synced(&cluster_partner_cache).await;
            synced(&namespace_cache).await;
        }
        health.set_ready(true);
    });

    info!(namespace = ctx.config.namespace.as_deref().unwrap_or("<all>"), "controllers starting");
    let partners = partner_controller.run(partner::reconcile, partner::error_policy, ctx.clone()).for_each(|result| {
        if let Err(error) = result {
            log_controller_error("DefenderPartner", &error);
        }
        futures::future::ready(())
    });
    let cluster_partners =
        cluster_partner_controller.run(partner::reconcile, partner::error_policy, ctx.clone()).for_each(|result| {
            if let Err(error) = result {
                log_controller_error(CLUSTER_KIND, &error);
            }
            futures::future::ready(())
        });
    let finding_ctx = ctx.clone();
    let findings = finding_controller.run(finding::reconcile, finding::error_policy, ctx).for_each(move |result| {
        match result {
            // A finding went away: the engines recompute what to withdraw.
            Err(kube::runtime::controller::Error::ObjectNotFound(gone)) => match &gone.namespace {
                Some(namespace) => finding_ctx.engines.wake_for(namespace),
                None => finding_ctx.engines.wake_all(),
            },
            Err(error) => log_controller_error("ProbeFinding", &error),
            Ok(_) => {}
        }
        futures::future::ready(())
    });
    if cluster_wide {
        drain([partners.boxed(), findings.boxed(), cluster_partners.boxed(), namespace_events.boxed()], shutdown).await;
    } else {
        drain([partners.boxed(), findings.boxed()], shutdown).await;
    }
}

/// Runs the controllers, each on its own task so both cores work, until they stop after
/// `shutdown` — or `DRAIN_TIMEOUT` after it: a shutdown that lands mid-start must not outlive the
/// pod's grace period.
async fn drain<const N: usize>(
    controllers: [futures::future::BoxFuture<'static, ()>; N],
    shutdown: impl Future<Output = ()>,
) {
    let mut running = tokio::task::JoinSet::new();
    for controller in controllers {
        running.spawn(controller);
    }
    let drain_deadline = async {
        shutdown.await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        _ = async { while running.join_next().await.is_some() {} } => info!("controllers stopped"),
        _ = drain_deadline => warn!("controllers did not drain within {DRAIN_TIMEOUT:?}; stopping anyway"),
    }
}

/// The watch of one kind of partner, cached in `cache`: read one by one (an unreadable partner is
/// recorded in `unreadable` and reported on its own). Only what is worth a reconcile passes (see
/// [`partner_changed`]): the reconciler's own status writes do not wake it, or a failed
/// validation would be retried at once, past its backoff.
fn partner_events<K>(
    api: Api<DynamicObject>,
    cache: reflector::store::Writer<K>,
    unreadable: Arc<readable::Unreadable<K>>,
    findings: Store<ProbeFinding>,
    finding_queue: mpsc::UnboundedSender<ObjectRef<ProbeFinding>>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: partner::PartnerObject + readable::Readable,
{
    let mut last_seen: HashMap<String, PartnerFacts> = HashMap::new();
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map_ok(move |event| unreadable.read(event))
        .reflect(cache)
        // Findings name their partners' states: once the cache holds a partner's new state, spec
        // or deletion (or it is gone), the findings it may receive are reconciled.
        .inspect_ok(move |event| {
            let changed = match event {
                watcher::Event::Apply(partner) | watcher::Event::InitApply(partner) => {
                    let view = partner.view();
                    let facts = PartnerFacts::of(&view);
                    (last_seen.insert(view.owner_marker(), facts.clone()) != Some(facts)).then_some(view)
                }
                watcher::Event::Delete(partner) => {
                    let view = partner.view();
                    last_seen.remove(&view.owner_marker());
                    Some(view)
                }
                _ => None,
            };
            if let Some(partner) = changed {
                wake_findings_in(partner.metadata.namespace.as_deref(), &findings, &finding_queue);
            }
        })
        .touched_objects()
        .predicate_filter(partner_changed, Default::default())
}

/// Namespaces (metadata only) for ClusterDefenderPartners' `namespaceSelector`s: a namespace whose
/// labels change is reconsidered by every engine, and its findings are reconciled.
fn namespace_events(
    client: &Client,
    cache: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    engines: Arc<Engines>,
    findings: Store<ProbeFinding>,
    finding_queue: mpsc::UnboundedSender<ObjectRef<ProbeFinding>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let mut labels: HashMap<String, Option<std::collections::BTreeMap<String, String>>> = HashMap::new();
    watcher::watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(cache)
        .touched_objects()
        .take_until(shutdown)
        .for_each(move |namespace| {
            if let Ok(namespace) = namespace {
                let name = namespace.metadata.name.clone().unwrap_or_default();
                if labels.insert(name.clone(), namespace.metadata.labels.clone()) != Some(namespace.metadata.labels) {
                    engines.wake_for(&name);
                    wake_findings_in(Some(&name), &findings, &finding_queue);
                }
            }
            futures::future::ready(())
        })
}

/// The annotation `kubectl apply` keeps the applied object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The findings' watch, cached in `cache`: read one by one (an unreadable finding is recorded in
/// `unreadable` instead of failing the list), without managed fields.
fn finding_events(
    client: &Client,
    config: &Config,
    cache: reflector::store::Writer<ProbeFinding>,
    engines: Arc<Engines>,
    unreadable: Arc<readable::Unreadable<ProbeFinding>>,
) -> impl futures::Stream<Item = Result<ProbeFinding, watcher::Error>> + Send + 'static {
    watcher::watcher(untyped::<ProbeFinding>(client, config), watcher::Config::default())
        .default_backoff()
        .map_ok(move |event| unreadable.read(event))
        .modify(lean)
        .reflect(cache)
        .touched_objects()
        // A new or changed finding wakes its engines as soon as it is in the cache, however long
        // the reconcile queue is (a restart queues every finding).
        .inspect_ok(move |finding| {
            let observed = finding.status.as_ref().and_then(|s| s.observed_generation);
            if observed != finding.metadata.generation
                && let Some(namespace) = &finding.metadata.namespace
            {
                tracing::trace!(finding = ?finding.metadata.name, namespace, "new or changed finding in the cache");
                engines.wake_for(namespace);
            }
        })
}

/// What the findings cache keeps of a finding: it holds every finding, so not what the operator
/// never reads — the managed fields (most of an object), kubectl's last-applied copy of the spec
/// (a second one) and the resource version (the watch has taken it; nothing is written with it).
pub fn lean(finding: &mut ProbeFinding) {
    finding.metadata.managed_fields = None;
    finding.metadata.resource_version = None;
    if let Some(annotations) = &mut finding.metadata.annotations {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            finding.metadata.annotations = None;
        }
    }
}

/// A finding to reconcile: its name and namespace, which is all the queue looks it up by. The
/// queue keeps each pending finding twice, and after a start or a correlation round that can be
/// every finding, so not its uid and resource version too.
pub fn finding_ref(finding: &ProbeFinding) -> ObjectRef<ProbeFinding> {
    let name = finding.metadata.name.as_deref().unwrap_or_default();
    ObjectRef::new(name).within(finding.metadata.namespace.as_deref().unwrap_or_default())
}

/// Queues a reconcile of every finding in `namespace` (`None`: in every namespace, as a
/// ClusterDefenderPartner may receive them).
pub fn wake_findings_in(
    namespace: Option<&str>,
    findings: &Store<ProbeFinding>,
    queue: &mpsc::UnboundedSender<ObjectRef<ProbeFinding>>,
) {
    for finding in findings.state() {
        if namespace.is_none() || finding.metadata.namespace.as_deref() == namespace {
            let _ = queue.send(finding_ref(&finding));
        }
    }
}

/// What a partner's findings depend on: its state and reason, its spec, whether it is deleting.
#[derive(Clone, PartialEq)]
struct PartnerFacts {
    state: Option<crate::api::PartnerState>,
    reason: Option<String>,
    generation: Option<i64>,
    deleting: bool,
}

impl PartnerFacts {
    fn of(partner: &DefenderPartner) -> Self {
        let status = partner.status.as_ref();
        Self {
            state: status.and_then(|s| s.state),
            reason: status.and_then(|s| s.reason.clone()),
            generation: partner.metadata.generation,
            deleting: partner.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// What is worth a partner reconcile: its spec (generation), its deletion, its finalizers and its
/// annotations (annotating a partner asks for a re-validation now) — not its status.
fn partner_changed<K: Resource>(partner: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = partner.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (meta.generation, meta.deletion_timestamp.is_some(), &meta.finalizers, &meta.annotations).hash(&mut hasher);
    Some(hasher.finish())
}

/// Waits until a reflector store has its first complete list.
///
/// A store wakes only its most recent waiter, and the controller itself waits on the same
/// store, so other waiters re-poll: once the store is ready, a fresh poll returns at once.
pub async fn synced<K: Resource + Clone + 'static>(store: &Store<K>)
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    while tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await.is_err() {}
}

/// Which partners read which Secret, so that a Secret event reaches exactly its partners.
/// Kept by the partner reconciler; read by the Secret watches' mappers.
#[derive(Default)]
pub struct SecretIndex {
    /// (namespace, Secret name) → the partners that read it.
    users: Mutex<HashMap<(String, String), BTreeSet<PartnerId>>>,
}

/// A partner as (namespace, name): no namespace for a ClusterDefenderPartner.
type PartnerId = (Option<String>, String);

fn partner_id(partner: &DefenderPartner) -> PartnerId {
    (partner.metadata.namespace.clone(), partner.name_any())
}

impl SecretIndex {
    /// Records the Secret `partner` uses now, in `namespace` (forgetting the one it used before).
    pub fn record(&self, partner: &DefenderPartner, namespace: &str) {
        let id = partner_id(partner);
        let mut users = self.users.lock().unwrap();
        remove_user(&mut users, &id);
        if let Some(secret) = &partner.spec.credentials.secret_ref {
            users.entry((namespace.to_string(), secret.name.clone())).or_default().insert(id);
        }
    }

    pub fn forget(&self, partner: &DefenderPartner) {
        remove_user(&mut self.users.lock().unwrap(), &partner_id(partner));
    }

    fn users_of(&self, secret: &PartialObjectMeta<Secret>) -> Vec<PartnerId> {
        let key =
            (secret.metadata.namespace.clone().unwrap_or_default(), secret.metadata.name.clone().unwrap_or_default());
        self.users.lock().unwrap().get(&key).map(|ids| ids.iter().cloned().collect()).unwrap_or_default()
    }

    fn partners_using(&self, secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<DefenderPartner>> {
        let ids = self.users_of(secret).into_iter();
        ids.filter_map(|(namespace, name)| Some(ObjectRef::new(&name).within(&namespace?))).collect()
    }

    fn cluster_partners_using(&self, secret: &PartialObjectMeta<Secret>) -> Vec<ObjectRef<ClusterDefenderPartner>> {
        let ids = self.users_of(secret).into_iter();
        ids.filter(|(namespace, _)| namespace.is_none()).map(|(_, name)| ObjectRef::new(&name)).collect()
    }
}

fn remove_user(users: &mut HashMap<(String, String), BTreeSet<PartnerId>>, id: &PartnerId) {
    for partners in users.values_mut() {
        partners.remove(id);
    }
    users.retain(|_, partners| !partners.is_empty());
}

fn log_controller_error<E: std::error::Error, W: std::error::Error>(
    kind: &str,
    error: &kube::runtime::controller::Error<E, W>,
) {
    match error {
        kube::runtime::controller::Error::ObjectNotFound(_) => {}
        kube::runtime::controller::Error::ReconcilerFailed(error, object) => {
            warn!(kind, object = %object, %error, "reconcile failed")
        }
        other => warn!(kind, error = %other, "controller error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner(namespace: &str, name: &str, secret: &str) -> DefenderPartner {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"credentials": {"secretRef": {"name": secret}}}
        }))
        .unwrap()
    }

    fn secret(namespace: &str, name: &str) -> PartialObjectMeta<Secret> {
        let mut secret = PartialObjectMeta::<Secret>::default();
        secret.metadata.namespace = Some(namespace.into());
        secret.metadata.name = Some(name.into());
        secret
    }

    fn names(refs: Vec<ObjectRef<DefenderPartner>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_secret_maps_to_the_partners_of_its_namespace_that_use_it() {
        let index = SecretIndex::default();
        index.record(&partner("a", "p1", "creds"), "a");
        index.record(&partner("a", "p2", "creds"), "a");
        index.record(&partner("b", "p3", "creds"), "b");
        assert_eq!(names(index.partners_using(&secret("a", "creds"))), ["p1", "p2"]);
        assert_eq!(names(index.partners_using(&secret("b", "creds"))), ["p3"]);
        assert!(index.partners_using(&secret("a", "other")).is_empty());

        // p1 moves to another Secret; p2 is deleted.
        index.record(&partner("a", "p1", "other"), "a");
        index.forget(&partner("a", "p2", "creds"));
        assert!(index.partners_using(&secret("a", "creds")).is_empty());
        assert_eq!(names(index.partners_using(&secret("a", "other"))), ["p1"]);
    }
}
