//! A throwaway CA and server certificates for 127.0.0.1, as PEM files in a temporary
//! directory (the provider reads them; the relying party's `ca_file` names the CA).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use crate::HarnessError;

pub struct TestCa {
    dir: tempfile::TempDir,
    cert: rcgen::Certificate,
    key: KeyPair,
    ca_file: PathBuf,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestCa({})", self.ca_file.display())
    }
}

/// A server certificate and its key.
#[derive(Clone, Debug)]
pub struct ServerCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

fn cert_err(e: rcgen::Error) -> HarnessError {
    HarnessError::new("test certificate", e)
}

impl TestCa {
    pub fn new() -> Result<TestCa, HarnessError> {
        let dir = tempfile::tempdir().map_err(|e| HarnessError::new("temporary directory", e))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "jitgate OpenID test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params.self_signed(&key).map_err(cert_err)?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem())
            .map_err(|e| HarnessError::new(ca_file.display(), e))?;
        Ok(TestCa {
            dir,
            cert,
            key,
            ca_file,
        })
    }

    /// The CA certificate (PEM): the relying party's `ca_file`.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A directory that lives as long as the CA.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A certificate for 127.0.0.1 (and localhost), written as `NAME.pem` / `NAME.key`.
    pub fn server_cert(&self, name: &str) -> Result<ServerCert, HarnessError> {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .map_err(cert_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("jitgate test {name}"));
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(cert_err)?;
        let cert_file = self.dir.path().join(format!("{name}.pem"));
        let key_file = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem())
            .map_err(|e| HarnessError::new(cert_file.display(), e))?;
        std::fs::write(&key_file, key.serialize_pem())
            .map_err(|e| HarnessError::new(key_file.display(), e))?;
        Ok(ServerCert {
            cert_file,
            key_file,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
