//! What a partner authenticates with, read from Kubernetes: a client secret or a certificate from
//! its Secret, or tokens of its ServiceAccount (workload identity). Every problem found here is
//! the user's to fix and is said with the field, the key or the object to fix; no value read here
//! ever reaches a message.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};

use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::decide::partner::{Unusable, Usable};
use crate::api::partner::{SecretRef, ServiceAccountRef};
use crate::api::{CredentialsType, DefenderPartner, PartnerReason};
use crate::defender::assertion::{AssertionSource, CertificateKey, Proof};
use crate::defender::{Credentials, DefenderError};

/// The annotations azure-workload-identity puts on a ServiceAccount.
const TENANT_ANNOTATION: &str = "azure.workload.identity/tenant-id";
const CLIENT_ANNOTATION: &str = "azure.workload.identity/client-id";

/// How long a service-account token the operator asks for lives (TokenRequest's minimum): it is
/// used at once, for one token request to Entra.
const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 600;

/// The partner's credentials, or why they cannot be used; its Secret and ServiceAccount are in
/// `namespace` (the partner's own, or the operator's for a ClusterDefenderPartner).
pub async fn read(
    partner: &DefenderPartner,
    namespace: &str,
    client: &Client,
) -> Result<Result<(Credentials, Usable), Unusable>, kube::Error> {
    let spec = &partner.spec.credentials;
    let namespace = namespace.to_string();
    match (spec.type_, &spec.secret_ref, &spec.service_account_ref) {
        (CredentialsType::WorkloadIdentity, _, Some(account)) => federated(partner, client, &namespace, account).await,
        (CredentialsType::ClientSecret | CredentialsType::Certificate, Some(reference), _) => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            let Some(secret) = secrets.get_opt(&reference.name).await? else {
                let keys = wanted_keys(partner, reference).join(", ");
                let message = format!("Secret {namespace}/{} not found: create it with keys {keys}", reference.name);
                return Ok(Err(unusable(PartnerReason::SecretNotFound, message)));
            };
            Ok(from_secret(partner, reference, &secret))
        }
        // The CRD's rules refuse these; a partner stored before them says what is missing.
        (type_, _, _) => Ok(Err(unusable(
            PartnerReason::CredentialsIncomplete,
            format!(
                "spec.credentials.{} is required for type {}",
                if type_ == CredentialsType::WorkloadIdentity { "serviceAccountRef" } else { "secretRef" },
                type_.as_str()
            ),
        ))),
    }
}

fn unusable(reason: PartnerReason, message: String) -> Unusable {
    Unusable { reason, message, credentials_hash: None }
}

/// The Secret keys this partner reads: the tenant and client ids unless the spec gives them.
fn wanted_keys<'a>(partner: &DefenderPartner, reference: &'a SecretRef) -> Vec<&'a str> {
    let spec = &partner.spec.credentials;
    let mut keys = Vec::new();
    if spec.tenant_id.is_none() {
        keys.push(reference.tenant_id_key.as_str());
    }
    if spec.client_id.is_none() {
        keys.push(reference.client_id_key.as_str());
    }
    match spec.type_ {
        CredentialsType::Certificate => {
            keys.extend([reference.certificate_key.as_str(), reference.private_key_key.as_str()])
        }
        _ => keys.push(reference.client_secret_key.as_str()),
    }
    keys
}

/// Reads and checks the values; every missing or unusable key is reported at once.
pub fn from_secret(
    partner: &DefenderPartner,
    reference: &SecretRef,
    secret: &Secret,
) -> Result<(Credentials, Usable), Unusable> {
    let data = secret.data.clone().unwrap_or_default();
    let values = read_keys(&data, &wanted_keys(partner, reference), &reference.name)?;
    let spec = &partner.spec.credentials;
    let value = |key: &str| values.get(key).cloned().unwrap_or_default();
    let tenant_id = spec.tenant_id.clone().unwrap_or_else(|| value(&reference.tenant_id_key)).trim().to_string();
    let client_id = spec.client_id.clone().unwrap_or_else(|| value(&reference.client_id_key)).trim().to_string();
    let (proof, validity, hash) = match spec.type_ {
        CredentialsType::Certificate => {
            let (certificate, key) = (value(&reference.certificate_key), value(&reference.private_key_key));
            let hash = certificate_hash(&tenant_id, &client_id, &certificate, &key);
            let key = CertificateKey::from_pem(certificate.as_bytes(), key.as_bytes()).map_err(|e| {
                let keys = format!("{}/{}", reference.certificate_key, reference.private_key_key);
                unusable(PartnerReason::CertificateInvalid, format!("Secret {} keys {keys}: {e}", reference.name))
            })?;
            let validity = Some((key.not_before(), key.not_after()));
            (Proof::Certificate(Arc::new(key)), validity, hash)
        }
        _ => {
            let secret = value(&reference.client_secret_key).trim().to_string();
            let hash = client_secret_hash(&tenant_id, &client_id, &secret);
            (Proof::Secret(SecretString::from(secret)), None, hash)
        }
    };
    let usable =
        Usable { credentials_hash: hash, valid_from: validity.map(|v| v.0), valid_until: validity.map(|v| v.1) };
    Ok((Credentials { tenant_id, client_id, proof }, usable))
}

