//! Delivering one rendered message to one sink, safely.
//!
//! [`Deliverer`] owns one HTTP client and the SMTP relay settings. Every attempt:
//! - is bounded by one total timeout (name resolution, connect, TLS, request, response);
//! - goes only to addresses the [`EgressPolicy`] allows, connecting to exactly the address
//!   that was checked ([`crate::resolve::GuardedResolver`]; IP literals are checked before
//!   the request);
//! - uses https (plain http only when the configuration file allows it), follows no redirect
//!   and no proxy from the environment;
//! - never keeps the response body (a short one is read and thrown away so that the
//!   connection can be reused): the [`Outcome`] is a status class and a short error kind,
//!   with `Retry-After` parsed.
//!
//! The client's pool keeps connections to each sink alive between deliveries (idle ones
//! close after 30 s).

mod http;
mod smtp;
mod tls;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lettre::message::Mailbox;
use rustls_pki_types::CertificateDer;

use crate::egress::{Blocked, EgressPolicy};
use crate::event::Event;
use crate::message::Message;
use crate::outcome::{FailureKind, Outcome};
use crate::render::email::Person;
use crate::render::webhook::HttpPayload;
use crate::render::{email, slack, teams, webhook};
use crate::resolve::{
    GuardedResolver, NameResolver, ResolveError, SystemResolver, resolve_checked,
};
use crate::secrets::SecretStore;
use crate::sink::{Sink, SinkFormat, Target};
use crate::sink_url::{SinkUrl, UrlHost};

pub use smtp::{SmtpRelay, SmtpSecurity};

/// The first error of type `T` in `e`'s chain, looking inside `io::Error`s too (their
/// `source()` skips the error they wrap).
fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(t) = find_cause::<T>(inner) {
                return Some(t);
            }
        }
        cur = err.source();
    }
    None
}

/// Which certificate authorities sinks and the SMTP relay are checked against.
#[derive(Clone, Debug)]
pub struct TlsRoots {
    /// The operating system's store.
    pub system: bool,
    /// Extra CAs (DER), e.g. an internal CA from `notify.ca_files`.
    pub extra: Vec<CertificateDer<'static>>,
}

/// Everything a [`Deliverer`] needs; built from the configuration file.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    pub egress: EgressPolicy,
    pub allow_http: bool,
    /// The whole of one attempt, from name resolution to the response status.
    pub timeout: Duration,
    pub roots: TlsRoots,
    pub smtp: Option<SmtpRelay>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(
        "no trusted certificate authority: the system store is empty or unused and no CA file is configured"
    )]
    NoRoots,
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Why `add` refuses a sink's URL after resolving it.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(
        "plain http URLs are refused: use https (http is allowed only where the controller's configuration file sets notify.allow_http)"
    )]
    PlainHttp,
}

pub struct Deliverer {
    client: reqwest::Client,
    resolver: Arc<dyn NameResolver>,
    egress: Arc<EgressPolicy>,
    allow_http: bool,
    timeout: Duration,
    roots: TlsRoots,
    smtp: Option<SmtpRelay>,
}

impl Deliverer {
    /// With the system's resolver.
    pub fn new(cfg: DeliveryConfig) -> Result<Deliverer, DeliverError> {
        Self::with_resolver(cfg, Arc::new(SystemResolver))
    }

