//! One email through the SMTP relay: STARTTLS (required, never opportunistic) or implicit
//! TLS, rustls with the configured roots, optional authentication with a named secret.
//!
//! The relay comes from the configuration file only (a sink names recipients, never a
//! server), so it is trusted like `allow_networks` and may be on an internal address.

use std::io;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{TlsRoots, find_cause};
use crate::outcome::{Failure, FailureKind, Outcome, StatusClass};
use crate::secrets::{SecretName, SecretStore};

/// How the connection to the relay is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS before anything else is sent (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
}

impl SmtpSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            SmtpSecurity::StartTls => "starttls",
            SmtpSecurity::Implicit => "implicit",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Implicit => 465,
        }
    }
}

/// The relay (`[notify.smtp]`).
#[derive(Clone, Debug)]
pub struct SmtpRelay {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    /// Name sent in EHLO; default: this machine's host name.
    pub hello_name: Option<String>,
    pub username: Option<String>,
    /// The named secret holding the password.
    pub password_secret: Option<SecretName>,
    pub from: Mailbox,
}

pub(super) async fn send(
    relay: &SmtpRelay,
    roots: &TlsRoots,
    secrets: &SecretStore,
    message: lettre::Message,
    timeout: Duration,
) -> Outcome {
    let transport = match transport(relay, roots, secrets, timeout) {
        Ok(t) => t,
        Err(f) => return Outcome::Failed(f),
    };
    match tokio::time::timeout(timeout, transport.send(message)).await {
        Err(_) => Outcome::failed(FailureKind::Timeout, "no answer within the timeout"),
        Ok(Ok(_)) => Outcome::Delivered {
            status: StatusClass::Success,
        },
        Ok(Err(e)) => Outcome::Failed(classify(&e)),
    }
}

fn transport(
    relay: &SmtpRelay,
    roots: &TlsRoots,
    secrets: &SecretStore,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, Failure> {
    let misconfigured = |d: String| Failure::new(FailureKind::Misconfigured, d);
    let mut params =
        TlsParameters::builder(relay.host.clone()).certificate_store(if roots.system {
            CertificateStore::Default
        } else {
            CertificateStore::None
        });
    for ca in &roots.extra {
        let cert = Certificate::from_der(ca.to_vec())
            .map_err(|e| misconfigured(format!("a configured CA certificate: {e}")))?;
        params = params.add_root_certificate(cert);
    }
    let params = params
        .build_rustls()
        .map_err(|e| misconfigured(format!("SMTP TLS parameters: {e}")))?;
    let tls = match relay.security {
        SmtpSecurity::StartTls => Tls::Required(params),
        SmtpSecurity::Implicit => Tls::Wrapper(params),
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(relay.host.clone())
        .port(relay.port)
        .tls(tls)
        .timeout(Some(timeout));
    if let Some(name) = &relay.hello_name {
        b = b.hello_name(ClientId::Domain(name.clone()));
    }
    if let (Some(user), Some(secret)) = (&relay.username, &relay.password_secret) {
        let password = secrets
            .load(secret)
            .map_err(|e| misconfigured(format!("SMTP password secret {secret}: {e}")))?;
        let password = password
            .expose_str()
            .ok_or_else(|| misconfigured(format!("SMTP password secret {secret} is not UTF-8")))?
            .to_string();
        b = b.credentials(Credentials::new(user.clone(), password));
    }
    Ok(b.build())
}

fn classify(e: &lettre::transport::smtp::Error) -> Failure {
    let code = e.status().map(|c| c.to_string());
    let with_code = |what: &str| match &code {
        Some(c) => format!("{what} {c}"),
        None => what.to_string(),
    };
    if e.is_timeout() {
        return Failure::new(FailureKind::Timeout, "no answer within the timeout");
    }
    if e.is_transient() {
        let mut f = Failure::new(FailureKind::Smtp4xx, with_code("SMTP"));
        f.status = Some(StatusClass::ClientError);
        return f;
    }
    if e.is_permanent() {
        let mut f = Failure::new(FailureKind::Smtp5xx, with_code("SMTP"));
        f.status = Some(StatusClass::ServerError);
        return f;
    }
    if let Some(t) = find_cause::<rustls::Error>(e) {
        return Failure::new(FailureKind::Tls, format!("TLS: {t}"));
    }
    if e.is_tls() {
        return Failure::new(FailureKind::Tls, "TLS failed");
    }
    if let Some(io) = find_cause::<io::Error>(e) {
        let kind = match io.kind() {
            io::ErrorKind::ConnectionRefused => FailureKind::Refused,
            io::ErrorKind::TimedOut => FailureKind::Timeout,
            _ => FailureKind::Network,
        };
        return Failure::new(kind, io.kind().to_string());
    }
    Failure::new(FailureKind::Network, "SMTP session failed")
}
