//! Credentials of an app other than secrets, as Entra keeps them: certificates (the public part
//! only, as `keyCredentials`) and federated identity credentials (`federatedIdentityCredentials`:
//! issuer, subject, audiences). Also what tests need to use them: test certificates with their
//! private keys, client assertions signed with them, and a federated credential trusting the
//! sandbox API server's service-account issuer.
//!
//! Registering on a running emulator: [`Emulator::add_certificate`],
//! [`Emulator::add_federated_credential`] (or [`Emulator::federate_with`] for the sandbox API
//! server), and their `remove_` counterparts.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Emulator;
use super::config::EmulatorConfig;
use crate::apiserver::KubeApiServer;

/// The audience Microsoft recommends for federated credentials (and azure-workload-identity
/// projects into pods).
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// `client_assertion_type` of both certificate and federated assertions.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Entra's limit of federated credentials per app.
pub const MAX_FEDERATED_CREDENTIALS: usize = 20;

/// Why a credential could not be read or registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialError(pub String);

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CredentialError {}

fn err(message: impl Into<String>) -> CredentialError {
    CredentialError(message.into())
}

/// A certificate registered on an app: its DER, thumbprints and validity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppCertificate {
    pub der: Vec<u8>,
    pub sha1_thumbprint: [u8; 20],
    pub sha256_thumbprint: [u8; 32],
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

impl AppCertificate {
    /// The first `CERTIFICATE` block of a PEM text (a chain's first certificate is the app's).
    pub fn from_pem(pem: &str) -> Result<AppCertificate, CredentialError> {
        for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
            let block = block.map_err(|e| err(format!("unreadable PEM: {e}")))?;
            if block.label == "CERTIFICATE" {
                return AppCertificate::from_der(&block.contents);
            }
        }
        Err(err("no CERTIFICATE block in the PEM text"))
    }

    pub fn from_der(der: &[u8]) -> Result<AppCertificate, CredentialError> {
        use x509_parser::prelude::FromDer;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| err(format!("not an X.509 certificate: {e}")))?;
        let validity = cert.validity();
        let time = |t: &x509_parser::time::ASN1Time| {
            Timestamp::from_second(t.timestamp()).map_err(|e| err(format!("certificate time out of range: {e}")))
        };
        let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
        Ok(AppCertificate {
            der: der.to_vec(),
            sha1_thumbprint: sha1.as_ref().try_into().expect("SHA-1 is 20 bytes"),
            sha256_thumbprint: Sha256::digest(der).into(),
            not_before: time(&validity.not_before)?,
            not_after: time(&validity.not_after)?,
        })
    }

    /// `x5t`: base64url SHA-1 thumbprint of the DER.
    pub fn x5t(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.sha1_thumbprint)
    }

    /// `x5t#S256`: base64url SHA-256 thumbprint of the DER.
    pub fn x5t_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.sha256_thumbprint)
    }

    /// The SHA-1 thumbprint in upper-case hex, as the portal and Entra's messages show it.
    pub fn thumbprint_hex(&self) -> String {
        hex_upper(&self.sha1_thumbprint)
    }
}

pub(crate) fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A federated identity credential: Entra accepts an external token whose `iss` and `sub` equal
/// `issuer` and `subject` and whose `aud` contains the audience (all case-sensitive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatedCredential {
    /// 3–120 characters: letters, digits, `-`, `_`; starts with a letter or digit.
    pub name: String,
    pub issuer: String,
    pub subject: String,
    /// Exactly one value.
    pub audiences: Vec<String>,
}

impl FederatedCredential {
    /// The credential for a Kubernetes ServiceAccount: subject
    /// `system:serviceaccount:<namespace>:<name>`, audience [`TOKEN_EXCHANGE_AUDIENCE`].
    pub fn kubernetes(name: &str, issuer: &str, namespace: &str, service_account: &str) -> FederatedCredential {
        FederatedCredential {
            name: name.into(),
            issuer: issuer.into(),
            subject: format!("system:serviceaccount:{namespace}:{service_account}"),
            audiences: vec![TOKEN_EXCHANGE_AUDIENCE.into()],
        }
    }

