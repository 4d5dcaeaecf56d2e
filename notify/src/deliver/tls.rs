//! The TLS client configuration for sinks: rustls with ring, the configured roots, HTTP/1.1.

use std::sync::Arc;

use rustls::RootCertStore;

use super::{DeliverError, TlsRoots};

pub(super) fn root_store(roots: &TlsRoots) -> Result<RootCertStore, DeliverError> {
    let mut store = RootCertStore::empty();
    if roots.system {
        let found = rustls_native_certs::load_native_certs();
        let (added, ignored) = store.add_parsable_certificates(found.certs);
        tracing::debug!(
            added,
            ignored,
            errors = found.errors.len(),
            "system trust store loaded"
        );
    }
    for ca in &roots.extra {
        store.add(ca.clone()).map_err(|e| {
            DeliverError::Tls(format!("a configured CA certificate is not usable: {e}"))
        })?;
    }
    if store.is_empty() {
        return Err(DeliverError::NoRoots);
    }
    Ok(store)
}

pub(super) fn client_config(roots: &TlsRoots) -> Result<rustls::ClientConfig, DeliverError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DeliverError::Tls(e.to_string()))?
        .with_root_certificates(root_store(roots)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
