//! One throwaway cluster: its directory, server process, watchdog and databases.

use crate::install::{self, RunAs};
use crate::{Error, Result, io, tls};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The database superuser every cluster has (no password unless [`Builder::password`]).
pub const SUPERUSER: &str = "jitgate";

/// Unix-socket-only clusters all use this port: it only names the socket file, inside a
/// directory of the cluster's own.
const SOCKET_PORT: u16 = 5432;

/// Stops the server and removes the directory once the test process has gone: `cat`
/// returns when the pipe's write end, held only by the test process, closes. The stop is
/// repeated once in case a `pg_ctl start` was still bringing the server up.
const WATCHDOG: &str = r#"cat >/dev/null 2>&1
[ -e "$3" ] || exit 0
"$1" -D "$2" -m immediate -w -t 30 stop >/dev/null 2>&1
sleep 0.5
"$1" -D "$2" -m immediate -w -t 30 stop >/dev/null 2>&1
rm -rf "$3"
"#;

/// Options for [`Cluster::start`]; [`Cluster::builder`] makes one.
#[derive(Debug, Clone, Default)]
pub struct Builder {
    tcp: bool,
    tls: bool,
    password: Option<String>,
    durable: bool,
    settings: Vec<(String, String)>,
}

impl Builder {
    /// Also listen on 127.0.0.1 at a free port ([`Cluster::tcp_url`]).
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// `ssl = on` with a server certificate for 127.0.0.1 and localhost signed by a fresh test
    /// CA ([`Cluster::ca_cert`]). TCP connections must use TLS (pg_hba `hostssl` only);
    /// implies [`Builder::tcp`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self.tcp = true;
        self
    }

    /// Password authentication (scram-sha-256) for the superuser, on the socket and on TCP.
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self
    }

    /// Keep `fsync` and `full_page_writes` at PostgreSQL's defaults (for measurements;
    /// tests do not need it: only a crash of the machine would lose data without them).
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }

    /// Any other server setting (`postgresql.conf` syntax for the value).
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_string(), value.to_string()));
        self
    }

    pub fn start(self) -> Result<Cluster> {
        Cluster::start_with(self)
    }
}

/// A database made by [`Cluster::create_database`].
#[derive(Debug, Clone)]
pub struct Database {
    pub name: String,
    /// Over the unix socket: `postgres://jitgate@localhost/NAME?host=DIR&port=5432`.
    pub url: String,
}

/// A running (or stopped) throwaway cluster. Dropping it stops the server and removes
/// every file.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    base: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    tcp: bool,
    tls: bool,
    password: Option<String>,
    run_as: Option<RunAs>,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
    next_db: AtomicU64,
}

impl Cluster {
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A cluster on a private unix socket, no TLS, no password.
    pub fn start() -> Result<Cluster> {
        Builder::default().start()
    }

