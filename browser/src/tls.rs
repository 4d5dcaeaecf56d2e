//! The browser trusts exactly the keys of the certificates a test names.

use std::path::Path;

use base64::Engine;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::BrowserError;

/// Base64 of the SHA-256 of the first certificate's SubjectPublicKeyInfo in a PEM file: what
/// Chromium's `--ignore-certificate-errors-spki-list` takes.
pub fn spki_sha256_base64(pem_file: &Path) -> Result<String, BrowserError> {
    let der = CertificateDer::from_pem_file(pem_file)
        .map_err(|e| BrowserError::new(pem_file.display(), e))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| BrowserError::new(pem_file.display(), e))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(cert.public_key().raw)))
}
