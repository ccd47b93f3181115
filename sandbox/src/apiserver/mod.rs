//! Embedded Kubernetes API server: HTTP on loopback, state in memory, behaving like kube-apiserver
//! closely enough for kube-rs clients/controllers and `kubectl`.
//!
//! One port speaks plain HTTP (what [`KubeApiServer::url`] and [`KubeApiServer::client`] use) and
//! HTTPS with a self-signed certificate (what [`KubeApiServer::kubeconfig_yaml`] points kubectl
//! at: kubectl sends no credentials over plain HTTP).
//!
//! What it does, as the Kubernetes API documentation describes:
//! - resources: core/v1 Namespace, ConfigMap, Secret, ServiceAccount, Event, Service, Pod (stored
//!   only), events.k8s.io/v1 Event (the same objects as core Events), coordination.k8s.io/v1 Lease,
//!   apps/v1 Deployment, networking.k8s.io/v1 NetworkPolicy, policy/v1 PodDisruptionBudget,
//!   rbac.authorization.k8s.io/v1, authorization.k8s.io/v1 SelfSubjectAccessReview,
//!   apiextensions.k8s.io/v1 CustomResourceDefinition, and custom resources as soon as their CRD is
//!   created (Established at once);
//! - verbs: get, list (label/field selectors, limit/continue), watch (resume from a
//!   resourceVersion, BOOKMARKs, timeoutSeconds, sendInitialEvents, 410 Expired as an ERROR event
//!   past the history window), create, update (resourceVersion preconditions), patch (JSON, merge,
//!   strategic merge for built-ins, server-side apply with managedFields), delete (finalizers,
//!   preconditions), deletecollection; the status subresource; generation; garbage collection by
//!   ownerReferences; namespace deletion;
//! - custom resources: structural pruning, defaults, OpenAPI validation and
//!   `x-kubernetes-validations` CEL rules (a subset of CEL, see [`cel`]), 422 `Invalid` with causes;
//! - bearer-token authentication and RBAC authorisation (with impersonation for kubectl `--as`);
//! - service-account tokens: the TokenRequest subresource (`serviceaccounts/{name}/token`, as
//!   `kubectl create token` uses it) issuing RS256 JWTs that authenticate back to this server,
//!   and the issuer's discovery (`/.well-known/openid-configuration`, `/openid/v1/jwks`), served
//!   without credentials so that the Entra emulator can verify the tokens as Entra does;
//! - discovery (legacy and aggregated), `/version`, minimal OpenAPI v3, `Table` responses;
//! - faults on demand: watches cut, history expired (410 on resume), 409 on status writes, and a
//!   restart with the state kept ([`KubeApiServer::restart`]).
//!
//! Layout: [`routes`] parses requests and dispatches, [`ops`] implements the verbs over the
//! [`store`], [`watch`] streams changes, [`patch`]/[`apply`] implement patches and server-side
//! apply, [`schema`]/[`cel`] prune, default and validate custom resources, [`rbac`] authorises,
//! [`discovery`] and [`table`] serve what kubectl needs, [`events`] validates Events, `tokens` issues service-account tokens
//! and serves the issuer's discovery documents, `proto` decodes the few protobuf bodies
//! kubectl's typed `create` commands send, `serve` is the HTTP/HTTPS listener. [`registry`] knows
//! the resource types served, [`selectors`] parses label and field selectors, [`error`] renders
//! failures as `Status` objects and `cause` holds their per-field causes, `faults` holds the
//! faults injected on demand.

pub mod apply;
mod cause;
pub mod cel;
pub mod discovery;
pub mod error;
pub mod events;
mod faults;
pub mod ops;
pub mod patch;
mod proto;
pub mod rbac;
pub mod registry;
pub mod routes;
pub mod schema;
pub mod selectors;
pub(crate) mod serve;
pub mod store;
pub mod table;
mod tokens;
pub mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use rbac::User;
use registry::ResourceDef;
use store::Store;

