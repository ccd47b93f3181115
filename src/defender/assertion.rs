//! Client assertions, sent to Entra as `client_assertion` in place of a client secret: a JWT the
//! operator signs with a certificate's RSA key, or a token issued elsewhere (a Kubernetes
//! service-account token) forwarded as it is.
//!
//! A certificate assertion is signed as Microsoft's libraries sign it today: PS256 with the
//! certificate's SHA-256 thumbprint in `x5t#S256` (RS256 would go only with the SHA-1 `x5t`; the
//! pairs are never mixed). Its claims: `aud` = the token endpoint, `iss` = `sub` = the client id,
//! a fresh `jti`, and a lifetime of five minutes. The key never leaves the process; no error or
//! `Debug` output shows it.

use std::sync::Arc;

use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use futures::future::BoxFuture;
use jiff::Timestamp;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use x509_parser::pem::Pem;

use super::DefenderError;

/// `client_assertion_type` for every JWT assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a signed assertion is valid (Microsoft asks for at most ten minutes).
const LIFETIME: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// Why a certificate or its key cannot be used. Names the problem, never the key material.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CertificateError(pub String);

/// The app's certificate (the first of a PEM chain) and its RSA private key.
pub struct CertificateKey {
    der: Vec<u8>,
    not_before: Timestamp,
    not_after: Timestamp,
    key: EncodingKey,
}

impl std::fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateKey")
            .field("sha256_thumbprint", &self.thumbprint_hex())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateKey {
    /// Reads a PEM certificate (chain) and a PEM RSA private key (PKCS#1 or PKCS#8), and checks
    /// that the key belongs to the certificate.
    pub fn from_pem(certificate_pem: &[u8], private_key_pem: &[u8]) -> Result<Self, CertificateError> {
        let certificate = pem_blocks(certificate_pem)
            .into_iter()
            .find(|block| block.label == "CERTIFICATE")
            .ok_or_else(|| CertificateError("the certificate is not a PEM certificate (BEGIN CERTIFICATE)".into()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&certificate.contents)
            .map_err(|_| CertificateError("the certificate is not a readable X.509 certificate".into()))?;
        let validity = parsed.validity();
        let time = |t: x509_parser::time::ASN1Time| Timestamp::from_second(t.timestamp()).ok();
        let (Some(not_before), Some(not_after)) = (time(validity.not_before), time(validity.not_after)) else {
            return Err(CertificateError("the certificate's validity dates are out of range".into()));
        };
        let certificate_key = parsed.public_key();
        if certificate_key.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
            return Err(CertificateError(
                "the certificate's key is not an RSA key: Entra assertions here are RSA".into(),
            ));
        }
        let (label, key_der) = private_key(private_key_pem)?;
        let public = rsa_public_key(&label, &key_der)?;
        if public != certificate_key.subject_public_key.data.as_ref() {
            return Err(CertificateError("the private key does not belong to the certificate".into()));
        }
        let key = EncodingKey::from_rsa_pem(&pem_text(&label, &key_der))
            .map_err(|_| CertificateError("the private key cannot sign (not an RSA key)".into()))?;
        Ok(Self { der: certificate.contents, not_before, not_after, key })
    }

    pub fn not_before(&self) -> Timestamp {
        self.not_before
    }

    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }

    /// The SHA-256 thumbprint of the certificate's DER, in hex (as Entra's portal shows it).
    pub fn thumbprint_hex(&self) -> String {
        Sha256::digest(&self.der).iter().map(|b| format!("{b:02X}")).collect()
    }

    /// A fresh assertion for `client_id` at the token endpoint `audience`.
    pub fn assertion(&self, client_id: &str, audience: &str, now: Timestamp) -> Result<SecretString, DefenderError> {
        let mut header = Header::new(Algorithm::PS256);
        header.x5t_s256 = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(&self.der)));
        let expires = now.checked_add(LIFETIME).map_err(|e| DefenderError::Config(e.to_string()))?;
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now.as_second(),
            "iat": now.as_second(),
            "exp": expires.as_second(),
        });
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(SecretString::from)
            .map_err(|e| DefenderError::Config(format!("cannot sign the client assertion: {e}")))
    }
}

/// Where tokens issued elsewhere come from (for workload identity: the Kubernetes API's
/// TokenRequest). Asked for each token request, so every assertion is fresh.
pub trait AssertionSource: Send + Sync {
    fn assertion(&self) -> BoxFuture<'_, Result<SecretString, DefenderError>>;
}

/// What proves the app's identity to Entra.
#[derive(Clone)]
pub enum Proof {
    Secret(SecretString),
    Certificate(Arc<CertificateKey>),
    Federated(Arc<dyn AssertionSource>),
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proof::Secret(_) => f.write_str("Secret(<redacted>)"),
            Proof::Certificate(key) => f.debug_tuple("Certificate").field(key).finish(),
            Proof::Federated(_) => f.write_str("Federated"),
        }
    }
}

fn pem_blocks(text: &[u8]) -> Vec<Pem> {
    Pem::iter_from_buffer(text).map_while(Result::ok).collect()
}

