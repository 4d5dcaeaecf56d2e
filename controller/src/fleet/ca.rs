//! The controller CA as it signs agent certificates at enrolment.

use rand::RngCore;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

use crate::error::SetupError;

/// Lifetime of an agent certificate.
const AGENT_CERT_DAYS: i64 = 825;

/// The SAN URI prefix that carries an agent's id in its certificate.
pub const AGENT_URI_PREFIX: &str = "urn:jitgate:agent:";

/// The controller CA, loaded to sign agent certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub pem: String,
}

impl Ca {
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Ca, SetupError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| SetupError::io(p.display(), e))
        };
        let pem = read(cert)?;
        let key = KeyPair::from_pem(&read(key)?)?;
        // Re-issued from the same parameters and key: same subject and key identifier, so
        // certificates it signs chain to the CA certificate on disk.
        let params = CertificateParams::from_ca_cert_pem(&pem)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key, pem })
    }

    /// Signs an agent's CSR: only its public key is taken; subject, SAN (the agent id),
    /// usages and validity are the controller's.
    pub fn sign_agent(&self, csr_pem: &str, agent: uuid::Uuid) -> Result<Signed, String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("the CSR is not a valid PEM certificate request: {e}"))?;
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
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(AGENT_CERT_DAYS);
        let mut serial = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut serial);
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        csr.params = p;
        let cert = csr
            .signed_by(&self.cert, &self.key)
            .map_err(|e| format!("signing the certificate: {e}"))?;
        Ok(Signed {
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            serial: hex::encode(serial),
            pem: cert.pem(),
        })
    }
}

pub struct Signed {
    pub fingerprint: String,
    pub serial: String,
    pub pem: String,
}