/// The values of `keys` as text; every missing, empty or non-UTF-8 key is named at once.
fn read_keys(
    data: &BTreeMap<String, ByteString>,
    keys: &[&str],
    secret: &str,
) -> Result<BTreeMap<String, String>, Unusable> {
    let (mut values, mut missing, mut not_text) = (BTreeMap::new(), Vec::new(), Vec::new());
    for key in keys {
        match data.get(*key).map(|bytes| String::from_utf8(bytes.0.clone())) {
            None => missing.push(*key),
            Some(Ok(text)) if text.trim().is_empty() => missing.push(*key),
            Some(Ok(text)) => {
                values.insert(key.to_string(), text);
            }
            Some(Err(_)) => not_text.push(*key),
        }
    }
    if !missing.is_empty() {
        return Err(unusable(
            PartnerReason::SecretKeyMissing,
            format!(
                "Secret {secret} lacks (or has empty) keys: {}. Add them, or point spec.credentials.secretRef's *Key \
                 fields at the right keys (the tenant and client ids may also be set in spec.credentials)",
                missing.join(", ")
            ),
        ));
    }
    if !not_text.is_empty() {
        return Err(unusable(
            PartnerReason::SecretKeyInvalid,
            format!("Secret {secret} keys {} are not UTF-8 text: store the plain values", not_text.join(", ")),
        ));
    }
    Ok(values)
}

/// Workload identity: the tenant and client ids from the spec or the ServiceAccount's
/// annotations, and a first token of the ServiceAccount, which proves the operator may create
/// them (it is then the first assertion sent).
async fn federated(
    partner: &DefenderPartner,
    client: &Client,
    namespace: &str,
    account: &ServiceAccountRef,
) -> Result<Result<(Credentials, Usable), Unusable>, kube::Error> {
    let spec = &partner.spec.credentials;
    let mut ids = (spec.tenant_id.clone(), spec.client_id.clone());
    // The annotations are read only when the operator may read ServiceAccounts, which its shipped
    // RBAC does not grant (it creates tokens and nothing more): then the spec must say.
    let mut unreadable = None;
    if ids.0.is_none() || ids.1.is_none() {
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        match accounts.get_opt(&account.name).await {
            Ok(Some(found)) => {
                let annotation =
                    |key: &str| found.annotations().get(key).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
                ids =
                    (ids.0.or_else(|| annotation(TENANT_ANNOTATION)), ids.1.or_else(|| annotation(CLIENT_ANNOTATION)));
            }
            Ok(None) => return Ok(Err(service_account_not_found(namespace, &account.name))),
            Err(kube::Error::Api(status)) if status.code == 403 => {
                unreadable = Some(" (the operator may not read ServiceAccounts, so not their annotations)");
            }
            Err(error) => return Err(error),
        }
    }
    let (Some(tenant_id), Some(client_id)) = ids else {
        return Ok(Err(unusable(
            PartnerReason::CredentialsIncomplete,
            format!(
                "set spec.credentials.tenantId and clientId, or annotate ServiceAccount {namespace}/{} with \
                 {TENANT_ANNOTATION} and {CLIENT_ANNOTATION}{}",
                account.name,
                unreadable.unwrap_or_default()
            ),
        )));
    };
    let tokens = ServiceAccountTokens {
        accounts: Api::namespaced(client.clone(), namespace),
        namespace: namespace.to_string(),
        name: account.name.clone(),
        audience: account.audience.clone(),
        first: std::sync::Mutex::new(None),
    };
    match tokens.create().await {
        Ok(token) => *tokens.first.lock().unwrap() = Some(token),
        Err(refused) => return Ok(Err(refused)),
    }
    let hash = federated_hash(&tenant_id, &client_id, namespace, account);
    let usable = Usable { credentials_hash: hash, valid_from: None, valid_until: None };
    Ok(Ok((Credentials { tenant_id, client_id, proof: Proof::Federated(Arc::new(tokens)) }, usable)))
}