    /// With a given resolver (tests answer names themselves).
    pub fn with_resolver(
        cfg: DeliveryConfig,
        resolver: Arc<dyn NameResolver>,
    ) -> Result<Deliverer, DeliverError> {
        let egress = Arc::new(cfg.egress);
        let tls = tls::client_config(&cfg.roots)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .dns_resolver(Arc::new(GuardedResolver::new(
                resolver.clone(),
                egress.clone(),
            )))
            // A proxy from the environment would connect to addresses we never checked.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!cfg.allow_http)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("jitgate-notify/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Deliverer {
            client,
            resolver,
            egress,
            allow_http: cfg.allow_http,
            timeout: cfg.timeout,
            roots: cfg.roots,
            smtp: cfg.smtp,
        })
    }

    /// Whether an SMTP relay is configured (email sinks need one).
    pub fn has_smtp(&self) -> bool {
        self.smtp.is_some()
    }

    /// What `add` does with a new sink's URL: the same checks a delivery makes, before
    /// anything is stored. Returns the addresses it resolved to.
    pub async fn check_target(&self, url: &SinkUrl) -> Result<Vec<IpAddr>, TargetError> {
        if !url.is_https() && !self.allow_http {
            return Err(TargetError::PlainHttp);
        }
        match url.host() {
            UrlHost::Ip(ip) => {
                self.egress.check(ip).map_err(ResolveError::from)?;
                Ok(vec![ip])
            }
            UrlHost::Name(name) => {
                let lookup = resolve_checked(self.resolver.as_ref(), &self.egress, &name);
                match tokio::time::timeout(self.timeout, lookup).await {
                    Ok(r) => Ok(r?),
                    Err(_) => Err(ResolveError::Dns(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "name resolution timed out",
                    ))
                    .into()),
                }
            }
        }
    }

    /// POSTs a rendered payload (JSON) to `url`.
    pub async fn post(&self, url: &SinkUrl, payload: &HttpPayload) -> Outcome {
        if !url.is_https() && !self.allow_http {
            return Outcome::failed(
                FailureKind::Misconfigured,
                "plain http is no longer allowed by notify.allow_http",
            );
        }
        if let UrlHost::Ip(ip) = url.host()
            && let Err(Blocked { address, reason }) = self.egress.check(ip)
        {
            return Outcome::failed(
                FailureKind::BlockedAddress,
                format!("address {address} is {reason}"),
            );
        }
        http::post(&self.client, url, payload, self.timeout).await
    }

    /// Sends an email through the configured relay.
    pub async fn send_mail(&self, secrets: &SecretStore, message: lettre::Message) -> Outcome {
        match &self.smtp {
            Some(relay) => smtp::send(relay, &self.roots, secrets, message, self.timeout).await,
            None => Outcome::failed(
                FailureKind::Misconfigured,
                "no SMTP relay is configured (notify.smtp)",
            ),
        }
    }

    /// Renders `event` for `sink` and delivers it: one attempt. `people` are
    /// [`Event::people`] whose identity carries an address (email sinks add them to their
    /// fixed recipients). Logged with the sink's name and redacted target only.
    pub async fn deliver(
        &self,
        sink: &Sink,
        event: &Event,
        secrets: &SecretStore,
        people: &[Person],
        now: SystemTime,
    ) -> Outcome {
        let outcome = self.attempt(sink, event, secrets, people, now).await;
        let target = match &sink.target {
            Target::Url(u) => u.redacted().to_string(),
            Target::Email(a) => format!("{} address(es)", a.len()),
        };
        match outcome.failure() {
            None => {
                tracing::debug!(sink = %sink.name, %target, event = %event.id, "notification delivered")
            }
            Some(f) => tracing::info!(
                sink = %sink.name,
                %target,
                event = %event.id,
                kind = f.kind.as_str(),
                status = f.status.map(|s| s.as_str()),
                detail = %f.detail,
                "notification delivery failed"
            ),
        }
        outcome
    }

    async fn attempt(
        &self,
        sink: &Sink,
        event: &Event,
        secrets: &SecretStore,
        people: &[Person],
        now: SystemTime,
    ) -> Outcome {
        let misconfigured = |d: String| Outcome::failed(FailureKind::Misconfigured, d);
        match (&sink.target, sink.format) {
            (Target::Url(url), SinkFormat::Webhook) => {
                let Some(name) = &sink.secret else {
                    return misconfigured("the webhook sink has no secret".into());
                };
                let secret = match secrets.load(name) {
                    Ok(s) => s,
                    Err(e) => return misconfigured(format!("secret {name}: {e}")),
                };
                let ts = now
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                match webhook::payload(event, secret.expose(), ts) {
                    Ok(p) => self.post(url, &p).await,
                    Err(e) => misconfigured(format!("serializing the event: {e}")),
                }
            }
            (Target::Url(url), SinkFormat::Slack | SinkFormat::Teams) => {
                let m = Message::of(event);
                let value = if sink.format == SinkFormat::Slack {
                    slack::payload(&m)
                } else {
                    teams::payload(&m)
                };
                match HttpPayload::json(&value) {
                    Ok(p) => self.post(url, &p).await,
                    Err(e) => misconfigured(format!("serializing the message: {e}")),
                }
            }
            (Target::Email(fixed), SinkFormat::Email) => {
                let Some(relay) = &self.smtp else {
                    return misconfigured("no SMTP relay is configured (notify.smtp)".into());
                };
                let mut to: Vec<Mailbox> = fixed
                    .iter()
                    .map(|a| Mailbox::new(None, a.clone()))
                    .collect();
                to.extend(people.iter().map(Person::mailbox));
                match email::message(event, &relay.from, &to, now) {
                    Ok(msg) => self.send_mail(secrets, msg).await,
                    Err(e) => misconfigured(e.to_string()),
                }
            }
            (_, f) => misconfigured(format!("a {f} sink with the wrong kind of target")),
        }
    }
}
