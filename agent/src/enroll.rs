//! Enrolment: the agent's identity with the controller, obtained once with a one-time token
//! and kept in `state_dir/enrollment/`. The private key is generated here and never leaves
//! the host; the controller's CA and grant-signing key are pinned from that moment on.

use crate::keyring::Keyring;
use crate::state_file;
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

pub const DIR: &str = "enrollment";

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the controller refused the enrolment: {0}")]
    Refused(String),
    #[error("cannot reach the controller: {0}")]
    Unreachable(String),
    #[error("key or certificate: {0}")]
    Crypto(String),
    #[error("already enrolled as agent {0}; remove {1} to enrol again")]
    AlreadyEnrolled(Uuid, PathBuf),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
struct Meta {
    agent_id: Uuid,
    vm: String,
    endpoint: String,
    /// Every controller's agent endpoint at enrolment (absent: one controller).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    endpoints: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EnrollRequest<'a> {
    token: &'a str,
    csr_pem: &'a str,
    /// This agent's protocol level: at level 6 it renews its certificate over the channel
    /// and is given a short-lived one.
    protocol: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnrollResponse {
    agent_id: Uuid,
    vm: String,
    certificate_pem: String,
    ca_pem: String,
    grant_signing_key_pem: String,
    agent_endpoint: String,
    #[serde(default)]
    agent_endpoints: Vec<String>,
}

/// A completed enrolment.
#[derive(Clone)]
pub struct Enrollment {
    pub agent_id: Uuid,
    pub vm: String,
    /// `host:port` of the enrolling controller's agent listener.
    pub endpoint: String,
    /// Every controller's agent endpoint as the enrolment gave them (may be empty).
    pub endpoints: Vec<String>,
    /// The controller's grant-signing keys this agent trusts (pinned, and one announced).
    pub keys: Keyring,
    dir: PathBuf,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> EnrollError + '_ {
    move |e| EnrollError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A certificate's validity, unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// When to ask for a renewal: at two thirds of the lifetime.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before).max(0) * 2 / 3
    }
}

fn validity_of(der: &[u8]) -> Result<Validity, EnrollError> {
    let (_, c) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| EnrollError::Crypto(format!("certificate: {e}")))?;
    Ok(Validity {
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
    })
}