fn service_account_not_found(namespace: &str, name: &str) -> Unusable {
    unusable(
        PartnerReason::ServiceAccountNotFound,
        format!(
            "ServiceAccount {namespace}/{name} not found (spec.credentials.serviceAccountRef names a ServiceAccount \
             of the partner's own namespace): create it, or correct the name"
        ),
    )
}

/// Tokens of one ServiceAccount, created on demand (TokenRequest) and never stored anywhere else.
struct ServiceAccountTokens {
    accounts: Api<ServiceAccount>,
    namespace: String,
    name: String,
    audience: String,
    /// The token created while reading the credentials, used for the first assertion.
    first: std::sync::Mutex<Option<SecretString>>,
}

impl ServiceAccountTokens {
    async fn create(&self) -> Result<SecretString, Unusable> {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![self.audience.clone()],
                expiration_seconds: Some(SERVICE_ACCOUNT_TOKEN_SECONDS),
                ..Default::default()
            },
            ..Default::default()
        };
        match self.accounts.create_token_request(&self.name, &PostParams::default(), &request).await {
            Ok(created) => match created.status {
                Some(status) if !status.token.is_empty() => Ok(SecretString::from(status.token)),
                _ => Err(unusable(
                    PartnerReason::ProtocolError,
                    "the API server answered a TokenRequest without a token".into(),
                )),
            },
            Err(kube::Error::Api(status)) if status.code == 404 => {
                Err(service_account_not_found(&self.namespace, &self.name))
            }
            Err(kube::Error::Api(status)) if status.code == 403 => Err(unusable(
                PartnerReason::TokenRequestDenied,
                format!(
                    "the operator may not create tokens for ServiceAccount {}/{}: grant it create on \
                     serviceaccounts/token ({})",
                    self.namespace, self.name, status.message
                ),
            )),
            Err(error) => Err(unusable(
                PartnerReason::DefenderUnreachable,
                format!("TokenRequest for ServiceAccount {}/{} failed: {error}", self.namespace, self.name),
            )),
        }
    }
}

impl AssertionSource for ServiceAccountTokens {
    fn assertion(&self) -> BoxFuture<'_, Result<SecretString, DefenderError>> {
        Box::pin(async move {
            if let Some(token) = self.first.lock().unwrap().take() {
                return Ok(token);
            }
            self.create().await.map_err(|refused| DefenderError::Token {
                reason: refused.reason,
                aadsts: None,
                message: refused.message,
                transient: refused.reason == PartnerReason::DefenderUnreachable,
            })
        })
    }
}

/// The hash of a client secret's credentials: what it has always been (no re-validation when
/// upgrading from a release without the other types).
pub fn client_secret_hash(tenant_id: &str, client_id: &str, secret: &str) -> String {
    credentials_hash(&[tenant_id.as_bytes(), client_id.as_bytes(), secret.as_bytes()])
}

pub fn certificate_hash(tenant_id: &str, client_id: &str, certificate_pem: &str, private_key_pem: &str) -> String {
    let parts = [tenant_id, client_id, "Certificate", certificate_pem, private_key_pem];
    credentials_hash(&parts.map(str::as_bytes))
}

pub fn federated_hash(tenant_id: &str, client_id: &str, namespace: &str, account: &ServiceAccountRef) -> String {
    let parts = [tenant_id, client_id, "WorkloadIdentity", namespace, &account.name, &account.audience];
    credentials_hash(&parts.map(str::as_bytes))
}

