//! The provider as discovered: endpoints from `/.well-known/openid-configuration`, and its
//! signing keys, cached and fetched again when a token names a key not in the cache
//! (rate-limited, one fetch at a time), so that key rotation needs no restart.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use openidconnect::core::CoreClientAuthMethod;
use openidconnect::{
    AuthUrl, DeviceAuthorizationUrl, IssuerUrl, JsonWebKey, JsonWebKeySetUrl, RevocationUrl,
    TokenUrl,
};

use crate::error::{Error, chain};
use crate::http::HttpClient;
use crate::types::{Jwks, Metadata};

/// On-demand discovery (a sign-in while the provider is unavailable) at most this often; the
/// background retry runs regardless.
const ON_DEMAND_GAP: Duration = Duration::from_secs(2);

/// What discovery found and jitgate accepted.
pub(crate) struct Discovered {
    pub auth_url: AuthUrl,
    pub token_url: TokenUrl,
    pub device_url: Option<DeviceAuthorizationUrl>,
    pub revocation_url: Option<RevocationUrl>,
    pub jwks_url: JsonWebKeySetUrl,
    /// `client_secret_basic` unless the provider only takes `client_secret_post`.
    pub basic_auth: bool,
    /// RFC 9207: the provider promises `iss` on callbacks, so a callback without it is refused.
    pub iss_on_callbacks: bool,
    pub discovered_at: SystemTime,
    jwks: RwLock<Arc<Jwks>>,
    /// Bumped at each key fetch; lets a waiter see that another task already fetched.
    generation: AtomicU64,
    /// When the keys were last fetched again (not at discovery: the first unknown key
    /// always gets one fetch); held while fetching, so one fetch runs at a time.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    pub fetches: AtomicU32,
}

impl Discovered {
    pub fn keys(&self) -> (Arc<Jwks>, u64) {
        let jwks = match self.jwks.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        (jwks, self.generation.load(Ordering::SeqCst))
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.keys()
            .0
            .keys()
            .iter()
            .filter_map(|k| k.key_id().map(|id| id.to_string()))
            .collect()
    }
}

/// Whether the provider can be used now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderStatus {
    Ready {
        discovered_at: SystemTime,
        /// `kid`s of the cached signing keys.
        key_ids: Vec<String>,
        /// Key set fetches since discovery (the one at discovery excluded).
        key_refreshes: u32,
    },
    Unavailable {
        reason: String,
        since: SystemTime,
        attempts: u32,
    },
}

enum Slot {
    Ready(Arc<Discovered>),
    Unavailable {
        reason: String,
        since: SystemTime,
        attempts: u32,
    },
}

pub(crate) struct Provider {
    issuer: IssuerUrl,
    http: HttpClient,
    slot: RwLock<Slot>,
    /// Held during a discovery attempt; the time of the last one.
    attempt: tokio::sync::Mutex<Option<Instant>>,
    jwks_min_refresh: Duration,
}

impl Provider {
    pub fn new(issuer: IssuerUrl, http: HttpClient, jwks_min_refresh: Duration) -> Provider {
        Provider {
            issuer,
            http,
            slot: RwLock::new(Slot::Unavailable {
                reason: "discovery has not run yet".into(),
                since: SystemTime::now(),
                attempts: 0,
            }),
            attempt: tokio::sync::Mutex::new(None),
            jwks_min_refresh,
        }
    }

    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    pub fn current(&self) -> Option<Arc<Discovered>> {
        let slot = match self.slot.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match &*slot {
            Slot::Ready(d) => Some(d.clone()),
            Slot::Unavailable { .. } => None,
        }
    }

    pub fn status(&self) -> ProviderStatus {
        let slot = match self.slot.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match &*slot {
            Slot::Ready(d) => ProviderStatus::Ready {
                discovered_at: d.discovered_at,
                key_ids: d.key_ids(),
                key_refreshes: d.fetches.load(Ordering::SeqCst),
            },
            Slot::Unavailable {
                reason,
                since,
                attempts,
            } => ProviderStatus::Unavailable {
                reason: reason.clone(),
                since: *since,
                attempts: *attempts,
            },
        }
    }

    fn unavailable(&self) -> Error {
        let reason = match self.status() {
            ProviderStatus::Unavailable { reason, .. } => reason,
            ProviderStatus::Ready { .. } => "discovery is in progress".into(),
        };
        Error::ProviderUnavailable {
            issuer: self.issuer.to_string(),
            reason,
        }
    }

    /// The discovered provider; when there is none, one discovery attempt (at most every
    /// two seconds, whatever the number of callers).
    pub async fn ready(&self) -> Result<Arc<Discovered>, Error> {
        match self.current() {
            Some(d) => Ok(d),
            None => self.attempt(Some(ON_DEMAND_GAP)).await,
        }
    }

