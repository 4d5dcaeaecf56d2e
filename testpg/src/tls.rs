//! A test CA and a server certificate for 127.0.0.1 and localhost, signed by it.

use crate::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

pub(crate) struct Material {
    pub ca_pem: String,
    pub server_pem: String,
    pub server_key_pem: String,
}

/// `label` makes each CA's name unique: a client given another cluster's CA then fails
/// verification plainly instead of on a signature under the same issuer name.
pub(crate) fn generate(label: &str) -> Result<Material> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("jitgate test PostgreSQL CA {label}"),
    );
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut srv = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    srv.distinguished_name
        .push(DnType::CommonName, "jitgate test PostgreSQL");
    srv.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    srv.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = srv.signed_by(&key, &ca_cert, &ca_key)?;
    Ok(Material {
        ca_pem: ca_cert.pem(),
        server_pem: cert.pem(),
        server_key_pem: key.serialize_pem(),
    })
}