    /// What Graph checks when the credential is created (matching is only checked at exchange).
    fn validate(&self) -> Result<(), CredentialError> {
        let name_ok = (3..=120).contains(&self.name.len())
            && self.name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(err(format!("invalid federated credential name '{}'", self.name)));
        }
        if self.audiences.len() != 1 {
            return Err(err("a federated credential has exactly one audience"));
        }
        let too_long = [&self.issuer, &self.subject, &self.audiences[0]].into_iter().any(|v| v.len() > 600);
        if self.issuer.is_empty() || self.subject.is_empty() || too_long {
            return Err(err("issuer, subject and audience must be 1–600 characters"));
        }
        Ok(())
    }
}

/// One app's certificates and federated credentials, at run time.
#[derive(Clone, Debug, Default)]
pub(crate) struct AppCredentials {
    pub certificates: Vec<AppCertificate>,
    /// With the instant from which Entra applies each (see [`Emulator::set_federated_credential_propagation`]).
    pub federated: Vec<(FederatedCredential, Instant)>,
}

/// Every app's credentials, the extra CAs trusted for issuers, and the assertions already used.
#[derive(Default)]
pub(crate) struct CredentialStore {
    apps: Mutex<HashMap<(String, String), AppCredentials>>,
    issuer_roots: Mutex<Vec<String>>,
    /// `jti` key → `exp` of the certificate assertions accepted, until they expire.
    used_assertions: Mutex<HashMap<String, i64>>,
    propagation: Mutex<Duration>,
}

fn app_key(tenant: &str, client_id: &str) -> (String, String) {
    (tenant.to_ascii_lowercase(), client_id.to_ascii_lowercase())
}

impl CredentialStore {
    pub(crate) fn from_config(config: &EmulatorConfig) -> CredentialStore {
        let now = Instant::now();
        let mut apps = HashMap::new();
        for tenant in &config.tenants {
            for app in &tenant.apps {
                let creds = AppCredentials {
                    certificates: app.certificates.clone(),
                    federated: app.federated_credentials.iter().map(|f| (f.clone(), now)).collect(),
                };
                apps.insert(app_key(&tenant.id, &app.client_id), creds);
            }
        }
        CredentialStore { apps: Mutex::new(apps), ..CredentialStore::default() }
    }

    /// A copy of one app's credentials (empty for an unknown app).
    pub(crate) fn of(&self, tenant_id: &str, client_id: &str) -> AppCredentials {
        self.apps.lock().unwrap().get(&app_key(tenant_id, client_id)).cloned().unwrap_or_default()
    }

    pub(crate) fn issuer_roots(&self) -> Vec<String> {
        self.issuer_roots.lock().unwrap().clone()
    }

    /// Records a certificate assertion's `jti`; false when it was used before (until its `exp`).
    pub(crate) fn first_use(&self, key: String, exp: i64, now: i64) -> bool {
        let mut used = self.used_assertions.lock().unwrap();
        used.retain(|_, until| *until >= now - super::assertion::CLOCK_SKEW_SECONDS);
        used.insert(key, exp).is_none()
    }
}

/// How long a test certificate has been or will be valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday for a year.
    Valid,
    /// Expired two days ago (valid for a year before that).
    Expired,
    /// Valid from 30 days on, for a year.
    NotYetValid,
    /// Valid now, expiring in ten days.
    ExpiringSoon,
}

/// How a client assertion's header names the certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssertionHeader {
    /// PS256 with `x5t#S256`: what Microsoft's libraries send today.
    Ps256X5tS256,
    /// RS256 with `x5t` (SHA-1): the older pairing, still accepted.
    Rs256X5t,
    /// Mixed pairs, for negative tests.
    Ps256X5t,
    Rs256X5tS256,
}

/// A self-signed test certificate and its private key (PKCS#8 PEM), as a partner would keep them
/// in a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`).
#[derive(Clone, Debug)]
pub struct TestCertificate {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

impl TestCertificate {
    /// An RSA-2048 certificate for `common_name`.
    pub fn rsa(common_name: &str, validity: Validity) -> TestCertificate {
        let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .expect("RSA key generation (rcgen with aws-lc-rs)");
        Self::self_signed(common_name, validity, key)
    }

