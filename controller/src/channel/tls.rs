//! The agent channel's TLS: the controller's server certificate, a client certificate chained
//! to the controller CA required; who a client certificate names; the grant-signing key.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::SetupError;
use crate::fleet::ca::AGENT_URI_PREFIX;

/// The TLS configuration of the agent listener: the controller's server certificate, and a
/// client certificate chained to the controller CA required.
pub fn agent_tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> Result<rustls::ServerConfig, SetupError> {
    let bad = |p: &std::path::Path, e: rustls_pki_types::pem::Error| {
        SetupError::Invalid(format!("{}: {e}", p.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, e))? {
        roots.add(c.map_err(|e| bad(ca, e))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| SetupError::Invalid(format!("client verifier: {e}")))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    Ok(cfg)
}

/// Loads the Ed25519 grant-signing key (PKCS#8 PEM).
pub fn load_signing_key(path: &std::path::Path) -> Result<SigningKey, SetupError> {
    let pem = std::fs::read_to_string(path).map_err(|e| SetupError::io(path.display(), e))?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| SetupError::Invalid(format!("{}: {e}", path.display())))
}

/// The agent id in a certificate's SAN URI, and the certificate's SHA-256.
pub fn identify(der: &[u8]) -> Result<(Uuid, String), String> {
    let fp = hex::encode(Sha256::digest(der));
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unparsable client certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad SAN extension: {e}"))?
        .ok_or_else(|| "client certificate has no SAN".to_string())?;
    for n in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(u) = n
            && let Some(id) = u.strip_prefix(AGENT_URI_PREFIX)
        {
            let id = Uuid::parse_str(id).map_err(|_| format!("bad agent id in SAN: {u}"))?;
            return Ok((id, fp));
        }
    }
    Err("client certificate carries no agent id".into())
}
