//! The agent channel's TLS: the controller's server certificate, a client certificate chained
//! to the controller CA required; who a client certificate names; the grant-signing key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use rustls::CertificateError;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::SetupError;
use crate::fleet::ca::AGENT_URI_PREFIX;

/// The TLS configuration of the agent listener: the controller's server certificate (from
/// `server`, which reloads it), and a client certificate chained to a CA of the bundle in
/// `ca` required. An agent certificate that expired less than `grace` ago is accepted by the
/// handshake too, and the connection then serves its renewal only
/// ([`crate::channel::conn`]; docs/security.md, "Agent certificates").
pub fn agent_tls_config(
    server: Arc<ServerCert>,
    ca: &std::path::Path,
    grace: Duration,
    past_grace: Option<mpsc::UnboundedSender<PastGrace>>,
) -> Result<rustls::ServerConfig, SetupError> {
    let bad = |p: &std::path::Path, e: rustls_pki_types::pem::Error| {
        SetupError::Invalid(format!("{}: {e}", p.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, e))? {
        roots.add(c.map_err(|e| bad(ca, e))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| SetupError::Invalid(format!("client verifier: {e}")))?;
    let verifier = Arc::new(GraceVerifier {
        inner,
        grace,
        past_grace,
    });
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(server);
    Ok(cfg)
}

/// An agent certificate refused because it expired longer ago than the grace period.
#[derive(Clone, Debug)]
pub struct PastGrace {
    pub agent: Uuid,
    pub not_after_unix: i64,
}

/// The client certificate verifier of the agent channel: webpki's, except that a certificate
/// whose only fault is having expired less than `grace` ago is accepted (its chain, signature
/// and usages verified as of its last valid second). Such a connection may only renew its
/// certificate: `conn` reads the expiry again from the certificate and serves nothing else.
/// Why this is safe: the certificate still proves, through the handshake's signature, that
/// the peer holds the key the CA certified for that agent id; expiry bounds how long a
/// stolen key is useful, and within the grace the stolen key could get exactly what the
/// agent gets: a certificate for the same id and key, and only while the agent is not
/// revoked (checked in the database at each renewal). Revoking the agent ends both.
#[derive(Debug)]
struct GraceVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    grace: Duration,
    past_grace: Option<mpsc::UnboundedSender<PastGrace>>,
}

/// The notAfter of a certificate, unix seconds.
pub fn not_after(der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

impl ClientCertVerifier for GraceVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let err = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let expired = matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        );
        if !expired {
            return Err(err);
        }
        let Some(not_after) = not_after(end_entity.as_ref()) else {
            return Err(err);
        };
        let now_s = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let grace = i64::try_from(self.grace.as_secs()).unwrap_or(i64::MAX);
        let agent = identify(end_entity.as_ref()).map(|(a, _)| a).ok();
        if now_s.saturating_sub(not_after) > grace {
            tracing::warn!(agent = ?agent, not_after, grace_seconds = grace,
                "agent certificate expired past the renewal grace: refused; the host must be re-enrolled");
            if let (Some(tx), Some(agent)) = (&self.past_grace, agent) {
                let _ = tx.send(PastGrace {
                    agent,
                    not_after_unix: not_after,
                });
            }
            return Err(err);
        }
        // Everything else as of the certificate's last valid second.
        let then =
            UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(not_after).unwrap_or(0)));
        let v = self
            .inner
            .verify_client_cert(end_entity, intermediates, then)?;
        tracing::info!(agent = ?agent, not_after, "expired agent certificate within the renewal grace: accepted for renewal only");
        Ok(v)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The controller's server certificate and key (the API's and the agent channel's), reloaded
/// from their files when they change: new handshakes get the new certificate, established
/// connections keep theirs.
#[derive(Debug)]
pub struct ServerCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' modification times and lengths when read.
    stamp: Stamp,
    /// The certificate's PEM, for the expiry metric.
    pem: String,
}

type Stamp = (Option<SystemTime>, Option<SystemTime>, u64, u64);

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let m = |p: &Path| std::fs::metadata(p).ok();
    let (c, k) = (m(cert), m(key));
    (
        c.as_ref().and_then(|m| m.modified().ok()),
        k.as_ref().and_then(|m| m.modified().ok()),
        c.map(|m| m.len()).unwrap_or(0),
        k.map(|m| m.len()).unwrap_or(0),
    )
}

fn load_pair(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, String), SetupError> {
    let bad =
        |p: &Path, e: &dyn std::fmt::Display| SetupError::Invalid(format!("{}: {e}", p.display()));
    let pem = std::fs::read_to_string(cert).map_err(|e| SetupError::io(cert.display(), e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, &e))?;
    if certs.is_empty() {
        return Err(bad(cert, &"no certificate"));
    }
    let k = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let provider = rustls::crypto::ring::default_provider();
    // Refused when the key is not the certificate's (a half-copied pair).
    let ck = CertifiedKey::from_der(certs, k, &provider).map_err(|e| bad(cert, &e))?;
    Ok((Arc::new(ck), pem))
}

impl ServerCert {
    pub fn load(cert: &Path, key: &Path) -> Result<ServerCert, SetupError> {
        let st = stamp(cert, key);
        let (key_, pem) = load_pair(cert, key)?;
        Ok(ServerCert {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            current: RwLock::new(Loaded {
                key: key_,
                stamp: st,
                pem,
            }),
        })
    }

    /// The certificate (PEM) served now.
    pub fn pem(&self) -> String {
        self.current
            .read()
            .map(|l| l.pem.clone())
            .unwrap_or_default()
    }

    /// Reads the files again if they changed since the last read (or always, with
    /// `force`). `Ok(true)`: a new certificate is served from now on. A pair that does not
    /// load (unreadable, not PEM, key not the certificate's) changes nothing.
    pub fn reload(&self, force: bool) -> Result<bool, SetupError> {
        let st = stamp(&self.cert_path, &self.key_path);
        if !force && self.current.read().map(|l| l.stamp == st).unwrap_or(false) {
            return Ok(false);
        }
        let (key, pem) = load_pair(&self.cert_path, &self.key_path)?;
        let changed = self.current.read().map(|l| l.pem != pem).unwrap_or(true);
        if let Ok(mut l) = self.current.write() {
            *l = Loaded {
                key,
                stamp: st,
                pem,
            };
        }
        Ok(changed)
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|l| l.key.clone())
    }
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

/// The subject public key bits of a certificate (what a renewal request must carry).
pub fn public_key(der: &[u8]) -> Option<Vec<u8>> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c.public_key().subject_public_key.data.to_vec())
}