    /// An ECDSA P-256 certificate: Entra's certificate credentials and the operator take RSA only.
    pub fn ec(common_name: &str) -> TestCertificate {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
        Self::self_signed(common_name, Validity::Valid, key)
    }

    fn self_signed(common_name: &str, validity: Validity, key: rcgen::KeyPair) -> TestCertificate {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("no names to check");
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let (from, to) = match validity {
            Validity::Valid => (-1, 365),
            Validity::Expired => (-367, -2),
            Validity::NotYetValid => (30, 395),
            Validity::ExpiringSoon => (-355, 10),
        };
        let (y, m, d) = day(from);
        params.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = day(to);
        params.not_after = rcgen::date_time_ymd(y, m, d);
        let cert = params.self_signed(&key).expect("self-signing");
        TestCertificate { certificate_pem: cert.pem(), private_key_pem: key.serialize_pem() }
    }

    /// The public part, to register on an app.
    pub fn app_certificate(&self) -> AppCertificate {
        AppCertificate::from_pem(&self.certificate_pem).expect("a generated certificate reads")
    }

    /// A client assertion signed with this certificate's key: `claims` as given (see
    /// [`assertion_claims`]), the header as `header` says (`typ` JWT).
    ///
    /// # Panics
    /// For an EC certificate: client assertions are RSA-signed.
    pub fn sign_assertion(&self, header: AssertionHeader, claims: &Value) -> String {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let cert = self.app_certificate();
        let (alg, sha1, sha256) = match header {
            AssertionHeader::Ps256X5tS256 => (Algorithm::PS256, false, true),
            AssertionHeader::Rs256X5t => (Algorithm::RS256, true, false),
            AssertionHeader::Ps256X5t => (Algorithm::PS256, true, false),
            AssertionHeader::Rs256X5tS256 => (Algorithm::RS256, false, true),
        };
        let mut h = Header::new(alg);
        h.x5t = sha1.then(|| cert.x5t());
        h.x5t_s256 = sha256.then(|| cert.x5t_s256());
        let key = EncodingKey::from_rsa_pem(self.private_key_pem.as_bytes()).expect("an RSA private key");
        jsonwebtoken::encode(&h, claims, &key).expect("signing")
    }
}

/// The UTC date `offset` days from today: (year, month, day).
fn day(offset: i64) -> (i32, u8, u8) {
    let date = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC).date() + jiff::Span::new().days(offset);
    (date.year().into(), date.month() as u8, date.day() as u8)
}

/// The claims of a certificate assertion as Entra documents them: `aud` = the token endpoint,
/// `iss` = `sub` = the client id, a fresh `jti`, valid from now for five minutes.
pub fn assertion_claims(client_id: &str, token_endpoint: &str) -> Value {
    let now = Timestamp::now().as_second();
    json!({
        "aud": token_endpoint,
        "iss": client_id,
        "sub": client_id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now,
        "iat": now,
        "exp": now + 300,
    })
}