/// The private key's PEM label and DER, refusing what is not an unencrypted RSA key.
fn private_key(text: &[u8]) -> Result<(String, Vec<u8>), CertificateError> {
    let blocks = pem_blocks(text);
    let key = blocks.into_iter().find(|block| block.label.ends_with("PRIVATE KEY")).ok_or_else(|| {
        CertificateError("the private key is not a PEM private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)".into())
    })?;
    match key.label.as_str() {
        "RSA PRIVATE KEY" | "PRIVATE KEY" => Ok((key.label, key.contents)),
        "ENCRYPTED PRIVATE KEY" => Err(CertificateError("the private key is encrypted: store it unencrypted".into())),
        "EC PRIVATE KEY" => Err(CertificateError("the private key is an EC key, not an RSA key".into())),
        other => Err(CertificateError(format!("the private key ({other}) is not an RSA key"))),
    }
}

/// The RSA public key (PKCS#1 DER) of a PKCS#1 or PKCS#8 private key.
fn rsa_public_key(label: &str, der: &[u8]) -> Result<Vec<u8>, CertificateError> {
    let pair = if label == "RSA PRIVATE KEY" {
        aws_lc_rs::rsa::KeyPair::from_der(der)
    } else {
        aws_lc_rs::rsa::KeyPair::from_pkcs8(der)
    };
    let pair = pair.map_err(|_| {
        let ec =
            aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING, der)
                .is_ok()
                || aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                    &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                    der,
                )
                .is_ok();
        CertificateError(if ec {
            "the private key is an EC key, not an RSA key".into()
        } else {
            "the private key is not a readable RSA key".into()
        })
    })?;
    Ok(pair.public_key().as_ref().to_vec())
}

fn pem_text(label: &str, der: &[u8]) -> Vec<u8> {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n")).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use defender_sandbox::emulator::credentials::{TestCertificate, Validity};

    #[test]
    fn a_certificate_and_its_key_sign_a_ps256_assertion_with_the_sha256_thumbprint() {
        let test = TestCertificate::rsa("app", Validity::Valid);
        let key = CertificateKey::from_pem(test.certificate_pem.as_bytes(), test.private_key_pem.as_bytes()).unwrap();
        let now = Timestamp::now();
        let assertion = key.assertion("client", "https://login.example/t/oauth2/v2.0/token", now).unwrap();
        let text = secrecy::ExposeSecret::expose_secret(&assertion).to_string();
        let header = jsonwebtoken::decode_header(&text).unwrap();
        assert_eq!(header.alg, Algorithm::PS256);
        assert_eq!(header.x5t_s256.as_deref(), Some(test.app_certificate().x5t_s256().as_str()));
        assert_eq!(header.x5t, None, "the SHA-1 pair is not mixed in");
        let claims = crate::defender::jwt::decode(&text).unwrap();
        assert_eq!(claims.audience.as_deref(), Some("https://login.example/t/oauth2/v2.0/token"));
        assert_eq!(claims.issuer.as_deref(), Some("client"));
        assert_eq!(claims.subject.as_deref(), Some("client"));
        assert!(claims.expires.unwrap() - now.as_second() <= 600, "at most ten minutes");
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn unusable_keys_and_certificates_are_refused_naming_the_problem() {
        let test = TestCertificate::rsa("app", Validity::Valid);
        let other = TestCertificate::rsa("other", Validity::Valid);
        let ec = TestCertificate::ec("ec");
        let refused = |certificate: &str, key: &str| {
            CertificateKey::from_pem(certificate.as_bytes(), key.as_bytes()).unwrap_err().to_string()
        };
        assert!(refused(&test.certificate_pem, &other.private_key_pem).contains("does not belong"));
        assert!(refused(&test.certificate_pem, &ec.private_key_pem).contains("not an RSA key"));
        assert!(refused(&ec.certificate_pem, &ec.private_key_pem).contains("not an RSA key"));
        assert!(refused("not a pem", &test.private_key_pem).contains("not a PEM certificate"));
        assert!(refused(&test.certificate_pem, &test.certificate_pem).contains("not a PEM private key"));
        let message =
            refused(&test.certificate_pem, "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n");
        assert!(message.contains("not a readable RSA key"), "{message}");
        // A PKCS#1 key works as well as PKCS#8.
        let pkcs1 = pkcs8_to_pkcs1(&test.private_key_pem);
        CertificateKey::from_pem(test.certificate_pem.as_bytes(), pkcs1.as_bytes()).unwrap();
    }

    /// The same RSA key as PKCS#1 PEM (`BEGIN RSA PRIVATE KEY`).
    fn pkcs8_to_pkcs1(pkcs8_pem: &str) -> String {
        let der = &pem_blocks(pkcs8_pem.as_bytes())[0].contents;
        // PKCS#8 PrivateKeyInfo wraps the PKCS#1 key in its last OCTET STRING.
        let (_, info) = x509_parser::der_parser::parse_der(der).unwrap();
        let items = info.as_sequence().unwrap();
        let pkcs1 = items[2].as_slice().unwrap();
        String::from_utf8(pem_text("RSA PRIVATE KEY", pkcs1)).unwrap()
    }
}
