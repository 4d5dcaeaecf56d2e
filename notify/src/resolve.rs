//! Name resolution with the address check built in.
//!
//! The HTTP client never resolves a name by itself: it asks [`GuardedResolver`], which
//! resolves once, checks every answer against the [`EgressPolicy`] and hands the client
//! exactly the checked addresses to connect to. There is no second lookup between the check
//! and the connection, so a name that answers a public address first and an internal one
//! later (DNS rebinding) is never connected to the internal one. If any answer is refused,
//! the whole name is refused: a mixed answer is what such an attack looks like.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use crate::egress::{Blocked, EgressPolicy};

/// A boxed future, as resolvers return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns a host name into addresses. The system's resolver in production; tests give one
/// that answers what they need (and counts how often it is asked).
pub trait NameResolver: Send + Sync + 'static {
    fn lookup(&self, host: &str) -> BoxFuture<'_, io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver (getaddrinfo, via tokio).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl NameResolver for SystemResolver {
    fn lookup(&self, host: &str) -> BoxFuture<'_, io::Result<Vec<IpAddr>>> {
        let host = host.to_string();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// Why a name gave no address to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("name resolution failed: {0}")]
    Dns(#[source] io::Error),
    #[error("the name resolved to no address")]
    NoAddress,
    #[error(transparent)]
    Blocked(#[from] Blocked),
}

/// Resolves `host` and checks every address; the checked addresses are the only ones that
/// may be connected to.
pub async fn resolve_checked(
    resolver: &dyn NameResolver,
    policy: &EgressPolicy,
    host: &str,
) -> Result<Vec<IpAddr>, ResolveError> {
    let addrs = resolver.lookup(host).await.map_err(ResolveError::Dns)?;
    if addrs.is_empty() {
        return Err(ResolveError::NoAddress);
    }
    for a in &addrs {
        policy.check(*a)?;
    }
    Ok(addrs)
}

/// The HTTP client's resolver: resolve, check, and return exactly what was checked.
#[derive(Clone)]
pub struct GuardedResolver {
    inner: Arc<dyn NameResolver>,
    policy: Arc<EgressPolicy>,
}

impl GuardedResolver {
    pub fn new(inner: Arc<dyn NameResolver>, policy: Arc<EgressPolicy>) -> Self {
        GuardedResolver { inner, policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = resolve_checked(this.inner.as_ref(), &this.policy, &host).await?;
            // Port 0: the client puts the URL's port in.
            let addrs: Vec<SocketAddr> =
                addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