/// The federated credential that trusts `server`'s ServiceAccount `namespace/service_account`:
/// issuer = [`KubeApiServer::service_account_issuer`], audience [`TOKEN_EXCHANGE_AUDIENCE`].
pub fn sandbox_federated_credential(
    server: &KubeApiServer,
    namespace: &str,
    service_account: &str,
) -> FederatedCredential {
    // A credential name takes letters, digits, `-` and `_` only, at most 120 of them.
    let name: String = format!("{namespace}-{service_account}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' })
        .take(120)
        .collect();
    FederatedCredential::kubernetes(&name, &server.service_account_issuer(), namespace, service_account)
}

impl Emulator {
    /// Registers a certificate on an app (several may be active, as during a rotation).
    pub fn add_certificate(
        &self,
        tenant: &str,
        client_id: &str,
        certificate: AppCertificate,
    ) -> Result<(), CredentialError> {
        self.with_app(tenant, client_id, |creds| {
            if !creds.certificates.contains(&certificate) {
                creds.certificates.push(certificate);
            }
            Ok(())
        })
    }

    /// Removes a certificate (by its DER); false when the app did not have it.
    pub fn remove_certificate(&self, tenant: &str, client_id: &str, certificate: &AppCertificate) -> bool {
        self.with_app(tenant, client_id, |creds| {
            let before = creds.certificates.len();
            creds.certificates.retain(|c| c.der != certificate.der);
            Ok(creds.certificates.len() != before)
        })
        .unwrap_or(false)
    }

    /// Adds a federated credential, checked as Graph checks it: name, one audience, lengths,
    /// issuer + subject unique on the app, at most [`MAX_FEDERATED_CREDENTIALS`].
    pub fn add_federated_credential(
        &self,
        tenant: &str,
        client_id: &str,
        credential: FederatedCredential,
    ) -> Result<(), CredentialError> {
        credential.validate()?;
        let visible_from = Instant::now() + *self.shared.credentials.propagation.lock().unwrap();
        self.with_app(tenant, client_id, |creds| {
            if creds.federated.iter().any(|(f, _)| f.name == credential.name) {
                return Err(err(format!("a federated credential named '{}' exists", credential.name)));
            }
            if creds.federated.iter().any(|(f, _)| f.issuer == credential.issuer && f.subject == credential.subject) {
                return Err(err("a federated credential with this issuer and subject exists"));
            }
            if creds.federated.len() >= MAX_FEDERATED_CREDENTIALS {
                return Err(err(format!("an app has at most {MAX_FEDERATED_CREDENTIALS} federated credentials")));
            }
            creds.federated.push((credential, visible_from));
            Ok(())
        })
    }

    /// Removes a federated credential by name; false when there was none.
    pub fn remove_federated_credential(&self, tenant: &str, client_id: &str, name: &str) -> bool {
        self.with_app(tenant, client_id, |creds| {
            let before = creds.federated.len();
            creds.federated.retain(|(f, _)| f.name != name);
            Ok(creds.federated.len() != before)
        })
        .unwrap_or(false)
    }

    /// Fault: federated credentials added from now on are ignored for `delay` (the token endpoint
    /// answers AADSTS70021 meanwhile), as Entra warns right after a credential is created.
    pub fn set_federated_credential_propagation(&self, delay: Duration) {
        *self.shared.credentials.propagation.lock().unwrap() = delay;
    }

    /// Trusts a CA (PEM) for fetching issuers' discovery documents and keys over https, as a
    /// publicly trusted CA would be by Entra. [`Emulator::federate_with`] does it for the sandbox
    /// API server's self-signed certificate.
    pub fn trust_issuer_certificate(&self, pem: &str) {
        let mut roots = self.shared.credentials.issuer_roots.lock().unwrap();
        if !roots.iter().any(|r| r == pem) {
            roots.push(pem.to_string());
        }
    }

    /// Makes the app trust `server`'s ServiceAccount `namespace/service_account`: adds
    /// [`sandbox_federated_credential`] and trusts the server's certificate. Returns the
    /// credential added.
    pub fn federate_with(
        &self,
        tenant: &str,
        client_id: &str,
        server: &KubeApiServer,
        namespace: &str,
        service_account: &str,
    ) -> Result<FederatedCredential, CredentialError> {
        self.trust_issuer_certificate(&server.certificate_pem());
        let credential = sandbox_federated_credential(server, namespace, service_account);
        self.add_federated_credential(tenant, client_id, credential.clone())?;
        Ok(credential)
    }

    fn with_app<T>(
        &self,
        tenant: &str,
        client_id: &str,
        change: impl FnOnce(&mut AppCredentials) -> Result<T, CredentialError>,
    ) -> Result<T, CredentialError> {
        let tenant_id = self.shared.tenant_id(tenant);
        let known = self.shared.config.tenants.iter().any(|t| {
            t.id.eq_ignore_ascii_case(&tenant_id) && t.apps.iter().any(|a| a.client_id.eq_ignore_ascii_case(client_id))
        });
        if !known {
            return Err(err(format!("no app '{client_id}' in tenant '{tenant}'")));
        }
        let mut apps = self.shared.credentials.apps.lock().unwrap();
        change(apps.entry(app_key(&tenant_id, client_id)).or_default())
    }
}
