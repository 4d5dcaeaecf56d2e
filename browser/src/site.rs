//! Another origin for cross-site tests: fixed pages over HTTPS on 127.0.0.1 (a hostile site
//! whose form posts to the portal, say).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::BrowserError;

type Pages = Arc<Mutex<BTreeMap<String, String>>>;

/// Serves pages (path → HTML) until dropped; any other path is a 404.
pub struct StaticSite {
    /// `https://127.0.0.1:PORT`
    pub origin: String,
    pages: Pages,
    task: tokio::task::JoinHandle<()>,
}

impl StaticSite {
    /// On a free port of 127.0.0.1, with a certificate for 127.0.0.1 (PEM) that the browser
    /// trusts.
    pub async fn start(
        cert_pem: &str,
        key_pem: &str,
        pages: &[(&str, &str)],
    ) -> Result<StaticSite, BrowserError> {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BrowserError::new("site certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| BrowserError::new("site key", e))?;
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| BrowserError::new("site TLS", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| BrowserError::new("site TLS", e))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| BrowserError::new("site listener", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| BrowserError::new("site listener", e))?
            .port();
        let pages: Pages = Arc::new(Mutex::new(
            pages
                .iter()
                .map(|(p, h)| (p.to_string(), h.to_string()))
                .collect(),
        ));
        let served = pages.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let pages = served.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let page = pages
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get(req.uri().path())
                            .cloned();
                        async move {
                            let mut r = http::Response::builder()
                                .header("content-type", "text/html; charset=utf-8")
                                .header("cache-control", "no-store");
                            r = r.status(if page.is_some() { 200 } else { 404 });
                            r.body(Full::new(Bytes::from(page.unwrap_or_default())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(StaticSite {
            origin: format!("https://127.0.0.1:{port}"),
            pages,
            task,
        })
    }

    /// Serves `html` at `path` from now on (a page that needs what the test learnt later).
    pub fn set_page(&self, path: &str, html: &str) {
        self.pages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string(), html.to_string());
    }

    /// The URL of `path` on this site.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}
