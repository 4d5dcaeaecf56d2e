//! The HTTP client every request to the provider goes through: https only, the provider's CA
//! (or the system roots), no redirects (a redirect could point a token request elsewhere),
//! timeouts, and bounded response bodies.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

/// Largest response accepted from the provider (discovery, keys, tokens).
const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone, Debug)]
pub(crate) struct HttpClient {
    inner: reqwest::Client,
}

/// A client that cannot be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("ca_file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ca_file {path}: no PEM certificate in it ({detail})")]
    Pem { path: String, detail: String },
    #[error("building the HTTPS client: {0}")]
    Client(String),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{0}")]
    Request(String),
    #[error("the response is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("{0}")]
    Build(String),
}

impl HttpClient {
    /// `ca_file`: trust only the certificates in it; otherwise the system's roots.
    pub(crate) fn new(
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<HttpClient, TlsSetupError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .user_agent(concat!("jitgate-oidc/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            let shown = || path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| TlsSetupError::Read {
                path: shown(),
                source,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| TlsSetupError::Pem {
                    path: shown(),
                    detail: crate::error::chain(&e),
                })?;
            if certs.is_empty() {
                return Err(TlsSetupError::Pem {
                    path: shown(),
                    detail: "empty".into(),
                });
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let inner = b
            .build()
            .map_err(|e| TlsSetupError::Client(crate::error::chain(&e)))?;
        Ok(HttpClient { inner })
    }

    async fn call_inner(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let req = reqwest::Request::try_from(request)
            .map_err(|e| HttpError::Build(crate::error::chain(&e)))?;
        let mut resp = self
            .inner
            .execute(req)
            .await
            .map_err(|e| HttpError::Request(crate::error::chain(&e)))?;
        let mut builder = openidconnect::http::Response::builder().status(resp.status());
        for (name, value) in resp.headers() {
            builder = builder.header(name, value);
        }
        if resp.content_length().is_some_and(|l| l > MAX_BODY as u64) {
            return Err(HttpError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| HttpError::Request(crate::error::chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(HttpError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        builder
            .body(body)
            .map_err(|e| HttpError::Build(e.to_string()))
    }
}

impl<'c> AsyncHttpClient<'c> for HttpClient {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.call_inner(request))
    }
}