/// The most changes the watch history keeps (kube-apiserver's watch cache upper bound).
const WATCH_HISTORY_MOST: usize = 100 * 1024;
/// How long a paginated list's continue token stays valid: until storage compacts its revision,
/// which kube-apiserver has etcd do every 5 minutes (`--etcd-compaction-interval`).
pub(crate) const CONTINUE_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Server settings.
#[derive(Debug, Clone)]
pub struct ApiServerConfig {
    /// How many change events are kept at least for watches that resume from a resourceVersion;
    /// older resourceVersions get 410 Gone (`Expired`).
    pub watch_history: usize,
    /// Changes younger than this are kept too (up to 102,400), as kube-apiserver's watch cache
    /// keeps 75 s of them; zero keeps exactly `watch_history`.
    pub watch_history_fresh: Duration,
    /// How often a watch that asked for bookmarks (`allowWatchBookmarks=true`) gets one.
    pub bookmark_interval: Duration,
    /// The Kubernetes version reported by `/version`.
    pub minor_version: u32,
    /// `--service-account-issuer`: the `iss` of the service-account tokens issued, and the base
    /// of the discovery document. None = the server's own HTTPS URL ([`KubeApiServer::https_url`]),
    /// so that a relying party (the Entra emulator) can fetch the keys from it. The discovery
    /// documents are served only for an https issuer, as kube-apiserver does.
    pub service_account_issuer: Option<String>,
    /// `--service-account-max-token-expiration`: longer TokenRequests are shortened to it (with a
    /// warning). Default 24 h, the longest token azure-workload-identity asks for; zero = no cap.
    pub service_account_max_token_expiration: Duration,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            watch_history: 1000,
            watch_history_fresh: Duration::from_secs(75),
            bookmark_interval: Duration::from_secs(5),
            minor_version: 33,
            service_account_issuer: None,
            service_account_max_token_expiration: Duration::from_secs(24 * 3600),
        }
    }
}

pub(crate) struct Inner {
    pub config: ApiServerConfig,
    pub store: Mutex<Store>,
    pub builtins: Vec<ResourceDef>,
    pub tokens: Mutex<HashMap<String, User>>,
    pub admin_token: String,
    pub addr: SocketAddr,
    /// Cancelled when the server shuts down.
    pub cancel: CancellationToken,
    /// Cancelled when this incarnation of the server stops serving (shutdown or restart).
    pub serving: Mutex<CancellationToken>,
    pub faults: faults::KubeFaults,
    /// PEM of the self-signed serving certificate (HTTPS on the same port).
    pub cert_pem: String,
    /// The service-account token issuer (see [`ApiServerConfig::service_account_issuer`]).
    pub issuer: String,
    /// The service-account signing key, made on first use (RSA key generation takes a while).
    pub signing_key: std::sync::OnceLock<tokens::SigningKey>,
}

impl Inner {
    /// The store; a panic in another request does not make it unusable.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serving(&self) -> CancellationToken {
        self.serving.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The resource served at group/version/plural.
    pub fn lookup(&self, st: &Store, group: &str, version: &str, plural: &str) -> Option<ResourceDef> {
        self.builtins
            .iter()
            .find(|d| d.group == group && d.plural == plural)
            .or_else(|| st.custom.get(&(group.to_string(), plural.to_string())))
            .filter(|d| d.versions.iter().any(|v| v == version))
            .cloned()
    }

    pub fn all_defs(&self, st: &Store) -> Vec<ResourceDef> {
        let mut v = self.builtins.clone();
        v.extend(st.custom.values().cloned());
        v
    }

    pub fn user_for(&self, token: &str) -> Option<User> {
        if token == self.admin_token {
            return Some(User::admin());
        }
        let opaque = self.tokens.lock().ok()?.get(token).cloned();
        opaque.or_else(|| tokens::authenticate(self, token))
    }
}

