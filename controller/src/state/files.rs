//! The files of the state directory: made by `init`, the server certificate renewed.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde::Serialize;

use jitgate_api::{Role, Scope};

use super::{Config, StateDir};
use crate::app::{App, Parts};
use crate::authz::Caller;
use crate::error::SetupError;
use crate::tokens::TokenInfo;

pub(super) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), SetupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| SetupError::io(path.display(), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(())
}

/// Writes an Ed25519 key pair: the private half (PKCS#8 PEM) 0600, the public half (SPKI
/// PEM) 0644; neither over an existing file.
pub(super) fn write_key_pair(
    key: &SigningKey,
    private: &Path,
    public: &Path,
) -> Result<(), SetupError> {
    let sk_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| SetupError::Invalid(format!("encoding {}: {e}", private.display())))?;
    let pk_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| SetupError::Invalid(format!("encoding {}: {e}", public.display())))?;
    write_file(private, sk_pem.as_bytes(), 0o600)?;
    write_file(public, pk_pem.as_bytes(), 0o644)
}

/// What `jit-controller certs renew-server` did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerRenewal {
    pub names: Vec<String>,
    pub not_after_unix: i64,
}

/// Issues a new server certificate from the CA in the state directory (the signing one,
/// whose key is `ca.key`) for the names of the current one plus `extra`, valid `days`, with a
/// new key, and installs it: `server.key` (0600) then `server.crt`, each written to a
/// temporary file, synced and renamed. A running controller serves it to new connections
/// within `server_reload_seconds`, or at once on SIGHUP.
pub fn renew_server_cert(
    dir: &StateDir,
    extra: &[String],
    days: i64,
) -> Result<ServerRenewal, SetupError> {
    if !(1..=825).contains(&days) {
        return Err(SetupError::Invalid(format!(
            "--days must be from 1 to 825, not {days}"
        )));
    }
    let ca = crate::fleet::ca::Ca::load(&dir.ca_cert(), &dir.ca_key())?;
    let current = std::fs::read_to_string(dir.server_cert())
        .map_err(|e| SetupError::io(dir.server_cert().display(), e))?;
    let mut names = Vec::new();
    use rustls_pki_types::pem::PemObject;
    let first: Option<Vec<u8>> =
        rustls_pki_types::CertificateDer::pem_slice_iter(current.as_bytes())
            .next()
            .and_then(|r| r.ok())
            .map(|d| d.as_ref().to_vec());
    if let Some(der) = first
        && let Ok((_, c)) = x509_parser::parse_x509_certificate(&der)
        && let Ok(Some(san)) = c.subject_alternative_name()
    {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    if names.is_empty() {
        names.push("localhost".into());
    }
    let (cert, key) = ca
        .issue_server(names.clone(), days)
        .map_err(SetupError::Invalid)?;
    let not_after_unix = crate::health::cert_expiry(&cert).map_err(SetupError::Invalid)?;
    replace_file(&dir.server_key(), key.as_bytes(), 0o600)?;
    replace_file(&dir.server_cert(), cert.as_bytes(), 0o644)?;
    Ok(ServerRenewal {
        names,
        not_after_unix,
    })
}

/// Writes `path` atomically: a temporary file next to it (`mode`), synced, renamed over it.
pub(super) fn replace_file(path: &Path, data: &[u8], mode: u32) -> Result<(), SetupError> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    write_file(&tmp, data, mode)?;
    std::fs::rename(&tmp, path).map_err(|e| SetupError::io(path.display(), e))?;
    if let Some(d) = path.parent()
        && let Ok(f) = std::fs::File::open(d)
    {
        let _ = f.sync_all();
    }
    Ok(())
}

/// What `init` made.
pub struct InitOutcome {
    pub admin: TokenInfo,
    pub admin_token: String,
}

/// Creates a state directory: config, database, CA and server certificate, grant-signing key,
/// and an admin token (returned; shown once). Refuses to touch an existing configuration.
pub async fn init(
    dir: &StateDir,
    cfg: &Config,
    names: &[String],
) -> Result<InitOutcome, SetupError> {
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| SetupError::Io {
            path: p.display().to_string(),
            reason: e,
        })
    };
    if dir.config().exists() {
        return Err(SetupError::Invalid(format!(
            "{} already exists: this state directory is initialised",
            dir.config().display()
        )));
    }
    mkdir(&dir.0)?;
    mkdir(&dir.0.join("tls"))?;
    mkdir(&dir.0.join("keys"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        for d in [dir.0.clone(), dir.0.join("tls"), dir.0.join("keys")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
                SetupError::Io {
                    path: d.display().to_string(),
                    reason: e,
                }
            })?;
        }
    }

    // CA and server certificate.
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "jitgate controller CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key)?;

    let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in names {
        if !sans.contains(n) {
            sans.push(n.clone());
        }
    }
    // The API's and the agent channel's addresses; the advertised agent endpoint's host
    // (a name or an address) too, since agents verify the channel against it.
    let addrs = [Some(&cfg.listen), Some(&cfg.agent_listen)];
    for host in addrs
        .into_iter()
        .flatten()
        .filter_map(|l| l.rsplit_once(':').map(|x| x.0))
    {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>()
            && !ip.is_unspecified()
            && !sans.contains(&ip.to_string())
        {
            sans.push(ip.to_string());
        }
    }
    if let Some(host) = cfg
        .agent_endpoint
        .as_deref()
        .and_then(|e| e.rsplit_once(':').map(|x| x.0))
    {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !host.is_empty() && !sans.contains(&host) {
            sans.push(host);
        }
    }
    let srv_key = KeyPair::generate()?;
    let mut srv = CertificateParams::new(sans)?;
    srv.distinguished_name
        .push(DnType::CommonName, "jitgate controller");
    srv.not_before = now - time::Duration::days(1);
    srv.not_after = now + time::Duration::days(825);
    srv.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let srv_cert = srv.signed_by(&srv_key, &ca_cert, &ca_key)?;

    write_file(&dir.ca_cert(), ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&dir.ca_key(), ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.server_cert(), srv_cert.pem().as_bytes(), 0o644)?;
    write_file(&dir.server_key(), srv_key.serialize_pem().as_bytes(), 0o600)?;

    // The grant-signing key, and the activity log's checkpoint key (another key).
    for (private, public) in [
        (dir.signing_key(), dir.signing_pub()),
        (dir.checkpoint_key(), dir.checkpoint_pub()),
    ] {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        write_key_pair(&key, &private, &public)?;
    }
    // Sign-in sealing key: made now so that `[oidc]` can be turned on later, and copied with
    // the other keys to every controller on the same database.
    jitgate_oidc::SealKey::create_file(&dir.oidc_seal_key())
        .map_err(|e| SetupError::Invalid(e.to_string()))?;

    // Database and first admin token.
    let app = App::open(&cfg.database_url(dir), &cfg.db_options(2), Parts::default()).await?;
    let (admin, admin_token) = app
        .tokens
        .create(
            &Caller::local(),
            "admin",
            Role::Admin,
            &Scope::All,
            None,
            &[],
        )
        .await?;
    app.close().await;

    // The configuration last: its presence marks a complete init.
    let text = toml::to_string_pretty(cfg)
        .map_err(|e| SetupError::Invalid(format!("writing the configuration: {e}")))?;
    write_file(&dir.config(), text.as_bytes(), 0o644)?;
    Ok(InitOutcome { admin, admin_token })
}