/// SHA-256 over the values used, so that rotation is noticed without storing them.
fn credentials_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
        hasher.update([0]);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn partner(credentials: serde_json::Value) -> DefenderPartner {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "detect.dev/v1alpha1", "kind": "DefenderPartner",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"credentials": credentials}
        }))
        .unwrap()
    }

    fn secret(pairs: &[(&str, &[u8])]) -> Secret {
        Secret {
            data: Some(pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()),
            ..Default::default()
        }
    }

    fn read(credentials: serde_json::Value, pairs: &[(&str, &[u8])]) -> Result<(Credentials, Usable), Unusable> {
        let partner = partner(credentials);
        let reference = partner.spec.credentials.secret_ref.clone().unwrap();
        from_secret(&partner, &reference, &secret(pairs))
    }

    fn client_secret(pairs: &[(&str, &[u8])]) -> Result<(Credentials, Usable), Unusable> {
        read(serde_json::json!({"secretRef": {"name": "creds"}}), pairs)
    }

    #[test]
    fn all_missing_keys_are_reported_at_once() {
        let problem = client_secret(&[("clientId", b"abc")]).err().unwrap();
        assert_eq!(problem.reason, "SecretKeyMissing");
        assert!(
            problem.message.contains("tenantId") && problem.message.contains("clientSecret"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn empty_values_count_as_missing_and_padding_is_trimmed() {
        let problem =
            client_secret(&[("tenantId", b"  "), ("clientId", b"abc"), ("clientSecret", b"s3cr3t")]).err().unwrap();
        assert!(problem.message.contains("tenantId") && !problem.message.contains("s3cr3t"));
        let (credentials, _) =
            client_secret(&[("tenantId", b" t \n"), ("clientId", b"c"), ("clientSecret", b"s3cr3t\n")]).ok().unwrap();
        let Proof::Secret(secret) = &credentials.proof else { panic!("a client secret") };
        assert_eq!((credentials.tenant_id.as_str(), secret.expose_secret()), ("t", "s3cr3t"));
    }

    #[test]
    fn non_utf8_values_are_refused_without_echoing_them() {
        let problem =
            client_secret(&[("tenantId", b"t"), ("clientId", b"c"), ("clientSecret", &[0xff, 0xfe])]).err().unwrap();
        assert_eq!(problem.reason, "SecretKeyInvalid");
        assert!(problem.message.contains("clientSecret"));
    }

    #[test]
    fn hash_changes_with_any_value_and_hides_them() {
        let a = credentials_hash(&[b"t", b"c", b"one"]);
        assert_ne!(a, credentials_hash(&[b"t", b"c", b"two"]));
        assert_eq!(a.len(), 64);
        assert!(!a.contains("one"));
        // A client secret's hash is what it was before certificates existed: no re-validation on upgrade.
        let (_, usable) = client_secret(&[("tenantId", b"t"), ("clientId", b"c"), ("clientSecret", b"one")]).unwrap();
        assert_eq!(usable.credentials_hash, a);
    }

    #[test]
    fn ids_in_the_spec_need_no_secret_keys() {
        let credentials = serde_json::json!({"tenantId": "t", "clientId": "c", "secretRef": {"name": "creds"}});
        let (read, _) = read(credentials, &[("clientSecret", b"s")]).unwrap();
        assert_eq!((read.tenant_id.as_str(), read.client_id.as_str()), ("t", "c"));
    }

    #[test]
    fn a_tls_secret_holds_a_certificate_partner_as_it_is() {
        use defender_sandbox::emulator::credentials::{TestCertificate, Validity};
        let test = TestCertificate::rsa("app", Validity::Valid);
        let credentials =
            serde_json::json!({"type": "Certificate", "tenantId": "t", "clientId": "c", "secretRef": {"name": "tls"}});
        let pairs: &[(&str, &[u8])] =
            &[("tls.crt", test.certificate_pem.as_bytes()), ("tls.key", test.private_key_pem.as_bytes())];
        let (read_back, usable) = read(credentials.clone(), pairs).unwrap();
        assert!(matches!(read_back.proof, Proof::Certificate(_)));
        assert!(usable.valid_until.is_some_and(|until| until > jiff::Timestamp::now()));
        // A key of another certificate: CertificateInvalid naming the keys, never their content.
        let other = TestCertificate::rsa("other", Validity::Valid);
        let pairs: &[(&str, &[u8])] =
            &[("tls.crt", test.certificate_pem.as_bytes()), ("tls.key", other.private_key_pem.as_bytes())];
        let problem = read(credentials, pairs).err().unwrap();
        assert_eq!(problem.reason, "CertificateInvalid");
        assert!(problem.message.contains("tls.crt/tls.key") && problem.message.contains("does not belong"));
        assert!(!problem.message.contains("PRIVATE"));
    }
}
