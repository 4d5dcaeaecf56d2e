//! An agent's own audit chain: its records' hashes and the checkpoints it signs with its
//! enrolment key, verified by the controller against the agent's certificate.

use sha2::{Digest, Sha256};

/// Domain separation for an agent's signature over its own audit chain head.
pub const AGENT_CHECKPOINT_CONTEXT: &[u8] = b"jitgate agent audit checkpoint v1\0";

/// The bytes an agent signs to vouch for its audit log up to `seq` (whose hash is `hash`):
/// the context, then `agent_id \n seq \n hash`.
pub fn agent_checkpoint_message(agent_id: &str, seq: u64, hash: &str) -> Vec<u8> {
    let mut m = AGENT_CHECKPOINT_CONTEXT.to_vec();
    m.extend_from_slice(format!("{agent_id}\n{seq}\n{hash}").as_bytes());
    m
}

/// Signs with the agent's enrolment key (ECDSA P-256, PKCS#8 PEM); the signature is hex
/// (ASN.1 DER, SHA-256).
pub fn agent_sign(key_pem: &str, message: &[u8]) -> Result<String, String> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("agent key: {e}"))?;
    let rng = ring::rand::SystemRandom::new();
    let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        der.secret_pkcs8_der(),
        &rng,
    )
    .map_err(|e| format!("agent key: {e}"))?;
    let sig = kp
        .sign(&rng, message)
        .map_err(|e| format!("signing: {e}"))?;
    Ok(hex::encode(sig.as_ref()))
}

/// Checks an agent checkpoint signature against the agent's certificate (PEM).
pub fn agent_verify(cert_pem: &str, message: &[u8], signature_hex: &str) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("agent certificate: {e}"))?;
    let cert =
        webpki::EndEntityCert::try_from(&der).map_err(|e| format!("agent certificate: {e}"))?;
    let sig = hex::decode(signature_hex).map_err(|_| "signature is not hex".to_string())?;
    cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, message, &sig)
        .map_err(|_| "bad signature (altered, or not signed by this agent's key)".to_string())
}

/// The hash of an agent audit record: SHA-256 (hex) over `prev`, a newline, and the record's
/// JSON without its `hash` field, exactly as written.
pub fn agent_record_hash(prev: &str, body_json: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(body_json);
    hex::encode(h.finalize())
}

/// What verification needs from one agent audit line (`{...body, "hash": "..."}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentLine {
    pub seq: u64,
    pub prev: String,
    /// Unknown kinds (from a newer agent) are kept, never an error.
    pub kind: crate::AuditKind,
    pub signature: Option<String>,
    pub hash: String,
    /// The hash recomputed from the line's bytes.
    pub computed: String,
}

impl AgentLine {
    /// Parses a line as the agent wrote it: the body's JSON with `"hash"` as the last field.
    pub fn parse(line: &str) -> Result<AgentLine, String> {
        const KEY: &str = ",\"hash\":\"";
        let bad = || "not an agent audit record".to_string();
        let at = line.rfind(KEY).ok_or_else(bad)?;
        let hash = line[at + KEY.len()..]
            .strip_suffix("\"}")
            .ok_or_else(bad)?
            .to_string();
        let body = format!("{}}}", &line[..at]);
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|_| bad())?;
        let prev = v["prev"].as_str().ok_or_else(bad)?.to_string();
        Ok(AgentLine {
            seq: v["seq"].as_u64().ok_or_else(bad)?,
            kind: crate::AuditKind::from(v["kind"].as_str().unwrap_or_default()),
            signature: v["signature"].as_str().map(str::to_string),
            computed: agent_record_hash(&prev, body.as_bytes()),
            prev,
            hash,
        })
    }
}

/// Checks that `cert_pem` was issued by the CA in `ca_pem` for client authentication (an
/// agent certificate), so a certificate substituted in the database is refused.
pub fn agent_cert_issued_by(cert_pem: &str, ca_pem: &str) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, UnixTime};
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("agent certificate: {e}"))?;
    let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| format!("CA: {e}"))?;
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| format!("CA: {e}"))?;
    let cert =
        webpki::EndEntityCert::try_from(&der).map_err(|e| format!("agent certificate: {e}"))?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("agent certificate not issued by the controller CA: {e}"))
}