impl Enrollment {
    /// The enrolment in `state_dir`, if there is one.
    pub fn load(state_dir: &Path) -> Result<Option<Enrollment>, EnrollError> {
        let dir = state_dir.join(DIR);
        let meta_path = dir.join("enrollment.json");
        if !meta_path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&meta_path).map_err(file_err(&meta_path))?;
        let meta: Meta = serde_json::from_str(&text).map_err(|e| EnrollError::File {
            path: meta_path.clone(),
            reason: e.to_string(),
        })?;
        let keys = Keyring::load(&dir).map_err(|e| EnrollError::Crypto(e.to_string()))?;
        Ok(Some(Enrollment {
            agent_id: meta.agent_id,
            vm: meta.vm,
            endpoint: meta.endpoint,
            endpoints: meta.endpoints,
            keys,
            dir,
        }))
    }

    /// This agent's enrolment key (PKCS#8 PEM), which signs its audit checkpoints.
    pub fn key_pem(&self) -> Result<String, EnrollError> {
        let path = self.dir.join("agent.key");
        std::fs::read_to_string(&path).map_err(file_err(&path))
    }

    /// This agent's certificate (PEM), which verifies its checkpoints.
    pub fn cert_pem(&self) -> Result<String, EnrollError> {
        let path = self.dir.join("agent.crt");
        std::fs::read_to_string(&path).map_err(file_err(&path))
    }

    /// The validity of this agent's certificate as stored now.
    pub fn cert_validity(&self) -> Result<Validity, EnrollError> {
        let path = self.dir.join("agent.crt");
        let der = CertificateDer::from_pem_file(&path).map_err(|e| EnrollError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        validity_of(der.as_ref())
    }

    /// A certificate request (PEM) for this agent's own key: a renewal keeps the key.
    pub fn renewal_csr(&self) -> Result<String, EnrollError> {
        let key = rcgen::KeyPair::from_pem(&self.key_pem()?)
            .map_err(|e| EnrollError::Crypto(e.to_string()))?;
        rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .and_then(|c| c.pem())
            .map_err(|e| EnrollError::Crypto(e.to_string()))
    }

    /// Checks and stores a renewed certificate and the CA bundle that came with it (each
    /// file replaced atomically, mode 0600, next to the key); the next connection uses
    /// them. Refused whole, changing nothing, unless: the certificate is for this agent's
    /// key and id and chains to a CA of the bundle, and the bundle still trusts the
    /// controller this agent is connected to (`server`: its certificate chain, `host` the
    /// name it was checked for), so that a bundle cannot lock the agent out.
    pub fn store_renewed(
        &self,
        cert_pem: &str,
        ca_bundle_pem: &str,
        server: &[CertificateDer<'static>],
        host: &str,
    ) -> Result<Validity, EnrollError> {
        let crypto = |e: &dyn std::fmt::Display| EnrollError::Crypto(e.to_string());
        if cert_pem.len() > jitgate_proto::MAX_CERT_PEM
            || ca_bundle_pem.len() > jitgate_proto::MAX_CERT_PEM
        {
            return Err(EnrollError::Crypto("renewal larger than allowed".into()));
        }
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| crypto(&e))?;
        let Some(leaf) = certs.first() else {
            return Err(EnrollError::Crypto("no certificate in the renewal".into()));
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| crypto(&format!("renewed certificate: {e}")))?;
        let key = rcgen::KeyPair::from_pem(&self.key_pem()?).map_err(|e| crypto(&e))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(EnrollError::Crypto(
                "the renewed certificate is not for this agent's key".into(),
            ));
        }
        let want = format!("urn:jitgate:agent:{}", self.agent_id);
        let names_us = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value.general_names.iter().any(
                    |n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == want),
                )
            })
            .unwrap_or(false);
        if !names_us {
            return Err(EnrollError::Crypto(
                "the renewed certificate does not name this agent".into(),
            ));
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_bundle_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| crypto(&e))?)
                .map_err(|e| crypto(&e))?;
        }
        if roots.is_empty() {
            return Err(EnrollError::Crypto("an empty CA bundle".into()));
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let now = rustls_pki_types::UnixTime::now();
        let client = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| crypto(&e))?;
        client
            .verify_client_cert(leaf, &certs[1..], now)
            .map_err(|e| crypto(&format!("the renewed certificate does not verify: {e}")))?;
        if let Some((end, rest)) = server.split_first() {
            let name =
                rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| crypto(&e))?;
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| crypto(&e))?
                .verify_server_cert(end, rest, &name, &[], now)
                .map_err(|e| {
                    crypto(&format!(
                        "the new CA bundle would not trust this controller: {e}"
                    ))
                })?;
        }
        let validity = validity_of(leaf.as_ref())?;
        let ca = self.dir.join("ca.crt");
        state_file::replace_private(&ca, ca_bundle_pem.as_bytes()).map_err(file_err(&ca))?;
        let crt = self.dir.join("agent.crt");
        state_file::replace_private(&crt, cert_pem.as_bytes()).map_err(file_err(&crt))?;
        Ok(validity)
    }

    /// TLS client configuration: the pinned CA, and this agent's certificate.
    pub fn tls_config(&self) -> Result<rustls::ClientConfig, EnrollError> {
        let crypto = |e: &dyn std::fmt::Display| EnrollError::Crypto(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.dir.join("ca.crt")).map_err(|e| crypto(&e))? {
            roots
                .add(c.map_err(|e| crypto(&e))?)
                .map_err(|e| crypto(&e))?;
        }
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(self.dir.join("agent.crt"))
                .map_err(|e| crypto(&e))?
                .collect::<Result<_, _>>()
                .map_err(|e| crypto(&e))?;
        let key =
            PrivateKeyDer::from_pem_file(self.dir.join("agent.key")).map_err(|e| crypto(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| crypto(&e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| crypto(&e))
    }
}

/// Enrols with the controller at `controller` (`host:port` of its HTTPS API), trusting only
/// the CA in `ca`, with a one-time `token`. Writes `state_dir/enrollment/`.
pub async fn enroll(
    controller: &str,
    ca: &Path,
    token: &str,
    state_dir: &Path,
) -> Result<Enrollment, EnrollError> {
    if let Some(e) = Enrollment::load(state_dir)? {
        return Err(EnrollError::AlreadyEnrolled(
            e.agent_id,
            state_dir.join(DIR),
        ));
    }
    let ca_pem = std::fs::read(ca).map_err(file_err(ca))?;
    let ca_cert = reqwest::Certificate::from_pem(&ca_pem).map_err(|e| EnrollError::File {
        path: ca.to_path_buf(),
        reason: e.to_string(),
    })?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| EnrollError::Crypto(e.to_string()))?;
    let params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| EnrollError::Crypto(e.to_string()))?;
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| EnrollError::Crypto(e.to_string()))?;
    let http = reqwest::Client::builder()
        .add_root_certificate(ca_cert)
        .tls_built_in_root_certs(false)
        .https_only(true)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| EnrollError::Unreachable(e.to_string()))?;
    let url = format!("https://{controller}/api/v1/agents/enroll");
    let resp = http
        .post(&url)
        .json(&EnrollRequest {
            token,
            csr_pem: &csr,
            protocol: jitgate_proto::PROTOCOL_LEVEL,
        })
        .send()
        .await
        .map_err(|e| EnrollError::Unreachable(format!("{url}: {e}")))?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .map_err(|e| EnrollError::Unreachable(e.to_string()))?;
    if !status.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(String::from))
            .unwrap_or(body);
        return Err(EnrollError::Refused(format!("{status}: {msg}")));
    }
    let r: EnrollResponse = serde_json::from_str(&body)
        .map_err(|e| EnrollError::Refused(format!("unexpected answer: {e}")))?;
    // Checked before anything is written: a bad endpoint would only show at connect time.
    let unexpected =
        |e: jitgate_proto::EndpointError| EnrollError::Refused(format!("unexpected answer: {e}"));
    r.agent_endpoint
        .parse::<jitgate_proto::Endpoint>()
        .map_err(unexpected)?;
    let endpoints: Vec<String> =
        jitgate_proto::Endpoint::parse_list(&r.agent_endpoints, jitgate_proto::MAX_ENDPOINTS)
            .map_err(unexpected)?
            .iter()
            .map(ToString::to_string)
            .collect();
    VerifyingKey::from_public_key_pem(&r.grant_signing_key_pem)
        .map_err(|e| EnrollError::Crypto(e.to_string()))?;
    let dir = state_dir.join(DIR);
    std::fs::create_dir_all(&dir).map_err(file_err(&dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(file_err(&dir))?;
    let key_path = dir.join("agent.key");
    state_file::replace_private(&key_path, key.serialize_pem().as_bytes())
        .map_err(file_err(&key_path))?;
    std::fs::write(dir.join("agent.crt"), &r.certificate_pem).map_err(file_err(&dir))?;
    std::fs::write(dir.join("ca.crt"), &r.ca_pem).map_err(file_err(&dir))?;
    std::fs::write(dir.join(crate::keyring::PINNED), &r.grant_signing_key_pem)
        .map_err(file_err(&dir))?;
    let keys = Keyring::load(&dir).map_err(|e| EnrollError::Crypto(e.to_string()))?;
    let meta = Meta {
        agent_id: r.agent_id,
        vm: r.vm.clone(),
        endpoint: r.agent_endpoint.clone(),
        endpoints: endpoints.clone(),
    };
    // Written last: its presence marks a complete enrolment.
    let meta_json =
        serde_json::to_vec_pretty(&meta).map_err(|e| EnrollError::Crypto(e.to_string()))?;
    std::fs::write(dir.join("enrollment.json"), meta_json).map_err(file_err(&dir))?;
    Ok(Enrollment {
        agent_id: r.agent_id,
        vm: r.vm,
        endpoint: r.agent_endpoint,
        endpoints,
        keys,
        dir,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use std::os::unix::fs::PermissionsExt;
    use x509_parser::prelude::FromDer;

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            cert: p.self_signed(&key).unwrap(),
            key,
        }
    }

    fn agent_cert(ca: &Ca, key: &rcgen::KeyPair, id: Uuid) -> String {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::Ia5String::try_from(format!("urn:jitgate:agent:{id}")).unwrap(),
        )];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.signed_by(key, &ca.cert, &ca.key).unwrap().pem()
    }

    fn server_cert(ca: &Ca) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        p.signed_by(&key, &ca.cert, &ca.key).unwrap().der().clone()
    }

    fn enrolled(tmp: &Path, ca: &Ca, key: &rcgen::KeyPair, id: Uuid) -> Enrollment {
        let dir = tmp.join(DIR);
        std::fs::create_dir_all(&dir).unwrap();
        state_file::replace_private(&dir.join("agent.key"), key.serialize_pem().as_bytes())
            .unwrap();
        std::fs::write(dir.join("agent.crt"), agent_cert(ca, key, id)).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.cert.pem()).unwrap();
        let gk = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        std::fs::write(
            dir.join(crate::keyring::PINNED),
            gk.to_public_key_pem(LineEnding::LF).unwrap(),
        )
        .unwrap();
        Enrollment {
            agent_id: id,
            vm: "vm".into(),
            endpoint: "localhost:8444".into(),
            endpoints: vec![],
            keys: Keyring::load(&dir).unwrap(),
            dir,
        }
    }

    #[test]
    fn a_renewal_is_stored_only_for_this_key_and_id_and_a_bundle_that_trusts_the_controller() {
        let tmp = tempfile::tempdir().unwrap();
        let (old, new) = (ca("old CA"), ca("new CA"));
        let key = rcgen::KeyPair::generate().unwrap();
        let id = Uuid::from_bytes([1; 16]);
        let e = enrolled(tmp.path(), &old, &key, id);
        let server = vec![server_cert(&old)];
        let crt = e.dir.join("agent.crt");
        let before = std::fs::read_to_string(&crt).unwrap();
        let both = format!("{}{}", old.cert.pem(), new.cert.pem());

        // Another key, another id, a CA not in the bundle: refused, nothing written.
        let other = rcgen::KeyPair::generate().unwrap();
        for (cert, bundle) in [
            (agent_cert(&old, &other, id), old.cert.pem()),
            (
                agent_cert(&old, &key, Uuid::from_bytes([2; 16])),
                old.cert.pem(),
            ),
            (agent_cert(&new, &key, id), old.cert.pem()),
        ] {
            assert!(
                e.store_renewed(&cert, &bundle, &server, "localhost")
                    .is_err()
            );
            assert_eq!(std::fs::read_to_string(&crt).unwrap(), before);
        }
        // A bundle that would not trust the controller connected to: refused.
        let err = e
            .store_renewed(
                &agent_cert(&new, &key, id),
                &new.cert.pem(),
                &server,
                "localhost",
            )
            .unwrap_err();
        assert!(err.to_string().contains("would not trust"), "{err}");
        assert_eq!(std::fs::read_to_string(&crt).unwrap(), before);

        // A certificate from the new CA with both CAs in the bundle: stored, 0600.
        let renewed = agent_cert(&new, &key, id);
        let v = e
            .store_renewed(&renewed, &both, &server, "localhost")
            .unwrap();
        assert_eq!(v, e.cert_validity().unwrap());
        assert_eq!(std::fs::read_to_string(&crt).unwrap(), renewed);
        assert_eq!(std::fs::read_to_string(e.dir.join("ca.crt")).unwrap(), both);
        for f in ["agent.crt", "ca.crt"] {
            let mode = std::fs::metadata(e.dir.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert!(!e.dir.join("agent.crt.tmp").exists());
        // The next connection uses them.
        e.tls_config().unwrap();
        // The renewal request is for the same key.
        let csr = e.renewal_csr().unwrap();
        let der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes()).unwrap();
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .unwrap();
        assert_eq!(
            req.certification_request_info
                .subject_pki
                .subject_public_key
                .data
                .as_ref(),
            key.public_key_raw()
        );
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let v = Validity {
            not_before: 1_000,
            not_after: 1_000 + 30 * 86_400,
        };
        assert_eq!(v.renew_at(), 1_000 + 20 * 86_400);
    }
}