    /// The cluster of this test process, started on first use and shared by every test in
    /// it: for tests that need only databases of their own ([`Cluster::create_database`]).
    /// Never stop it. It is never dropped: the watchdog removes it when the process exits.
    pub fn shared() -> Result<&'static Cluster> {
        // Set once, then only read: the one process-wide value a test binary needs.
        static SHARED: OnceLock<std::result::Result<Cluster, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Cluster::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::Shared(e.clone()))
    }

    fn start_with(opts: Builder) -> Result<Cluster> {
        let bin = install::bin_dir()?;
        let run_as = install::run_as()?;
        let port = if opts.tcp { free_port()? } else { SOCKET_PORT };
        let base = make_base_dir()?;
        let data = base.join("data");
        let socket_dir = base.join("s");
        let log = base.join("server.log");
        let mut c = Cluster {
            bin,
            data,
            socket_dir,
            log,
            port,
            tcp: opts.tcp,
            tls: opts.tls,
            password: opts.password.clone(),
            run_as,
            watchdog: Mutex::new(None),
            next_db: AtomicU64::new(1),
            base,
        };
        // From here on, Drop (or the watchdog) cleans up whatever happens next.
        if let Some(r) = run_as {
            chown(&c.base, r)?;
        }
        c.spawn_watchdog()?;
        c.init(&opts)?;
        let mut tries = 0;
        loop {
            match c.start_again() {
                Ok(()) => return Ok(c),
                // Another process took the free port between our probe and the bind.
                Err(_) if c.tcp && tries < 5 && c.log().contains("could not bind") => {
                    tries += 1;
                    c.port = free_port()?;
                    c.append_conf(&format!("port = {}\n", c.port))?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn_watchdog(&self) -> Result<()> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("jitgate-testpg-watchdog")
            .arg(self.bin.join("pg_ctl"))
            .arg(&self.data)
            .arg(&self.base)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/")
            // Out of the terminal's process group: Ctrl-C reaches the test, not the
            // watchdog, which then cleans up after it.
            .process_group(0);
        if let Some(r) = self.run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
        let mut child = cmd.spawn().map_err(io("starting the cluster watchdog"))?;
        let stdin = child.stdin.take().ok_or_else(|| Error::Command {
            what: "starting the cluster watchdog".into(),
            status: "no stdin".into(),
            output: String::new(),
        })?;
        *self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some((child, stdin));
        Ok(())
    }

    fn init(&self, opts: &Builder) -> Result<()> {
        std::fs::create_dir(&self.socket_dir).map_err(io("creating the socket directory"))?;
        std::fs::set_permissions(&self.socket_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("socket directory mode"))?;
        if let Some(r) = self.run_as {
            chown(&self.socket_dir, r)?;
        }
        let mut initdb = self.pg_command("initdb");
        initdb
            .arg("-D")
            .arg(&self.data)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]);
        let pwfile = self.base.join("pwfile");
        if let Some(pw) = &opts.password {
            self.write_private(&pwfile, pw.as_bytes(), 0o600)?;
            initdb
                .arg("--pwfile")
                .arg(&pwfile)
                .arg("--auth=scram-sha-256");
        } else {
            initdb.arg("--auth=trust");
        }
        let out = run(&mut initdb, "initdb");
        let _ = std::fs::remove_file(&pwfile);
        out?;

        let mut conf = String::new();
        let listen = if self.tcp { "127.0.0.1" } else { "" };
        let _ = writeln!(conf, "\n# jitgate-testpg");
        let _ = writeln!(conf, "listen_addresses = '{listen}'");
        let _ = writeln!(conf, "port = {}", self.port);
        let _ = writeln!(
            conf,
            "unix_socket_directories = '{}'",
            self.socket_dir.display()
        );
        let _ = writeln!(conf, "max_connections = 300");
        let _ = writeln!(conf, "shared_buffers = 32MB");
        // Nothing is flushed to the disk, but every commit is written to the OS before it is
        // acknowledged (synchronous_commit stays on): killing the server loses nothing.
        if !opts.durable {
            for s in ["fsync", "full_page_writes"] {
                let _ = writeln!(conf, "{s} = off");
            }
        }
        if self.tls {
            let label = self.base.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let m = tls::generate(label)?;
            let dir = self.base.join("tls");
            std::fs::create_dir(&dir).map_err(io("creating the TLS directory"))?;
            if let Some(r) = self.run_as {
                chown(&dir, r)?;
            }
            self.write_private(&dir.join("ca.crt"), m.ca_pem.as_bytes(), 0o644)?;
            self.write_private(&dir.join("server.crt"), m.server_pem.as_bytes(), 0o644)?;
            // PostgreSQL refuses a key that others can read.
            self.write_private(&dir.join("server.key"), m.server_key_pem.as_bytes(), 0o600)?;
            let _ = writeln!(conf, "ssl = on");
            let _ = writeln!(
                conf,
                "ssl_cert_file = '{}'",
                dir.join("server.crt").display()
            );
            let _ = writeln!(
                conf,
                "ssl_key_file = '{}'",
                dir.join("server.key").display()
            );
        }
        for (k, v) in &opts.settings {
            let _ = writeln!(conf, "{k} = {v}");
        }
        self.append_conf(&conf)?;

        let method = if opts.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let host = if self.tls { "hostssl" } else { "host" };
        let mut hba = format!("local all all {method}\n");
        if self.tcp {
            let _ = writeln!(hba, "{host} all all 127.0.0.1/32 {method}");
        }
        std::fs::write(self.data.join("pg_hba.conf"), hba).map_err(io("writing pg_hba.conf"))
    }

    fn append_conf(&self, text: &str) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .map_err(io("opening postgresql.conf"))?;
        f.write_all(text.as_bytes())
            .map_err(io("writing postgresql.conf"))
    }

    /// Writes a file the server user owns, with `mode`.
    fn write_private(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
        std::fs::write(path, bytes).map_err(io(format!("writing {}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("setting the mode of {}", path.display())))?;
        if let Some(r) = self.run_as {
            chown(path, r)?;
        }
        Ok(())
    }

    /// A PostgreSQL server program, run as the server's user, from the cluster directory.
    fn pg_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.base)
            .stdin(Stdio::null())
            .env("LC_ALL", "C")
            .env_remove("PGDATA");
        if let Some(r) = self.run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
        cmd
    }

    fn pg_ctl(&self, action: &str, mode: Option<&str>) -> Result<String> {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D").arg(&self.data).args(["-w", "-t", "60"]);
        if let Some(m) = mode {
            cmd.args(["-m", m]);
        }
        if action == "start" {
            cmd.arg("-l").arg(&self.log);
        }
        cmd.arg(action);
        run(&mut cmd, &format!("pg_ctl {action}"))
    }

    /// Starts the server (after [`Cluster::stop`] or [`Cluster::crash`]), on the same
    /// directory, socket and port; returns when it accepts connections.
    pub fn start_again(&self) -> Result<()> {
        self.pg_ctl("start", None).map(drop).map_err(|e| match e {
            Error::Command {
                what,
                status,
                output,
            } => Error::Command {
                what,
                status,
                output: format!("{output}\nserver log:\n{}", tail(&self.log(), 20)),
            },
            e => e,
        })
    }

    /// Stops the server cleanly (fast mode: clients are disconnected, a checkpoint runs).
    pub fn stop(&self) -> Result<()> {
        self.pg_ctl("stop", Some("fast")).map(drop)
    }

    /// Stops the server as a crash would (immediate mode: no checkpoint; the next start
    /// recovers from the WAL).
    pub fn crash(&self) -> Result<()> {
        self.pg_ctl("stop", Some("immediate")).map(drop)
    }

    /// [`Cluster::stop`] then [`Cluster::start_again`].
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// Whether the server is running (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.data);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The temporary directory everything lives in (data, socket, log, TLS files).
    pub fn dir(&self) -> &Path {
        &self.base
    }

    /// The directory holding the unix socket (`.s.PGSQL.PORT`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The port: of the TCP listener with [`Builder::tcp`], else only the socket's name.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed the server certificate ([`Builder::tls`]).
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.tls.then(|| self.base.join("tls").join("ca.crt"))
    }

    fn userinfo(&self) -> String {
        match &self.password {
            Some(p) => format!("{SUPERUSER}:{p}"),
            None => SUPERUSER.to_string(),
        }
    }

    /// The URL of database `db` over the unix socket (sqlx and libpq both read it).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{}@localhost/{db}?host={}&port={}",
            self.userinfo(),
            self.socket_dir.display(),
            self.port
        )
    }

    /// The URL of database `db` over TCP on 127.0.0.1 ([`Builder::tcp`]): with
    /// [`Builder::tls`], `sslmode=verify-full` against the test CA.
    pub fn tcp_url(&self, db: &str) -> Option<String> {
        if !self.tcp {
            return None;
        }
        let mut url = format!(
            "postgres://{}@127.0.0.1:{}/{db}",
            self.userinfo(),
            self.port
        );
        if let Some(ca) = self.ca_cert() {
            let _ = write!(url, "?sslmode=verify-full&sslrootcert={}", ca.display());
        }
        Some(url)
    }

    /// A new empty database (a copy of `template1`).
    pub fn create_database(&self) -> Result<Database> {
        self.create_database_from("template1")
    }

    /// A new database copied from `template`, which no session may be connected to
    /// meanwhile (PostgreSQL's rule). A test suite can migrate one database once and copy
    /// it for each test.
    pub fn create_database_from(&self, template: &str) -> Result<Database> {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{n}");
        self.psql(
            "postgres",
            &format!(
                "CREATE DATABASE {} TEMPLATE {}",
                ident(&name)?,
                ident(template)?
            ),
        )?;
        Ok(Database {
            url: self.url(&name),
            name,
        })
    }

    /// Runs SQL with `psql` as the superuser in database `db`; returns its unaligned,
    /// tuples-only output (`a|b` per row).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-d")
            .arg(self.url(db))
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS");
        run(&mut cmd, "psql")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists()
            && let Err(e) = self.crash()
        {
            eprintln!("jitgate-testpg: stopping the server: {e}");
        }
        if let Err(e) = std::fs::remove_dir_all(&self.base) {
            eprintln!("jitgate-testpg: removing {}: {e}", self.base.display());
        }
        let watchdog = self
            .watchdog
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((mut child, stdin)) = watchdog {
            // Closing the pipe lets it run; with the directory gone it exits at once.
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// A fresh 0700 directory under the temporary directory, short enough for a socket path.
fn make_base_dir() -> Result<PathBuf> {
    let tmp = std::env::temp_dir();
    // Socket paths are limited to 107 bytes, and the path goes into URLs unencoded.
    let plain = tmp.to_str().is_some_and(|s| {
        s.len() <= 60
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    });
    let parent = if plain { tmp } else { PathBuf::from("/tmp") };
    nix::unistd::mkdtemp(&parent.join("jitgate-testpg-XXXXXX")).map_err(|e| Error::Io {
        what: format!("creating a directory in {}", parent.display()),
        source: e.into(),
    })
}

fn chown(path: &Path, r: RunAs) -> Result<()> {
    std::os::unix::fs::chown(path, Some(r.uid), Some(r.gid))
        .map_err(io(format!("chown {}", path.display())))
}

/// A port on 127.0.0.1 that nothing listens on right now.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

/// Runs a command to completion; its stdout, or an error with its output.
fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().map_err(io(format!("running {what}")))?;
    if !out.status.success() {
        return Err(Error::Command {
            what: what.to_string(),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .trim()
            .to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A quoted SQL identifier: names from tests, kept to a plain alphabet.
fn ident(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() < 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(Error::Name(name.to_string()));
    }
    Ok(format!("\"{name}\""))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