/// A running embedded API server. Cloning shares it.
#[derive(Clone)]
pub struct KubeApiServer {
    inner: Arc<Inner>,
    acceptor: tokio_rustls::TlsAcceptor,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

fn random_token(prefix: &str) -> String {
    let mut rng = rand::rng();
    let s: String = (0..32).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect();
    format!("{prefix}{s}")
}

impl KubeApiServer {
    /// Bind 127.0.0.1:0 and serve.
    pub async fn start(config: ApiServerConfig) -> std::io::Result<KubeApiServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cert_pem, acceptor) = serve::tls()?;
        let mut st = Store::new(store::HistoryWindow {
            least: config.watch_history,
            fresh: config.watch_history_fresh,
            most: WATCH_HISTORY_MOST.max(config.watch_history),
        });
        ops::bootstrap(&mut st);
        let cancel = CancellationToken::new();
        let serving = cancel.child_token();
        let issuer = config.service_account_issuer.clone().unwrap_or_else(|| format!("https://{addr}"));
        let inner = Arc::new(Inner {
            config,
            store: Mutex::new(st),
            builtins: registry::builtins(),
            tokens: Mutex::new(HashMap::new()),
            admin_token: random_token("admin-"),
            addr,
            faults: faults::KubeFaults::new(&serving),
            serving: Mutex::new(serving.clone()),
            cancel,
            cert_pem,
            issuer,
            signing_key: std::sync::OnceLock::new(),
        });
        let task = tokio::spawn(serve::serve(listener, routes::router(inner.clone()), acceptor.clone(), serving));
        Ok(KubeApiServer { inner, acceptor, task: Arc::new(Mutex::new(Some(task))) })
    }

    /// Fault: ends every open watch, as a load balancer's idle timeout or an API server's
    /// watch-cache reset does. Clients resume from their last resourceVersion.
    pub fn cut_watches(&self) {
        self.inner.faults.cut_watches(&self.inner.serving());
    }

    /// Fault: drops the change history, so that a watch resumed from any earlier
    /// resourceVersion gets 410 Gone (`Expired`) and the client has to list again.
    pub fn expire_watch_history(&self) {
        self.inner.lock().compact();
    }

    /// Fault: the next `n` writes to a status subresource fail with 409 Conflict.
    pub fn conflict_next_status_writes(&self, n: usize) {
        self.inner.faults.conflict_next_status_writes(n);
    }

    /// How many status writes failed with an injected 409 so far.
    pub fn status_conflicts_served(&self) -> usize {
        self.inner.faults.conflicts_served()
    }

    /// Fault: the API server restarts with its state kept (as etcd keeps it). Every connection
    /// drops, the port refuses connections for `downtime`, and the new incarnation's watch
    /// cache starts empty, so resuming from an older resourceVersion gets 410 Gone.
    pub async fn restart(&self, downtime: Duration) -> std::io::Result<()> {
        let old = self.task.lock().ok().and_then(|mut t| t.take());
        let serving = {
            let mut serving = self.inner.serving.lock().unwrap_or_else(|e| e.into_inner());
            serving.cancel();
            *serving = self.inner.cancel.child_token();
            serving.clone()
        };
        if let Some(old) = old {
            old.abort();
            let _ = old.await;
        }
        self.inner.faults.cut_watches(&serving);
        self.expire_watch_history();
        tokio::time::sleep(downtime).await;
        let listener = tokio::net::TcpListener::bind(self.inner.addr).await?;
        let app = routes::router(self.inner.clone());
        let task = tokio::spawn(serve::serve(listener, app, self.acceptor.clone(), serving));
        if let Ok(mut slot) = self.task.lock() {
            *slot = Some(task);
        }
        Ok(())
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A token with every right (like system:masters).
    pub fn admin_token(&self) -> String {
        self.inner.admin_token.clone()
    }

    /// The service-account token issuer (`iss` of TokenRequest tokens): by default
    /// [`KubeApiServer::https_url`], where `/.well-known/openid-configuration` and
    /// `/openid/v1/jwks` are served without credentials. A federated credential for this
    /// cluster names it as its issuer.
    pub fn service_account_issuer(&self) -> String {
        self.inner.issuer.clone()
    }

    /// A service-account JWT signed as TokenRequest signs it (same key, issuer and claims), but
    /// issued at `issued_at` for `lifetime`, with no minimum: for tests of expired or
    /// not-yet-valid tokens, which TokenRequest never issues. None when the ServiceAccount does
    /// not exist.
    pub fn service_account_jwt_at(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        issued_at: jiff::Timestamp,
        lifetime: Duration,
    ) -> Option<String> {
        let audiences: Vec<String> = audiences.iter().map(|a| a.to_string()).collect();
        tokens::sign_at(&self.inner, namespace, name, &audiences, issued_at, lifetime)
    }

    /// A token authenticating as `system:serviceaccount:NS:NAME`; authorised only by RBAC objects.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let mut tokens = self.inner.tokens.lock().expect("token map");
        let user = User::service_account(namespace, name);
        if let Some((t, _)) = tokens.iter().find(|(_, u)| u.name == user.name) {
            return t.clone();
        }
        let t = random_token("sa-");
        tokens.insert(t.clone(), user);
        t
    }

    /// A kube client authenticating with `token`, default namespace "default".
    pub fn client(&self, token: &str) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("server url"));
        config.default_namespace = "default".into();
        config.auth_info.token = Some(SecretString::from(token.to_string()));
        kube::Client::try_from(config).expect("kube client for the embedded API server")
    }

    pub fn admin_client(&self) -> kube::Client {
        self.client(&self.admin_token())
    }

    /// `https://127.0.0.1:PORT`: the same port, over TLS with a self-signed certificate.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.inner.addr)
    }

    /// PEM of the self-signed certificate served over HTTPS.
    pub fn certificate_pem(&self) -> String {
        self.inner.cert_pem.clone()
    }

    /// A kubeconfig for `kubectl --kubeconfig`. It points at the HTTPS URL (with the server's
    /// certificate as CA), because kubectl sends no credentials over plain HTTP.
    pub fn kubeconfig_yaml(&self, token: &str) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.inner.cert_pem.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\ncontexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: sandbox\n    namespace: default\ncurrent-context: sandbox\nusers:\n- name: sandbox\n  user:\n    token: {}\npreferences: {{}}\n",
            self.https_url(),
            token
        )
    }

    /// Stop serving; open watches end.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), task).await.is_err() {
                abort.abort();
            }
        }
    }
}
