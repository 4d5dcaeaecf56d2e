//! The provider process: started with users and clients, stopped on Drop, driven by an admin
//! API (groups, disabled users, key rotation).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use serde_json::{Value, json};

use crate::{HarnessError, TestCa};

/// The portal's confidential client.
pub const WEB_CLIENT_ID: &str = "jitgate-portal";
/// The CLI's public client (loopback redirect, device flow).
pub const CLI_CLIENT_ID: &str = "jitgate-cli";
/// The CLI client's registered redirect; any port is accepted (RFC 8252 §7.3).
const CLI_REDIRECT: &str = "http://127.0.0.1/callback";

/// How long the provider may take to start on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A person known to the provider.
#[derive(Clone, Debug)]
pub struct User {
    pub sub: String,
    pub login: String,
    pub password: String,
    pub name: String,
    pub email: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn new(login: &str, groups: &[&str]) -> User {
        User {
            sub: format!("sub-{login}"),
            login: login.into(),
            password: format!("{login}-password"),
            name: format!("{login} (test)"),
            email: format!("{login}@example.net"),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// What the provider knows.
#[derive(Clone, Debug)]
pub struct Setup {
    pub users: Vec<User>,
    /// The portal client's registered redirect URI.
    pub web_redirect: String,
    /// Listen on this port (for a test that needs the issuer before the provider runs);
    /// default: any free port.
    pub port: Option<u16>,
    /// Run inside this network namespace (a path such as `/run/netns/NAME`): the provider
    /// then listens on that namespace's loopback, for a browser and a controller in it. The
    /// admin calls of [`TestProvider`] reach the provider only from the same namespace.
    pub netns: Option<PathBuf>,
}

impl Setup {
    /// The user signing in as `login`, if there is one.
    pub fn user(&self, login: &str) -> Option<User> {
        self.users.iter().find(|u| u.login == login).cloned()
    }
}

impl Default for Setup {
    /// alice: jit-admins and prod-ops; bob: prod-ops; carol: no group.
    fn default() -> Setup {
        Setup {
            users: vec![
                User::new("alice", &["jit-admins", "prod-ops"]),
                User::new("bob", &["prod-ops"]),
                User::new("carol", &[]),
            ],
            web_redirect: "https://127.0.0.1:8443/auth/callback".into(),
            port: None,
            netns: None,
        }
    }
}

/// A running provider. Dropping it kills the process.
pub struct TestProvider {
    child: Child,
    stdin: Option<ChildStdin>,
    issuer: String,
    admin_token: String,
    web_secret_file: PathBuf,
    cert_file: PathBuf,
    ca: Arc<TestCa>,
    log: PathBuf,
    admin: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestProvider({}, pid {})", self.issuer, self.child.id())
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl TestProvider {
    /// Installs the npm packages if needed, starts the provider over TLS with a certificate
    /// from `ca`, and waits until it listens.
    pub async fn start(ca: Arc<TestCa>, setup: &Setup) -> Result<TestProvider, HarnessError> {
        // Seen once in CI-like runs on a loaded 2-core machine: a provider that printed its
        // runtime warning and then never its ready line. A second process, started fresh,
        // comes up; a provider that fails for any other reason fails the test at once.
        match TestProvider::start_once(ca.clone(), setup).await {
            Err(e) if e.0.contains("did not start (timed out)") => {
                eprintln!("OpenID test provider: first start timed out, starting a fresh one: {e}");
                TestProvider::start_once(ca, setup).await
            }
            r => r,
        }
    }

    async fn start_once(ca: Arc<TestCa>, setup: &Setup) -> Result<TestProvider, HarnessError> {
        let dir_path = tokio::task::spawn_blocking(crate::ensure_installed)
            .await
            .map_err(|e| HarnessError::new("npm install task", e))??;
        let dir = tempfile::tempdir().map_err(|e| HarnessError::new("temporary directory", e))?;
        let cert = ca.server_cert("provider")?;
        let admin_token = random_hex(16);
        let web_secret = random_hex(24);
        let web_secret_file = dir.path().join("web-client-secret");
        write_private(&web_secret_file, &format!("{web_secret}\n"))?;
        let users: Vec<Value> = setup
            .users
            .iter()
            .map(|u| {
                json!({"sub": u.sub, "login": u.login, "password": u.password, "name": u.name,
                    "email": u.email, "groups": u.groups})
            })
            .collect();
        let config = json!({
            "port": setup.port.unwrap_or(0),
            "cert": cert.cert_file,
            "key": cert.key_file,
            "adminToken": admin_token,
            "cookieKey": random_hex(16),
            "users": users,
            "clients": [
                {
                    "client_id": WEB_CLIENT_ID,
                    "client_secret": web_secret,
                    "redirect_uris": [setup.web_redirect],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "client_secret_basic",
                },
                {
                    "client_id": CLI_CLIENT_ID,
                    "application_type": "native",
                    "token_endpoint_auth_method": "none",
                    "redirect_uris": [CLI_REDIRECT],
                    "grant_types": ["authorization_code", "refresh_token",
                        "urn:ietf:params:oauth:grant-type:device_code"],
                    "response_types": ["code"],
                },
            ],
        });
        let setup_file = dir.path().join("setup.json");
        write_private(&setup_file, &config.to_string())?;
        let log = dir.path().join("provider.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| HarnessError::new(log.display(), e))?;
        let mut cmd = Command::new("node");
        cmd.arg(dir_path.join("provider.mjs"))
            .current_dir(&dir_path)
            .env("JITGATE_OP_SETUP", &setup_file)
            .env("NODE_ENV", "test")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let netns = match &setup.netns {
            None => None,
            Some(p) => Some(std::fs::File::open(p).map_err(|e| HarnessError::new(p.display(), e))?),
        };
        let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        // SAFETY: prctl and setns are async-signal-safe system calls; nothing else runs
        // between fork and exec. The namespace file stays open until after the spawn.
        unsafe {
            cmd.pre_exec(move || {
                // Killed when the thread that started it dies, however the test ends.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = netns_fd
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| HarnessError::new("starting node (Node.js must be installed)", e))?;
        drop(netns);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let drain_to = log.clone();
        let ready = tokio::time::timeout(
            START_TIMEOUT,
            tokio::task::spawn_blocking(move || {
                let Some(stdout) = stdout else {
                    return Err("the provider has no stdout");
                };
                let mut r = BufReader::new(stdout);
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(n) if n > 0 => {}
                    _ => return Err("the provider exited before it was ready"),
                }
                // Keep reading: a closed pipe would kill the provider at its next write.
                std::thread::spawn(move || {
                    let mut log = std::fs::OpenOptions::new().append(true).open(drain_to);
                    let mut rest = String::new();
                    while r.read_line(&mut rest).is_ok_and(|n| n > 0) {
                        if let Ok(f) = &mut log {
                            use std::io::Write;
                            let _ = f.write_all(rest.as_bytes());
                        }
                        rest.clear();
                    }
                });
                Ok(line)
            }),
        )
        .await;
        let line = match ready {
            Ok(Ok(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let why = match other {
                    Err(_) => "timed out".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(Err(e))) => e.to_string(),
                    Ok(Ok(Ok(_))) => String::new(),
                };
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(HarnessError(format!(
                    "the OpenID test provider did not start ({why}); its log:\n{text}"
                )));
            }
        };
        let ready: Value =
            serde_json::from_str(&line).map_err(|e| HarnessError::new("provider ready line", e))?;
        let issuer = ready["issuer"]
            .as_str()
            .ok_or_else(|| HarnessError(format!("provider ready line without issuer: {line}")))?
            .to_string();
        let admin = client(&ca)?;
        Ok(TestProvider {
            child,
            stdin,
            issuer,
            admin_token,
            web_secret_file,
            cert_file: cert.cert_file.clone(),
            ca,
            log,
            admin,
            _dir: dir,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ca(&self) -> &Arc<TestCa> {
        &self.ca
    }

    /// The provider's TLS certificate (PEM), for a browser that trusts exactly it.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// The portal client's secret, in a file with mode 0600 (`client_secret_file`).
    pub fn web_client_secret_file(&self) -> &Path {
        &self.web_secret_file
    }

    /// What the provider wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn admin_call(&self, path: &str, body: Value) -> Result<Value, HarnessError> {
        let url = format!("{}{path}", self.issuer);
        let resp = self
            .admin
            .post(&url)
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .map_err(|e| HarnessError::chain(&url, &e))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .map_err(|e| HarnessError::chain(&url, &e))?;
        if !status.is_success() {
            return Err(HarnessError(format!("{url}: {status} {v}")));
        }
        Ok(v)
    }

    /// Replaces a user's groups (seen at the next sign-in or refresh).
    pub async fn set_groups(&self, user: &User, groups: &[&str]) -> Result<(), HarnessError> {
        self.admin_call("/admin/groups", json!({"sub": user.sub, "groups": groups}))
            .await
            .map(|_| ())
    }

    /// Disables a user: sign-in and refresh fail from now on.
    pub async fn disable(&self, user: &User) -> Result<(), HarnessError> {
        self.admin_call("/admin/disable", json!({"sub": user.sub}))
            .await
            .map(|_| ())
    }

    /// A new signing key signs from now on; the previous one stays published. Returns the
    /// new key's `kid`.
    pub async fn rotate_keys(&self) -> Result<String, HarnessError> {
        let v = self.admin_call("/admin/rotate", json!({})).await?;
        v["kid"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| HarnessError(format!("rotate answered {v}")))
    }

    /// The `kid`s the provider publishes now.
    pub async fn published_key_ids(&self) -> Result<Vec<String>, HarnessError> {
        let url = format!("{}/jwks", self.issuer);
        let v: Value = self
            .admin
            .get(&url)
            .send()
            .await
            .map_err(|e| HarnessError::chain(&url, &e))?
            .json()
            .await
            .map_err(|e| HarnessError::chain(&url, &e))?;
        Ok(v["keys"]
            .as_array()
            .map(|ks| {
                ks.iter()
                    .filter_map(|k| k["kid"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for TestProvider {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // Only the process this harness started, by its own handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS client that trusts only the test CA.
pub(crate) fn client(ca: &TestCa) -> Result<reqwest::Client, HarnessError> {
    let pem = std::fs::read(ca.ca_file()).map_err(|e| HarnessError::new("CA file", e))?;
    let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| HarnessError::new("CA", e))?;
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| HarnessError::new("HTTP client", e))
}

fn write_private(path: &Path, text: &str) -> Result<(), HarnessError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| HarnessError::new(path.display(), e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| HarnessError::new(path.display(), e))
}
