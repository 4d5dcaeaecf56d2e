//! The controller CA as it signs agent certificates at enrolment.

use rand::RngCore;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::error::SetupError;

/// Lifetime of the certificate of an agent that cannot renew it over the channel (protocol
/// level below [`jitgate_proto::LEVEL_CERT_RENEWAL`]).
pub const LONG_AGENT_CERT_DAYS: i64 = 825;

/// The SAN URI prefix that carries an agent's id in its certificate.
pub const AGENT_URI_PREFIX: &str = "urn:jitgate:agent:";

/// The controller CA, loaded to sign agent certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA bundle agents trust (`ca.crt`: the signing CA, and during a rotation the other).
    pub pem: String,
}

impl Ca {
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Ca, SetupError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| SetupError::io(p.display(), e))
        };
        let pem = read(cert)?;
        let key = KeyPair::from_pem(&read(key)?)?;
        // `ca.crt` may be a bundle (during a CA rotation: the new CA and the old one, both
        // trusted); the CA that signs is the one whose key is `ca.key`.
        let mut signing = None;
        for der in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let der = der.map_err(|e| SetupError::Invalid(format!("{}: {e}", cert.display())))?;
            let matches = x509_parser::parse_x509_certificate(der.as_ref())
                .map(|(_, c)| {
                    c.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
                })
                .unwrap_or(false);
            if matches {
                signing = Some(der);
                break;
            }
        }
        let Some(der) = signing else {
            return Err(SetupError::Invalid(format!(
                "{}: no certificate in it is the CA certificate of the CA key",
                cert.display()
            )));
        };
        // Re-issued from the same parameters and key: same subject and key identifier, so
        // certificates it signs chain to the CA certificate on disk.
        let params = CertificateParams::from_ca_cert_der(&der)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key, pem })
    }

    /// Signs an agent's CSR: only its public key is taken; subject, SAN (the agent id),
    /// usages and validity are the controller's.
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        agent: uuid::Uuid,
        lifetime: time::Duration,
    ) -> Result<Signed, String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("the CSR is not a valid PEM certificate request: {e}"))?;
        self.issue(csr, agent, lifetime)
    }

    /// Renews an agent's certificate: the CSR must carry `public_key` (the subject public key
    /// bits of the certificate the agent connected with, whose key the TLS handshake
    /// proved); same agent id, a new serial and validity.
    pub fn renew_agent(
        &self,
        csr_pem: &str,
        agent: uuid::Uuid,
        public_key: &[u8],
        lifetime: time::Duration,
    ) -> Result<Signed, RenewRefused> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| RenewRefused::BadRequest(e.to_string()))?;
        // `from_pem` verified the request's signature: whoever sent it holds the key.
        if csr.public_key.der_bytes() != public_key {
            return Err(RenewRefused::KeyMismatch);
        }
        self.issue(csr, agent, lifetime)
            .map_err(RenewRefused::Signing)
    }

    fn issue(
        &self,
        mut csr: CertificateSigningRequestParams,
        agent: uuid::Uuid,
        lifetime: time::Duration,
    ) -> Result<Signed, String> {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, format!("jitgate agent {agent}"));
        let uri = rcgen::Ia5String::try_from(format!("{AGENT_URI_PREFIX}{agent}"))
            .map_err(|e| e.to_string())?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        // Backdated for clocks that lag, by at most a tenth of the lifetime: the agent renews
        // at two thirds of notBefore..notAfter.
        let backdate: time::Duration = lifetime / 10;
        p.not_before = now - backdate.min(time::Duration::hours(1));
        p.not_after = now + lifetime;
        let mut serial = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut serial);
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        let p_not_after = p.not_after;
        csr.params = p;
        let cert = csr
            .signed_by(&self.cert, &self.key)
            .map_err(|e| format!("signing the certificate: {e}"))?;
        Ok(Signed {
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            serial: hex::encode(serial),
            pem: cert.pem(),
            not_after_ms: (p_not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        })
    }
}

impl Ca {
    /// A server certificate (the API's and the agent channel's) for `names` (DNS names or
    /// addresses), valid `days`, with a new key: (certificate PEM, key PEM).
    pub fn issue_server(&self, names: Vec<String>, days: i64) -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut p = CertificateParams::new(names).map_err(|e| e.to_string())?;
        p.distinguished_name
            .push(DnType::CommonName, "jitgate controller");
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(days);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut serial = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut serial);
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = p
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| format!("signing the certificate: {e}"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Why [`Ca::renew_agent`] signed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenewRefused {
    #[error("the CSR is not a valid PEM certificate request: {0}")]
    BadRequest(String),
    #[error("the request does not carry the key of the agent's certificate")]
    KeyMismatch,
    #[error("{0}")]
    Signing(String),
}

pub struct Signed {
    pub fingerprint: String,
    pub serial: String,
    pub pem: String,
    /// The certificate's notAfter, unix milliseconds.
    pub not_after_ms: i64,
}

/// `[certificates]` in `controller.toml`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// Lifetime of the certificate of an agent that renews over the channel (protocol level
    /// 6 or later); older agents get 825 days. Default 30 days.
    #[serde(default = "default_agent_cert_lifetime")]
    pub agent_lifetime_seconds: u64,
    /// How long after its expiry an agent's certificate may still be used, for its renewal
    /// only. Default 90 days.
    #[serde(default = "default_agent_cert_grace")]
    pub agent_grace_seconds: u64,
    /// How often the server certificate and key files are checked for a change (reloaded
    /// without a restart; also on SIGHUP). Default 60; 0 turns the check off.
    #[serde(default = "default_server_reload")]
    pub server_reload_seconds: u64,
    /// The least time between two renewals granted to one agent: a renewal asked for sooner
    /// is refused (`RenewalRefused`), and such refusals are written to the activity log at
    /// most once per agent and this window. Default: a tenth of `agent_lifetime_seconds`
    /// (an agent renews at two thirds of its certificate's life and retries every
    /// twentieth, so a healthy agent never meets it); at most half of it; 0 turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_min_interval_seconds: Option<u64>,
}

fn default_agent_cert_lifetime() -> u64 {
    30 * 86_400
}
fn default_agent_cert_grace() -> u64 {
    90 * 86_400
}
fn default_server_reload() -> u64 {
    60
}

impl Default for CertConfig {
    fn default() -> Self {
        CertConfig {
            agent_lifetime_seconds: default_agent_cert_lifetime(),
            agent_grace_seconds: default_agent_cert_grace(),
            server_reload_seconds: default_server_reload(),
            renewal_min_interval_seconds: None,
        }
    }
}

impl CertConfig {
    pub fn agent_lifetime(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.agent_lifetime_seconds)
    }
    pub fn agent_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.agent_grace_seconds)
    }
    /// The renewal rate limit's window (`renewal_min_interval_seconds`, else a tenth of
    /// the lifetime).
    pub fn renewal_min_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.renewal_min_interval_seconds
                .unwrap_or(self.agent_lifetime_seconds / 10),
        )
    }

    /// Within bounds, or why not.
    pub fn validate(&self) -> Result<(), String> {
        if self.agent_lifetime_seconds < 10 {
            return Err("certificates.agent_lifetime_seconds must be at least 10".into());
        }
        if let Some(m) = self.renewal_min_interval_seconds
            && m > self.agent_lifetime_seconds / 2
        {
            return Err(format!(
                "certificates.renewal_min_interval_seconds ({m}) must be at most half of \
                 agent_lifetime_seconds ({}): healthy agents renew at two thirds of it",
                self.agent_lifetime_seconds
            ));
        }
        Ok(())
    }
}