    /// One discovery attempt, unless it succeeded meanwhile or (with `min_gap`) one ran
    /// too recently.
    pub async fn attempt(&self, min_gap: Option<Duration>) -> Result<Arc<Discovered>, Error> {
        let mut last = self.attempt.lock().await;
        if let Some(d) = self.current() {
            return Ok(d);
        }
        if let (Some(gap), Some(t)) = (min_gap, *last)
            && t.elapsed() < gap
        {
            return Err(self.unavailable());
        }
        *last = Some(Instant::now());
        let result = self.discover().await;
        let mut slot = match self.slot.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match result {
            Ok(d) => {
                let d = Arc::new(d);
                tracing::info!(issuer = %self.issuer.as_str(), keys = ?d.key_ids(),
                    device_flow = d.device_url.is_some(), "OpenID provider discovered");
                *slot = Slot::Ready(d.clone());
                Ok(d)
            }
            Err(reason) => {
                let (since, attempts) = match &*slot {
                    Slot::Unavailable {
                        since, attempts, ..
                    } => (*since, attempts + 1),
                    Slot::Ready(_) => (SystemTime::now(), 1),
                };
                tracing::warn!(issuer = %self.issuer.as_str(), error = %reason, attempts,
                    "OpenID provider discovery failed; sign-in is unavailable, retrying");
                *slot = Slot::Unavailable {
                    reason: reason.clone(),
                    since,
                    attempts,
                };
                Err(Error::ProviderUnavailable {
                    issuer: self.issuer.to_string(),
                    reason,
                })
            }
        }
    }

    async fn discover(&self) -> Result<Discovered, String> {
        let meta = Metadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| format!("discovery: {}", chain(&e)))?;
        let https = |what: &str, url: &openidconnect::url::Url| {
            if url.scheme() == "https" {
                Ok(())
            } else {
                Err(format!("discovery: the {what} {url} is not https"))
            }
        };
        https(
            "authorization endpoint",
            meta.authorization_endpoint().url(),
        )?;
        https("key set", meta.jwks_uri().url())?;
        let token_url = meta
            .token_endpoint()
            .cloned()
            .ok_or("discovery: the provider names no token endpoint")?;
        https("token endpoint", token_url.url())?;
        let extra = meta.additional_metadata();
        if let Some(d) = &extra.device_authorization_endpoint {
            https("device authorization endpoint", d.url())?;
        }
        if let Some(r) = &extra.revocation_endpoint {
            https("revocation endpoint", r.url())?;
        }
        let code_flow = meta
            .response_types_supported()
            .iter()
            .any(|rt| rt.len() == 1 && rt.contains(&openidconnect::core::CoreResponseType::Code));
        if !code_flow {
            return Err(
                "discovery: the provider does not offer the authorization code flow".into(),
            );
        }
        if let Some(methods) = &extra.code_challenge_methods_supported
            && !methods.iter().any(|m| m == "S256")
        {
            return Err("discovery: the provider does not offer PKCE with S256".into());
        }
        let basic_auth = match meta.token_endpoint_auth_methods_supported() {
            None => true,
            Some(m) => {
                m.contains(&CoreClientAuthMethod::ClientSecretBasic)
                    || !m.contains(&CoreClientAuthMethod::ClientSecretPost)
            }
        };
        let jwks = meta.jwks().clone();
        Ok(Discovered {
            auth_url: meta.authorization_endpoint().clone(),
            token_url,
            device_url: extra.device_authorization_endpoint.clone(),
            revocation_url: extra.revocation_endpoint.clone(),
            jwks_url: meta.jwks_uri().clone(),
            basic_auth,
            iss_on_callbacks: extra.authorization_response_iss_parameter_supported == Some(true),
            discovered_at: SystemTime::now(),
            jwks: RwLock::new(Arc::new(jwks)),
            generation: AtomicU64::new(0),
            last_fetch: tokio::sync::Mutex::new(None),
            fetches: AtomicU32::new(0),
        })
    }

    /// Fetches the key set again after a token named an unknown key. `seen` is the
    /// generation the caller validated with. True when there are keys newer than `seen`
    /// (fetched now or by another caller meanwhile); false when rate-limited or failed.
    pub async fn refresh_keys(&self, d: &Discovered, seen: u64) -> bool {
        let mut last = d.last_fetch.lock().await;
        if d.generation.load(Ordering::SeqCst) != seen {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < self.jwks_min_refresh) {
            tracing::info!(issuer = %self.issuer.as_str(),
                "unknown signing key, but the key set was fetched moments ago; not fetching again");
            return false;
        }
        *last = Some(Instant::now());
        d.fetches.fetch_add(1, Ordering::SeqCst);
        match Jwks::fetch_async(&d.jwks_url, &self.http).await {
            Ok(jwks) => {
                let mut slot = match d.jwks.write() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                *slot = Arc::new(jwks);
                d.generation.fetch_add(1, Ordering::SeqCst);
                drop(slot);
                tracing::info!(issuer = %self.issuer.as_str(), keys = ?d.key_ids(),
                    "OpenID provider signing keys fetched again");
                true
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer.as_str(), error = %chain(&e),
                    "fetching the OpenID provider's signing keys failed");
                false
            }
        }
    }
}
